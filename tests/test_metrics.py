"""CONTRACT.md section 4: the metrics dashboard, every metric checked against tests/bruteforce.py over generated
file-sharing events ingested through the API, per interval, in UTC and two non-UTC zones, with and without filters."""

from __future__ import annotations

import asyncio
import json
import math
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from app.metrics import queries, service
from app.metrics.catalog import CATALOG
from app.metrics.routes import SOURCE_HEADER
from app.statistics.service import RAW, RANGE_LIMITS, time_range
from app.warehouse.client import connect
from tests.bruteforce import FILE_SHARE_SLUGS, file_share_metrics, periods
from tests.conftest import Tenant, create_tenant

PATH = "/api/metrics"
START, END = date(2026, 9, 28), date(2026, 11, 8)  # Monday to Sunday, New York's fall-back on 2026-11-01
ZONES = ("UTC", "America/New_York", "Asia/Kolkata")
HOUR_START = date(2026, 10, 31)  # three local days around New York's DST change
ENCODER = msgspec.json.Encoder(decimal_format="number")
CUSTOMERS = [f"cust-{n}" for n in range(8)]


@dataclass
class Dataset:
    tenant: Tenant
    events: list[dict[str, Any]]  # as tests/bruteforce.py wants them
    plain_customer: str  # the UUID of a customer without external id, its events sent by customer_id
    linked_customer: str  # the UUID of a customer whose external id is CUSTOMERS[1]


# --------------------------------------------------------------------------------------------------------------
# Generated events
# --------------------------------------------------------------------------------------------------------------


def stamp(instant: datetime) -> str:
    return instant.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def boundaries() -> list[datetime]:
    """Local midnights of every zone: an event on one and a millisecond before it catch a misplaced bucket."""
    instants = set()
    for zone in ZONES:
        for start, end in periods(START, END, "day", zone):
            instants.update((start, end))
    return sorted(instants)


def cost(rng: random.Random) -> dict[str, Any]:
    return {"amount": Decimal(rng.randint(0, 10**9)) / Decimal(10**12), "currency": "usd"}


def generate(seed: int, plain_customer: str) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    low = datetime.combine(START - timedelta(days=25), datetime.min.time(), UTC)  # shares long before start_date
    high = datetime.combine(END + timedelta(days=2), datetime.min.time(), UTC)
    events: list[dict[str, Any]] = []

    def add(name: str, moment: datetime, metadata: dict[str, Any], customer: str) -> None:
        who = {"customer_id": plain_customer} if customer == plain_customer else {"external_customer_id": customer}
        if rng.random() < 0.2:
            metadata = {**metadata, "_cost": cost(rng)}
        events.append({"name": name, "timestamp": stamp(moment), "external_id": f"e-{seed}-{len(events)}",
                       "metadata": metadata, **who})

    share_moments = [low + (high - low) * rng.random() for _ in range(220)] + boundaries()[::3]
    for number, created in enumerate(share_moments):
        share = f"s-{number}"
        customer = rng.choice([*CUSTOMERS, plain_customer])
        price = 0 if rng.random() < 0.45 else rng.randint(50, 5000)
        metadata: dict[str, Any] = {"share_id": share, "price_cents": price, "size_bytes": rng.randint(1, 10**7)}
        if number % 37 == 5:
            del metadata["price_cents"]  # neither free nor paid
        add("file_share.created", created, metadata, customer)
        for _ in range(rng.randint(0, 5)):
            add("file_share.downloaded", created + timedelta(hours=rng.uniform(0, 200)),
                {"share_id": share, "bytes": rng.randint(0, 10**8)}, rng.choice(CUSTOMERS))
        end = rng.random()
        if number >= 220 and number % 2 == 0:
            # Ends exactly on the next local midnight: an ended share is no longer active at that period's end.
            add("file_share.completed", created + timedelta(days=1), {"share_id": share}, customer)
        elif end < 0.4:
            add("file_share.completed", created + timedelta(hours=rng.uniform(0, 300)), {"share_id": share}, customer)
        elif end < 0.65:
            add("file_share.expired", created + timedelta(hours=rng.uniform(0, 300)), {"share_id": share}, customer)
        if price and rng.random() < 0.6:
            # Often days later, in a later period than the share; sometimes paid under another customer.
            payer = customer if rng.random() < 0.8 else rng.choice(CUSTOMERS)
            add("file_share.payment_completed", created + timedelta(hours=rng.uniform(0, 240)),
                {"share_id": share, "amount_cents": price, "platform_fee_cents": round(price * 0.1, 2)}, payer)
    # Costs on events that are not file sharing at all, some exactly on a period boundary.
    moments = [low + (high - low) * rng.random() for _ in range(400)]
    moments += [edge + shift for edge in boundaries() for shift in (timedelta(0), timedelta(milliseconds=-1))]
    for moment in moments:
        add("api.request", moment, {"_cost": cost(rng), "duration_ms": rng.randint(1, 900)}, rng.choice(CUSTOMERS))
    return events


