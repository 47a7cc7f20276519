"""Statistics query benchmark (issue 4). Prints figures and ratios measured in one run; asserts nothing.

  .venv/bin/python bench/queries.py [--events 1000000 [10000000 ...]] [--repeat 30] [--no-postgres]

Starts the API as `make run` does (its own embedded ClickHouse on free ports, a temporary DATA_DIR), creates 50
workspaces through the API and stores events over the last 90 days straight into ClickHouse, 500k rows an
INSERT, in the columns the ingest route fills (one workspace holds 40% of them; the rollup views fire as they
do for the API). At each size given to --events (grown in place: `--events 1000000 10000000` measures at 1M,
then adds 9M more over the same 90 days and measures at 10M), for the big workspace:
- through the API, p50/p99 of GET /api/events/statistics/timeseries with _cost.amount and duration_ms:
  a 30-day daily series (UTC), a 7-day hourly series (UTC), a 90-day daily series in Asia/Kolkata, and a
  30-day daily series in America/New_York; and each one's first request, which keeps the past local days merged;
- the same answers from the raw events table: a plain GROUP BY with count, uniqExact, sums and quantiles;
- the same from PostgreSQL (JSONB, index on (workspace, name, ts)) when `psql` reaches a server at
  127.0.0.1:5432 (BENCH_POSTGRES_DSN overrides), else it says it was skipped;
- the metrics dashboard (issue 5): GET /api/metrics with all 21 metrics, 30 days daily (UTC), against the same
  answer computed by the same engine from the raw events table only.
"""

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from uuid import UUID

import clickhouse_connect
import httpx
import msgspec

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from app.metrics import service as metrics  # noqa: E402
from app.metrics.catalog import CATALOG  # noqa: E402
from app.statistics.service import RAW, time_range  # noqa: E402
from app.warehouse.client import connect  # noqa: E402
from app.warehouse.embedded import EmbeddedServer  # noqa: E402
from ingest import OPERATOR, Api, free_port, percentile, stop, store_through_views, wait_for_merges  # noqa: E402

WORKSPACES = 50
DAYS = 90
INSERT_ROWS = 500_000
NAMES = ["llm.call", "api.request", "page.view", "file_share.created", "file_share.downloaded", "job.run",
         "message.created", "conversation.created", "file_share.completed", "file_share.expired",
         "file_share.payment_completed"]
FIELDS = ["_cost.amount", "duration_ms"]

