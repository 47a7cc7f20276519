"""CONTRACT.md section 3: the statistics time series, checked against the brute force in tests/bruteforce.py over
events ingested through the API, in every interval and the zones that make calendars hard, and per planner branch."""

from __future__ import annotations

import asyncio
import json
import math
import random
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from litestar.testing import TestClient

from app.customers.numbers import CustomerNumbers
from app.events.claims import LocalClaims
from app.events.queries import EventFilter, stored_keys
from app.statistics import service
from app.statistics.routes import KEPT_HEADER, SOURCE_HEADER, TOTALS_SOURCE_HEADER
from app.warehouse.client import connect, with_database
from app.warehouse.migrations import migrate, migration_files
from tests.bruteforce import PERCENTILES, percentile_rank_ok, periods, timeseries
from tests.conftest import Tenant, create_tenant, run_sql
from tests.test_usage import meta_matches

PATH = "/api/events/statistics/timeseries"
START, END = date(2026, 9, 28), date(2026, 11, 8)  # Monday to Sunday: Berlin's, Adelaide's and New York's DST changes
NAMES = ("api.request", "llm.call", "page.view")
FIELDS = ["_cost.amount", "duration_ms", "_llm.total_tokens", "a.b.c", "flag", "missing"]
# Africa/Casablanca: from 2026-09-20 ClickHouse 26.9's own zone data has it at UTC+0, Python's tzdata at UTC+1.
ZONES = ("UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata", "Asia/Calcutta", "Asia/Kathmandu",
         "Australia/Adelaide", "Africa/Casablanca")
# Three local days around each zone's most awkward moment, for the hourly series (31 days at most).
HOUR_WINDOWS = {
    "UTC": date(2026, 10, 31),
    "America/New_York": date(2026, 10, 31),
    "Europe/Berlin": date(2026, 10, 24),
    "Asia/Kolkata": date(2026, 10, 31),
    "Asia/Calcutta": date(2026, 10, 31),
    "Asia/Kathmandu": date(2026, 10, 31),
    "Australia/Adelaide": date(2026, 10, 3),
    "Africa/Casablanca": date(2026, 10, 31),
}
ENCODER = msgspec.json.Encoder(decimal_format="number")


@dataclass
class Dataset:
    tenant: Tenant
    events: list[dict[str, Any]]  # as tests/bruteforce.py wants them
    costs: list[tuple[datetime, str, Decimal]]  # the exact `_cost.amount` of each event carrying one


# --------------------------------------------------------------------------------------------------------------
# Generated events
# --------------------------------------------------------------------------------------------------------------


def boundary_instants() -> list[datetime]:
    """Every local midnight of every zone in the range, and the DST transitions: events exactly on a boundary
    and a millisecond before it are the ones a wrong bucket would misplace."""
    instants = set()
    for zone in ZONES:
        for start, end in periods(START - timedelta(days=1), END + timedelta(days=1), "day", zone):
            instants.update((start, end))
        for start, _ in periods(HOUR_WINDOWS[zone], HOUR_WINDOWS[zone] + timedelta(days=2), "hour", zone):
            if start.astimezone(ZoneInfo(zone)).hour in (0, 1, 2, 3):
                instants.add(start)
    return sorted(instants)


def metadata_for(rng: random.Random, name: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"flag": rng.random() < 0.5}
    duration = rng.randint(0, 5000)
    metadata["duration_ms"] = duration if rng.random() < 0.9 else "slow"  # a string is no number
    if rng.random() < 0.75:
        # Repeated values too: a sketch with Float32 centroids answers 0.0024999999441206455 for them.
        cost = Decimal("0.0025") if rng.random() < 0.3 else Decimal(rng.randint(0, 10**10)) / Decimal(10**12)
        metadata["_cost"] = {"amount": cost, "currency": "usd"}
    if name == "llm.call":
        prompt, completion = rng.randint(1, 4000), rng.randint(1, 1000)
        metadata["_llm"] = {"vendor": "acme", "model": "m1", "input_tokens": prompt, "output_tokens": completion,
                            "total_tokens": prompt + completion}
    if rng.random() < 0.3:
        metadata["a"] = {"b": {"c": round(rng.lognormvariate(0, 2), 6)}}
    return metadata


def generate(seed: int, count: int, instants: Sequence[datetime] = ()) -> list[dict[str, Any]]:
    """API events: uniform over the range and a little beyond, plus one on and one just before each instant."""
    rng = random.Random(seed)
    low = datetime.combine(START - timedelta(days=2), datetime.min.time(), UTC)
    high = datetime.combine(END + timedelta(days=3), datetime.min.time(), UTC)
    moments = [low + (high - low) * rng.random() for _ in range(count)]
    for instant in instants:
        moments += [instant, instant - timedelta(milliseconds=1)]
    events = []
    for moment in moments:
        name = rng.choice(NAMES)
        metadata = metadata_for(rng, name)
        events.append({
            "name": name,
            "timestamp": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "external_customer_id": f"cust-{rng.randint(0, 39)}",
            "external_id": f"evt-{seed}-{len(events)}",
            "metadata": metadata,
        })
    return events


