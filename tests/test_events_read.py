"""CONTRACT.md section 2, reading: listing filters and paging against a brute-force filter, single events,
event types and customers, and tenant isolation of each route."""

import base64
import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from litestar.testing import TestClient

from app.events.queries import RECENT_WINDOW
from tests.conftest import Tenant, all_pages, bearer
from tests.test_ingest import all_events, ingest

BASE = datetime(2026, 11, 1, tzinfo=UTC)


def generated(seed: int = 3, count: int = 300) -> list[dict]:
    rng = random.Random(seed)
    events = []
    for i in range(count):
        metadata = {"status": rng.choice([200, 404, 500]), "region": rng.choice(["eu", "us"]),
                    "flag": rng.choice([True, False]), "nested": {"level": rng.choice(["a", "b"])}}
        # Sometimes absent: a match on a map's default (0, false) must not take a missing key for it.
        if i % 3 == 0:
            metadata["retries"] = rng.choice([0, 2])
        if i % 4 == 0:
            del metadata["flag"]
        # An empty string is a value of its own: `meta[note]=` must not take a missing key for it.
        if i % 5 != 0:
            metadata["note"] = rng.choice(["", "x"])
        events.append({
            "name": rng.choice(["page.view", "api.call", "job.done"]),
            "timestamp": (BASE + timedelta(minutes=rng.randrange(0, 3 * 24 * 60))).isoformat(),
            "external_customer_id": f"c{rng.randrange(5)}",
            "external_id": f"g{i}",
            "metadata": metadata,
        })
    return events


@pytest.fixture(scope="module")
def populated(api: TestClient) -> tuple[Tenant, list[dict]]:
    from tests.conftest import create_tenant  # noqa: PLC0415

    tenant = create_tenant(api)
    events = generated()
    assert ingest(api, tenant, events).json() == {"inserted": len(events), "duplicates": 0}
    return tenant, events


def key(event: dict) -> tuple:
    return (event["timestamp"], event["external_id"])


def expected(events: list[dict], predicate) -> list[str]:
    return sorted(event["external_id"] for event in events if predicate(event))


def listed(api: TestClient, tenant: Tenant, **params) -> list[str]:
    return sorted(item["external_id"] for item in all_events(api, tenant, **params))


def ts(event: dict) -> datetime:
    return datetime.fromisoformat(event["timestamp"])


FILTERS = [
    ({"name": ["api.call"]}, lambda e: e["name"] == "api.call"),
    ({"name": ["api.call", "job.done"]}, lambda e: e["name"] in ("api.call", "job.done")),
    ({"external_customer_id": "c2"}, lambda e: e["external_customer_id"] == "c2"),
    ({"start_timestamp": "2026-11-02T00:00:00Z"}, lambda e: ts(e) >= BASE + timedelta(days=1)),
    ({"start_timestamp": "2026-11-02T00:00:00+01:00", "end_timestamp": "2026-11-03T00:00:00Z"},
     lambda e: BASE + timedelta(hours=23) <= ts(e) < BASE + timedelta(days=2)),
    ({"meta[status]": "500"}, lambda e: e["metadata"]["status"] == 500),
    ({"meta[flag]": "true"}, lambda e: e["metadata"].get("flag") is True),
    ({"meta[flag]": "false"}, lambda e: e["metadata"].get("flag") is False),
    ({"meta[retries]": "0"}, lambda e: e["metadata"].get("retries") == 0),
    ({"meta[retries]": "2"}, lambda e: e["metadata"].get("retries") == 2),
    ({"meta[region]": "eu", "meta[nested][level]": "b"},
     lambda e: e["metadata"]["region"] == "eu" and e["metadata"]["nested"]["level"] == "b"),
    ({"meta[status]": "500", "name": ["page.view"], "external_customer_id": "c1"},
     lambda e: e["metadata"]["status"] == 500 and e["name"] == "page.view" and e["external_customer_id"] == "c1"),
    ({"source": "user", "depth": 0}, lambda e: True),
    ({"source": "system"}, lambda e: False),
    ({"meta[status]": "nope"}, lambda e: False),
    ({"meta[note]": ""}, lambda e: e["metadata"].get("note") == ""),
]


