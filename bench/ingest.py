"""Ingest benchmark (issue 3). Prints figures and ratios measured in one run; asserts nothing.

  .venv/bin/python bench/ingest.py [--events 200000] [--prefill 0] [--uuid-keys] [--no-postgres] [--spread-hours 168]

Starts the API as `make run` does (its own embedded ClickHouse on free ports, a temporary DATA_DIR), then:
- events/s through the API: 1,000-event batches from 8 producers; 10-event batches from 64 producers;
- the limit: the same rows sent straight to ClickHouse as INSERT ... FORMAT JSONEachRow, 100k rows a request;
- the baseline: the same batches into PostgreSQL (JSONB, unique (workspace, external_id), ON CONFLICT DO
  NOTHING) when a server answers on 127.0.0.1:5432, and the same listing there;
- p50/p99 of one 1,000-event request, the API process's memory, and the newest 50 events of the biggest
  workspace with meta[status]=500 and the next page by cursor (with --prefill N events stored first in
  ClickHouse and in PostgreSQL).
External ids are a run's prefix and a counter, so a round's keys sort together; with --uuid-keys they are random
UUIDs, as most producers send them, in ClickHouse and in PostgreSQL alike.
The measured events' timestamps span the 7 days up to the run; --spread-hours 0.1 gives them the last 6 minutes,
as live producers send them. The prefill spans the 7 days that end a day before the run.
"""

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import clickhouse_connect
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.warehouse.embedded import EmbeddedServer  # noqa: E402

NAMES = [f"event.{i:02d}" for i in range(20)]
OPERATOR = "bench-operator-token"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_events(count: int, seed: int, start: datetime, uuid_keys: bool,
                spread: timedelta = timedelta(days=7)) -> list[dict]:
    """About 300 bytes each: 20 names, 10k customers, _cost, _llm and a few numeric and string fields; timestamps
    spread evenly over [start, start + spread)."""
    seconds = int(spread.total_seconds())
    rng = random.Random(seed)
    prefix = uuid.UUID(int=rng.getrandbits(128)).hex[:8]
    return [
        {
            "name": rng.choice(NAMES),
            "timestamp": (start + timedelta(seconds=rng.randrange(0, seconds))).isoformat(),
            "external_customer_id": f"cust-{rng.randrange(10_000)}",
            "external_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)) if uuid_keys else f"{prefix}-{i}",
            "metadata": {
                "status": rng.choice([200, 200, 200, 404, 500]),
                "duration_ms": round(rng.lognormvariate(4, 1), 2),
                "region": rng.choice(["eu-west", "us-east", "ap-south"]),
                "route": f"/api/v1/items/{rng.randrange(100)}",
                "_cost": {"amount": round(rng.random() / 100, 8), "currency": "usd"},
                "_llm": {"vendor": "openai", "model": "gpt-x", "input_tokens": (t := rng.randrange(1, 2000)),
                         "output_tokens": (o := rng.randrange(1, 500)), "total_tokens": t + o},
            },
        }
        for i in range(count)
    ]