def as_reference(event: dict[str, Any]) -> dict[str, Any]:
    metadata = json.loads(ENCODER.encode(event["metadata"]))  # decimals as the floats a client would read
    return {"id": event["external_id"], "name": event["name"], "customer": event["external_customer_id"],
            "timestamp": datetime.fromisoformat(event["timestamp"]), "metadata": metadata}


def ingest(api: TestClient, tenant: Tenant, events: list[dict[str, Any]]) -> dict[str, int]:
    response = api.post("/api/events/ingest", content=ENCODER.encode({"events": events}),
                        headers={**tenant.headers, "Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def dataset(api: TestClient) -> Dataset:
    tenant = create_tenant(api)
    events = generate(4, 2500, boundary_instants())
    random.Random(5).shuffle(events)  # back-dated events arrive after newer ones
    half = len(events) // 2
    for batch in (events[:half], events[half:]):
        assert ingest(api, tenant, batch) == {"inserted": len(batch), "duplicates": 0}
    # A producer's retry: all duplicates, counted nowhere.
    assert ingest(api, tenant, events[:300]) == {"inserted": 0, "duplicates": 300}
    costs = [(datetime.fromisoformat(e["timestamp"]), e["name"], e["metadata"]["_cost"]["amount"])
             for e in events if "_cost" in e["metadata"]]
    return Dataset(tenant, [as_reference(event) for event in events], costs)


# --------------------------------------------------------------------------------------------------------------
# Comparing with the brute force
# --------------------------------------------------------------------------------------------------------------


def request(api: TestClient, tenant: Tenant, **params: Any):
    query = [(key, item) for key, value in params.items() for item in (value if isinstance(value, list) else [value])]
    return api.get(PATH, params=query, headers=tenant.headers)


def statistics(api: TestClient, tenant: Tenant, **params: Any) -> tuple[dict[str, Any], str, str]:
    response = request(api, tenant, **params)
    assert response.status_code == 200, response.text
    return response.json(), response.headers[SOURCE_HEADER], response.headers[TOTALS_SOURCE_HEADER]


def close(got: float, want: float) -> bool:
    return math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)


def assert_stats(got: list[dict[str, Any]], want: list[dict[str, Any]], fields: Sequence[str], where: str) -> None:
    assert [s["name"] for s in got] == [s["name"] for s in want], where
    for mine, reference in zip(got, want):
        context = f"{where} {mine['name']}"
        assert (mine["occurrences"], mine["customers"]) == (reference["occurrences"], reference["customers"]), context
        for field in fields:
            assert close(mine["totals"][field], reference["totals"][field]), (context, field, "totals")
            assert close(mine["averages"][field], reference["averages"][field]), (context, field, "averages")
            for key, q in PERCENTILES.items():
                assert percentile_rank_ok(reference["_values"][field], q, mine[key][field]), (context, field, key)


def assert_matches(answer: dict[str, Any], reference: dict[str, Any], fields: Sequence[str], where: str) -> None:
    got = [(datetime.fromisoformat(p["timestamp"]), datetime.fromisoformat(p["period_end"])) for p in answer["periods"]]
    assert got == [(p["timestamp"], p["period_end"]) for p in reference["periods"]], where
    assert all(p["timestamp"].endswith("Z") for p in answer["periods"]), where
    for mine, expected in zip(answer["periods"], reference["periods"]):
        assert_stats(mine["stats"], expected["stats"], fields, f"{where} {mine['timestamp']}")
    assert_stats(answer["totals"], reference["totals"], fields, f"{where} totals")


def range_of(interval: str, zone: str) -> tuple[date, date]:
    if interval == "hour":
        return HOUR_WINDOWS[zone], HOUR_WINDOWS[zone] + timedelta(days=2)
    return START, END


def check(api: TestClient, data: Dataset, interval: str, zone: str, fields: list[str] = FIELDS,
          names: list[str] | None = None, customers: list[str] | None = None) -> tuple[str, str]:
    start, end = range_of(interval, zone)
    params: dict[str, Any] = {"start_date": start.isoformat(), "end_date": end.isoformat(), "interval": interval,
                              "timezone": zone, "aggregate_fields": fields}
    if names is not None:
        params["name"] = names
    if customers is not None:
        params["external_customer_id"] = customers
    answer, source, totals_source = statistics(api, data.tenant, **params)
    reference = timeseries(data.events, start, end, interval, zone, names, set(customers) if customers else None, fields)
    assert_matches(answer, reference, fields, f"{interval} {zone} via {source}")
    return source, totals_source


# --------------------------------------------------------------------------------------------------------------
# Every interval in every zone
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zone", ZONES)
def test_every_interval_matches_the_brute_force(api: TestClient, dataset: Dataset, zone: str) -> None:
    for interval in ("hour", "day", "week", "month", "year"):
        check(api, dataset, interval, zone)


def test_alias_answers_as_its_zone(api: TestClient, dataset: Dataset) -> None:
    params = {"start_date": "2026-10-01", "end_date": "2026-10-31", "interval": "day", "aggregate_fields": FIELDS}
    kolkata, _, _ = statistics(api, dataset.tenant, timezone="Asia/Kolkata", **params)
    calcutta, _, _ = statistics(api, dataset.tenant, timezone="Asia/Calcutta", **params)
    # Float sums and sketch merges follow the server's thread order, so only the exact parts are compared to
    # the unit here (the rest of each answer is checked against the brute force above).
    for answer in (kolkata, calcutta):
        for stats in [*answer["totals"], *(s for p in answer["periods"] for s in p["stats"])]:
            for key in ("averages", "p10", "p90", "p99"):
                stats.pop(key)
            stats["totals"] = stats["totals"]["_cost.amount"]
    assert kolkata == calcutta


def test_defaults_and_name_filter(api: TestClient, dataset: Dataset) -> None:
    # Default interval day, zone UTC, field _cost.amount; a requested name without events still has its zeros.
    answer, source, _ = statistics(api, dataset.tenant, start_date="2026-10-05", end_date="2026-10-11",
                                   name=["llm.call", "never.sent", "llm.call"])
    reference = timeseries(dataset.events, date(2026, 10, 5), date(2026, 10, 11), "day", "UTC",
                           ["llm.call", "never.sent"], None, ["_cost.amount"])
    assert_matches(answer, reference, ["_cost.amount"], "defaults")
    never = answer["periods"][0]["stats"][1]
    assert never == {"name": "never.sent", "occurrences": 0, "customers": 0, "totals": {"_cost.amount": 0},
                     "averages": {"_cost.amount": 0.0}, "p10": {"_cost.amount": 0.0},
                     "p90": {"_cost.amount": 0.0}, "p99": {"_cost.amount": 0.0}}
    assert source == "1d"


def test_cost_totals_are_exact_decimals(api: TestClient, dataset: Dataset) -> None:
    for zone, interval in (("UTC", "day"), ("Asia/Kathmandu", "week")):
        response = request(api, dataset.tenant, start_date=START.isoformat(), end_date=END.isoformat(),
                           interval=interval, timezone=zone)
        answer = json.loads(response.text, parse_float=Decimal)
        for period in answer["periods"]:
            start, end = datetime.fromisoformat(period["timestamp"]), datetime.fromisoformat(period["period_end"])
            for stats in period["stats"]:
                exact = sum((cost for moment, name, cost in dataset.costs
                             if start <= moment < end and name == stats["name"]), Decimal(0))
                assert Decimal(stats["totals"]["_cost.amount"]) == exact, (zone, period["timestamp"])


# --------------------------------------------------------------------------------------------------------------
# The planner: each branch, and every source agreeing
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("interval", "zone", "source", "totals_source"), [
    ("day", "UTC", "1d", "1d"),
    ("year", "UTC", "1d", "1d"),
    ("hour", "UTC", "1h", "1d"),
    ("day", "America/New_York", "1h", "1d+1h"),
    ("week", "America/New_York", "1d+1h", "1d+1h"),
    ("day", "Asia/Kolkata", "1h+15m", "1d+1h+15m"),
    ("week", "Asia/Kolkata", "1d+1h+15m", "1d+1h+15m"),
    ("hour", "Asia/Kathmandu", "15m", "1d+1h+15m"),
    ("hour", "Asia/Kolkata", "15m", "1d+1h+15m"),
])
def test_each_planner_branch(api: TestClient, dataset: Dataset, interval: str, zone: str, source: str,
                             totals_source: str) -> None:
    assert check(api, dataset, interval, zone) == (source, totals_source)