@pytest.mark.parametrize(("params", "predicate"), FILTERS, ids=[str(p) for p, _ in FILTERS])
def test_filters_match_a_brute_force_filter(api: TestClient, populated, params: dict, predicate) -> None:
    tenant, events = populated
    assert listed(api, tenant, **params) == expected(events, predicate)


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_order_and_paging(api: TestClient, populated, order: str) -> None:
    tenant, events = populated
    pages, cursor = [], None
    while True:
        params = {"take": 7, "order": order, **({"cursor": cursor} if cursor else {})}
        page = api.get("/api/events", params=params, headers=tenant.headers).json()
        pages.append(page["items"])
        cursor = page["cursor"]
        if cursor is None:
            break
    items = [item for page in pages for item in page]
    assert all(len(page) == 7 for page in pages[:-1])
    stamps = [(item["timestamp"], item["id"]) for item in items]
    assert [s[0] for s in stamps] == sorted((s[0] for s in stamps), reverse=order == "desc")
    assert sorted(item["external_id"] for item in items) == sorted(event["external_id"] for event in events)


def test_events_of_one_instant_are_ordered_by_id_as_clients_compare_ids(api: TestClient, tenant: Tenant) -> None:
    # ClickHouse alone would order these by the second half of each UUID.
    instants = [BASE, BASE + timedelta(milliseconds=1)]
    ingest(api, tenant, [{"name": "tie", "external_customer_id": "c", "external_id": f"tie-{i}",
                          "timestamp": instants[i % 2].isoformat()} for i in range(40)])
    for order in ("asc", "desc"):
        items = all_pages(api, "/api/events", tenant.headers, {"order": order, "name": "tie"}, take=3)
        keys = [(datetime.fromisoformat(item["timestamp"]), item["id"]) for item in items]
        assert len(keys) == 40 and keys == sorted(keys, reverse=order == "desc"), order