def as_reference(event: dict[str, Any]) -> dict[str, Any]:
    metadata = json.loads(ENCODER.encode(event["metadata"]))  # decimals as the floats a client would read
    customer = event.get("external_customer_id") or event["customer_id"]
    return {"id": event["external_id"], "name": event["name"], "customer": customer,
            "timestamp": datetime.fromisoformat(event["timestamp"]), "metadata": metadata}


def ingest(api: TestClient, tenant: Tenant, events: list[dict[str, Any]]) -> None:
    response = api.post("/api/events/ingest", content=ENCODER.encode({"events": events}),
                        headers={**tenant.headers, "Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json() == {"inserted": len(events), "duplicates": 0}


def create_customer(api: TestClient, tenant: Tenant, external_id: str | None) -> str:
    response = api.post("/api/customers", json={"external_id": external_id}, headers=tenant.headers)
    assert response.status_code in (200, 201), response.text
    return response.json()["id"]


@pytest.fixture(scope="module")
def dataset(api: TestClient) -> Dataset:
    tenant = create_tenant(api)
    plain = create_customer(api, tenant, None)
    linked = create_customer(api, tenant, CUSTOMERS[1])
    events = generate(11, plain)
    random.Random(12).shuffle(events)
    half = len(events) // 2
    ingest(api, tenant, events[:half])
    ingest(api, tenant, events[half:])
    return Dataset(tenant, [as_reference(event) for event in events], plain, linked)


# --------------------------------------------------------------------------------------------------------------
# Comparing with the brute force
# --------------------------------------------------------------------------------------------------------------


def get(api: TestClient, tenant: Tenant, **params: Any):
    query = [(key, item) for key, value in params.items() for item in (value if isinstance(value, list) else [value])]
    return api.get(PATH, params=query, headers=tenant.headers)


def close(got: float, want: float) -> bool:
    return math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)


def range_of(interval: str) -> tuple[date, date]:
    return (HOUR_START, HOUR_START + timedelta(days=2)) if interval == "hour" else (START, END)


def assert_matches(answer: dict[str, Any], reference: dict[str, Any], where: str) -> None:
    assert [p["timestamp"] for p in answer["periods"]] == [stamp(p["timestamp"]).replace(".000Z", "Z")
                                                           for p in reference["periods"]], where
    for mine, expected in zip(answer["periods"], reference["periods"]):
        for slug in FILE_SHARE_SLUGS:
            assert close(mine[slug], expected[slug]), (where, mine["timestamp"], slug, mine[slug], expected[slug])
    for slug in FILE_SHARE_SLUGS:
        assert close(answer["totals"][slug], reference["totals"][slug]), (where, "totals", slug)


def check(api: TestClient, data: Dataset, interval: str, zone: str, shares: list[str] | None = None,
          external: list[str] | None = None, customer_ids: list[str] | None = None,
          customers: set[str] | None = None, source: str | None = None) -> dict[str, Any]:
    start, end = range_of(interval)
    params: dict[str, Any] = {"start_date": start.isoformat(), "end_date": end.isoformat(), "interval": interval,
                              "timezone": zone}
    if shares is not None:
        params["share_id"] = shares
    if external is not None:
        params["external_customer_id"] = external
    if customer_ids is not None:
        params["customer_id"] = customer_ids
    response = get(api, data.tenant, **params)
    assert response.status_code == 200, response.text
    answer = response.json()
    reference = file_share_metrics(data.events, start, end, interval, zone, set(shares) if shares else None,
                                   customers, datetime.now(UTC))
    where = f"{interval} {zone} shares={shares} customers={customers}"
    assert_matches(answer, reference, where)
    if source is not None:
        assert response.headers[SOURCE_HEADER] == source, where
    return answer


# --------------------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("interval", ["hour", "day", "week", "month", "year"])
def test_every_metric_matches_the_brute_force(api: TestClient, dataset: Dataset, interval: str, zone: str) -> None:
    answer = check(api, dataset, interval, zone)
    assert set(answer["metrics"]) == set(FILE_SHARE_SLUGS)
    # The data set is not degenerate: each metric is nonzero somewhere, so a metric stuck at 0 fails.
    if interval != "hour":
        assert all(answer["totals"][slug] for slug in FILE_SHARE_SLUGS), answer["totals"]


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("interval", ["day", "week"])
def test_filters(api: TestClient, dataset: Dataset, interval: str, zone: str) -> None:
    shares = [f"s-{n}" for n in range(0, 220, 3)]
    # The rollups keep neither shares nor customers: filtered requests read the raw table.
    check(api, dataset, interval, zone, shares=shares, source="raw")
    check(api, dataset, interval, zone, external=CUSTOMERS[2:4], customers=set(CUSTOMERS[2:4]), source="raw")
    # By customer UUID: its events under its external id, and those sent by id for one without.
    check(api, dataset, interval, zone, customer_ids=[dataset.linked_customer, dataset.plain_customer],
          customers={CUSTOMERS[1], dataset.plain_customer}, source="raw")
    check(api, dataset, interval, zone, shares=shares, external=[CUSTOMERS[0]], customers={CUSTOMERS[0]},
          source="raw")


@pytest.mark.parametrize(("interval", "zone", "source"), [
    ("day", "UTC", "1d"),
    ("month", "UTC", "1d"),
    ("hour", "UTC", "1h"),
    ("day", "America/New_York", "1h"),
    ("week", "America/New_York", "1d+1h"),
    ("day", "Asia/Kolkata", "1h+15m"),
    ("week", "Asia/Kolkata", "1d+1h+15m"),
    ("hour", "Asia/Kolkata", "15m"),
])
def test_each_planner_branch(api: TestClient, dataset: Dataset, interval: str, zone: str, source: str) -> None:
    check(api, dataset, interval, zone, source=source)


@pytest.mark.parametrize(("interval", "zone"), [("week", "Asia/Kolkata"), ("day", "America/New_York"),
                                                ("hour", "UTC")])
def test_every_source_gives_the_same_answer(settings, dataset: Dataset, interval: str, zone: str) -> None:
    start, end = range_of(interval)
    span = time_range(start.isoformat(), end.isoformat(), interval, zone)
    reference = file_share_metrics(dataset.events, start, end, interval, zone, None, None, datetime.now(UTC))

    async def answers() -> list[tuple[str, dict[str, Any]]]:
        client = await connect(settings.clickhouse_url)
        try:
            found = []
            for grains in (("1d", "1h", "15m"), ("1h", "15m"), ("15m",), RAW):
                answer, source = await service.dashboard(client, uuid.UUID(dataset.tenant.id), span, CATALOG,
                                                         grains=grains)
                found.append((source, json.loads(ENCODER.encode(answer))))
            return found
        finally:
            await client.close()

    found = asyncio.run(answers())
    assert [source for source, _ in found][2:] == ["15m", "raw"]
    for source, answer in found:
        assert_matches(answer, reference, f"{interval} {zone} from {source}")
    # Counts and exact costs agree to the unit whatever the source.
    exact = [[(row["file_share_sessions"], row["paid_file_shares"], row["active_users"], row["costs"])
              for row in answer["periods"]] for _, answer in found]
    assert all(each == exact[0] for each in exact[1:])


@pytest.mark.parametrize(("interval", "zone"), [("day", "America/New_York"), ("hour", "Asia/Kolkata"),
                                                ("month", "UTC")])
def test_raw_rows_find_their_period_by_slot_as_by_search(settings, dataset: Dataset, monkeypatch, interval: str,
                                                         zone: str) -> None:
    """The raw table's rows find their period in an array of slots where the bounds allow; the search of the
    period starts gives the same answer, and both the brute force's."""
    start, end = range_of(interval)
    span = time_range(start.isoformat(), end.isoformat(), interval, zone)
    reference = file_share_metrics(dataset.events, start, end, interval, zone, None, None, datetime.now(UTC))

    async def answer() -> dict[str, Any]:
        client = await connect(settings.clickhouse_url)
        try:
            found, _ = await service.dashboard(client, uuid.UUID(dataset.tenant.id), span, CATALOG, grains=RAW)
            return json.loads(ENCODER.encode(found))
        finally:
            await client.close()

    by_slot = asyncio.run(answer())
    monkeypatch.setattr(queries, "MAX_SLOTS", 0)
    by_search = asyncio.run(answer())
    assert_matches(by_slot, reference, f"{interval} {zone} by slot")
    assert_matches(by_search, reference, f"{interval} {zone} by search")
    # Counts and exact costs agree to the unit (float sums may differ in their last digits with the order).
    exact = [[(row["file_share_sessions"], row["file_share_downloads"], row["paid_file_shares"], row["costs"])
              for row in answer["periods"]] for answer in (by_slot, by_search)]
    assert exact[0] == exact[1]


def test_active_sessions_count_shares_created_before_start(api: TestClient, dataset: Dataset) -> None:
    answer = check(api, dataset, "day", "UTC")
    first = answer["periods"][0]
    assert first["active_sessions"] > first["file_share_sessions"]


def test_selection_and_descriptions(api: TestClient, dataset: Dataset) -> None:
    response = get(api, dataset.tenant, start_date=START.isoformat(), end_date=END.isoformat(), interval="week",
                   metrics=["cashflow", "payment_conversion_rate", "cumulative_costs"])
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["metrics"] == {
        "cashflow": {"slug": "cashflow", "display_name": "Cashflow", "type": "currency"},
        "payment_conversion_rate": {"slug": "payment_conversion_rate", "display_name": "Payment conversion rate",
                                    "type": "percentage"},
        "cumulative_costs": {"slug": "cumulative_costs", "display_name": "Cumulative costs", "type": "currency"},
    }
    for row in answer["periods"]:
        assert set(row) == {"timestamp", "cashflow", "payment_conversion_rate", "cumulative_costs"}
    assert set(answer["totals"]) == {"cashflow", "payment_conversion_rate", "cumulative_costs"}
    full = check(api, dataset, "week", "UTC")
    assert answer["totals"] == {slug: full["totals"][slug] for slug in answer["totals"]}
    assert len(CATALOG) == 21 and {metric.slug for metric in CATALOG} == set(FILE_SHARE_SLUGS)


def test_every_role_reads_the_dashboard(api: TestClient, dataset: Dataset) -> None:
    for token in (dataset.tenant.admin, dataset.tenant.member, dataset.tenant.viewer):
        response = api.get(PATH, params={"start_date": "2026-10-01", "end_date": "2026-10-02"},
                           headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        assert api.get(f"{PATH}/limits", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert api.get(PATH, params={"start_date": "2026-10-01", "end_date": "2026-10-02"},
                   headers={"Authorization": "Bearer nope"}).status_code == 401


def test_limits(api: TestClient, tenant: Tenant) -> None:
    response = api.get(f"{PATH}/limits", headers=tenant.headers)
    assert response.status_code == 200, response.text
    limits = {item["interval"]: item["max_days"] for item in response.json()["limits"]}
    assert limits == RANGE_LIMITS
    for interval, days in limits.items():
        start = date(2020, 1, 1)
        ok = get(api, tenant, start_date=start.isoformat(), interval=interval,
                 end_date=(start + timedelta(days=days - 1)).isoformat(), metrics=["file_share_sessions"])
        assert ok.status_code == 200, (interval, ok.text)
        over = get(api, tenant, start_date=start.isoformat(), interval=interval,
                   end_date=(start + timedelta(days=days)).isoformat())
        assert over.status_code == 422, (interval, over.text)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"interval": "fortnight"}, "interval"),
        ({"start_date": "2026-10-05", "end_date": "2026-10-01"}, "end_date"),
        ({"start_date": "yesterday"}, "start_date"),
        ({"start_date": None}, "start_date"),
        ({"metrics": ["file_share_sessions", "unicorns"]}, "metrics"),
        ({"customer_id": "not-a-uuid"}, "customer_id"),
    ],
)
def test_invalid_parameters(api: TestClient, tenant: Tenant, params: dict[str, Any], field: str) -> None:
    query = {"start_date": "2026-10-01", "end_date": "2026-10-03", "interval": "day", **params}
    response = get(api, tenant, **{key: value for key, value in query.items() if value is not None})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["status_code"] == 422 and field in body["detail"], body


