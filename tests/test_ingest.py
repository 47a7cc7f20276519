"""CONTRACT.md section 2, ingest: every field rule, all-or-nothing batches, body formats and limits, dedup."""

import asyncio
import gzip
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from litestar.testing import TestClient

from app.warehouse.client import connect
from tests.conftest import Tenant, all_pages, bearer


def ingest(api: TestClient, tenant: Tenant, events: list[dict], **kwargs):
    return api.post("/api/events/ingest", json={"events": events}, headers=tenant.headers, **kwargs)


def event(**fields) -> dict:
    return {"name": "api.call", "external_customer_id": "cust-1", **fields}


def all_events(api: TestClient, tenant: Tenant, **params) -> list[dict]:
    return all_pages(api, "/api/events", tenant.headers, params)


def errors_of(response) -> list[tuple[int, str]]:
    """(index, field) of each error of a 422, whose body is the contract's `{"errors": [{index, field, message}]}`."""
    assert response.status_code == 422, response.text
    body = response.json()
    errors = body["errors"]
    assert all(set(error) == {"index", "field", "message"} for error in errors), errors
    assert body["extra"] == {"errors": errors}  # where earlier versions put them
    return [(error["index"], error["field"]) for error in errors]


INVALID_EVENTS = [
    ({"external_customer_id": "c"}, "name"),
    (event(name=""), "name"),
    (event(name="x" * 129), "name"),
    (event(timestamp="yesterday"), "timestamp"),
    (event(timestamp="2026-01-01T00:00:00"), "timestamp"),
    (event(timestamp="in-6-minutes"), "timestamp"),
    (event(timestamp="1969-12-31T23:59:59.999Z"), "timestamp"),
    (event(timestamp="0001-01-01T00:00:00Z"), "timestamp"),
    ({"name": "a"}, "customer_id"),
    ({"name": "a", "customer_id": str(uuid.uuid4()), "external_customer_id": "c"}, "customer_id"),
    ({"name": "a", "customer_id": str(uuid.uuid4())}, "customer_id"),
    ({"name": "a", "customer_id": "not-a-uuid"}, "customer_id"),
    (event(external_customer_id=""), "external_customer_id"),
    (event(external_customer_id="c" * 257), "external_customer_id"),
    (event(external_id=""), "external_id"),
    (event(external_id="e" * 257), "external_id"),
    (event(parent_id="no-such-event"), "parent_id"),
    (event(metadata=[1, 2]), "metadata"),
    (event(metadata={"k" * 41: 1}), "metadata." + "k" * 41),
    (event(metadata={"": 1}), "metadata."),
    (event(metadata={"_private": 1}), "metadata._private"),
    (event(metadata={"list": [1]}), "metadata.list"),
    (event(metadata={"a": {"b": {"c": {"d": 1}}}}), "metadata.a.b.c"),
    (event(metadata={f"k{i}": i for i in range(51)}), "metadata"),
    (event(metadata={"blob": "x" * 16_400}), "metadata"),
    (event(metadata={"_cost": {"amount": 1, "currency": "eur"}}), "metadata._cost.currency"),
    (event(metadata={"_cost": {"amount": "abc", "currency": "usd"}}), "metadata._cost.amount"),
    (event(metadata={"_cost": {"amount": 0.1234567890123, "currency": "usd"}}), "metadata._cost.amount"),
    (event(metadata={"_cost": {"amount": "NaN", "currency": "usd"}}), "metadata._cost.amount"),
    (event(metadata={"_cost": {"amount": "-Infinity", "currency": "usd"}}), "metadata._cost.amount"),
    (event(metadata={"_cost": {"amount": 1e26, "currency": "usd"}}), "metadata._cost.amount"),
    (event(metadata={"_llm": {"vendor": "v", "model": "m", "input_tokens": -1, "output_tokens": 0, "total_tokens": 0}}),
     "metadata._llm.input_tokens"),
    (event(metadata={"_llm": {"vendor": "v", "model": "m", "input_tokens": 1, "output_tokens": 1}}), "metadata._llm.total_tokens"),
    (event(metadata={"_llm": {"vendor": "v", "model": "m", "input_tokens": 1.5, "output_tokens": 1, "total_tokens": 2}}),
     "metadata._llm.input_tokens"),
    (event(metadata={"_llm": {"vendor": "v", "model": "m", "input_tokens": 1, "output_tokens": 1,
                              "total_tokens": 2**53}}), "metadata._llm.total_tokens"),
    (event(metadata={"n": 10**400}), "metadata.n"),
    (event(metadata={"a": {"n": -10**400}}), "metadata.a.n"),
]