# One INSERT ... SELECT per block, generated inside ClickHouse: the bench measures queries, not Python loops.
# Timestamps grow with the row number (events arrive roughly in time order), with up to a minute of jitter.
GENERATE_SQL = """
INSERT INTO events (workspace_id, id, name, timestamp, ingested_at, source, customer_key, customer_number, customer_id,
                    external_customer_id, external_id, dedup_key, parent_id, root_id, depth, metadata, num, str, bool,
                    cost_amount, llm_total_tokens, share_number)
WITH
    {workspaces:Array(UUID)} AS workspace_ids,
    {names:Array(String)} AS names,
    name = 'llm.call' AS llm,
    if(cityHash64(number, 7) % 10 < 3, 2500000000, cityHash64(number, 8) % 10000000000) AS cost_units,
    toDecimal128(cost_units, 0) * toDecimal128('0.000000000001', 12) AS cost,
    round(exp(3 + (cityHash64(number, 6) % 1000) / 250.0), 2) AS duration,
    [200, 200, 200, 404, 500][1 + cityHash64(number, 9) % 5] AS status,
    ['eu-west', 'us-east', 'ap-south'][1 + cityHash64(number, 10) % 3] AS region,
    1 + cityHash64(number, 11) % 4000 AS prompt,
    1 + cityHash64(number, 12) % 1000 AS completion,
    cityHash64(number, 5) % 10000 AS customer_index,
    'cust-' || toString(customer_index) AS customer,
    -- File sharing as CONTRACT.md section 4 has it: 8 consecutive events a share, in one workspace, the first its
    -- creation (the only one), half of the shares free; the others' names are drawn at random.
    intDiv(number, 8) AS share_index,
    names[1 + cityHash64(number, 3) % length(names)] AS drawn,
    startsWith(name, 'file_share.') AS sharing,
    'sh-' || toString(share_index) AS share,
    if(cityHash64(share_index, 13) % 2 = 0, 0, 100 + cityHash64(share_index, 14) % 5000) AS price,
    cityHash64(number, 15) % 100000000 AS bytes,
    multiIf(name = 'file_share.created', concat(',"share_id":"', share, '","price_cents":', toString(price)),
            name = 'file_share.downloaded', concat(',"share_id":"', share, '","bytes":', toString(bytes)),
            name = 'file_share.payment_completed', concat(',"share_id":"', share, '","amount_cents":',
                                                          toString(price), ',"platform_fee_cents":', toString(price / 10)),
            sharing, concat(',"share_id":"', share, '"'), '') AS sharing_json
SELECT
    workspace_ids[if(cityHash64(share_index, 1) % 100 < 40, 1, 2 + cityHash64(share_index, 2) % 49)] AS workspace_id,
    generateUUIDv4(number) AS id,
    multiIf(number % 8 = 0, 'file_share.created', drawn = 'file_share.created', 'file_share.downloaded', drawn) AS name,
    fromUnixTimestamp64Milli(toInt64({t0:Int64} + intDiv((number - {first:UInt64}) * {span:UInt64}, {count:UInt64})
                             + cityHash64(number, 4) % 60000), 'UTC') AS timestamp,
    now64(3) AS ingested_at,
    'user' AS source,
    'x:' || customer AS customer_key,
    toUInt32(customer_index + 1) AS customer_number,
    NULL AS customer_id,
    customer AS external_customer_id,
    'bench-' || toString(number) AS external_id,
    external_id AS dedup_key,
    NULL AS parent_id,
    id AS root_id,
    0 AS depth,
    concat('{"status":', toString(status), ',"duration_ms":', toString(duration), ',"region":"', region,
           '","_cost":{"amount":', toString(cost), ',"currency":"usd"}',
           if(llm, concat(',"_llm":{"vendor":"openai","model":"gpt-x","input_tokens":', toString(prompt),
                          ',"output_tokens":', toString(completion), ',"total_tokens":', toString(prompt + completion), '}'), ''),
           sharing_json, '}') AS metadata,
    CAST(mapFilter((key, value) -> (llm OR NOT startsWith(key, '_llm.'))
                       AND (key != 'price_cents' OR name = 'file_share.created')
                       AND (key != 'bytes' OR name = 'file_share.downloaded')
                       AND (key NOT IN ('amount_cents', 'platform_fee_cents') OR name = 'file_share.payment_completed'),
                   map('status', toFloat64(status), 'duration_ms', duration, '_cost.amount', toFloat64(cost),
                       '_llm.input_tokens', toFloat64(prompt), '_llm.output_tokens', toFloat64(completion),
                       '_llm.total_tokens', toFloat64(prompt + completion), 'price_cents', toFloat64(price),
                       'bytes', toFloat64(bytes), 'amount_cents', toFloat64(price),
                       'platform_fee_cents', toFloat64(price) / 10)),
         'Map(LowCardinality(String), Float64)') AS num,
    CAST(mapFilter((key, value) -> (llm OR NOT startsWith(key, '_llm.')) AND (sharing OR key != 'share_id'),
                   map('region', region, '_cost.currency', 'usd', '_llm.vendor', 'openai', '_llm.model', 'gpt-x',
                       'share_id', share)),
         'Map(LowCardinality(String), String)') AS str,
    CAST(map(), 'Map(LowCardinality(String), Bool)') AS bool,
    cost AS cost_amount,
    if(llm, prompt + completion, 0) AS llm_total_tokens,
    -- Numbered as the API numbers shares (app/events/numbers.py): one number per share id in a workspace.
    if(sharing, toUInt32(share_index + 1), 0) AS share_number
FROM numbers({block:UInt64}, {block_rows:UInt64})
"""

# The same answers as the API's, from the raw table: one plain GROUP BY per series, totals by grouping sets.
RAW_SQL = """
WITH mapContains(num, '_cost.amount') AS has_cost, mapContains(num, 'duration_ms') AS has_duration
SELECT name, {period} AS period, count(), uniqExact(customer_key),
       sum(cost_amount), countIf(has_cost), quantilesIf(0.1, 0.9, 0.99)(num['_cost.amount'], has_cost),
       sumIf(num['duration_ms'], has_duration), countIf(has_duration),
       quantilesIf(0.1, 0.9, 0.99)(num['duration_ms'], has_duration)
FROM events
WHERE workspace_id = {{ws:UUID}} AND timestamp >= fromUnixTimestamp64Milli({{lo:Int64}}, 'UTC')
    AND timestamp < fromUnixTimestamp64Milli({{hi:Int64}}, 'UTC')
GROUP BY GROUPING SETS ((name, period), (name))
"""
RAW_PERIOD = {"day": "toDate(timestamp, {tz:String})", "hour": "toStartOfHour(timestamp, {tz:String})"}