def test_customer_filter_reads_the_raw_table(api: TestClient, dataset: Dataset) -> None:
    assert check(api, dataset, "day", "Asia/Kathmandu", customers=["cust-3", "cust-7"]) == ("raw", "raw")
    assert check(api, dataset, "hour", "America/New_York", customers=["cust-11"], names=["llm.call"]) == ("raw", "raw")


def test_customer_id_filter_means_the_customers_events(api: TestClient, tenant: Tenant) -> None:
    # Events named this customer by its external id before it existed; by id they are the same customer's.
    # (A tenant of its own: creating a customer stores a system event, today, in the workspace.)
    events = generate(31, 300)
    ingest(api, tenant, events)
    created = api.post("/api/customers", json={"external_id": "cust-5"}, headers=tenant.headers)
    assert created.status_code == 201, created.text
    params = {"start_date": START.isoformat(), "end_date": END.isoformat(), "interval": "week",
              "timezone": "Europe/Berlin", "aggregate_fields": FIELDS}
    by_id, source, _ = statistics(api, tenant, customer_id=created.json()["id"], **params)
    reference = timeseries([as_reference(e) for e in events], START, END, "week", "Europe/Berlin", None, {"cust-5"},
                           FIELDS)
    assert_matches(by_id, reference, FIELDS, "customer_id")
    assert source == "raw"