def test_timezone_aliases(api: TestClient, dataset: Dataset) -> None:
    params = {"start_date": START.isoformat(), "end_date": END.isoformat(), "interval": "day"}
    alias = get(api, dataset.tenant, timezone="Asia/Calcutta", **params).json()
    canonical = get(api, dataset.tenant, timezone="Asia/Kolkata", **params).json()
    # ClickHouse adds floats across threads in no fixed order: two identical requests may differ in the last bit.
    assert alias["metrics"] == canonical["metrics"]
    assert [row["timestamp"] for row in alias["periods"]] == [row["timestamp"] for row in canonical["periods"]]
    for got, want in [*zip(alias["periods"], canonical["periods"], strict=True), (alias["totals"], canonical["totals"])]:
        assert all(close(got[slug], want[slug]) for slug in want if slug != "timestamp"), (got, want)


def test_tenant_isolation(api: TestClient, dataset: Dataset, other_tenant: Tenant) -> None:
    params = {"start_date": START.isoformat(), "end_date": END.isoformat(), "interval": "week"}
    empty = get(api, other_tenant, **params)
    assert empty.status_code == 200, empty.text
    assert all(value == 0 for value in empty.json()["totals"].values())
    assert all(value == 0 for row in empty.json()["periods"] for slug, value in row.items() if slug != "timestamp")
    # Its own events show up for it alone.
    ingest(api, other_tenant, [{"name": "file_share.created", "timestamp": "2026-10-01T12:00:00.000Z",
                                "external_customer_id": "x", "external_id": "o-1",
                                "metadata": {"share_id": "s-1", "price_cents": 0}}])
    mine = get(api, other_tenant, **params).json()["totals"]
    assert mine["file_share_sessions"] == 1 and mine["free_file_shares"] == 1 and mine["active_users"] == 1
    check(api, dataset, "week", "UTC")