def store_through_views(client, insert_sql: str, blocks: list[dict]) -> None:
    """Run `insert_sql` (an INSERT INTO events ...) once per parameter set of `blocks`, as if through the API's
    table: every materialized view on `events` fills its table from these rows and the projections are built.

    Each block's rows go to a staging copy of `events` first; each view's SELECT then runs once over all of them
    into its table, and the staged parts are attached to `events`, which fires no view. Several times faster than
    inserting through the views in API-sized inserts when nearly every one opens its own rollup buckets, which is
    how a generated data set spread over months arrives. Block by block, in the order given: blocks of events in
    time order then leave every table's parts each on its own stretch of time, as the API's inserts of live
    events do; one pass over all blocks would spread each view's parts over the whole range (its GROUP BY output
    split by key, not by time), so a query would read granules of every part.
    `client` is a clickhouse-connect (sync) client."""
    views = client.query(
        "SELECT as_select, extract(create_table_query, {target:String}) FROM system.tables "
        "WHERE database = currentDatabase() AND engine = 'MaterializedView' AND match(as_select, {source:String})",
        parameters={"target": r"TO ([\w.`]+)", "source": r"FROM default\.events\b"}).result_rows
    if not views:
        raise RuntimeError("no materialized view reads the events table: the rollups would stay empty")
    staged_sql = insert_sql.replace("INSERT INTO events", "INSERT INTO events_stage", 1)
    for parameters in blocks:
        client.command("DROP TABLE IF EXISTS events_stage")
        client.command("CREATE TABLE events_stage AS events")
        client.command(staged_sql, parameters=parameters)
        for select, target in views:
            staged = re.sub(r"FROM default\.events\b", "FROM default.events_stage", select)
            client.command(f"INSERT INTO {target} {staged}",
                           settings={"max_bytes_before_external_group_by": 1_000_000_000})
        partitions = client.query("SELECT DISTINCT partition_id FROM system.parts WHERE database = currentDatabase() "
                                  "AND table = 'events_stage' AND active").result_rows
        for (partition,) in partitions:
            client.command(f"ALTER TABLE events ATTACH PARTITION ID '{partition}' FROM events_stage")
    client.command("DROP TABLE events_stage")
    number_customers(client)
    number_shares(client)


def wait_for_merges(client, timeout: float = 1800) -> None:
    """Until no merge or mutation runs: queries timed while merges of freshly stored parts run measure the
    merges as much as the queries (the daily statistics at 10M: 137 ms then, 66 ms once they were done)."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 3 and time.monotonic() < deadline:
        running = client.query("SELECT count() FROM system.merges WHERE database = currentDatabase()").result_rows[0][0]
        quiet = 0 if running else quiet + 1
        time.sleep(1)


def customer_number(external_customer_id: str) -> int:
    """The generated customers' numbers: 'cust-<n>' is n + 1, dense and unique as the API allots them."""
    return int(external_customer_id.removeprefix("cust-")) + 1


def number_generated_customers(server: EmbeddedServer, workspace: str, customers: int = 10_000) -> None:
    """Record customer_number()'s numbers for the generated customers up front, so the API gives them the same
    ones as the rows stored straight into ClickHouse carry."""
    client = clickhouse_connect.get_client(host="127.0.0.1", port=server.http_port, username="admin",
                                           password=server.password("admin"))
    client.command("INSERT INTO customer_numbers SELECT {w:UUID}, 'x:cust-' || toString(number), number + 1 "
                   "FROM numbers({n:UInt32})", parameters={"w": workspace, "n": customers})
    client.close()


def number_customers(client) -> None:
    """Record the numbers of customers whose events were stored straight into ClickHouse (customer_number set
    as customer_number() says), as the API records those it allots."""
    client.command(
        "INSERT INTO customer_numbers SELECT workspace_id, customer_key, min(customer_number) FROM events "
        "WHERE (workspace_id, customer_key) NOT IN (SELECT workspace_id, customer_key FROM customer_numbers) "
        "GROUP BY workspace_id, customer_key")


def number_shares(client) -> None:
    """Record the numbers of file shares whose events were stored straight into ClickHouse (share_number set by
    the generator), as the API records those it allots."""
    client.command(
        "INSERT INTO share_numbers SELECT workspace_id, assumeNotNull(share_id) AS share, min(share_number) FROM events "
        "WHERE share_number > 0 AND (workspace_id, share) NOT IN (SELECT workspace_id, share_id FROM share_numbers) "
        "GROUP BY workspace_id, share")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Api:
    def __init__(self, data_dir: Path, clickhouse_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PORT": str(self.port), "DATA_DIR": str(data_dir), "ADMIN_TOKEN": OPERATOR,
               "CLICKHOUSE_URL": clickhouse_url}
        env.pop("REDIS_URL", None)
        self.log = open(data_dir.parent / "api.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120  # a first start backfills the rollups
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"{self.url}/api/health", timeout=1).status == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the API did not start")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


def workspace_token(api: Api) -> tuple[str, str]:
    headers = {"Authorization": f"Bearer {OPERATOR}"}
    workspace = httpx.post(f"{api.url}/api/workspaces", json={"name": "bench"}, headers=headers).json()["id"]
    token = httpx.post(f"{api.url}/api/workspaces/{workspace}/tokens", json={}, headers=headers).json()["token"]
    return workspace, token