def test_a_customer_named_by_id_and_by_an_external_id_it_is_given_later_is_one(api: TestClient,
                                                                                tenant: Tenant) -> None:
    # Events by its id and by an external id no customer had, numbered apart; then the customer is given that
    # external id (CONTRACT.md section 2: from then on one customer in every metric) and sends more by id.
    customer = api.post("/api/customers", json={"name": "Joined later"}, headers=tenant.headers).json()
    ingest(api, tenant, [
        {"name": "joined", "customer_id": customer["id"], "timestamp": "2026-10-07T10:00:00Z"},
        {"name": "joined", "external_customer_id": "late-x", "timestamp": "2026-10-07T11:00:00Z"},
        {"name": "joined", "external_customer_id": "someone-else", "timestamp": "2026-10-07T11:30:00Z"},
    ])
    patched = api.patch(f"/api/customers/{customer['id']}", json={"external_id": "late-x"}, headers=tenant.headers)
    assert patched.status_code == 200, patched.text
    ingest(api, tenant, [{"name": "joined", "customer_id": customer["id"], "timestamp": "2026-10-07T12:00:00Z"}])
    day = {"start_date": "2026-10-07", "end_date": "2026-10-07", "name": "joined"}
    for only, customers, source in [({}, 2, "1d"), ({"customer_id": customer["id"]}, 1, "raw")]:
        answer, used, _ = statistics(api, tenant, **day, **only)
        assert used == source
        [stats] = answer["periods"][0]["stats"]
        assert (stats["occurrences"], stats["customers"]) == (customers + 2, customers)
        assert answer["totals"][0]["customers"] == customers
    for only, customers in [({}, 2), ({"customer_id": customer["id"]}, 1)]:
        metrics = api.get("/api/metrics", params={"start_date": "2026-10-07", "end_date": "2026-10-07",
                                                  "metrics": "active_users", **only}, headers=tenant.headers)
        assert metrics.json()["totals"]["active_users"] == customers, (only, metrics.text)


@pytest.mark.parametrize(("interval", "zone"), [("week", "Asia/Kolkata"), ("day", "America/New_York"),
                                                ("hour", "Australia/Adelaide")])
def test_every_source_gives_the_same_answer(settings, dataset: Dataset, interval: str, zone: str) -> None:
    start, end = range_of(interval, zone)
    span = service.time_range(start.isoformat(), end.isoformat(), interval, zone)
    reference = timeseries(dataset.events, start, end, interval, zone, None, None, FIELDS)

    async def answers() -> list[tuple[str, dict[str, Any]]]:
        client = await connect(settings.clickhouse_url)
        try:
            found = []
            for grains, raw in ((("1d", "1h", "15m"), False), (("1h", "15m"), False), (("15m",), False), ((), True)):
                keys = None if not raw else [f"x:cust-{i}" for i in range(40)]
                answer = await service.timeseries(client, uuid.UUID(dataset.tenant.id), span, FIELDS,
                                                  customer_keys=keys, grains=grains or service.GRAINS)
                found.append((answer.periods_plan.label, json.loads(ENCODER.encode(answer.timeseries))))
            return found
        finally:
            await client.close()

    found = asyncio.run(answers())
    assert [label for label, _ in found][2:] == ["15m", "raw"]
    for label, answer in found:
        assert_matches(answer, reference, FIELDS, f"{interval} {zone} from {label}")
    # Counts and exact cost totals agree to the unit; float totals and percentiles agree within the checks above.
    exact = [[(s["occurrences"], s["customers"], s["totals"]["_cost.amount"]) for p in a["periods"] for s in p["stats"]]
             for _, a in found]
    assert all(each == exact[0] for each in exact[1:])


def kept_statistics(api: TestClient, tenant: Tenant, events: list[dict[str, Any]], zone: str) -> int:
    """The day series of `zone` over START..END checked against the brute force; how many of its percentiles were
    kept ones."""
    params = {"start_date": START.isoformat(), "end_date": END.isoformat(), "interval": "day", "timezone": zone,
              "aggregate_fields": FIELDS}
    response = request(api, tenant, **params)
    assert response.status_code == 200, response.text
    reference = timeseries([as_reference(e) for e in events], START, END, "day", zone, None, None, FIELDS)
    assert_matches(response.json(), reference, FIELDS, f"day {zone}, {response.headers[KEPT_HEADER]} kept")
    return int(response.headers[KEPT_HEADER])