def test_paging_returns_each_event_once_while_new_events_arrive(api: TestClient, tenant: Tenant) -> None:
    ingest(api, tenant, generated(seed=9, count=60))
    seen, cursor, round_ = [], None, 0
    while True:
        page = api.get("/api/events", params={"take": 10, **({"cursor": cursor} if cursor else {})},
                       headers=tenant.headers).json()
        seen += [item["external_id"] for item in page["items"]]
        # Newer, older and same-instant events arrive between pages.
        ingest(api, tenant, [{"name": "late", "external_customer_id": "c", "external_id": f"late{round_}-{i}",
                              "timestamp": (BASE + timedelta(days=day)).isoformat()} for i, day in enumerate((-1, 1, 2))])
        round_ += 1
        cursor = page["cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(f"g{i}" for i in range(60))


@pytest.mark.parametrize("params", [{}, {"meta[status]": "500"}], ids=["all", "filtered"])
def test_newest_first_pages_straddle_the_recent_window(api: TestClient, tenant: Tenant, params: dict) -> None:
    """Pages are looked for in a window before their position first (app/events/queries.py): pages inside it,
    across its edge and past it come out whole and in order."""
    now = datetime.now(UTC).replace(microsecond=0)
    window = int(RECENT_WINDOW.total_seconds())
    seconds = [-200 + (window - 600) // 14 * i for i in range(15)]  # inside the window, a few minutes ahead too
    seconds += [window + 60 + 7 * i for i in range(5)]  # just past it
    seconds += [2 * window + 97 * i for i in range(40)]  # long before
    events = [{"name": "recent", "external_customer_id": "c", "external_id": f"r{i}",
               "timestamp": (now - timedelta(seconds=offset)).isoformat(), "metadata": {"status": [200, 500][i % 2]}}
              for i, offset in enumerate(seconds)]
    assert ingest(api, tenant, events).json() == {"inserted": len(events), "duplicates": 0}
    wanted = [e for e in events if "meta[status]" not in params or e["metadata"]["status"] == 500]
    expected_order = [e["external_id"] for e in sorted(wanted, key=ts, reverse=True)]
    pages = all_pages(api, "/api/events", tenant.headers, params, take=6)
    assert [item["external_id"] for item in pages] == expected_order


BACKWARDS = {"start_timestamp": "2026-11-02T00:00:00Z", "end_timestamp": "2026-11-01T00:00:00Z"}
NO_OFFSET = {"start_timestamp": "2026-11-02T00:00:00"}  # not RFC 3339


TOO_MANY_FILTERS = {f"meta[k{i}]": "1" for i in range(51)}


@pytest.mark.parametrize("params", [{"take": 0}, {"take": 101}, {"order": "up"}, {"cursor": "garbage!"},
                                    {"depth": -1}, {"depth": 65_536}, {"start_timestamp": "soon"}, {"meta[a][": "x"},
                                    BACKWARDS, NO_OFFSET, TOO_MANY_FILTERS])
def test_bad_parameters_are_422(api: TestClient, tenant: Tenant, params: dict) -> None:
    response = api.get("/api/events", params=params, headers=tenant.headers)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(("start", "end"), [("0999-12-31T00:00:00Z", None), (None, "9999-12-31T23:59:59Z"),
                                             ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z")])
def test_time_bounds_past_any_event_bound_nothing(api: TestClient, populated, start: str | None,
                                                 end: str | None) -> None:
    tenant, events = populated
    params = {key: value for key, value in (("start_timestamp", start), ("end_timestamp", end)) if value}
    assert listed(api, tenant, **params) == expected(events, lambda e: True)


def test_a_cursor_continues_only_its_own_listing(api: TestClient, populated) -> None:
    tenant, _ = populated
    first = api.get("/api/events", params={"take": 2, "name": "page.view"}, headers=tenant.headers).json()
    cursor = first["cursor"]
    assert cursor
    same = api.get("/api/events", params={"take": 5, "name": "page.view", "order": "desc", "cursor": cursor},
                   headers=tenant.headers)
    assert same.status_code == 200 and same.json()["items"]
    for path, params in [("/api/events", {"name": "page.view", "order": "asc"}), ("/api/events", {}),
                         ("/api/events", {"name": "page.view", "meta[status]": "500"}),
                         ("/api/usage/records", {"type": "page.view"})]:
        other = api.get(path, params={**params, "cursor": cursor}, headers=tenant.headers)
        assert other.status_code == 422 and other.json()["extra"][0]["field"] == "cursor", (path, params)


@pytest.mark.parametrize("path", ["/api/events", "/api/usage/records", "/api/customers"])
@pytest.mark.parametrize("instant", ["0001-01-01T00:00:00Z", "9999-01-01T00:00:00Z", "2026-01-01T00:00:00"])
def test_a_cursor_holding_an_instant_no_listing_has_is_422(api: TestClient, tenant: Tenant, path: str,
                                                            instant: str) -> None:
    position = [instant, str(uuid.UUID(int=0))] + ([] if path == "/api/customers" else [instant])
    cursor = base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")
    response = api.get(path, params={"cursor": cursor}, headers=tenant.headers)
    assert response.status_code == 422 and response.json()["extra"][0]["field"] == "cursor", response.text


@pytest.mark.parametrize("path", ["/api/events", "/api/usage/records", "/api/customers"])
def test_an_empty_cursor_is_the_first_page(api: TestClient, populated, path: str) -> None:
    tenant, _ = populated
    first = api.get(path, params={"take": 3}, headers=tenant.headers).json()
    assert api.get(path, params={"take": 3, "cursor": ""}, headers=tenant.headers).json()["items"] == first["items"]


def test_unknown_parameters_are_ignored(api: TestClient, tenant: Tenant) -> None:
    assert api.get("/api/events", params={"colour": "blue"}, headers=tenant.headers).status_code == 200


def test_single_event_and_isolation(api: TestClient, populated, other_tenant: Tenant) -> None:
    tenant, _ = populated
    item = all_events(api, tenant)[0]
    single = api.get(f"/api/events/{item['id']}", headers=tenant.headers).json()
    assert single == {**item, "child_count": 0}
    assert api.get(f"/api/events/{item['id']}", headers=other_tenant.headers).status_code == 404
    assert all_events(api, other_tenant) == []
    assert api.get("/api/event-types", headers=other_tenant.headers).json() == []
    assert api.get("/api/customers", headers=other_tenant.headers).json()["items"] == []


def test_event_types_count_and_label(api: TestClient, populated, other_tenant: Tenant) -> None:
    tenant, events = populated
    types = {item["name"]: item for item in api.get("/api/event-types", headers=tenant.headers).json()}
    for name, item in types.items():
        mine = [event for event in events if event["name"] == name]
        assert item["occurrences"] == len(mine) and item["source"] == "user" and item["label"] == name
        assert item["first_seen"] == min(ts(e) for e in mine).isoformat().replace("+00:00", "Z")
        assert item["last_seen"] == max(ts(e) for e in mine).isoformat().replace("+00:00", "Z")
    type_id = types["api.call"]["id"]
    assert api.patch(f"/api/event-types/{type_id}", json={"label": "API calls"}, headers=bearer(tenant.viewer)).status_code == 403
    assert api.patch(f"/api/event-types/{type_id}", json={"label": "API calls"}, headers=other_tenant.headers).status_code == 404
    assert api.patch(f"/api/event-types/{type_id}", json={"label": ""}, headers=tenant.headers).status_code == 422
    patched = api.patch(f"/api/event-types/{type_id}", json={"label": "API calls"}, headers=tenant.headers)
    assert patched.status_code == 200 and patched.json()["label"] == "API calls"
    again = {item["name"]: item for item in api.get("/api/event-types", headers=tenant.headers).json()}
    assert again["api.call"]["label"] == "API calls" and again["api.call"]["id"] == type_id


def test_customers_lifecycle_and_one_identity(api: TestClient, tenant: Tenant, other_tenant: Tenant) -> None:
    ingest(api, tenant, [{"name": "early", "external_customer_id": "acme-1"}])
    created = api.post("/api/customers", json={"external_id": "acme-1", "email": "a@acme.test", "name": "Acme"},
                       headers=tenant.headers)
    assert created.status_code == 201
    customer = created.json()
    assert set(customer) == {"id", "external_id", "email", "name", "metadata", "created_at"}
    ingest(api, tenant, [{"name": "later", "customer_id": customer["id"]}])
    by_id = all_events(api, tenant, customer_id=customer["id"])
    assert sorted(item["name"] for item in by_id) == ["customer.created", "early", "later"]
    assert {item["external_customer_id"] for item in by_id} == {"acme-1"}
    assert api.post("/api/customers", json={"external_id": "acme-1"}, headers=tenant.headers).status_code == 409
    patched = api.patch(f"/api/customers/{customer['id']}", json={"name": "Acme Inc"}, headers=tenant.headers)
    assert patched.json()["name"] == "Acme Inc"
    assert api.patch("/api/customers/acme-1", json={"external_id": "acme-2"}, headers=tenant.headers).status_code == 422
    assert api.get("/api/customers/acme-1", headers=tenant.headers).json()["name"] == "Acme Inc"
    assert api.get(f"/api/customers/{customer['id'].upper()}", headers=tenant.headers).json()["name"] == "Acme Inc"
    assert api.get(f"/api/customers/{customer['id']}", headers=other_tenant.headers).status_code == 404
    assert api.delete(f"/api/customers/{customer['id']}", headers=other_tenant.headers).status_code == 404
    assert api.delete(f"/api/customers/{customer['id']}", headers=bearer(tenant.viewer)).status_code == 403
    assert api.delete(f"/api/customers/{customer['id']}", headers=tenant.headers).status_code == 204
    assert api.get(f"/api/customers/{customer['id']}", headers=tenant.headers).status_code == 404
    system = all_events(api, tenant, source="system")
    assert sorted(item["name"] for item in system) == ["customer.created", "customer.deleted", "customer.updated"]
    assert {item["customer_id"] for item in system} == {customer["id"]}
    types = {item["name"]: item["source"] for item in api.get("/api/event-types", headers=tenant.headers).json()}
    assert types["customer.created"] == "system"


def test_events_sent_by_id_before_the_customer_had_an_external_id_stay_its_own(api: TestClient, tenant: Tenant) -> None:
    customer = api.post("/api/customers", json={"name": "No external id yet"}, headers=tenant.headers).json()
    ingest(api, tenant, [{"name": "before", "customer_id": customer["id"]}])
    api.patch(f"/api/customers/{customer['id']}", json={"external_id": "given-later"}, headers=tenant.headers)
    ingest(api, tenant, [{"name": "after", "external_customer_id": "given-later"}])
    names = sorted(item["name"] for item in all_events(api, tenant, customer_id=customer["id"]))
    assert names == ["after", "before", "customer.created", "customer.updated"]


def test_customer_filters_combine_as_one_customer(api: TestClient, tenant: Tenant) -> None:
    customer = api.post("/api/customers", json={"external_id": "both-a"}, headers=tenant.headers).json()
    ingest(api, tenant, [{"name": "mine", "customer_id": customer["id"]},
                         {"name": "theirs", "external_customer_id": "both-b"}])

    def names(**params) -> list[str]:
        return sorted(item["name"] for item in all_events(api, tenant, source="user", **params))

    assert names(customer_id=customer["id"], external_customer_id="both-a") == ["mine"]
    assert names(customer_id=customer["id"], external_customer_id="both-b") == []
    assert names(external_customer_id="both-b") == ["theirs"]


def test_customer_list_pages(api: TestClient, tenant: Tenant) -> None:
    made = [api.post("/api/customers", json={"external_id": f"p{i}"}, headers=tenant.headers).json()["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        page = api.get("/api/customers", params={"take": 2, **({"cursor": cursor} if cursor else {})},
                       headers=tenant.headers).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["cursor"]
        if cursor is None:
            break
    assert seen == made