POSTGRES_SQL = """
SELECT name, {period} AS period, count(*), count(DISTINCT customer),
       sum((metadata->'_cost'->>'amount')::numeric),
       percentile_cont(ARRAY[0.1, 0.9, 0.99]) WITHIN GROUP (ORDER BY (metadata->'_cost'->>'amount')::float8),
       sum((metadata->>'duration_ms')::float8),
       percentile_cont(ARRAY[0.1, 0.9, 0.99]) WITHIN GROUP (ORDER BY (metadata->>'duration_ms')::float8)
FROM bench_events
WHERE workspace = '{ws}' AND ts >= '{lo}' AND ts < '{hi}'
GROUP BY GROUPING SETS ((name, period), (name))
"""
POSTGRES_PERIOD = {"day": "date_trunc('day', ts AT TIME ZONE '{tz}')", "hour": "date_trunc('hour', ts AT TIME ZONE '{tz}')"}


class Series:
    """One of the answers the bench times, as API parameters and as a [lo, hi) UTC range."""

    def __init__(self, label: str, interval: str, timezone: str, days: int, today: date) -> None:
        self.label, self.interval, self.timezone = label, interval, timezone
        self.start, self.end = today - timedelta(days=days), today - timedelta(days=1)

    def params(self) -> list[tuple[str, str]]:
        return [("start_date", self.start.isoformat()), ("end_date", self.end.isoformat()),
                ("interval", self.interval), ("timezone", self.timezone), *(("aggregate_fields", f) for f in FIELDS)]

    def bounds(self, answer: dict) -> tuple[datetime, datetime]:
        periods = answer["periods"]
        return datetime.fromisoformat(periods[0]["timestamp"]), datetime.fromisoformat(periods[-1]["period_end"])


def setup_workspaces(api: Api) -> tuple[list[str], str]:
    headers = {"Authorization": f"Bearer {OPERATOR}"}
    ids = [httpx.post(f"{api.url}/api/workspaces", json={"name": f"bench-{i}"}, headers=headers).json()["id"]
           for i in range(WORKSPACES)]
    token = httpx.post(f"{api.url}/api/workspaces/{ids[0]}/tokens", json={}, headers=headers).json()["token"]
    return ids, token


def store_events(client, workspaces: list[str], first: int, last: int, t0: datetime) -> float:
    """Rows first..last-1, in time order over the DAYS days from t0 (each size's new rows cover them all, so a
    grown data set is denser, not longer); returns rows/s."""
    started = time.perf_counter()
    store_through_views(client, GENERATE_SQL, [
        {"workspaces": [UUID(w) for w in workspaces], "names": NAMES, "t0": int(t0.timestamp() * 1000),
         "span": DAYS * 86_400_000, "first": first, "count": last - first, "block": offset,
         "block_rows": min(INSERT_ROWS, last - offset)}
        for offset in range(first, last, INSERT_ROWS)
    ])
    return (last - first) / (time.perf_counter() - started)


def time_api(api: Api, token: str, series: Series, repeat: int) -> tuple[list[float], dict, str, float]:
    """Latencies after three warm-up requests, the last answer, its sources (with how many percentiles came
    from kept day states), and the first request's latency (the one that merges and keeps the days)."""
    latencies = []
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
        for attempt in range(repeat + 3):
            started = time.perf_counter()
            response = http.get("/api/events/statistics/timeseries", params=series.params())
            elapsed = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            if attempt == 0:
                first = elapsed
            if attempt >= 3:  # the first requests warm caches and connections
                latencies.append(elapsed)
    source = response.headers.get("X-Statistics-Source", "?")
    kept = response.headers.get("X-Statistics-Kept-Periods", "0")
    return latencies, response.json(), source if kept == "0" else f"{source}, {kept} kept", first


def time_raw(client, workspace: str, series: Series, lo: datetime, hi: datetime, repeat: int) -> tuple[list[float], int]:
    sql = RAW_SQL.format(period=RAW_PERIOD["hour" if series.interval == "hour" else "day"])
    parameters = {"ws": UUID(workspace), "lo": int(lo.timestamp() * 1000), "hi": int(hi.timestamp() * 1000),
                  "tz": series.timezone}
    latencies, rows = [], []
    for attempt in range(repeat + 1):
        started = time.perf_counter()
        rows = client.query(sql, parameters=parameters).result_rows
        if attempt:
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies, sum(row[2] for row in rows if _is_period(row[1]))


def metrics_params(today: date) -> dict[str, str]:
    return {"start_date": (today - timedelta(days=30)).isoformat(), "end_date": (today - timedelta(days=1)).isoformat(),
            "interval": "day", "timezone": "UTC"}


