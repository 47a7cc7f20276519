"""Usage benchmark (issue 6). Prints latencies measured in one run; asserts nothing.

  .venv/bin/python bench/usage.py [--events 10000000] [--customers 10000] [--rounds 100]

Starts the API as `make run` does (its own embedded ClickHouse on free ports, a temporary DATA_DIR), fills one
workspace straight in ClickHouse (INSERT ... SELECT over numbers(), 250k rows a block, in time order as producers
send them, through the same columns the API fills: maps of metadata leaves, customer_key, cost_amount,
llm_total_tokens), then measures through the API, p50 and p99 of:
- the 90-day usage series and the month snapshot;
- the customer list with one usage metric for every customer, sorted by it: first page and the next;
- one customer's five usage metrics (counts and sums, filters, a sparkline).
Goal (issue 6): p50 under 30 ms, p99 under 100 ms on the 10M-event data set.
Then, as the baseline of the same run, the customer list's query alone (first page) from the cells of
customer_usage, as the API answers it, and from the raw events table, with the ratio between them.
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import clickhouse_connect
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from app.usage_metrics import queries, service  # noqa: E402
from app.warehouse.client import stored_now  # noqa: E402
from app.warehouse.embedded import EmbeddedServer  # noqa: E402
from ingest import Api, free_port, percentile, stop, store_through_views, wait_for_merges, workspace_token  # noqa: E402

NAMES = ["api_call", "api_request", "login", "upload", "completion", "conversation.created", "message.created",
         "task.run"]
DAYS = 100
BLOCK = 250_000  # an INSERT ... SELECT of this size stays well inside the client's 60 s timeout
# One event per number: its fields are drawn from the bits of a hash of the number, so a run is reproducible.
EVENTS_SQL = """
INSERT INTO events (workspace_id, id, name, timestamp, ingested_at, source, customer_key, customer_number, customer_id,
                    external_customer_id, external_id, dedup_key, parent_id, root_id, depth, metadata, num, str, bool,
                    cost_amount, llm_total_tokens)
SELECT {workspace:UUID}, id, name, ts, now64(3), 'user', 'x:' || customer, customer_number, NULL, customer, key, key, NULL, id, 0,
       concat('{"status":', toString(status), ',"tier":"', tier, '","ok":', if(ok, 'true', 'false'),
              ',"tokens":', toString(tokens), ',"_cost":{"amount":', toString(cost), ',"currency":"usd"}',
              ',"_llm":{"vendor":"openai","model":"gpt-x","input_tokens":', toString(input),
              ',"output_tokens":', toString(output), ',"total_tokens":', toString(input + output), '}}'),
       map('status', toFloat64(status), 'tokens', toFloat64(tokens), '_cost.amount', cost,
           '_llm.input_tokens', toFloat64(input), '_llm.output_tokens', toFloat64(output),
           '_llm.total_tokens', toFloat64(input + output)),
       map('tier', tier, '_cost.currency', 'usd', '_llm.vendor', 'openai', '_llm.model', 'gpt-x'),
       map('ok', ok), toDecimal128(cost, 12), input + output
FROM (
    SELECT generateUUIDv4(number) AS id, cityHash64(number) AS h, 'b-' || toString(number) AS key,
           {names:Array(String)}[1 + h % length({names:Array(String)})] AS name,
           fromUnixTimestamp64Milli(toInt64({now_ms:UInt64} - {span_ms:UInt64}
                                    + intDiv(number * {span_ms:UInt64}, {events:UInt64}) + h % 60000), 'UTC') AS ts,
           bitShiftRight(h, 20) % {customers:UInt32} AS n, 'cust-' || toString(n) AS customer, toUInt32(n + 1) AS customer_number,
           [200, 200, 200, 404, 500][1 + bitShiftRight(h, 8) % 5] AS status,
           ['free', 'pro', 'enterprise'][1 + bitShiftRight(h, 12) % 3] AS tier,
           bitShiftRight(h, 16) % 4 != 0 AS ok,
           bitShiftRight(h, 24) % 2000 AS tokens,
           bitShiftRight(h, 32) % 10000 / 1000000 AS cost,
           bitShiftRight(h, 40) % 2000 AS input,
           bitShiftRight(h, 52) % 500 AS output
    FROM numbers({offset:UInt64}, {count:UInt64})
)
"""
CUSTOMERS_SQL = """
INSERT INTO customers (workspace_id, id, external_id, email, name, metadata, created_at)
SELECT {workspace:UUID}, generateUUIDv4(number), 'cust-' || toString(number), NULL, 'Customer ' || toString(number),
       '{}', fromUnixTimestamp64Milli(toInt64({now_ms:UInt64} - number * 1000), 'UTC')