def test_conversion_counts_payments_up_to_now(api: TestClient, tenant: Tenant) -> None:
    """Paid shares come from the daily share sets before today and today's raw events up to now: a payment of
    yesterday and one of seconds ago convert their shares, one dated a few minutes ahead does not yet."""
    now = datetime.now(UTC)
    created = now - timedelta(days=2)
    payments = [now - timedelta(days=1), now - timedelta(seconds=5), now + timedelta(minutes=3), None]
    events = []
    for number, paid_at in enumerate(payments):
        share = {"share_id": f"s-{number}"}
        events.append({"name": "file_share.created", "timestamp": stamp(created), "external_customer_id": "c",
                       "external_id": f"c-{number}", "metadata": {**share, "price_cents": 100}})
        if paid_at is not None:
            events.append({"name": "file_share.payment_completed", "timestamp": stamp(paid_at),
                           "external_customer_id": "c", "external_id": f"p-{number}",
                           "metadata": {**share, "amount_cents": 100}})
    ingest(api, tenant, events)
    response = get(api, tenant, start_date=created.date().isoformat(), end_date=now.date().isoformat(),
                   interval="day", timezone="UTC", metrics=["payment_conversion_rate", "paid_file_shares"])
    assert response.status_code == 200, response.text
    assert response.headers[SOURCE_HEADER] == "1d"
    totals = response.json()["totals"]
    assert (totals["paid_file_shares"], totals["payment_conversion_rate"]) == (4, 50.0)