@pytest.mark.parametrize(("bad", "field"), INVALID_EVENTS, ids=[f"{i}-{f}" for i, (_, f) in enumerate(INVALID_EVENTS)])
def test_each_field_rule_is_a_422_naming_index_and_field(api: TestClient, tenant: Tenant, bad: dict, field: str) -> None:
    if bad.get("timestamp") == "in-6-minutes":  # relative to the request, not to the import of this module
        bad = {**bad, "timestamp": (datetime.now(UTC) + timedelta(minutes=6)).isoformat()}
    response = ingest(api, tenant, [event(external_id="fine-1"), bad])
    assert (1, field) in errors_of(response)
    assert all_events(api, tenant) == []  # all or nothing


def test_valid_edges_are_accepted(api: TestClient, tenant: Tenant) -> None:
    accepted = [
        event(name="x" * 128, external_id="e" * 256, external_customer_id="c" * 256),
        event(timestamp=(datetime.now(UTC) + timedelta(minutes=4)).isoformat()),
        event(timestamp="1970-01-01T00:00:00Z"),
        event(timestamp="2026-03-01T12:00:00+05:30", metadata={"a": {"b": {"c": 1}}, "n": None, "ok": True}),
        event(metadata={f"k{i}": i for i in range(50)}),
        event(metadata={"_cost": {"amount": 0.123456789012, "currency": "usd"},
                        "_llm": {"vendor": "v", "model": "m", "input_tokens": 1, "output_tokens": 2, "total_tokens": 3,
                                 "cached_input_tokens": 0}}),
    ]
    assert ingest(api, tenant, accepted).json() == {"inserted": 6, "duplicates": 0}
    stored = all_events(api, tenant, order="asc")
    shifted = next(item for item in stored if item["timestamp"] == "2026-03-01T06:30:00Z")
    assert shifted["metadata"] == {"a": {"b": {"c": 1}}, "n": None, "ok": True}
    cost = next(item for item in stored if "_cost" in item["metadata"])
    assert cost["metadata"]["_cost"]["amount"] == 0.123456789012


def stored_rows(clickhouse_url: str, workspace_id: str) -> dict[str, tuple]:
    """The events table's own columns, by external id, as ClickHouse holds them."""
    async def query() -> dict[str, tuple]:
        client = await connect(clickhouse_url)
        try:
            result = await client.query(
                "SELECT external_id, toString(id), toString(root_id), toString(parent_id), timestamp, ingested_at, "
                "name, source, customer_key, dedup_key, depth, metadata, num, str, bool, toString(cost_amount), "
                "llm_total_tokens FROM events WHERE workspace_id = {w:UUID}",
                parameters={"w": workspace_id},
            )
            return {row[0]: tuple(row[1:]) for row in result.result_rows}
        finally:
            await client.close()

    return asyncio.run(query())


def test_the_stored_row_holds_exactly_what_was_sent(api: TestClient, tenant: Tenant, clickhouse_url: str) -> None:
    sent = [
        event(external_id="root", timestamp="2026-03-01T12:00:00.123456+05:30",
              metadata={"status": 500, "ratio": 0.25, "region": "eu", "ok": False, "deep": {"er": {"code": 7}},
                        "_cost": {"amount": 0.123456789012, "currency": "usd"},
                        "_llm": {"vendor": "v", "model": "m", "input_tokens": 1, "output_tokens": 2, "total_tokens": 3}}),
        event(external_id="child", parent_id="root", metadata={"_cost": {"amount": 1e-7, "currency": "usd"}}),
        event(external_id="big", metadata={"_cost": {"amount": 12345678901234.5, "currency": "usd"}}),
    ]
    assert ingest(api, tenant, sent).json() == {"inserted": 3, "duplicates": 0}
    listed = {item["external_id"]: item for item in all_events(api, tenant)}
    rows = stored_rows(clickhouse_url, tenant.id)
    root, child = listed["root"], listed["child"]
    assert rows["root"][:4] == (root["id"], root["id"], None, datetime(2026, 3, 1, 6, 30, 0, 123000, tzinfo=UTC))
    assert rows["child"][:3] == (child["id"], root["id"], root["id"]) and rows["child"][9] == 1
    assert rows["root"][4].isoformat().replace("+00:00", "Z") == root["ingested_at"].replace(".000Z", "Z")
    assert rows["root"][5:9] == ("api.call", "user", "x:cust-1", "root")
    assert json.loads(rows["root"][10]) == sent[0]["metadata"]
    assert rows["root"][11:14] == (
        {"status": 500.0, "ratio": 0.25, "deep.er.code": 7.0, "_cost.amount": 0.123456789012, "_llm.input_tokens": 1.0,
         "_llm.output_tokens": 2.0, "_llm.total_tokens": 3.0},
        {"region": "eu", "_cost.currency": "usd", "_llm.vendor": "v", "_llm.model": "m"},
        {"ok": False},
    )
    assert [rows[key][14:] for key in ("root", "child", "big")] == [
        ("0.123456789012", 3), ("0.0000001", 0), ("12345678901234.5", 0)]