# Zones whose days are not UTC days: whole-hour and DST (New York), :30 (Kolkata), :45 (Kathmandu), and Lord Howe,
# whose DST moves its clocks by 30 minutes (its 2026-10-04 is 23.5 hours long).
@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe"])
def test_past_local_days_are_kept_merged_and_late_events_merge_their_day_again(
    api: TestClient, tenant: Tenant, zone: str
) -> None:
    events = generate(21, 400)
    ingest(api, tenant, events)
    assert kept_statistics(api, tenant, events, zone) == 0
    # Every (field, name, day) with values, all days being over: the next request finds every one kept.
    before = days_with_values(events, zone)
    assert kept_statistics(api, tenant, events, zone) == len(before)
    # Back-dated events into kept days: the states they add values to hold fewer than the rollups now, so those
    # merge from the rollups again (the brute force sees the new values), then are kept anew.
    late = [{**event, "name": "llm.call", "timestamp": f"2026-10-{14 + i % 3}T16:00:00.000Z",
             "metadata": {"duration_ms": 1e7}} for i, event in enumerate(generate(22, 20))]
    ingest(api, tenant, late)
    events += late
    touched = days_with_values(late, zone)
    assert kept_statistics(api, tenant, events, zone) == len(before - touched)
    assert kept_statistics(api, tenant, events, zone) == len(days_with_values(events, zone))


def days_with_values(events: list[dict[str, Any]], zone: str) -> set[tuple[str, str, date]]:
    """(field, name, local day) of START..END with a number at that field."""
    found = set()
    for event in events:
        day = datetime.fromisoformat(event["timestamp"]).astimezone(ZoneInfo(zone)).date()
        for field in FIELDS:
            value = leaf(event["metadata"], field)
            if START <= day <= END and isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
                found.add((field, event["name"], day))
    return found