def raw_reads(settings, monkeypatch, workspace: str, start: date, end: date, interval: str, zone: str,
              metrics: list[str]) -> tuple[dict[str, Any], list[list[str]]]:
    """The dashboard's answer from the service, and the aggregates each of its raw-table reads answered."""
    reads: list[list[str]] = []
    period_aggregates = queries.period_aggregates

    async def recorded(client, scope, starts, end, aggregates, share_sets):
        reads.append([type(aggregate).__name__ for aggregate in aggregates])
        return await period_aggregates(client, scope, starts, end, aggregates, share_sets)

    monkeypatch.setattr(queries, "period_aggregates", recorded)
    span = time_range(start.isoformat(), end.isoformat(), interval, zone)

    async def answer() -> dict[str, Any]:
        client = await connect(settings.clickhouse_url)
        try:
            found, _ = await service.dashboard(client, uuid.UUID(workspace), span,
                                               [metric for metric in CATALOG if metric.slug in metrics])
            return json.loads(ENCODER.encode(found))
        finally:
            await client.close()

    return asyncio.run(answer()), reads


@pytest.mark.parametrize(("interval", "zone"), [("day", "America/New_York"), ("hour", "UTC")])
def test_conversion_reads_share_sets(settings, dataset: Dataset, monkeypatch, interval: str, zone: str) -> None:
    """Each share of the generated data is created once: the converted shares come from the share sets, and the
    raw table is never read (the brute-force tests above check their values)."""
    start, end = range_of(interval)
    answer, reads = raw_reads(settings, monkeypatch, dataset.tenant.id, start, end, interval, zone,
                              ["payment_conversion_rate"])
    reference = file_share_metrics(dataset.events, start, end, interval, zone, None, None, datetime.now(UTC))
    assert reads == []
    assert close(answer["totals"]["payment_conversion_rate"], reference["totals"]["payment_conversion_rate"])