FROM numbers({customers:UInt32})
"""
METRICS = [
    {"name": "API calls", "interval_days": 30, "match_events": [{"name": "api_call"}, {"name": "api_request"}]},
    {"name": "Tokens", "interval_days": 90, "display": "sparkline", "calculation": "sum",
     "property": "_llm.total_tokens", "match_events": [{"name": "completion"}, {"name": "task.run"}]},
    {"name": "Errors", "interval_days": 7, "display": "sparkline", "match_events": [{"name": "api_call"}],
     "filters": [{"property": "status", "operator": "gte", "value": 500}]},
    {"name": "Spend", "interval_days": 30, "format": "currency", "calculation": "sum", "property": "_cost.amount",
     "match_events": [{"name": "completion"}, {"name": "upload"}]},
    {"name": "Paid logins", "interval_days": 90, "match_events": [{"name": "login"}],
     "filters": [{"property": "tier", "operator": "ne", "value": "free"}, {"property": "ok", "operator": "eq", "value": True}]},
]


def fill(server: EmbeddedServer, workspace: str, events: int, customers: int) -> None:
    client = clickhouse_connect.get_client(host="127.0.0.1", port=server.http_port, username="admin",
                                           password=server.password("admin"), send_receive_timeout=3600)
    now_ms = int(datetime.now(UTC).timestamp() * 1000) - 60_000
    common = {"workspace": workspace, "now_ms": now_ms, "customers": customers}
    client.command(CUSTOMERS_SQL, parameters=common)
    store_through_views(client, EVENTS_SQL, [
        {**common, "names": NAMES, "span_ms": DAYS * 86_400_000, "events": events, "offset": offset,
         "count": min(BLOCK, events - offset)}
        for offset in range(0, events, BLOCK)
    ])
    wait_for_merges(client)
    client.close()


def timed(rounds: int, request: Callable[[], httpx.Response]) -> list[float]:
    for _ in range(3):  # warm-up: caches, connections
        request().raise_for_status()
    latencies = []
    for _ in range(rounds):
        started = time.perf_counter()
        request().raise_for_status()
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def list_query_latencies(server: EmbeddedServer, workspace: str, rounds: int) -> list[tuple[str, list[float]]]:
    """The first page of the customer list by each cell-served metric, its query alone, from cells and from
    events; the two answers are checked to be the same rows."""
    client = await clickhouse_connect.get_async_client(host="127.0.0.1", port=server.http_port, username="admin",
                                                       password=server.password("admin"))
    workspace_id = UUID(workspace)
    measured = []
    try:
        for metric in await service.list_metrics(client, workspace_id):
            sql = service.compile_metric(metric, "m_")
            if sql.cell_column is None:
                continue
            as_of = stored_now()
            start = as_of - metric.interval_days * service.DAY
            answers = {}
            for from_cells in (True, False):
                latencies = []
                for _ in range(rounds):
                    started = time.perf_counter()
                    answers[from_cells] = await queries.customers_with_value(
                        client, workspace_id, sql, start, as_of, "-usage_metric", None, 51, from_cells=from_cells)
                    latencies.append((time.perf_counter() - started) * 1000)
                measured.append((f"{metric.name} ({metric.interval_days} days) from {'cells' if from_cells else 'events'}",
                                 latencies))
            if answers[True] != answers[False]:
                raise RuntimeError(f"{metric.name}: cells and events disagree")
    finally:
        await client.close()
    return measured


def report(label: str, latencies: list[float]) -> None:
    print(f"  {label:<52} p50 {statistics.median(latencies):7.1f} ms   p99 {percentile(latencies, 0.99):7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-usage-"))
    server = EmbeddedServer(root / "ch", free_port(), free_port())
    server.start()
    api = Api(root / "api", server.url)
    try:
        workspace, token = workspace_token(api)
        started = time.perf_counter()
        fill(server, workspace, args.events, args.customers)
        print(f"usage benchmark: {args.events:,} events over {DAYS} days, {args.customers:,} customers "
              f"(filled in {time.perf_counter() - started:.0f} s), {args.rounds} rounds each")
        with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
            metric_ids = [client.post("/api/usage-metrics", json=metric).json()["id"] for metric in METRICS]
            report("GET /api/usage/series", timed(args.rounds, lambda: client.get("/api/usage/series")))
            report("GET /api/usage (month)", timed(args.rounds, lambda: client.get("/api/usage")))
            report("GET /api/usage/records (newest 50)",
                   timed(args.rounds, lambda: client.get("/api/usage/records", params={"take": 50})))
            for metric_id, name in zip(metric_ids[:2], ("count", "sum"), strict=True):
                params = {"usage_metric": metric_id, "sort": "-usage_metric", "take": 50}
                report(f"customer list by a {name} metric, first page",
                       timed(args.rounds, lambda params=params: client.get("/api/customers", params=params)))
                cursor = client.get("/api/customers", params=params).json()["cursor"]
                report(f"customer list by a {name} metric, next page", timed(
                    args.rounds, lambda params=params, cursor=cursor: client.get("/api/customers",
                                                                                 params={**params, "cursor": cursor})))
            report("one customer's five usage metrics",
                   timed(args.rounds, lambda: client.get("/api/customers/cust-42/usage-metrics")))
        print("  goal: p50 < 30 ms, p99 < 100 ms")
        print("customer list query alone, first page (same rows from both sources):")
        measured = asyncio.run(list_query_latencies(server, workspace, args.rounds))
        for (cells_label, cells), (events_label, events) in zip(measured[::2], measured[1::2], strict=True):
            report(cells_label, cells)
            report(events_label, events)
            print(f"  {'':<52} cells / events p50: {statistics.median(cells) / statistics.median(events):.2f}")
    finally:
        stop(api, server, root)


if __name__ == "__main__":
    main()