def leaf(metadata: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        if not isinstance(metadata, dict) or key not in metadata:
            return None
        metadata = metadata[key]
    return metadata


def test_a_day_after_a_skipped_one_is_kept_once(api: TestClient, tenant: Tenant, settings) -> None:
    # Apia went from 2011-12-29 to 2011-12-31 (UTC-10 to UTC+14): its 30th is an empty period starting where the
    # 31st does, and the 31st is kept, found and read like any other day.
    events = [{"name": "apia", "timestamp": f"2011-12-{day}T{hour:02d}:00:00Z", "external_customer_id": "c",
               "metadata": {"duration_ms": day * 100 + hour}} for day in (29, 30, 31) for hour in range(0, 24, 3)]
    ingest(api, tenant, events)
    params = {"start_date": "2011-12-28", "end_date": "2012-01-01", "interval": "day", "timezone": "Pacific/Apia",
              "aggregate_fields": ["duration_ms"]}
    kept = [request(api, tenant, **params).headers[KEPT_HEADER] for _ in range(3)]
    reference = timeseries([as_reference({**e, "external_id": str(i)}) for i, e in enumerate(events)],
                           date(2011, 12, 28), date(2012, 1, 1), "day", "Pacific/Apia", None, None, ["duration_ms"])
    assert_matches(request(api, tenant, **params).json(), reference, ["duration_ms"], "Apia")
    days = {datetime.fromisoformat(e["timestamp"]).astimezone(ZoneInfo("Pacific/Apia")).date() for e in events}
    assert kept == ["0", str(len(days)), str(len(days))]
    rows = run_sql(settings.clickhouse_url, "SELECT count() FROM field_period_quantiles WHERE workspace_id = {w:UUID}",
                   {"w": tenant.id})
    assert rows == [(len(days),)]


def test_kept_quantiles_gone_before_they_are_read_are_merged_from_the_rollups(tenant: Tenant, api: TestClient,
                                                                          settings) -> None:
    # Kept again with a larger count by another request, the row this request matched can be merged away before
    # its read: that day is read from the rollups instead.
    events = generate(23, 200)
    ingest(api, tenant, events)
    span = service.time_range(START.isoformat(), END.isoformat(), "day", "America/New_York")
    reference = timeseries([as_reference(e) for e in events], START, END, "day", "America/New_York", None, None,
                           FIELDS)

    class KeptGoneBeforeItsRead:
        """The store, where the tenant's kept quantiles are deleted just before the read that matches them."""

        def __init__(self, client) -> None:
            self.client = client

        async def query(self, sql: str, **arguments):
            if "FROM kept" in sql:
                await self.client.command("DELETE FROM field_period_quantiles WHERE workspace_id = {w:UUID}",
                                          parameters={"w": tenant.id})
            return await self.client.query(sql, **arguments)

        def __getattr__(self, name: str):
            return getattr(self.client, name)

    async def answers() -> list[tuple[int, dict[str, Any]]]:
        client = await connect(settings.clickhouse_url)
        try:
            found = []
            for store in (client, client, KeptGoneBeforeItsRead(client)):
                answer = await service.timeseries(store, uuid.UUID(tenant.id), span, FIELDS)
                found.append((answer.kept, json.loads(ENCODER.encode(answer.timeseries))))
            return found
        finally:
            await client.close()

    (first, _), (second, _), (third, answer) = asyncio.run(answers())
    assert first == 0 and second > 0 and third == 0
    assert_matches(answer, reference, FIELDS, "states gone")


def test_a_day_not_over_is_not_kept(api: TestClient, tenant: Tenant, settings) -> None:
    now = datetime.now(UTC)
    ingest(api, tenant, [{"name": "today", "timestamp": (now - ago).isoformat(), "external_customer_id": "c",
                          "metadata": {"duration_ms": 5}} for ago in (timedelta(minutes=1), timedelta(days=2))])
    today = now.astimezone(ZoneInfo("America/New_York")).date()
    params = {"start_date": (today - timedelta(days=3)).isoformat(), "end_date": today.isoformat(),
              "interval": "day", "timezone": "America/New_York", "aggregate_fields": ["duration_ms"]}
    assert [request(api, tenant, **params).headers[KEPT_HEADER] for _ in range(2)] == ["0", "1"]

    [(end,)] = run_sql(settings.clickhouse_url,
                       "SELECT period_end FROM field_period_quantiles WHERE workspace_id = {w:UUID}", {"w": tenant.id})
    assert end <= now


def test_planner_covers_each_period_exactly() -> None:
    span = service.time_range("2026-10-01", "2026-10-07", "day", "Asia/Kathmandu")
    buckets = service.periods(span)
    assert service.plan([(b.start, b.end) for b in buckets]).grains == ("1h", "15m")
    assert service.plan([(buckets[0].start, buckets[-1].end)]).grains == ("1d", "1h", "15m")
    assert service.plan([(b.start, b.end) for b in buckets], raw=True).grains == ("raw",)
    utc = service.periods(service.time_range("2026-10-01", "2026-12-31", "month", "UTC"))
    assert service.plan([(b.start, b.end) for b in utc]).grains == ("1d",)


# --------------------------------------------------------------------------------------------------------------
# Tenancy and validation
# --------------------------------------------------------------------------------------------------------------


def test_another_workspace_never_shows(api: TestClient, tenant: Tenant, other_tenant: Tenant) -> None:
    mine = generate(11, 60)
    theirs = generate(12, 90)
    ingest(api, tenant, mine)
    ingest(api, other_tenant, theirs)
    for _ in range(2):  # theirs kept, for the kept days of New York below
        statistics(api, other_tenant, start_date=START.isoformat(), end_date=END.isoformat(), interval="day",
                   timezone="America/New_York", aggregate_fields=FIELDS)
    for zone, interval in (("UTC", "day"), ("Asia/Kolkata", "week"), ("America/New_York", "day"),
                           ("America/New_York", "day")):
        answer, _, _ = statistics(api, tenant, start_date=START.isoformat(), end_date=END.isoformat(),
                                  interval=interval, timezone=zone, aggregate_fields=FIELDS)
        reference = timeseries([as_reference(e) for e in mine], START, END, interval, zone, None, None, FIELDS)
        assert_matches(answer, reference, FIELDS, f"tenant {zone}")
    foreign = api.get(PATH, params={"start_date": "2026-10-01", "end_date": "2026-10-02",
                                    "workspace_id": other_tenant.id}, headers=tenant.headers)
    assert foreign.status_code == 404
    viewer = api.get(PATH, params={"start_date": "2026-10-01", "end_date": "2026-10-02"},
                     headers={"Authorization": f"Bearer {tenant.viewer}"})
    assert viewer.status_code == 200, viewer.text


@pytest.mark.parametrize(("params", "field"), [
    ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
    ({"timezone": "../../etc/passwd"}, "timezone"),
    ({"interval": "minute"}, "interval"),
    ({"start_date": "2026-10-05", "end_date": "2026-10-04"}, "end_date"),
    ({"interval": "hour", "start_date": "2026-10-01", "end_date": "2026-11-01"}, "end_date"),
    ({"interval": "day", "start_date": "2020-01-01", "end_date": "2026-01-01"}, "end_date"),
    ({"start_date": "yesterday"}, "start_date"),
    ({"start_date": None}, "start_date"),
    ({"end_date": "1900-01-01"}, "end_date"),
    ({"customer_id": "not-a-uuid"}, "customer_id"),
    ({"aggregate_fields": "a..b"}, "aggregate_fields"),
])
def test_invalid_parameters_are_422(api: TestClient, tenant: Tenant, params: dict[str, Any], field: str) -> None:
    query = {"start_date": "2026-10-01", "end_date": "2026-10-03", **params}
    response = api.get(PATH, params={k: v for k, v in query.items() if v is not None}, headers=tenant.headers)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["status_code"] == 422 and body["extra"][0]["field"] == field, body


def test_hour_limit_is_exposed_and_inclusive(api: TestClient, tenant: Tenant) -> None:
    assert service.RANGE_LIMITS["hour"] == 31
    ok = api.get(PATH, params={"start_date": "2026-10-01", "end_date": "2026-10-31", "interval": "hour"},
                 headers=tenant.headers)
    assert ok.status_code == 200 and len(ok.json()["periods"]) == 31 * 24


# --------------------------------------------------------------------------------------------------------------
# The migration backfills rollups of a table that already holds events
# --------------------------------------------------------------------------------------------------------------


def event_row(workspace_id: uuid.UUID, event: dict[str, Any], numbers: dict[str, int] | None = None) -> list[Any]:
    """The columns the ingest route fills, for an event inserted straight into ClickHouse: those of
    EVENT_COLUMNS, and its customer's number after them when `numbers` is given."""
    metadata = event["metadata"]
    leaves: dict[str, float] = {}
    strings: dict[str, str] = {}
    booleans: dict[str, bool] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, bool):
                booleans[prefix + key] = value
            elif isinstance(value, (int, float, Decimal)):
                leaves[prefix + key] = float(value)
            elif isinstance(value, str):
                strings[prefix + key] = value

    walk(metadata, "")
    event_id = uuid.uuid4()
    cost = metadata.get("_cost", {}).get("amount", Decimal(0))
    key = f"x:{event['external_customer_id']}"
    row = [workspace_id, event_id, event["name"], datetime.fromisoformat(event["timestamp"]), datetime.now(UTC),
           "user", key, None, event["external_customer_id"], event["external_id"],
           event["external_id"], None, event_id, 0, ENCODER.encode(metadata).decode(), leaves, strings, booleans,
           cost, metadata.get("_llm", {}).get("total_tokens", 0)]
    return row if numbers is None else [*row, numbers[key]]