async def through_api(api: Api, token: str, events: list[dict], batch: int, producers: int) -> tuple[float, list[float]]:
    """events/s, and each request's latency in ms."""
    batches = [json.dumps({"events": events[i:i + batch]}).encode() for i in range(0, len(events), batch)]
    latencies: list[float] = []
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in batches:
        queue.put_nowait(body)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    # A client (and connection) per producer, as separate producers have: one pool shared by 64 tasks made
    # httpx itself add seconds to the slowest requests.
    async def producer() -> None:
        async with httpx.AsyncClient(base_url=api.url, timeout=120, headers=headers) as client:
            while not queue.empty():
                body = queue.get_nowait()
                started = time.perf_counter()
                response = await client.post("/api/events/ingest", content=body)
                response.raise_for_status()
                latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(producers)))
    return len(events) / (time.perf_counter() - started), latencies


def straight_to_clickhouse(server: EmbeddedServer, workspace: str, events: list[dict]) -> float:
    """The same rows, as the API would store them, in 100k-row JSONEachRow inserts: the ceiling."""
    now = datetime.now(UTC).isoformat()
    rows = []
    for event in events:
        meta = event["metadata"]
        rows.append(json.dumps({
            "workspace_id": workspace, "id": str(uuid.uuid4()), "name": event["name"],
            "timestamp": event["timestamp"], "ingested_at": now, "source": "user",
            "customer_key": "x:" + event["external_customer_id"], "external_customer_id": event["external_customer_id"],
            "customer_number": customer_number(event["external_customer_id"]),
            "external_id": event["external_id"] + "-ch", "dedup_key": event["external_id"] + "-ch",
            "root_id": str(uuid.uuid4()), "depth": 0, "metadata": json.dumps(meta),
            "num": {"status": meta["status"], "duration_ms": meta["duration_ms"], "_cost.amount": meta["_cost"]["amount"],
                    **{f"_llm.{k}": v for k, v in meta["_llm"].items() if isinstance(v, int)}},
            "str": {"region": meta["region"], "route": meta["route"], "_cost.currency": "usd",
                    "_llm.vendor": "openai", "_llm.model": "gpt-x"},
            "bool": {}, "cost_amount": meta["_cost"]["amount"], "llm_total_tokens": meta["_llm"]["total_tokens"],
        }))
    url = f"http://127.0.0.1:{server.http_port}/?query=" + urllib.parse.quote(
        "INSERT INTO events SETTINGS date_time_input_format='best_effort' FORMAT JSONEachRow")
    auth = {"X-ClickHouse-User": "admin", "X-ClickHouse-Key": server.password("admin")}
    started = time.perf_counter()
    for i in range(0, len(rows), 100_000):
        request = urllib.request.Request(url, data="\n".join(rows[i:i + 100_000]).encode(), headers=auth)
        urllib.request.urlopen(request, timeout=600).read()
    return len(rows) / (time.perf_counter() - started)


POSTGRES_PREFILL_SQL = """
INSERT INTO bench_events (workspace, name, ts, customer, external_id, metadata)
SELECT %(workspace)s, 'event.' || lpad((g %% 20)::text, 2, '0'),
       %(start)s::timestamptz + (g %% 604800) * interval '1 second', 'cust-' || (g %% 10000),
       CASE WHEN %(uuid_keys)s THEN gen_random_uuid()::text ELSE 'prefill-' || g END,
       jsonb_build_object('status', (ARRAY[200, 200, 200, 404, 500])[1 + g %% 5], 'duration_ms', (g %% 1000) / 10.0,
                          'region', 'eu-west', 'route', '/api/v1/items/' || (g %% 100),
                          '_cost', jsonb_build_object('amount', 0.001, 'currency', 'usd'))
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
"""
POSTGRES_INSERT_SQL = (
    "INSERT INTO bench_events (workspace, name, ts, customer, external_id, metadata) "
    "SELECT %s, e->>'name', (e->>'timestamp')::timestamptz, e->>'external_customer_id', e->>'external_id', "
    "e->'metadata' FROM jsonb_array_elements(%s::jsonb) AS e ON CONFLICT DO NOTHING")
