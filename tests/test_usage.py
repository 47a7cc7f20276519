"""CONTRACT.md section 5: usage records, the 90-day usage series and the monthly snapshot, each compared with
a brute-force computation over the events the test sent."""

import copy
import random
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest
from litestar.testing import TestClient

from tests.conftest import Tenant, all_pages, bearer, create_tenant

RELATIONS = ("conversationId", "messageId", "taskId", "contactId", "blueprintId", "botId", "datasetId", "skillsetId",
             "abilityId")
NAMES = ("completion", "task.run", "ability.call", "conversation.created", "message.created")
DAY = timedelta(days=1)


# Helpers -------------------------------------------------------------------------------------------------

def iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def event(name: str, when: datetime, metadata: dict[str, Any] | None = None, customer: str = "cust-1") -> dict:
    when = when.replace(microsecond=when.microsecond // 1000 * 1000)
    return {"name": name, "timestamp": iso(when), "external_customer_id": customer,
            "external_id": uuid.uuid4().hex, "metadata": metadata or {}, "_when": when}


def ingest(api: TestClient, tenant: Tenant, events: list[dict]) -> None:
    for start in range(0, len(events), 10_000):
        body = [{k: v for k, v in item.items() if k != "_when"} for item in events[start:start + 10_000]]
        response = api.post("/api/events/ingest", json={"events": body}, headers=tenant.headers)
        assert response.status_code == 200, response.text


def event_ids(api: TestClient, tenant: Tenant) -> dict[str, str]:
    """external_id -> id of every event of the tenant, read through the events listing."""
    return {item["external_id"]: item["id"] for item in all_pages(api, "/api/events", tenant.headers)}


def all_records(api: TestClient, tenant: Tenant, params: dict, take: int = 100) -> list[dict]:
    return all_pages(api, "/api/usage/records", tenant.headers, params, take)


# Brute force ---------------------------------------------------------------------------------------------

def expected_record(item: dict, record_id: str) -> dict:
    meta = copy.deepcopy(item["metadata"])
    relations = {key: meta.pop(key) for key in RELATIONS if isinstance(meta.get(key), str)}
    count = meta.get("count")
    if isinstance(count, (int, float)) and not isinstance(count, bool):
        meta.pop("count")
    elif isinstance(meta.get("_llm"), dict):
        count = meta["_llm"]["total_tokens"]
    else:
        count = 1
    return {"id": record_id, "type": item["name"], "count": count, **{key: relations.get(key) for key in RELATIONS},
            "meta": meta, "createdAt": item["_when"], "updatedAt": item["_when"]}


def leaf(metadata: dict, path: str) -> Any:
    node: Any = metadata
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def meta_matches(metadata: dict, path: str, text: str) -> bool:
    """The query-string form: a number or boolean compares as such, any value also as the string sent."""
    value = leaf(metadata, path)
    if isinstance(value, bool):
        return text == ("true" if value else "false")
    if isinstance(value, (int, float)):
        try:
            return float(text) == value
        except ValueError:
            return False
    return isinstance(value, str) and value == text


def expected_listing(records: list[dict], sent: dict[str, dict], params: dict, descending: bool) -> list[str]:
    def keep(record: dict) -> bool:
        item = sent[record["id"]]
        if "type" in params and record["type"] != params["type"]:
            return False
        for key in RELATIONS:
            if key in params and record[key] != params[key]:
                return False
        return all(meta_matches(item["metadata"], name[5:-1].replace("][", "."), value)
                   for name, value in params.items() if name.startswith("meta["))

    kept = sorted((r for r in records if keep(r)), key=lambda r: (r["createdAt"], r["id"]), reverse=descending)
    return [record["id"] for record in kept]


def as_comparable(record: dict) -> dict:
    return {**record, "createdAt": parse(record["createdAt"]), "updatedAt": parse(record["updatedAt"])}


# Records -------------------------------------------------------------------------------------------------

def random_metadata(rng: random.Random) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for key in rng.sample(RELATIONS, rng.randint(0, 4)):
        metadata[key] = rng.choice(["a", "b", "c"]) if rng.random() < 0.9 else rng.randint(1, 3)  # some not strings
    shape = rng.random()
    if shape < 0.3:
        metadata["count"] = rng.choice([rng.randint(0, 50), round(rng.uniform(0, 5), 3)])
    elif shape < 0.4:
        metadata["count"] = "many"  # not numeric: stays in meta
    if rng.random() < 0.5:
        tokens = rng.randint(0, 5000)
        metadata["_llm"] = {"vendor": "openai", "model": "gpt", "input_tokens": tokens // 2,
                            "output_tokens": tokens - tokens // 2, "total_tokens": tokens}
    if rng.random() < 0.5:
        metadata["tier"] = rng.choice(["gold", "free"])
    if rng.random() < 0.5:
        metadata["score"] = rng.choice([5, 5.0, 7, "5"])
    if rng.random() < 0.3:
        metadata["flag"] = rng.random() < 0.5
    if rng.random() < 0.3:
        metadata["model"] = {"family": rng.choice(["gpt", "claude"]), "size": rng.randint(1, 3)}
    return metadata


Recorded = tuple[Tenant, list[dict], dict[str, dict]]


def record(api: TestClient, tenant: Tenant, other_tenant: Tenant, count: int) -> Recorded:
    """Varied events of the tenant (several sharing a timestamp), the other tenant's look-alikes, and the
    expected records with the events sent, by id."""
    rng = random.Random(count)
    now = datetime.now(UTC)
    shared = now - timedelta(hours=5)
    events = [event(rng.choice(NAMES), shared if i % 25 == 0 else now - timedelta(seconds=rng.randint(60, 9 * 86400)),
                    random_metadata(rng)) for i in range(count)]
    ingest(api, tenant, events)
    ingest(api, other_tenant, [event(rng.choice(NAMES), now - timedelta(hours=1), random_metadata(rng)) for _ in range(50)])
    ids = event_ids(api, tenant)
    sent = {ids[item["external_id"]]: item for item in events}
    return tenant, [expected_record(item, record_id) for record_id, item in sent.items()], sent


@pytest.fixture(scope="module")
def recorded(api: TestClient) -> Recorded:
    """Shared by the read-only tests of this module: nothing may ingest into this workspace."""
    return record(api, create_tenant(api), create_tenant(api), 300)


def test_records_are_events_seen_as_records(api: TestClient, recorded: Recorded) -> None:
    tenant, records, sent = recorded
    got = all_records(api, tenant, {"order": "asc"})
    expected = {record["id"]: record for record in records}
    assert [record["id"] for record in got] == expected_listing(records, sent, {}, descending=False)
    assert [as_comparable(record) for record in got] == [expected[record["id"]] for record in got]
    assert set(got[0]) == {"id", "type", "count", *RELATIONS, "meta", "createdAt", "updatedAt"}
    one = api.get(f"/api/usage/records/{got[5]['id']}", headers=tenant.headers)
    assert one.status_code == 200 and one.json() == got[5]


@pytest.mark.parametrize("params", [
    {},
    {"type": "completion"},
    {"conversationId": "a"},
    {"botId": "b", "type": "task.run"},
    {"taskId": "c", "contactId": "a"},
    {"messageId": "a", "blueprintId": "b", "datasetId": "c", "skillsetId": "a", "abilityId": "b"},
    {"meta[tier]": "gold"},
    {"meta[score]": "5"},
    {"meta[flag]": "true"},
    {"meta[model][family]": "gpt", "type": "ability.call"},
    {"meta[count]": "many", "meta[tier]": "free"},
    {"meta[_llm][model]": "gpt"},
])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_record_filters_and_order(api: TestClient, recorded: Recorded, params: dict, order: str) -> None:
    tenant, records, sent = recorded
    got = all_records(api, tenant, {**params, "order": order}, take=37)
    assert [record["id"] for record in got] == expected_listing(records, sent, params, descending=order == "desc")


def test_default_order_is_newest_first_and_take_is_bounded(api: TestClient, recorded: Recorded) -> None:
    tenant, records, sent = recorded
    page = api.get("/api/usage/records", headers=tenant.headers).json()
    assert [record["id"] for record in page["items"]] == expected_listing(records, sent, {}, descending=True)[:20]
    for take in (0, 101, "x"):
        assert api.get("/api/usage/records", params={"take": take}, headers=tenant.headers).status_code == 422
    assert api.get("/api/usage/records", params={"order": "up"}, headers=tenant.headers).status_code == 422
    assert api.get("/api/usage/records", params={"cursor": "junk"}, headers=tenant.headers).status_code == 422


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_pagination_returns_every_record_once_while_new_ones_arrive(
    api: TestClient, tenant: Tenant, other_tenant: Tenant, order: str
) -> None:
    tenant, records, sent = record(api, tenant, other_tenant, 120)
    expected = expected_listing(records, sent, {}, descending=order == "desc")
    seen, cursor, pages = [], None, 0
    rng = random.Random(order)
    now = datetime.now(UTC)
    while True:
        page = api.get("/api/usage/records", params={"order": order, "take": 13, **({"cursor": cursor} if cursor else {})},
                       headers=tenant.headers).json()
        seen.extend(record["id"] for record in page["items"])
        pages += 1
        # New records land everywhere in the order: before, inside and after the pages still to come.
        ingest(api, tenant, [event(rng.choice(NAMES), now - timedelta(seconds=rng.randint(0, 10 * 86400)))
                             for _ in range(5)])
        if not (cursor := page["cursor"]):
            break
    assert pages == -(-len(expected) // 13)
    assert seen == expected
    assert len(all_records(api, tenant, {})) == len(expected) + 5 * pages


def test_records_cannot_be_changed_or_deleted(api: TestClient, tenant: Tenant) -> None:
    ingest(api, tenant, [event("completion", datetime.now(UTC))])
    record = api.get("/api/usage/records", headers=tenant.headers).json()["items"][0]
    for path in ("/api/usage/records", f"/api/usage/records/{record['id']}", "/api/usage/records/not-an-id"):
        for method in ("PUT", "PATCH", "DELETE", "POST"):
            response = api.request(method, path, json={"count": 5}, headers=tenant.headers)
            assert response.status_code == 405, (method, path, response.text)
            assert set(response.json()) == {"status_code", "detail", "extra"}
    assert api.get(f"/api/usage/records/{record['id']}", headers=tenant.headers).json() == record
    assert api.get("/api/usage/records/not-an-id", headers=tenant.headers).status_code == 404


def test_records_are_isolated_by_workspace(api: TestClient, tenant: Tenant, other_tenant: Tenant) -> None:
    ingest(api, tenant, [event("completion", datetime.now(UTC), {"conversationId": "shared"})])
    ingest(api, other_tenant, [event("completion", datetime.now(UTC), {"conversationId": "shared"})])
    mine = api.get("/api/usage/records", headers=tenant.headers).json()["items"]
    theirs = api.get("/api/usage/records", headers=other_tenant.headers).json()["items"]
    assert len(mine) == len(theirs) == 1 and mine[0]["id"] != theirs[0]["id"]
    assert api.get(f"/api/usage/records/{theirs[0]['id']}", headers=tenant.headers).status_code == 404
    for path in ("/api/usage/records", "/api/usage", "/api/usage/series"):
        response = api.get(path, params={"workspace_id": tenant.id}, headers=other_tenant.headers)
        assert response.status_code == 404, path
        assert api.get(path, headers={"Authorization": ""}).status_code == 401
    assert api.get("/api/usage/records", headers=bearer(tenant.viewer)).json()["items"] == mine


# Series and snapshot -------------------------------------------------------------------------------------

def usage_events(now: datetime) -> list[dict]:
    """Usage on chosen days, on both sides of midnight UTC, at the ends of the 90-day window and of the month."""
    today = now.date()
    rng = random.Random(90)

    def llm(tokens: int) -> dict:
        return {"_llm": {"vendor": "v", "model": "m", "input_tokens": tokens, "output_tokens": 0, "total_tokens": tokens}}

    events = []
    for offset in (0, 1, 2, 5, 30, 31, 44, 45, 88, 89, 90, 91):  # days in between stay empty
        day = today - offset * DAY
        for when in (midnight(day), midnight(day) + DAY - timedelta(milliseconds=1),
                     midnight(day) + timedelta(seconds=rng.randint(1, 86398))):
            if when > now - timedelta(seconds=1):
                continue
            for _ in range(rng.randint(0, 3)):
                events.append(event(rng.choice(NAMES + ("other",)), when,
                                    llm(rng.randint(0, 900)) if rng.random() < 0.7 else {"count": 4}))
    month_start = midnight(today.replace(day=1))
    for when in (month_start, month_start - timedelta(milliseconds=1), month_start + timedelta(milliseconds=1)):
        events += [event("conversation.created", when, llm(11)), event("message.created", when, llm(7))]
    return events


def expected_usage(events: list[dict], start: datetime, end: datetime) -> tuple[int, int, int]:
    inside = [item for item in events if start <= item["_when"] < end]
    return (sum(item["metadata"].get("_llm", {}).get("total_tokens", 0) for item in inside),
            sum(item["name"] == "conversation.created" for item in inside),
            sum(item["name"] == "message.created" for item in inside))


def test_series_and_snapshot_match_brute_force(api: TestClient, tenant: Tenant, other_tenant: Tenant) -> None:
    now = datetime.now(UTC)
    events = usage_events(now)
    ingest(api, tenant, events)
    ingest(api, tenant, events[:5])  # retries: duplicates, counted nowhere
    ingest(api, other_tenant, usage_events(now))
    series = api.get("/api/usage/series", headers=tenant.headers)
    snapshot = api.get("/api/usage", headers=tenant.headers)
    assert series.status_code == 200 and snapshot.status_code == 200
    if datetime.now(UTC).date() != now.date():
        pytest.skip("the UTC day changed during the test")

    days = [now.date() - offset * DAY for offset in range(89, -1, -1)]
    body = series.json()
    assert set(body) == {"tokens", "conversations", "messages"}
    for index, name in enumerate(("tokens", "conversations", "messages")):
        expected = [[int(midnight(day).timestamp() * 1000), expected_usage(events, midnight(day), midnight(day) + DAY)[index]]
                    for day in days]
        assert body[name] == expected, name
    assert any(value == 0 for _, value in body["tokens"]) and any(value > 0 for _, value in body["tokens"])

    start = midnight(now.date().replace(day=1))
    end = midnight(date(start.year + start.month // 12, start.month % 12 + 1, 1))
    tokens, conversations, messages = expected_usage(events, start, end)
    assert snapshot.json() == {"start": iso(start).replace(".000", ""), "end": iso(end).replace(".000", ""),
                               "tokens": tokens, "conversations": conversations, "messages": messages}
    assert conversations >= 2 and messages >= 2


def test_series_of_an_empty_workspace_is_90_zero_days(api: TestClient, tenant: Tenant) -> None:
    body = api.get("/api/usage/series", headers=bearer(tenant.viewer)).json()
    for name in ("tokens", "conversations", "messages"):
        assert len(body[name]) == 90 and all(value == 0 for _, value in body[name])
        assert all(later - earlier == 86_400_000 for (earlier, _), (later, _) in zip(body[name], body[name][1:]))
        assert body[name][-1][0] == int(midnight(datetime.now(UTC).date()).timestamp() * 1000)
    snapshot = api.get("/api/usage", headers=tenant.headers).json()
    assert (snapshot["tokens"], snapshot["conversations"], snapshot["messages"]) == (0, 0, 0)