def time_metrics_api(api: Api, token: str, today: date, repeat: int) -> tuple[list[float], dict, str]:
    latencies = []
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
        for attempt in range(repeat + 3):
            started = time.perf_counter()
            response = http.get("/api/metrics", params=metrics_params(today))
            elapsed = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            if attempt >= 3:
                latencies.append(elapsed)
    return latencies, response.json(), response.headers.get("X-Metrics-Source", "?")


def time_metrics_raw(url: str, workspace: str, today: date, repeat: int) -> tuple[list[float], dict]:
    """The same 21 metrics from the raw events table alone: the engine's own SQL with the rollups left out."""
    params = metrics_params(today)
    span = time_range(params["start_date"], params["end_date"], params["interval"], params["timezone"])

    async def run() -> tuple[list[float], dict]:
        client = await connect(url, max_execution_time=600)
        latencies, answer = [], None
        try:
            for attempt in range(repeat + 1):
                started = time.perf_counter()
                answer, _ = await metrics.dashboard(client, UUID(workspace), span, CATALOG, grains=RAW)
                if attempt:
                    latencies.append((time.perf_counter() - started) * 1000)
        finally:
            await client.close()
        return latencies, msgspec.to_builtins(answer)

    return asyncio.run(run())


def _is_period(value: object) -> bool:
    # Rows of the (name) grouping set carry the default period (1970-01-01 / epoch) instead of a bucket.
    return not (isinstance(value, (date, datetime)) and value.year == 1970)