# The API's listing in PostgreSQL: newest first, keyset on (ts, id), the status read from the JSONB.
POSTGRES_PAGE_SQL = (
    "SELECT id, name, ts, customer, external_id, metadata FROM bench_events "
    "WHERE workspace = %s AND metadata->>'status' = '500' {after} ORDER BY ts DESC, id DESC LIMIT 51")


def postgres_dsn() -> str | None:
    """The baseline's server, with a fresh bench_events table; None (and why, printed) when there is none."""
    try:
        import psycopg  # noqa: PLC0415
    except ImportError:
        print("  postgres: skipped (psycopg not installed: make bench installs it)")
        return None
    dsn = os.environ.get("BENCH_POSTGRES_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
    try:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute("DROP TABLE IF EXISTS bench_events")
            connection.execute(
                "CREATE TABLE bench_events (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), workspace uuid, name text, "
                "ts timestamptz, customer text, external_id text, metadata jsonb)")
            connection.execute("CREATE UNIQUE INDEX ON bench_events (workspace, external_id)")
            connection.execute("CREATE INDEX ON bench_events (workspace, ts DESC)")
    except psycopg.OperationalError as error:
        print(f"  postgres: skipped (no server: {str(error).splitlines()[0]})")
        return None
    return dsn


def postgres_prefill(dsn: str, workspace: str, count: int, start: datetime, uuid_keys: bool) -> None:
    """`count` events of the same shape in the measured workspace, generated by the server, a million a statement."""
    import psycopg  # noqa: PLC0415

    with psycopg.connect(dsn, autocommit=True) as connection:
        for first in range(1, count + 1, 1_000_000):
            connection.execute(POSTGRES_PREFILL_SQL, {"workspace": workspace, "start": start, "first": first,
                                                      "last": min(count, first + 999_999), "uuid_keys": uuid_keys})
        connection.execute("ANALYZE bench_events")


def postgres_ingest(dsn: str, workspace: str, events: list[dict], batch: int, producers: int) -> float:
    import psycopg  # noqa: PLC0415

    chunks = [json.dumps(events[i:i + batch]) for i in range(0, len(events), batch)]

    def produce(part: list[str]) -> None:
        with psycopg.connect(dsn, autocommit=True) as connection:
            for chunk in part:
                connection.execute(POSTGRES_INSERT_SQL, (workspace, chunk))

    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    started = time.perf_counter()
    with ThreadPoolExecutor(producers) as pool:
        list(pool.map(produce, [chunks[i::producers] for i in range(producers)]))
    return len(events) / (time.perf_counter() - started)


def postgres_listing(dsn: str, workspace: str, rounds: int = 50) -> tuple[list[float], list[float]]:
    import psycopg  # noqa: PLC0415

    first, second = [], []
    with psycopg.connect(dsn, autocommit=True) as connection:
        for _ in range(rounds):
            started = time.perf_counter()
            page = connection.execute(POSTGRES_PAGE_SQL.format(after=""), (workspace,)).fetchall()
            first.append((time.perf_counter() - started) * 1000)
            last = page[49]
            started = time.perf_counter()
            connection.execute(POSTGRES_PAGE_SQL.format(after="AND (ts, id) < (%s, %s)"),
                               (workspace, last[2], last[0])).fetchall()
            second.append((time.perf_counter() - started) * 1000)
    return first, second


async def listing_latency(api: Api, token: str, rounds: int = 50) -> tuple[list[float], list[float]]:
    first, second = [], []
    async with httpx.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        for _ in range(rounds):
            started = time.perf_counter()
            page = (await client.get("/api/events", params={"take": 50, "meta[status]": "500"})).json()
            first.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await client.get("/api/events", params={"take": 50, "meta[status]": "500", "cursor": page["cursor"]})
            second.append((time.perf_counter() - started) * 1000)
    return first, second


def stop(api: Api, server: EmbeddedServer, root: Path) -> None:
    """Stops a run's API and server; its data directory stays with BENCH_KEEP set, for a look with SQL."""
    api.stop()
    server.stop()
    if os.environ.get("BENCH_KEEP"):
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--prefill", type=int, default=0, help="events stored in each system before measuring")
    parser.add_argument("--uuid-keys", action="store_true", help="random UUIDs as external ids")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--spread-hours", type=float, default=168.0,
                        help="the measured events' timestamps span this many hours up to now")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    server = EmbeddedServer(root / "ch", free_port(), free_port())
    server.start()
    api = Api(root / "api", server.url)
    try:
        workspace, token = workspace_token(api)
        number_generated_customers(server, workspace)
        start = datetime.now(UTC) - timedelta(days=8)
        if args.prefill:
            print(f"prefilling {args.prefill:,} events ...", flush=True)
            for offset in range(0, args.prefill, 1_000_000):
                events = make_events(min(1_000_000, args.prefill - offset), 1000 + offset, start, args.uuid_keys)
                straight_to_clickhouse(server, workspace, events)
        # Each phase starts with no merge left from the one before, so none is charged with another's merges.
        settle = clickhouse_connect.get_client(host="127.0.0.1", port=server.http_port, username="admin",
                                               password=server.password("admin"))
        spread = timedelta(hours=args.spread_hours)
        live = datetime.now(UTC) - spread
        big = make_events(args.events, 1, live, args.uuid_keys, spread)
        small = make_events(args.events // 4, 2, live, args.uuid_keys, spread)
        dsn = None if args.no_postgres else postgres_dsn()
        postgres_workspace = str(uuid.uuid4())
        if dsn and args.prefill:
            postgres_prefill(dsn, postgres_workspace, args.prefill, start, args.uuid_keys)
        print(f"ingest benchmark: {args.events:,} events of ~{len(json.dumps(big[0]))} bytes, 2 cores, "
              f"prefill {args.prefill:,} in each store, {'UUID' if args.uuid_keys else 'sequential'} external ids")
        wait_for_merges(settle)
        rate_big, latencies = asyncio.run(through_api(api, token, big, 1000, 8))
        print(f"  API, 1,000-event batches x 8 producers: {rate_big:,.0f} events/s; request p50 "
              f"{percentile(latencies, 0.5):.0f} ms, p99 {percentile(latencies, 0.99):.0f} ms; API RSS {api.rss_mib():.0f} MiB")
        wait_for_merges(settle)
        rate_small, small_latencies = asyncio.run(through_api(api, token, small, 10, 64))
        print(f"  API, 10-event batches x 64 producers:   {rate_small:,.0f} events/s; request p50 "
              f"{percentile(small_latencies, 0.5):.1f} ms, p99 {percentile(small_latencies, 0.99):.1f} ms")
        wait_for_merges(settle)
        limit = straight_to_clickhouse(server, workspace, big)
        print(f"  ClickHouse alone, JSONEachRow 100k/insert: {limit:,.0f} events/s")
        print(f"  ratio API(1,000) / ClickHouse alone: {rate_big / limit:.2f}  (goal >= 0.5)")
        if dsn:
            postgres = postgres_ingest(dsn, postgres_workspace, big, 1000, 8)
            print(f"  PostgreSQL JSONB + ON CONFLICT, 1,000 x 8: {postgres:,.0f} events/s")
            print(f"  ratio API(1,000) / PostgreSQL: {rate_big / postgres:.2f}  (goal > 3)")
        wait_for_merges(settle)
        settle.close()
        first, second = asyncio.run(listing_latency(api, token))
        print(f"  newest 50 with meta[status]=500: p50 {statistics.median(first):.1f} ms, p99 {percentile(first, 0.99):.1f} ms; "
              f"next page: p50 {statistics.median(second):.1f} ms  (goal p50 < 10 ms)")
        if dsn:
            first, second = postgres_listing(dsn, postgres_workspace)
            print(f"  PostgreSQL, the same page: p50 {statistics.median(first):.1f} ms, p99 {percentile(first, 0.99):.1f} ms; "
                  f"next page: p50 {statistics.median(second):.1f} ms")
    finally:
        stop(api, server, root)


if __name__ == "__main__":
    main()