def test_conversion_counts_a_share_created_twice_twice(settings, api: TestClient, tenant: Tenant,
                                                       monkeypatch) -> None:
    """The metric counts created events, the sets count shares: where a share is created twice in one period the
    sets cannot tell, and the raw rows answer (from the sets this day would convert 1 of 3, not 2)."""
    day = datetime(2026, 10, 5, 9, tzinfo=UTC)
    events = []
    for number, (share, paid) in enumerate([("twice", True), ("twice", True), ("never", False), ("once", True)]):
        moment = day + timedelta(days=number // 3, hours=number)
        events.append({"name": "file_share.created", "timestamp": stamp(moment), "external_customer_id": "c",
                       "external_id": f"c-{number}", "metadata": {"share_id": share, "price_cents": 100}})
        if paid:
            events.append({"name": "file_share.payment_completed", "timestamp": stamp(moment + timedelta(days=3)),
                           "external_customer_id": "c", "external_id": f"p-{number}",
                           "metadata": {"share_id": share, "amount_cents": 100}})
    ingest(api, tenant, events)
    answer, reads = raw_reads(settings, monkeypatch, tenant.id, day.date(), day.date() + timedelta(days=1), "day",
                              "UTC", ["payment_conversion_rate", "paid_file_shares"])
    assert [(p["paid_file_shares"], p["payment_conversion_rate"]) for p in answer["periods"]] == [
        (3, pytest.approx(200 / 3)), (1, 100.0)]
    assert (answer["totals"]["paid_file_shares"], answer["totals"]["payment_conversion_rate"]) == (4, 75.0)
    assert reads == [["Converted"]]