def psql(dsn: str, *args: str, stdin=None, timeout: float = 3600) -> subprocess.CompletedProcess:
    return subprocess.run(["psql", dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", *args], stdin=stdin,
                          capture_output=True, text=True, timeout=timeout)


def postgres_dsn() -> str | None:
    dsn = os.environ.get("BENCH_POSTGRES_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    if shutil.which("psql") is None:
        print("  PostgreSQL: skipped (no psql)")
        return None
    probe = psql(dsn, "-c", "SELECT 1", timeout=10)
    if probe.returncode != 0:
        print(f"  PostgreSQL: skipped (no server answers: {probe.stderr.strip().splitlines()[-1:]})")
        return None
    return dsn


def load_postgres(dsn: str, clickhouse_url: str, workspace: str, previous: int) -> None:
    """The big workspace's new events into a JSONB table indexed on (workspace, name, ts): all PostgreSQL needs
    for the same answers (the other workspaces would only make its index larger)."""
    if previous == 0:
        psql(dsn, "-c", "DROP TABLE IF EXISTS bench_events", "-c",
             "CREATE TABLE bench_events (workspace uuid, name text, ts timestamptz, customer text, metadata jsonb)")
    query = ("SELECT workspace_id, name, formatDateTime(timestamp, '%Y-%m-%d %H:%i:%S+00'), external_customer_id, "
             "metadata FROM events WHERE workspace_id = {ws:UUID} AND toUInt64(substring(external_id, 7)) >= {first:UInt64} "
             "FORMAT CSV")
    url = f"{clickhouse_url.rstrip('/').rsplit('/', 1)[0]}/?param_ws={workspace}&param_first={int(previous)}"
    curl = subprocess.Popen(["curl", "-sS", "--fail", url, "--data-binary", query], stdout=subprocess.PIPE)
    result = psql(dsn, "-c", "\\copy bench_events FROM STDIN WITH (FORMAT csv)", stdin=curl.stdout)
    curl.wait()
    if result.returncode:
        raise RuntimeError(result.stderr)
    psql(dsn, "-c", "CREATE INDEX IF NOT EXISTS bench_events_wnt ON bench_events (workspace, name, ts)",
         "-c", "ANALYZE bench_events")


def time_postgres(dsn: str, workspace: str, series: Series, lo: datetime, hi: datetime, repeat: int) -> list[float]:
    sql = POSTGRES_SQL.format(period=POSTGRES_PERIOD["hour" if series.interval == "hour" else "day"].format(tz=series.timezone),
                              ws=workspace, lo=lo.isoformat(), hi=hi.isoformat()).replace("\n", " ")
    latencies = []
    for _ in range(repeat):
        output = psql(dsn, "-c", "\\timing on", "-c", sql + ";", "-o", "/dev/null").stdout
        latencies += [float(line.split()[1]) for line in output.splitlines() if line.startswith("Time:")]
    return latencies


def sizes(client) -> str:
    rows = client.query(
        "SELECT table, sum(rows), sum(data_compressed_bytes) FROM system.parts WHERE active AND database = currentDatabase() "
        "AND (table = 'events' OR table LIKE '%stats_1%') GROUP BY table ORDER BY table").result_rows
    return ", ".join(f"{table} {count:,} rows {size / 2**20:.0f} MiB" for table, count, size in rows)


def fmt(values: list[float]) -> str:
    return f"p50 {statistics.median(values):8.1f} ms  p99 {percentile(values, 0.99):8.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000],
                        help="data set sizes, ascending; each is measured after growing the data to it")
    parser.add_argument("--repeat", type=int, default=20, help="requests per series through the API")
    parser.add_argument("--raw-repeat", type=int, default=10)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    sizes_wanted = sorted(set(args.events))
    root = Path(tempfile.mkdtemp(prefix="bench-queries-"))
    server = EmbeddedServer(root / "ch", free_port(), free_port())
    server.start()
    api = Api(root / "api", server.url)
    client = clickhouse_connect.get_client(host="127.0.0.1", port=server.http_port, username="admin",
                                           password=server.password("admin"), send_receive_timeout=3600)
    dsn = None if args.no_postgres else postgres_dsn()
    try:
        workspaces, token = setup_workspaces(api)
        today = datetime.now(UTC).date()
        t0 = datetime.combine(today - timedelta(days=DAYS), datetime.min.time(), UTC)
        series = [Series("30-day daily, UTC", "day", "UTC", 30, today),
                  Series("7-day hourly, UTC", "hour", "UTC", 7, today),
                  Series("90-day daily, Asia/Kolkata", "day", "Asia/Kolkata", DAYS - 1, today),
                  Series("30-day daily, New York", "day", "America/New_York", 30, today)]
        stored = 0
        previous: dict[str, float] = {}
        print(f"statistics benchmark: {WORKSPACES} workspaces (one with 40% of the events), {DAYS} days, "
              f"{len(NAMES)} names, fields {', '.join(FIELDS)}; {os.cpu_count()} cores")
        for size in sizes_wanted:
            first_new, stored = stored, size
            rate = store_events(client, workspaces, first_new, size, t0)
            wait_for_merges(client)
            print(f"\n{size:,} events over {DAYS} days: the {size - first_new:,} new ones stored straight into "
                  f"ClickHouse at {rate:,.0f} rows/s (events table, its projection and every view's table)")
            print(f"  {sizes(client)}")
            if dsn:
                load_postgres(dsn, server.url, workspaces[0], first_new)
            for item in series:
                api_latencies, answer, source, first = time_api(api, token, item, args.repeat)
                lo, hi = item.bounds(answer)
                raw_latencies, raw_count = time_raw(client, workspaces[0], item, lo, hi, args.raw_repeat)
                api_count = sum(s["occurrences"] for p in answer["periods"] for s in p["stats"])
                api_p50, raw_p50 = statistics.median(api_latencies), statistics.median(raw_latencies)
                print(f"  {item.label:28s} API ({source:9s}) {fmt(api_latencies)} | raw GROUP BY {fmt(raw_latencies)}"
                      f" | raw/API {raw_p50 / api_p50:5.1f}x | same count: {api_count == raw_count} ({api_count:,})")
                print(f"  {'':28s} first request {first:7.1f} ms")
                if item.label in previous:
                    print(f"  {'':28s} API p50 grew {api_p50 / previous[item.label]:.2f}x since the previous size")
                previous[item.label] = api_p50
                if dsn:
                    pg = time_postgres(dsn, workspaces[0], item, lo, hi, max(3, args.raw_repeat // 3))
                    print(f"  {'':28s} PostgreSQL JSONB {fmt(pg)} | PostgreSQL/API {statistics.median(pg) / api_p50:6.1f}x")
            api_latencies, answer, source = time_metrics_api(api, token, today, args.repeat)
            raw_latencies, raw_answer = time_metrics_raw(server.url, workspaces[0], today, args.raw_repeat)
            api_p50, raw_p50 = statistics.median(api_latencies), statistics.median(raw_latencies)
            counts = ("file_share_sessions", "paid_file_shares", "active_users", "active_sessions")
            same = all(answer["totals"][slug] == raw_answer["totals"][slug] for slug in counts)
            print(f"  {'metrics, 21, 30-day daily':28s} API ({source:9s}) {fmt(api_latencies)} | raw table {fmt(raw_latencies)}"
                  f" | raw/API {raw_p50 / api_p50:5.1f}x | same counts: {same} "
                  f"({answer['totals']['file_share_sessions']:,} sessions)")
            if "metrics" in previous:
                print(f"  {'':28s} API p50 grew {api_p50 / previous['metrics']:.2f}x since the previous size")
            previous["metrics"] = api_p50
    finally:
        stop(api, server, root)


if __name__ == "__main__":
    main()