EVENT_COLUMNS = ["workspace_id", "id", "name", "timestamp", "ingested_at", "source", "customer_key", "customer_id",
                 "external_customer_id", "external_id", "dedup_key", "parent_id", "root_id", "depth", "metadata",
                 "num", "str", "bool", "cost_amount", "llm_total_tokens"]


@pytest.fixture
def schema_copy(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "schema"
    directory.mkdir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_migration_backfills_existing_events(clickhouse_url: str, schema_copy: Path) -> None:
    database = f"backfill_{uuid.uuid4().hex[:8]}"
    workspace_id = uuid.uuid4()
    events = generate(21, 400)
    for index, event in enumerate(events):  # for the share column (0013): string share ids, and a number
        if index % 3:
            event["metadata"]["share_id"] = f"sh-{index % 7}" if index % 3 == 1 else index
            event["metadata"]["price_cents"] = index % 5 - 2  # of every sign, for the share sets by sign (0015)
    first, later = migration_files()[:2], migration_files()[2:]
    for path in first:
        shutil.copy(path, schema_copy / path.name)

    async def scenario() -> list[tuple[str, dict[str, Any]]]:
        admin = await connect(clickhouse_url)
        await admin.command(f"CREATE DATABASE {database}")
        client = await connect(with_database(clickhouse_url, database))
        try:
            await migrate(client, schema_copy)
            await client.insert("events", [event_row(workspace_id, e) for e in events[:300]], column_names=EVENT_COLUMNS)
            for path in later:
                shutil.copy(path, schema_copy / path.name)
            assert await migrate(client, schema_copy) == [path.name for path in later]
            # Events after the migration reach the rollups through the views, with their customers' numbers:
            # those of the customers numbered by the migration, and new ones.
            keys = {f"x:{e['external_customer_id']}" for e in events[300:]}
            numbers = await CustomerNumbers(client, LocalClaims()).of(workspace_id, keys)
            await client.insert("events", [event_row(workspace_id, e, numbers) for e in events[300:]],
                                column_names=[*EVENT_COLUMNS, "customer_number"])
            # The listing's table (0009) holds both: the backfilled events and those written since.
            listed = await client.query("SELECT count(), uniqExact(id) FROM events_by_time")
            assert listed.result_rows == [(len(events), len(events))]
            # So does the customers' table (0010), each customer's events under its key.
            per_customer = ("SELECT customer_key, count(), sum(llm_total_tokens) FROM {table} "
                            "GROUP BY customer_key ORDER BY customer_key")
            by_customer = (await client.query(per_customer.format(table="events_by_customer"))).result_rows
            assert by_customer == (await client.query(per_customer.format(table="events"))).result_rows
            assert sum(row[1] for row in by_customer) == len(events)
            # Metadata filters of the listings match the leaves' hashes (0012), on backfilled rows as on new ones.
            sample = next(e["metadata"]["duration_ms"] for e in events if e["metadata"]["duration_ms"] != "slow")
            for path, value in (("flag", "true"), ("flag", "false"), ("duration_ms", "slow"),
                                ("duration_ms", str(sample)), ("_cost.currency", "usd"), ("nothing", "1")):
                where = EventFilter()
                where.add_metadata_match(path, value)
                found = await client.query(f"SELECT count() FROM events_by_time WHERE {where.sql}",
                                           parameters=where.parameters)
                expected = sum(1 for e in events if meta_matches(e["metadata"], path, value))
                assert found.result_rows[0][0] == expected, (path, value)
            # The share column (0013) holds each event's string share_id, NULL for a number or none.
            shares = await client.query("SELECT external_id, share_id FROM events ORDER BY external_id")
            assert shares.result_rows == sorted(
                (e["external_id"], share if isinstance(share := e["metadata"].get("share_id"), str) else None)
                for e in events)
            # Shares got dense numbers (0014), one per string share id (0 without), and the share sets hold the
            # numbers of each name and day.
            numbered = await client.query(
                "SELECT share_id, groupUniqArray(share_number) FROM events WHERE external_id IN {ids:Array(String)} "
                "GROUP BY share_id", parameters={"ids": [e["external_id"] for e in events[:300]]})
            by_share = {share: numbers for share, numbers in numbered.result_rows}
            assert by_share.pop(None) == [0]
            assert all(len(numbers) == 1 for numbers in by_share.values())
            assert sorted(numbers[0] for numbers in by_share.values()) == list(range(1, len(by_share) + 1))
            sets = await client.query("SELECT name, bucket, arraySort(bitmapToArray(groupBitmapMergeState(shares))) "
                                      "FROM share_sets_1d GROUP BY ALL ORDER BY ALL")
            raw_sets = await client.query("SELECT name, toStartOfDay(timestamp) AS bucket, arraySort(groupUniqArray("
                                          "share_number)) FROM events WHERE share_number > 0 GROUP BY ALL ORDER BY ALL")
            assert sets.result_rows == raw_sets.result_rows and sets.result_rows
            # So do the sets by numeric field and sign (0015).
            sets = await client.query("SELECT name, field, sign, bucket, arraySort(bitmapToArray("
                                      "groupBitmapMergeState(shares))) FROM share_field_sets_1d GROUP BY ALL ORDER BY ALL")
            raw_sets = await client.query(
                "SELECT name, field, toInt8(sign(value)), toStartOfDay(timestamp) AS bucket, arraySort(groupUniqArray("
                "share_number)) FROM events ARRAY JOIN CAST(mapKeys(num), 'Array(String)') AS field, mapValues(num) "
                "AS value WHERE share_number > 0 GROUP BY ALL ORDER BY ALL")
            assert sets.result_rows == raw_sets.result_rows and {row[2] for row in sets.result_rows} == {-1, 0, 1}
            # The dedup keys (0016) of every event, by id and external id: the backfilled events' and those
            # written since; the MergeTree key table is gone.
            stored = (await client.query("SELECT id, external_id FROM events")).result_rows
            expected_keys = {key: (event_id, event_id, 0) for event_id, external_id in stored
                             for key in (f"i:{event_id}", f"x:{external_id}")}
            found_keys = await stored_keys(client, workspace_id, [*expected_keys, "x:never-stored"])
            assert found_keys == expected_keys and len(found_keys) == 2 * len(events)
            key_tables = await client.query("SELECT name FROM system.tables WHERE database = currentDatabase() "
                                            "AND name LIKE 'event_keys%' ORDER BY name")
            assert key_tables.result_rows == [("event_keys_kv",), ("event_keys_kv_mv",)]
            # Which takes inserts as writes to its memtable, not as ready-made files without filters (0017).
            engine = await client.query("SELECT engine_full FROM system.tables WHERE database = currentDatabase() "
                                        "AND name = 'event_keys_kv'")
            assert "optimize_for_bulk_insert = 0" in engine.result_rows[0][0]
            # And the customers' usage cells (0011): each event once in cells of every size.
            cells = ("SELECT days, customer_key, name, sum(events), sum(cost_amount), sum(llm_total_tokens) "
                     "FROM customer_usage GROUP BY ALL ORDER BY ALL")
            per_name = ("SELECT customer_key, name, count(), sum(cost_amount), sum(llm_total_tokens) FROM events "
                        "GROUP BY ALL ORDER BY ALL")
            expected = (await client.query(per_name)).result_rows
            assert (await client.query(cells)).result_rows == [(days, *row) for days in (1, 7, 28) for row in expected]
            found = []
            for interval, zone in (("day", "UTC"), ("week", "Asia/Kolkata")):
                span = service.time_range(START.isoformat(), END.isoformat(), interval, zone)
                answer = await service.timeseries(client, workspace_id, span, FIELDS)
                found.append((f"{interval} {zone} {answer.periods_plan.label}",
                              json.loads(ENCODER.encode(answer.timeseries))))
            return found
        finally:
            await client.close()
            await admin.command(f"DROP DATABASE IF EXISTS {database}")
            await admin.close()

    reference_events = [as_reference(e) for e in events]
    for where, answer in asyncio.run(scenario()):
        interval, zone = where.split()[:2]
        reference = timeseries(reference_events, START, END, interval, zone, None, None, FIELDS)
        assert_matches(answer, reference, FIELDS, where)
