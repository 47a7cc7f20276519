"""CONTRACT.md section 6: customer usage metrics, their definitions and their values per customer and in the
customer list, compared with a brute-force computation over the events the test sent."""

import asyncio
import math
import operator
import random
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from app.usage_metrics import queries, service
from app.usage_metrics.queries import MetricSql
from app.usage_metrics.schemas import UsageMetric, UsageMetricCreate
from app.warehouse.client import connect, stored_now
from tests.api_process import ApiProcess
from tests.bruteforce import numeric_at
from tests.conftest import Tenant, all_pages, bearer, create_tenant
from tests.test_dedup import post, run_sql
from tests.test_usage import event, ingest, leaf, midnight, parse

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
NAMES = ("api_call", "api_request", "login", "upload")
# Events keep 30 minutes away from every window edge (now - k days), so the server's `now`, a few seconds
# after the test's, puts each event in the same window as the brute force does.
EDGES = (7, 14, 30, 60, 90, 180)
OPERATORS = {"eq": operator.eq, "gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}

METRICS: list[dict[str, Any]] = [
    {"name": "API calls", "interval_days": 30, "match_events": [{"name": "api_call"}, {"name": "api_request"}]},
    # An event matching twice counts once.
    {"name": "calls named twice", "interval_days": 7, "display": "sparkline",
     "match_events": [{"name": "api_call"}, {"name": "api_call"}]},
    {"name": "OK calls", "interval_days": 7, "display": "sparkline", "match_events": [{"name": "api_call"}],
     "filters": [{"property": "status", "operator": "eq", "value": 200}]},
    {"name": "not 200", "interval_days": 30, "match_events": [{"name": "api_call"}],
     "filters": [{"property": "status", "operator": "ne", "value": 200}]},
    {"name": "gt", "interval_days": 90, "match_events": [{"name": "api_call"}, {"name": "upload"}],
     "filters": [{"property": "status", "operator": "gt", "value": 200}]},
    {"name": "gte", "interval_days": 90, "match_events": [{"name": "api_call"}],
     "filters": [{"property": "status", "operator": "gte", "value": 201.0}]},
    {"name": "lt", "interval_days": 30, "match_events": [{"name": "api_request"}],
     "filters": [{"property": "status", "operator": "lt", "value": 404}]},
    {"name": "lte and gt", "interval_days": 90, "match_events": [{"name": "api_request"}],
     "filters": [{"property": "status", "operator": "lte", "value": 404},
                 {"property": "status", "operator": "gt", "value": 200}]},
    {"name": "tier pro", "interval_days": 30, "match_events": [{"name": "login"}],
     "filters": [{"property": "tier", "operator": "eq", "value": "pro"}]},
    {"name": "tier not pro", "interval_days": 30, "match_events": [{"name": "login"}],
     "filters": [{"property": "tier", "operator": "ne", "value": "pro"}]},
    {"name": "tier after free", "interval_days": 90, "match_events": [{"name": "login"}],
     "filters": [{"property": "tier", "operator": "gt", "value": "free"}]},
    {"name": "tier up to free", "interval_days": 90, "match_events": [{"name": "login"}, {"name": "api_call"}],
     "filters": [{"property": "tier", "operator": "lte", "value": "free"}]},
    {"name": "ok", "interval_days": 30, "match_events": [{"name": "upload"}],
     "filters": [{"property": "ok", "operator": "eq", "value": True}]},
    {"name": "not false", "interval_days": 30, "match_events": [{"name": "upload"}],
     "filters": [{"property": "ok", "operator": "ne", "value": False}]},
    {"name": "tokens", "interval_days": 90, "display": "sparkline", "calculation": "sum", "property": "tokens",
     "match_events": [{"name": "api_call"}, {"name": "upload"}]},
    {"name": "bytes", "interval_days": 30, "calculation": "sum", "property": "usage.bytes", "format": "currency",
     "match_events": [{"name": "upload"}, {"name": "api_request"}],
     "filters": [{"property": "tier", "operator": "eq", "value": "enterprise"},
                 {"property": "status", "operator": "lt", "value": 500}]},
    {"name": "cost", "interval_days": 7, "calculation": "sum", "property": "_cost.amount", "format": "currency",
     "display": "sparkline", "match_events": [{"name": "api_call"}, {"name": "login"}]},
    {"name": "signups", "interval_days": 7, "match_events": [{"name": "signup"}]},
    {"name": "failed tokens", "interval_days": 30, "calculation": "sum", "property": "tokens",
     "match_events": [{"name": "upload"}], "filters": [{"property": "ok", "operator": "eq", "value": False}]},
]
# signup events per customer, (days ago in the current 7 days, days ago in the 7 before): the change in percent
# is null (nothing before), negative (-75, -100), zero and positive.
SIGNUPS = {"acme": ([1, 2, 3], []), "beta": ([2], [8, 9, 10, 12]), "ghost": ([1, 5], [9, 11]),
           "c0": ([], [8, 13]), "c1": ([1, 2, 3, 4, 5], [10, 11])}


# Brute force ---------------------------------------------------------------------------------------------


def clickhouse_uuid_order(text: str) -> tuple[int, int]:
    """ClickHouse orders UUIDs by their second 64 bits, then their first: the customer list's order among
    customers created in the same millisecond (its contract names no order)."""
    value = uuid.UUID(text).int
    return value & (2**64 - 1), value >> 64


def holds(metadata: dict, rule: dict) -> bool:
    """A filter: values compare only with values of their own type; `ne` is the negation of `eq`."""
    if rule["operator"] == "ne":
        return not holds(metadata, {**rule, "operator": "eq"})
    value, target = leaf(metadata, rule["property"]), rule["value"]
    if isinstance(target, bool):
        comparable = isinstance(value, bool)
    elif isinstance(target, (int, float)):
        comparable = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        comparable = isinstance(value, str)
    return comparable and OPERATORS[rule["operator"]](value, target)


def metric_value(events: list[dict], metric: dict, start: datetime, end: datetime) -> int | float:
    names = {matcher["name"] for matcher in metric["match_events"]}
    chosen = [item for item in events if start <= item["_when"] < end and item["name"] in names
              and all(holds(item["metadata"], rule) for rule in metric.get("filters", []))]
    if metric.get("calculation", "count") == "count":
        return len(chosen)
    return math.fsum(numeric_at(item["metadata"], metric["property"]) or 0.0 for item in chosen)


def expected_metric(events: list[dict], metric: dict, now: datetime) -> dict:
    span = metric["interval_days"] * DAY
    value = metric_value(events, metric, now - span, now)
    previous = metric_value(events, metric, now - 2 * span, now - span)
    sparkline = None
    if metric.get("display") == "sparkline":
        days = [now.date() - offset * DAY for offset in range(metric["interval_days"] - 1, -1, -1)]
        sparkline = [{"date": day.isoformat(), "value": metric_value(events, metric, midnight(day), min(now, midnight(day) + DAY))}
                     for day in days]
    return {"id": metric["id"], "name": metric["name"], "format": metric.get("format", "numeric"),
            "display": metric.get("display", "number"), "value": value, "previous_value": previous,
            "change_percent": None if previous == 0 else (value - previous) / abs(previous) * 100,
            "sparkline": sparkline}


def approx(answer: Any) -> Any:
    """Sums of floats: the server may add in another order."""
    if isinstance(answer, float):
        return pytest.approx(answer, rel=1e-9, abs=1e-9)
    if isinstance(answer, (list, tuple)):
        return type(answer)(approx(item) for item in answer)
    if isinstance(answer, dict):
        return {key: approx(value) for key, value in answer.items()}
    return answer


# Data ----------------------------------------------------------------------------------------------------

def offset_seconds(rng: random.Random, most_days: int = 200) -> float:
    while True:
        seconds = rng.uniform(60, most_days * 86400)
        if all(abs(seconds - days * 86400) > 1800 for days in EDGES):
            return seconds


def random_metadata(rng: random.Random) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    if rng.random() < 0.85:
        metadata["status"] = rng.choice([200, 200, 201, 404, 500, "200", 200.0, True])
    if rng.random() < 0.8:
        metadata["tier"] = rng.choice(["free", "pro", "enterprise", "Pro", 3])
    if rng.random() < 0.7:
        metadata["ok"] = rng.choice([True, False, "true"])
    if rng.random() < 0.8:
        metadata["tokens"] = rng.choice([rng.randint(-50, 2000), round(rng.uniform(-10, 500), 4), "12"])
    if rng.random() < 0.6:
        metadata["usage"] = {"bytes": rng.randint(0, 10**9)} if rng.random() < 0.9 else {"bytes": "big"}
    if rng.random() < 0.5:
        metadata["_cost"] = {"amount": round(rng.uniform(0, 3), 6), "currency": "usd"}
    return metadata


@dataclass
class World:
    tenant: Tenant
    metrics: list[dict]
    customers: dict[str, dict]  # label -> the customer as the customer list shows it
    events: dict[str, list[dict]] = field(default_factory=dict)  # label -> every event of that customer
    other: "World | None" = None  # the look-alike workspace

    def expected(self, label: str, now: datetime) -> list[dict]:
        return [expected_metric(self.events.get(label, []), metric, now) for metric in self.metrics]


def create_customer(api: TestClient, tenant: Tenant, **fields: Any) -> dict:
    response = api.post("/api/customers", json=fields, headers=tenant.headers)
    assert response.status_code == 201, response.text
    return response.json()


def customer_events(rng: random.Random, count: int, **identity: str) -> list[dict]:
    now = datetime.now(UTC)
    events = [event(rng.choice(NAMES), now - timedelta(seconds=offset_seconds(rng)), random_metadata(rng))
              for _ in range(count)]
    for item in events:
        del item["external_customer_id"]
        item.update(identity)
    return events


def signups(label: str, now: datetime, **identity: str) -> list[dict]:
    current, previous = SIGNUPS.get(label, ([], []))
    events = [event("signup", now - days * DAY + timedelta(hours=1)) for days in current + previous]
    for item in events:
        del item["external_customer_id"]
        item.update(identity)
    return events


def build_world(api: TestClient, tenant: Tenant, metrics: list[dict], customers: int, per_customer: int) -> World:
    """Customers known by external id, by id then external id, only by events (ghost), without events (idle),
    and plain ones, each with random events; the metrics created."""
    rng = random.Random(customers * per_customer)
    now = datetime.now(UTC)
    world = World(tenant, [], {})
    acme = world.customers["acme"] = create_customer(api, tenant, external_id="acme", name="Acme")
    beta = world.customers["beta"] = create_customer(api, tenant, name="Beta")
    world.customers["idle"] = create_customer(api, tenant, external_id="idle")
    # Before beta has an external id its events are stored under its id; after, under the external id.
    world.events["beta"] = customer_events(rng, per_customer // 2, customer_id=beta["id"]) + signups(
        "beta", now, customer_id=beta["id"])
    ingest(api, tenant, world.events["beta"])
    response = api.patch(f"/api/customers/{beta['id']}", json={"external_id": "beta"}, headers=tenant.headers)
    assert response.status_code == 200, response.text
    world.customers["beta"] = response.json()
    later = customer_events(rng, per_customer // 2, external_customer_id="beta")
    world.events["beta"] += later
    world.events["acme"] = (customer_events(rng, per_customer // 2, customer_id=acme["id"])
                            + customer_events(rng, per_customer // 2, external_customer_id="acme")
                            + signups("acme", now, external_customer_id="acme"))
    world.events["ghost"] = customer_events(rng, per_customer, external_customer_id="ghost") + signups(
        "ghost", now, external_customer_id="ghost")
    batch = later + world.events["acme"] + world.events["ghost"]
    for index in range(customers):
        label = f"c{index}"
        world.customers[label] = create_customer(api, tenant, external_id=f"ext-{label}")
        world.events[label] = customer_events(rng, rng.randint(0, per_customer), external_customer_id=f"ext-{label}")
        world.events[label] += signups(label, now, external_customer_id=f"ext-{label}")
        batch += world.events[label]
    ingest(api, tenant, batch)
    # As stored (the answer to a POST carries created_at to the microsecond, the store keeps milliseconds).
    stored = {customer["id"]: customer for customer in list_pages(api, tenant, {}, take=100)}
    world.customers = {label: stored[customer["id"]] for label, customer in world.customers.items()}
    for definition in metrics:
        response = api.post("/api/usage-metrics", json=definition, headers=tenant.headers)
        assert response.status_code == 201, response.text
        world.metrics.append({**definition, "id": response.json()["id"]})
    return world


@pytest.fixture(scope="module")
def world(api: TestClient) -> World:
    """Shared by the read-only tests of this module; the other workspace holds look-alike customers and events
    (same external ids) and metrics of its own, none of which may show."""
    tenant, other = create_tenant(api), create_tenant(api)
    built = build_world(api, tenant, METRICS, customers=6, per_customer=160)
    built.other = build_world(api, other, METRICS[:3], customers=2, per_customer=40)
    return built


def customer_metrics(api: TestClient, tenant: Tenant, reference: str) -> tuple[list[dict], datetime]:
    response = api.get(f"/api/customers/{reference}/usage-metrics", headers=tenant.headers)
    assert response.status_code == 200, response.text
    return response.json(), datetime.now(UTC)


# Values per customer -------------------------------------------------------------------------------------

@pytest.mark.parametrize("label, reference", [
    ("acme", "acme"), ("acme", "id"), ("beta", "id"), ("beta", "beta"), ("ghost", "ghost"), ("idle", "idle"),
    ("c0", "ext-c0"), ("c1", "id"), ("c2", "ext-c2"),
])
def test_customer_usage_metrics_match_brute_force(api: TestClient, world: World, label: str, reference: str) -> None:
    if reference == "id":
        reference = world.customers[label]["id"]
    answer, now = customer_metrics(api, world.tenant, reference)
    if answer and datetime.now(UTC).date() != now.date():
        pytest.skip("the UTC day changed during the test")
    assert answer == approx(world.expected(label, now))


def test_change_percent_covers_null_zero_negative_and_positive(api: TestClient, world: World) -> None:
    changes = {}
    for label in ("acme", "beta", "ghost", "c0", "c1"):
        answer, _ = customer_metrics(api, world.tenant, world.customers.get(label, {}).get("id", label))
        signup = next(metric for metric in answer if metric["name"] == "signups")
        changes[label] = (signup["value"], signup["previous_value"], signup["change_percent"])
    assert changes == {"acme": (3, 0, None), "beta": (1, 4, -75.0), "ghost": (2, 2, 0.0), "c0": (0, 2, -100.0),
                       "c1": (5, 2, 150.0)}


def test_sparkline_has_one_value_per_utc_day_of_the_interval(api: TestClient, world: World) -> None:
    answer, now = customer_metrics(api, world.tenant, "acme")
    for metric in answer:
        if metric["display"] != "sparkline":
            assert metric["sparkline"] is None
            continue
        days = [point["date"] for point in metric["sparkline"]]
        interval = next(m["interval_days"] for m in world.metrics if m["id"] == metric["id"])
        assert days == [(now.date() - offset * DAY).isoformat() for offset in range(interval - 1, -1, -1)]
        assert any(point["value"] for point in metric["sparkline"])


def test_unknown_customer_is_404(api: TestClient, world: World) -> None:
    for reference in ("nobody", str(uuid.uuid4())):
        response = api.get(f"/api/customers/{reference}/usage-metrics", headers=world.tenant.headers)
        assert response.status_code == 404


# The customer list column --------------------------------------------------------------------------------

def list_pages(api: TestClient, tenant: Tenant, params: dict, take: int, between=None) -> list[dict]:
    return all_pages(api, "/api/customers", tenant.headers, params, take, between)


def expected_column(world: World, metric: dict, sort: str | None, now: datetime) -> list[tuple[str, Any]]:
    span = metric["interval_days"] * DAY
    rows = [(customer, metric_value(world.events.get(label, []), metric, now - span, now))
            for label, customer in world.customers.items()]
    rows.sort(key=lambda row: (parse(row[0]["created_at"]), clickhouse_uuid_order(row[0]["id"])))
    if sort is not None:
        rows.sort(key=lambda row: row[1], reverse=sort.startswith("-"))  # stable: ties stay by creation
    return [(customer["id"], value) for customer, value in rows]


@pytest.mark.parametrize("metric_name", ["tokens", "API calls", "cost"])
@pytest.mark.parametrize("sort", [None, "usage_metric", "-usage_metric"])
def test_customer_list_column_and_sort(api: TestClient, world: World, metric_name: str, sort: str | None) -> None:
    metric = next(m for m in world.metrics if m["name"] == metric_name)
    params = {"usage_metric": metric["id"], **({"sort": sort} if sort else {})}
    items = list_pages(api, world.tenant, params, take=2)
    expected = expected_column(world, metric, sort, datetime.now(UTC))
    assert [(item["id"], item["usage_metric"]["value"]) for item in items] == approx(expected)
    assert items[0]["usage_metric"] == approx({"id": metric["id"], "name": metric["name"],
                                               "format": metric.get("format", "numeric"), "value": expected[0][1]})
    by_id = {customer["id"]: customer for customer in world.customers.values()}
    assert all({k: v for k, v in item.items() if k != "usage_metric"} == by_id[item["id"]] for item in items)


def test_customer_list_without_a_metric_is_unchanged(api: TestClient, world: World) -> None:
    items = list_pages(api, world.tenant, {}, take=4)
    assert items == sorted(world.customers.values(), key=lambda c: (parse(c["created_at"]), clickhouse_uuid_order(c["id"])))
    assert all("usage_metric" not in item for item in items)


def test_customer_list_parameters_are_checked(api: TestClient, world: World) -> None:
    metric = world.metrics[0]["id"]
    for params, name in [({"sort": "usage_metric"}, "usage_metric"), ({"usage_metric": metric, "sort": "name"}, "sort"),
                         ({"usage_metric": str(uuid.uuid4())}, "usage_metric"), ({"usage_metric": "x"}, "usage_metric"),
                         ({"usage_metric": metric, "cursor": "junk"}, "cursor")]:
        response = api.get("/api/customers", params=params, headers=world.tenant.headers)
        assert response.status_code == 422, params
        assert name in response.text
    first = api.get("/api/customers", params={"usage_metric": metric, "take": 1}, headers=world.tenant.headers).json()
    other = {"usage_metric": world.metrics[1]["id"], "cursor": first["cursor"]}
    assert api.get("/api/customers", params=other, headers=world.tenant.headers).status_code == 422


def test_a_customer_list_cursor_ends_when_its_metric_changes(api: TestClient, tenant: Tenant) -> None:
    # Its next pages would be ordered by other values than the first: a 422 saying so, not a page that repeats
    # or skips customers.
    metric = api.post("/api/usage-metrics", json={"name": "m", "interval_days": 30, "match_events": [{"name": "a"}]},
                      headers=tenant.headers).json()
    for label in ("one", "two"):
        create_customer(api, tenant, external_id=label)
    params = {"usage_metric": metric["id"], "sort": "-usage_metric", "take": 1}
    first = api.get("/api/customers", params=params, headers=tenant.headers).json()
    before = api.get("/api/customers", params={**params, "cursor": first["cursor"]}, headers=tenant.headers)
    assert before.status_code == 200
    api.patch(f"/api/usage-metrics/{metric['id']}", json={"match_events": [{"name": "b"}]}, headers=tenant.headers)
    after = api.get("/api/customers", params={**params, "cursor": first["cursor"]}, headers=tenant.headers)
    assert after.status_code == 422 and "cursor" in after.text and "changed" in after.text


def test_customer_list_pages_stay_consistent_while_events_arrive(api: TestClient, tenant: Tenant) -> None:
    rng = random.Random(12)
    small = build_world(api, tenant, [METRICS[0], METRICS[13]], customers=7, per_customer=30)

    def more_usage() -> None:
        """Moves values up and down the order, and adds a customer: neither may show in the pages under way."""
        label = rng.choice([label for label in small.customers if label.startswith("c")])
        events = customer_events(rng, 20, external_customer_id=small.customers[label]["external_id"])
        ingest(api, tenant, events)
        small.events[label] += events
        newcomer = create_customer(api, tenant, external_id=uuid.uuid4().hex)
        small.customers[f"new-{newcomer['id']}"] = newcomer

    for metric, sort in zip(small.metrics, ("-usage_metric", "usage_metric"), strict=True):
        expected = expected_column(small, metric, sort, datetime.now(UTC))
        items = list_pages(api, tenant, {"usage_metric": metric["id"], "sort": sort}, take=3, between=more_usage)
        assert [(item["id"], item["usage_metric"]["value"]) for item in items] == approx(expected)
        assert len(items) < len(small.customers)
    stored = {customer["id"]: customer for customer in list_pages(api, tenant, {}, take=100)}
    small.customers = {label: stored[customer["id"]] for label, customer in small.customers.items()}
    expected = expected_column(small, small.metrics[1], "usage_metric", datetime.now(UTC))
    fresh = list_pages(api, tenant, {"usage_metric": small.metrics[1]["id"], "sort": "usage_metric"}, take=100)
    assert [(item["id"], item["usage_metric"]["value"]) for item in fresh] == approx(expected)


def test_customer_list_pages_past_a_sum_beyond_a_float(api: TestClient, tenant: Tenant) -> None:
    # Two values of 1e308 add up to infinity, which JSON holds as null: the cursor keeps it by name.
    metric = api.post("/api/usage-metrics", json={"name": "huge", "interval_days": 30, "calculation": "sum",
                                                  "property": "v", "match_events": [{"name": "huge"}]},
                      headers=tenant.headers).json()
    now = datetime.now(UTC)
    customers = [create_customer(api, tenant, external_id=f"huge-{i}") for i in range(3)]
    ingest(api, tenant, [event("huge", now - timedelta(hours=1), {"v": value}) | {"external_customer_id": external}
                         for external, value in [("huge-0", 1e308), ("huge-0", 1e308), ("huge-1", 5.0)]])
    for sort in ("-usage_metric", "usage_metric"):
        items = list_pages(api, tenant, {"usage_metric": metric["id"], "sort": sort}, take=1)
        assert sorted(item["id"] for item in items) == sorted(customer["id"] for customer in customers)


SLOW_EVENT = "test.slow_write"


@contextmanager
def slow_inserts(clickhouse_url: str, seconds: float) -> Iterator[None]:
    """Every insert into events that holds a SLOW_EVENT takes `seconds` longer: a view sleeps on its rows."""
    run_sql(clickhouse_url, "CREATE TABLE slow_writes (slept UInt8) ENGINE = Null")
    run_sql(clickhouse_url, f"CREATE MATERIALIZED VIEW slow_writes_mv TO slow_writes AS SELECT sleepEachRow({seconds}) "
                            f"AS slept FROM events WHERE name = '{SLOW_EVENT}'")
    try:
        yield
    finally:
        run_sql(clickhouse_url, "DROP VIEW slow_writes_mv")
        run_sql(clickhouse_url, "DROP TABLE slow_writes")


def wait_for_insert_running(clickhouse_url: str) -> None:
    deadline = time.monotonic() + 10
    while not run_sql(clickhouse_url, "SELECT 1 FROM system.processes WHERE query_kind = 'Insert' "
                                      "AND query ILIKE '%INSERT INTO %events%'"):
        assert time.monotonic() < deadline, "the slow insert never started"
        time.sleep(0.02)


def test_customer_list_pages_agree_on_events_still_being_written(
    api: TestClient, tenant: Tenant, clickhouse_url: str, redis_process, tmp_path
) -> None:
    """Events stamped before a listing's first page but still being inserted, by another API process, count on
    none of its pages: counted on the second only, they would lift `second` above the cursor of the first,
    and it would show on no page."""
    first = create_customer(api, tenant, external_id="first")
    second = create_customer(api, tenant, external_id="second")
    now = datetime.now(UTC)
    ingest(api, tenant, [event("api_call", now - HOUR, customer="first")])
    response = api.post("/api/usage-metrics", json=METRICS[0], headers=tenant.headers)
    params = {"usage_metric": response.json()["id"], "sort": "-usage_metric", "take": 1}
    late = [event("api_call", now - HOUR, customer="second") for _ in range(2)] + [event(SLOW_EVENT, now, customer="second")]
    writer = ApiProcess(clickhouse_url, redis_process.url, tmp_path)
    try:
        with slow_inserts(clickhouse_url, 2), ThreadPoolExecutor(1) as pool:
            sent = pool.submit(post, writer.url, tenant, {"events": [{k: v for k, v in item.items() if k != "_when"}
                                                                     for item in late]})
            wait_for_insert_running(clickhouse_url)
            page = api.get("/api/customers", params=params, headers=tenant.headers).json()
            assert sent.result() == {"inserted": 3, "duplicates": 0}
    finally:
        writer.stop()
    rest = api.get("/api/customers", params={**params, "cursor": page["cursor"]}, headers=tenant.headers).json()
    listed = [(item["id"], item["usage_metric"]["value"]) for item in page["items"] + rest["items"]]
    assert listed == [(first["id"], 1), (second["id"], 0)]
    fresh = all_pages(api, "/api/customers", tenant.headers, params, take=1)
    assert [(item["id"], item["usage_metric"]["value"]) for item in fresh] == [(second["id"], 2), (first["id"], 1)]


CELL_METRICS = [  # counts and sums of typed leaves over names alone: the customer list reads customer_usage
    {"name": "calls", "match_events": [{"name": "api_call"}, {"name": "api_request"}]},
    {"name": "cost", "calculation": "sum", "property": "_cost.amount", "match_events": [{"name": "api_call"}]},
    {"name": "tokens", "calculation": "sum", "property": "_llm.total_tokens", "match_events": [{"name": "upload"}]},
]


def compiled(definition: dict, interval_days: int = 30) -> MetricSql:
    """A definition as the API stores it, compiled to its SQL."""
    data = msgspec.convert({"name": "m", "interval_days": interval_days, **definition}, UsageMetricCreate)
    now = datetime.now(UTC)
    return service.compile_metric(UsageMetric(id=uuid.uuid4(), created_at=now, updated_at=now,
                                              **msgspec.structs.asdict(data)), "m_")


def test_only_counts_and_typed_sums_over_names_read_cells() -> None:
    assert [compiled(definition).cell_column for definition in CELL_METRICS] == [
        "events", "cost_amount", "llm_total_tokens"]
    assert compiled({**CELL_METRICS[1], "property": "tokens"}).cell_column is None
    filtered = {**CELL_METRICS[0], "filters": [{"property": "status", "operator": "eq", "value": 200}]}
    assert compiled(filtered).cell_column is None


def test_cells_and_events_give_the_brute_force_values(settings, api: TestClient, tenant: Tenant) -> None:
    """For 7, 30 and 90-day windows ending at `as_of`: events on every edge the cells have (the window's start,
    each cell boundary after it, its end), events after its end (up to the 5 minutes the contract allows) and
    events stored after `as_of` with timestamps inside the window. Both sources give the brute force's value
    for every customer, to the unit."""
    rng = random.Random(5)
    customers = [create_customer(api, tenant, external_id=f"cell-{index}") for index in range(6)]
    as_of = stored_now() + timedelta(seconds=10)  # the first events are stored before it
    starts = {days: as_of - days * DAY for days in (7, 30, 90)}
    edges = [as_of] + [edge for start in starts.values()
                       for edge in [start, *queries.cell_boundaries(start)]]
    moments = [edge + shift for edge in edges for shift in (-timedelta(milliseconds=1), timedelta(0), HOUR)]
    moments += [as_of - 91 * DAY * rng.random() for _ in range(400)]
    moments += [as_of - 200 * DAY] + [as_of + k * timedelta(seconds=20) for k in range(9)]

    def usage(when: datetime) -> dict:
        tokens = {"input_tokens": rng.randint(0, 4000), "output_tokens": rng.randint(0, 1000)}
        metadata = {"_cost": {"amount": round(rng.uniform(0, 2), 6), "currency": "usd"},
                    "_llm": {"vendor": "openai", "model": "gpt-x", **tokens, "total_tokens": sum(tokens.values())}}
        return event(rng.choice(NAMES), when, metadata, customer=rng.choice(customers)["external_id"])

    stored = [usage(when) for when in moments if when <= datetime.now(UTC) + timedelta(minutes=4)]
    ingest(api, tenant, stored)
    assert datetime.now(UTC) < as_of, "storing the events took longer than the margin before as_of"
    while datetime.now(UTC) <= as_of:
        time.sleep(0.05)
    # Stored after as_of: anywhere in the windows, and in each window's raw first hours.
    late = [as_of - 91 * DAY * rng.random() for _ in range(60)]
    late += [start + (queries.cell_boundaries(start)[0] - start) * rng.random()
             for start in starts.values() for _ in range(8)]
    ingest(api, tenant, [usage(when) for when in late])
    owners = {customer["external_id"]: customer["id"] for customer in customers}

    def brute_force(definition: dict, start: datetime) -> dict[str, float]:
        names = {matcher["name"] for matcher in definition["match_events"]}
        values = {customer["id"]: Decimal(0) for customer in customers}
        for item in stored:
            if item["name"] in names and start <= item["_when"] < as_of:
                amount = leaf(item["metadata"], definition["property"]) if "property" in definition else 1
                values[owners[item["external_customer_id"]]] += Decimal(str(amount))
        return {owner: float(value) for owner, value in values.items()}

    async def values(definition: dict, days: int, from_cells: bool) -> dict[str, float]:
        client = await connect(settings.clickhouse_url)
        try:
            rows = await queries.customers_with_value(client, uuid.UUID(tenant.id), compiled(definition, days),
                                                      starts[days], as_of, None, None, 100, from_cells=from_cells)
        finally:
            await client.close()
        return {str(row[0]): row[8] for row in rows}

    for days, start in starts.items():
        for definition in CELL_METRICS:
            expected = brute_force(definition, start)
            assert asyncio.run(values(definition, days, from_cells=True)) == expected, (days, definition["name"])
            assert asyncio.run(values(definition, days, from_cells=False)) == expected, (days, definition["name"])


# Definitions ---------------------------------------------------------------------------------------------

def test_usage_metric_crud(api: TestClient, tenant: Tenant) -> None:
    definition = {"name": "Tokens", "interval_days": 90, "format": "currency", "display": "sparkline",
                  "calculation": "sum", "property": "_llm.total_tokens", "match_events": [{"name": "a"}, {"name": "b"}],
                  "filters": [{"property": "model.family", "operator": "ne", "value": "gpt"},
                              {"property": "n", "operator": "gte", "value": 2.5},
                              {"property": "ok", "operator": "eq", "value": True}]}
    created = api.post("/api/usage-metrics", json=definition, headers=tenant.headers)
    assert created.status_code == 201, created.text
    metric = created.json()
    assert {k: metric[k] for k in definition} == definition
    assert set(metric) == {*definition, "id", "created_at", "updated_at"}
    assert api.get(f"/api/usage-metrics/{metric['id']}", headers=bearer(tenant.viewer)).json() == metric

    minimal = api.post("/api/usage-metrics", json={"name": "Calls", "interval_days": 7, "match_events": [{"name": "a"}]},
                       headers=bearer(tenant.member)).json()
    assert {k: minimal[k] for k in ("format", "display", "calculation", "property", "filters")} == {
        "format": "numeric", "display": "number", "calculation": "count", "property": None, "filters": []}

    patched = api.patch(f"/api/usage-metrics/{metric['id']}", json={"calculation": "count", "interval_days": 30,
                                                                     "filters": []}, headers=tenant.headers)
    assert patched.status_code == 200, patched.text
    assert patched.json() == {**metric, "calculation": "count", "property": None, "interval_days": 30, "filters": [],
                              "updated_at": patched.json()["updated_at"]}
    assert parse(patched.json()["updated_at"]) >= parse(metric["updated_at"])
    assert api.get(f"/api/usage-metrics/{metric['id']}", headers=tenant.headers).json() == patched.json()
    assert [m["id"] for m in api.get("/api/usage-metrics", headers=tenant.headers).json()] == [metric["id"], minimal["id"]]

    assert api.delete(f"/api/usage-metrics/{metric['id']}", headers=tenant.headers).status_code == 204
    assert api.get(f"/api/usage-metrics/{metric['id']}", headers=tenant.headers).status_code == 404
    assert api.patch(f"/api/usage-metrics/{metric['id']}", json={"name": "x"}, headers=tenant.headers).status_code == 404
    assert api.delete(f"/api/usage-metrics/{metric['id']}", headers=tenant.headers).status_code == 404
    assert [m["id"] for m in api.get("/api/usage-metrics", headers=tenant.headers).json()] == [minimal["id"]]

    viewer = bearer(tenant.viewer)
    assert api.post("/api/usage-metrics", json=definition, headers=viewer).status_code == 403
    assert api.patch(f"/api/usage-metrics/{minimal['id']}", json={"name": "x"}, headers=viewer).status_code == 403
    assert api.delete(f"/api/usage-metrics/{minimal['id']}", headers=viewer).status_code == 403


VALID = {"name": "m", "interval_days": 7, "match_events": [{"name": "a"}]}


@pytest.fixture(scope="module")
def definitions(api: TestClient) -> Tenant:
    """A workspace for the validation cases, whose metrics are of no interest."""
    return create_tenant(api)


@pytest.mark.parametrize("change, field", [
    ({"name": ""}, "name"),
    ({"interval_days": 14}, "interval_days"),
    ({"format": "percent"}, "format"),
    ({"display": "chart"}, "display"),
    ({"calculation": "avg"}, "calculation"),
    ({"calculation": "sum"}, "property"),
    ({"calculation": "sum", "property": "a..b"}, "property"),
    ({"calculation": "sum", "property": ".a"}, "property"),
    ({"match_events": []}, "match_events"),
    ({"match_events": [{"name": ""}]}, "match_events[0].name"),
    ({"match_events": [{"title": "a"}]}, "match_events[0].title"),
    ({"match_events": [{}]}, "match_events[0].name"),
    ({"filters": [{"operator": "eq", "value": 1}]}, "filters[0].property"),
    ({"filters": [{"property": "a", "operator": "contains", "value": 1}]}, "filters[0].operator"),
    ({"filters": [{"property": "a", "operator": "eq", "value": None}]}, "filters[0].value"),
    ({"filters": [{"property": "a", "operator": "eq", "value": [1]}]}, "filters[0].value"),
    ({"filters": [{"property": "a", "operator": "eq", "value": 1}, {"property": "b", "operator": "gt", "value": True}]},
     "filters[1].value"),
    ({"filters": [{"property": "a.", "operator": "eq", "value": 1}]}, "filters[0].property"),
])
def test_invalid_definitions_are_422_naming_the_field(api: TestClient, definitions: Tenant, change: dict, field: str) -> None:
    tenant = definitions
    response = api.post("/api/usage-metrics", json={**VALID, **change}, headers=tenant.headers)
    assert response.status_code == 422, response.text
    assert field in response.text
    existing = api.post("/api/usage-metrics", json=VALID, headers=tenant.headers).json()
    response = api.patch(f"/api/usage-metrics/{existing['id']}", json=change, headers=tenant.headers)
    assert response.status_code == 422, response.text
    assert field in response.text
    assert api.get(f"/api/usage-metrics/{existing['id']}", headers=tenant.headers).json() == existing


def test_missing_fields_are_422(api: TestClient, tenant: Tenant) -> None:
    for missing in VALID:
        response = api.post("/api/usage-metrics", json={k: v for k, v in VALID.items() if k != missing},
                            headers=tenant.headers)
        assert response.status_code == 422 and missing in response.text
    assert api.post("/api/usage-metrics", json={**VALID, "extra": 1}, headers=tenant.headers).status_code == 422


# Tenancy -------------------------------------------------------------------------------------------------

def test_every_route_is_isolated_by_workspace(api: TestClient, world: World, other_tenant: Tenant) -> None:
    metric = world.metrics[0]["id"]
    intruder = other_tenant.headers
    assert api.get("/api/usage-metrics", headers=intruder).json() == []
    # The look-alike workspace has customers with the same external ids: it sees its own numbers only.
    assert world.other is not None
    for label in ("acme", "ghost"):
        answer, now = customer_metrics(api, world.other.tenant, label)
        assert answer == approx(world.other.expected(label, now))
    theirs = {m["id"] for m in api.get("/api/usage-metrics", headers=world.other.tenant.headers).json()}
    assert theirs == {m["id"] for m in world.other.metrics} and not theirs & {m["id"] for m in world.metrics}
    assert api.get(f"/api/usage-metrics/{metric}", headers=intruder).status_code == 404
    assert api.patch(f"/api/usage-metrics/{metric}", json={"name": "x"}, headers=intruder).status_code == 404
    assert api.delete(f"/api/usage-metrics/{metric}", headers=intruder).status_code == 404
    assert api.get("/api/customers", params={"usage_metric": metric}, headers=intruder).status_code == 422
    for reference in ("acme", world.customers["acme"]["id"], "ghost"):
        assert api.get(f"/api/customers/{reference}/usage-metrics", headers=intruder).status_code == 404
    response = api.get(f"/api/customers/{world.customers['acme']['id']}/usage-metrics", headers=world.other.tenant.headers)
    assert response.status_code == 404
    scoped = {"workspace_id": world.tenant.id}
    for path in ("/api/usage-metrics", f"/api/usage-metrics/{metric}", "/api/customers/acme/usage-metrics"):
        assert api.get(path, params=scoped, headers=intruder).status_code == 404
    assert api.get("/api/customers", params={**scoped, "usage_metric": metric}, headers=intruder).status_code == 404
    assert api.get(f"/api/usage-metrics/{metric}", headers=world.tenant.headers).status_code == 200