def test_stored_event_shape_and_default_timestamp(api: TestClient, tenant: Tenant) -> None:
    before = datetime.now(UTC)
    assert ingest(api, tenant, [event(external_id="shape")]).status_code == 200
    (stored,) = all_events(api, tenant)
    assert set(stored) == {"id", "name", "timestamp", "ingested_at", "source", "customer_id", "external_customer_id",
                           "external_id", "parent_id", "root_id", "depth", "metadata"}
    assert stored["timestamp"].endswith("Z") and stored["source"] == "user" and stored["depth"] == 0
    assert stored["root_id"] == stored["id"] and stored["metadata"] == {}
    stamp = datetime.fromisoformat(stored["timestamp"])
    assert before - timedelta(seconds=1) <= stamp <= datetime.now(UTC)


def test_ndjson_and_gzip(api: TestClient, tenant: Tenant) -> None:
    lines = "\n".join(json.dumps(event(external_id=f"nd-{i}")) for i in range(3)).encode()
    plain = api.post("/api/events/ingest", content=lines, headers={**tenant.headers, "Content-Type": "application/x-ndjson"})
    assert plain.json() == {"inserted": 3, "duplicates": 0}
    zipped = api.post("/api/events/ingest", content=gzip.compress(lines + b"\n" + json.dumps(event(external_id="nd-9")).encode()),
                      headers={**tenant.headers, "Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"})
    assert zipped.json() == {"inserted": 1, "duplicates": 3}
    body = gzip.compress(json.dumps({"events": [event(external_id="gz-1")]}).encode())
    as_json = api.post("/api/events/ingest", content=body,
                       headers={**tenant.headers, "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert as_json.json() == {"inserted": 1, "duplicates": 0}
    # Members appended one after another (`gzip >> file`) are one body, as zcat reads them.
    members = b"".join(gzip.compress(json.dumps(event(external_id=f"member-{i}")).encode() + b"\n") for i in range(3))
    appended = api.post("/api/events/ingest", content=members,
                        headers={**tenant.headers, "Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"})
    assert appended.json() == {"inserted": 3, "duplicates": 0}
    # Zero bytes after the last member are padding, as gzip reads them; an empty body is empty either way.
    padded = gzip.compress(json.dumps(event(external_id="padded")).encode()) + b"\0" * 8
    assert api.post("/api/events/ingest", content=padded, headers={
        **tenant.headers, "Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}).json()["inserted"] == 1
    for media_type in ("application/json", "application/x-ndjson"):
        plain, zipped = (api.post("/api/events/ingest", content=b"", headers={
            **tenant.headers, "Content-Type": media_type, **encoding}) for encoding in ({}, {"Content-Encoding": "gzip"}))
        assert (zipped.status_code, zipped.json()) == (plain.status_code, plain.json()), media_type


def test_numbers_past_a_double_are_a_422(api: TestClient, tenant: Tenant) -> None:
    body = (b'{"events": [{"name": "a", "external_customer_id": "c", "metadata": {"fine": 1e308, "n": 1e400, '
            b'"nested": {"m": -1e400}}}]}')
    response = api.post("/api/events/ingest", content=body,
                        headers={**tenant.headers, "Content-Type": "application/json"})
    assert errors_of(response) == [(0, "metadata.n"), (0, "metadata.nested.m")]
    # Past the 4,300 digits Python reads in an integer: the decoder cannot hold it at all.
    line = b'{"name": "a", "external_customer_id": "c", "metadata": {"v": ' + b"9" * 5000 + b"}}"
    for body, media_type in [(b'{"events": [' + line + b"]}", "application/json"), (line, "application/x-ndjson")]:
        response = api.post("/api/events/ingest", content=body, headers={**tenant.headers, "Content-Type": media_type})
        assert errors_of(response) == [(0, "metadata")], media_type


@pytest.mark.parametrize(("body", "headers", "status"), [
    (b'{"events": [', {}, 400),
    (b'{"events": [{"name": "a", "external_customer_id": "c"}, ]}', {}, 400),
    (b'{"name": "a"}\n{"name": ', {"Content-Type": "application/x-ndjson"}, 400),
    (gzip.compress(b'{"events": []}')[:-6], {"Content-Encoding": "gzip"}, 400),
    (b"not gzip at all", {"Content-Encoding": "gzip"}, 400),
    (b'{"events": []}', {"Content-Type": "text/plain"}, 415),
    (b'{"events": []}', {"Content-Encoding": "br"}, 415),
    (gzip.compress(b'{"events": []}') + b"trailing junk", {"Content-Encoding": "gzip"}, 400),
    (b'{"events": 3}', {}, 422),
    (b'[]', {}, 422),
    # Nested past what a decoder recurses into: in the list, in an event's metadata, on a line of NDJSON.
    (b'{"events": [' + b"[" * 5000 + b"]" * 5000 + b"]}", {}, 400),
    (b'{"events": [{"name": "a", "external_customer_id": "c", "metadata": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000
     + b"}]}", {}, 400),
    (b'{"name": "a", "external_customer_id": "c", "metadata": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001,
     {"Content-Type": "application/x-ndjson"}, 400),
])
def test_broken_bodies(api: TestClient, tenant: Tenant, body: bytes, headers: dict, status: int) -> None:
    response = api.post("/api/events/ingest", content=body,
                        headers={**tenant.headers, "Content-Type": "application/json", **headers})
    assert response.status_code == status, response.text
    # Every error has the shared envelope; a 422 of a batch adds the contract's `errors`.
    assert set(response.json()) == {"status_code", "detail", "extra"} | ({"errors"} if status == 422 else set())


def test_size_limits(api: TestClient, tenant: Tenant) -> None:
    too_many = ingest(api, tenant, [event()] * 10_001)
    assert too_many.status_code == 413
    exactly = ingest(api, tenant, [{"name": "n", "external_customer_id": "c"}] * 10_000)
    assert exactly.json() == {"inserted": 10_000, "duplicates": 0}
    huge = json.dumps({"events": [event(metadata={"blob": "x" * 15_000})] * 800}).encode()
    assert len(huge) > 11 * 1024 * 1024
    assert api.post("/api/events/ingest", content=huge, headers={**tenant.headers, "Content-Type": "application/json"}).status_code == 413
    zipped = api.post("/api/events/ingest", content=gzip.compress(huge),
                      headers={**tenant.headers, "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert zipped.status_code == 413
    assert len(all_events(api, tenant, name="api.call")) == 0


def test_dedup_within_and_across_batches_counts_nowhere_else(api: TestClient, tenant: Tenant) -> None:
    first = ingest(api, tenant, [event(external_id="d1"), event(external_id="d2"), event(external_id="d1")])
    assert first.json() == {"inserted": 2, "duplicates": 1}
    again = ingest(api, tenant, [event(external_id="d2", name="other"), event(external_id="d3"), event()])
    assert again.json() == {"inserted": 2, "duplicates": 1}
    stored = all_events(api, tenant)
    assert sorted(item["external_id"] or "" for item in stored) == ["", "d1", "d2", "d3"]
    types = {item["name"]: item["occurrences"] for item in api.get("/api/event-types", headers=tenant.headers).json()}
    assert types == {"api.call": 4}


def test_the_same_external_id_in_another_workspace_is_not_a_duplicate(api: TestClient, tenant: Tenant, other_tenant: Tenant) -> None:
    assert ingest(api, tenant, [event(external_id="shared")]).json()["inserted"] == 1
    assert ingest(api, other_tenant, [event(external_id="shared")]).json()["inserted"] == 1


def test_roles_for_ingest(api: TestClient, tenant: Tenant, other_tenant: Tenant) -> None:
    body = {"events": [event()]}
    assert api.post("/api/events/ingest", json=body, headers=bearer(tenant.viewer)).status_code == 403
    assert api.post("/api/events/ingest", json=body, headers=bearer(tenant.member)).status_code == 200
    assert api.post(f"/api/events/ingest?workspace_id={other_tenant.id}", json=body, headers=tenant.headers).status_code == 404
    assert api.post("/api/events/ingest", json=body, headers={"Authorization": ""}).status_code == 401


def test_workspace_id_resolution(api: TestClient, tenant: Tenant, other_tenant: Tenant) -> None:
    # The operator reads every workspace, so it must say which; a one-workspace user need not.
    assert api.get("/api/events").status_code == 422
    assert api.get(f"/api/events?workspace_id={tenant.id}").status_code == 200
    assert api.get("/api/events", headers=bearer(tenant.viewer)).status_code == 200
    assert api.get(f"/api/events?workspace_id={uuid.uuid4()}").status_code == 404
    user = api.post("/api/users", json={"email": f"{uuid.uuid4().hex}@example.com"}).json()
    for workspace in (tenant, other_tenant):
        api.put(f"/api/workspaces/{workspace.id}/members/{user['id']}", json={"role": "viewer"})
    token = api.post(f"/api/users/{user['id']}/tokens").json()["token"]
    assert api.get("/api/events", headers=bearer(token)).status_code == 422
    assert api.get(f"/api/events?workspace_id={other_tenant.id}", headers=bearer(token)).status_code == 200


def test_a_long_chain_of_parents_in_one_batch_child_first(api: TestClient, tenant: Tenant) -> None:
    links = 3000
    batch = [event(external_id=f"link-{i}", **({"parent_id": f"link-{i - 1}"} if i else {})) for i in range(links)]
    assert ingest(api, tenant, batch[::-1]).json() == {"inserted": links, "duplicates": 0}
    [deepest] = all_events(api, tenant, depth=links - 1)
    assert deepest["external_id"] == f"link-{links - 1}"
    assert deepest["root_id"] == all_events(api, tenant, depth=0)[0]["id"]


def test_a_tree_deeper_than_depth_holds_is_a_422(api: TestClient, tenant: Tenant, clickhouse_url: str) -> None:
    # An event at the deepest depth the column holds, without ingesting 65,535 events above it first.
    async def store_deepest() -> None:
        client = await connect(clickhouse_url)
        try:
            row = [uuid.UUID(tenant.id), "x:deepest", uuid.uuid4(), uuid.uuid4(), 65_535]
            await client.insert("event_keys_kv", [row], column_names=["workspace_id", "key", "id", "root_id", "depth"])
        finally:
            await client.close()

    asyncio.run(store_deepest())
    response = ingest(api, tenant, [event(external_id="fine"), event(external_id="below", parent_id="deepest")])
    assert errors_of(response) == [(1, "parent_id")]
    assert all_events(api, tenant) == []


def test_hierarchy(api: TestClient, tenant: Tenant) -> None:
    assert ingest(api, tenant, [event(external_id="root")]).status_code == 200
    root = all_events(api, tenant)[0]
    batch = [
        event(external_id="grandchild", parent_id="child"),  # its parent comes later in the same batch
        event(external_id="child", parent_id="root"),
        event(external_id="by-id", parent_id=root["id"]),
    ]
    assert ingest(api, tenant, batch).json() == {"inserted": 3, "duplicates": 0}
    stored = {item["external_id"]: item for item in all_events(api, tenant)}
    assert stored["child"]["parent_id"] == root["id"] and stored["child"]["depth"] == 1
    assert stored["grandchild"]["parent_id"] == stored["child"]["id"] and stored["grandchild"]["depth"] == 2
    assert {stored[key]["root_id"] for key in stored} == {root["id"]}
    children = all_events(api, tenant, parent_id=root["id"])
    assert sorted(item["external_id"] for item in children) == ["by-id", "child"]
    assert sorted(item["external_id"] for item in all_events(api, tenant, parent_id="root")) == ["by-id", "child"]
    assert api.get(f"/api/events/{root['id']}", headers=tenant.headers).json()["child_count"] == 2
    cycle = ingest(api, tenant, [event(external_id="a", parent_id="b"), event(external_id="b", parent_id="a")])
    assert {field for _, field in errors_of(cycle)} == {"parent_id"}
    # A duplicate's reference resolves to the stored event.
    again = ingest(api, tenant, [event(external_id="root"), event(external_id="late", parent_id="root")])
    assert again.json() == {"inserted": 1, "duplicates": 1}
