"""Apps: registration, stats checked against a brute-force computation over the same events, the permission
matrix, the app's own database (tables, previews, injection attempts) and the isolation of its user."""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from litestar.testing import TestClient

from app.apps import queries, routes, service
from app.config import Settings
from app.warehouse.embedded import users_folder

try:
    from tests.conftest import Tenant, bearer
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from conftest import Tenant, bearer  # type: ignore[no-redef]

DAY = timedelta(days=1)


# Helpers -------------------------------------------------------------------------------------------------


def connect(url: str, username: str | None = None, password: str | None = None, database: str = "default") -> Client:
    parts = urlsplit(url)
    return clickhouse_connect.get_client(
        host=parts.hostname, port=parts.port or 8123,
        username=username or unquote(parts.username or "default"),
        password=password if username else unquote(parts.password or ""),
        database=database,
    )


@pytest.fixture(scope="module")
def admin_ch(clickhouse_url: str) -> Iterator[Client]:
    client = connect(clickhouse_url)
    yield client
    client.close()


def new_app(api: TestClient, tenant: Tenant, slug: str | None = None, name: str = "Dashboard") -> dict[str, Any]:
    slug = slug or f"app-{uuid.uuid4().hex[:10]}"
    response = api.post("/api/apps", json={"name": name, "slug": slug}, headers=bearer(tenant.member))
    assert response.status_code == 201, response.text
    return response.json()


def provision(api: TestClient, tenant: Tenant, app: dict[str, Any], admin_ch: Client,
              quota_bytes: int | None = None) -> dict[str, Any] | None:
    """The app's database through the API; where the server cannot create users (the embedded server),
    the API answers 501 and the database is made here directly, as an operator would."""
    body = {"quota_bytes": quota_bytes} if quota_bytes else None
    response = api.post(f"/api/apps/{app['slug']}/database", json=body, headers=bearer(tenant.admin))
    if response.status_code == 201:
        return response.json()
    assert response.status_code == 501, response.text
    admin_ch.command(f"CREATE DATABASE app_{uuid.UUID(app['id']).hex}")
    return None


def ingest(api: TestClient, tenant: Tenant, events: list[dict[str, Any]]) -> dict[str, int]:
    response = api.post("/api/events/ingest", json={"events": events}, headers=tenant.headers)
    assert response.status_code == 200, response.text
    return response.json()


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def half_up(value: float | Decimal, places: str = "1") -> Decimal:
    return Decimal(str(value)).quantize(Decimal(places), rounding=ROUND_HALF_UP)


def percent(part: int, whole: int) -> float:
    return float(half_up(Decimal(part) * 100 / Decimal(whole), "0.01")) if whole else 0.0


def whole(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


# Events --------------------------------------------------------------------------------------------------


def away_from_edges(now: datetime, moment: datetime) -> bool:
    """Not within 10 minutes of the 7- and 30-day window edges, where test and server clocks could disagree."""
    return all(abs(moment - (now - days * DAY)) > timedelta(minutes=10) for days in (7, 30))


def generated_events(app: dict[str, Any], other_app: dict[str, Any], now: datetime, count: int,
                     rng: random.Random) -> list[dict[str, Any]]:
    """Views and invocations spread over 60 days, naming the app by UUID (any case) or slug, plus events of
    another app that must count nowhere."""
    refs = [app["id"], app["id"].upper(), app["slug"]]
    other_refs = [other_app["id"], other_app["slug"]]
    used: set[datetime] = set()
    events = []
    while len(events) < count:
        moment = now - timedelta(milliseconds=rng.randrange(0, 60 * 86_400_000))
        if moment in used or not away_from_edges(now, moment):
            continue
        used.add(moment)
        target = rng.choice(refs) if rng.random() < 0.85 else rng.choice(other_refs)
        if rng.random() < 0.45:
            metadata: dict[str, Any] = {"app_id": target}
            if rng.random() < 0.9:
                metadata["viewer_id"] = f"user-{rng.randrange(40)}"
            events.append(event("app.viewed", moment, metadata))
            continue
        status = rng.choice([200, 200, 200, 201, 204, 302, 404, 500, 502, 503])
        error = rng.choice([None] * 8 + ["TypeError: x is undefined", "timeout"])
        metadata = {"app_id": target, "method": rng.choice(["GET", "POST", "PUT"]),
                    "path": f"/api/datasets/{rng.randrange(9)}/search", "username": f"dev{rng.randrange(5)}",
                    "status_code": status, "memory_peak_bytes": rng.randrange(1, 90_000_000), "error": error}
        if rng.random() < 0.9:  # durations in halves: sums stay exact in binary floating point
            metadata["duration_ms"] = rng.randrange(1, 4000) / 2
        events.append(event("app.api_invoked", moment, metadata))
    return events


def event(name: str, moment: datetime, metadata: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "timestamp": rfc3339(moment), "external_customer_id": "owner",
            "external_id": uuid.uuid4().hex, "metadata": metadata}


def of_app(events: list[dict[str, Any]], app: dict[str, Any]) -> list[dict[str, Any]]:
    refs = {app["id"], app["slug"]}
    return [item for item in events if item["metadata"]["app_id"].lower() in refs]


def when(item: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(item["timestamp"].replace("Z", "+00:00"))


def failed(item: dict[str, Any]) -> bool:
    metadata = item["metadata"]
    return metadata.get("status_code", 0) >= 500 or metadata.get("error") is not None


def expected_stats(events: list[dict[str, Any]], app: dict[str, Any], now: datetime) -> dict[str, Any]:
    mine = of_app(events, app)
    views = [item for item in mine if item["name"] == "app.viewed"]
    calls = [item for item in mine if item["name"] == "app.api_invoked"]
    calls_30d = [item for item in calls if when(item) >= now - 30 * DAY]
    durations = [item["metadata"]["duration_ms"] for item in calls_30d if "duration_ms" in item["metadata"]]
    today = now.date()
    errors = sum(1 for item in calls_30d if failed(item))
    return {
        "appId": app["id"],
        "totalViews": len(views),
        "uniqueViewers": len({item["metadata"]["viewer_id"] for item in views if "viewer_id" in item["metadata"]}),
        "views7d": sum(1 for item in views if when(item) >= now - 7 * DAY),
        "views30d": sum(1 for item in views if when(item) >= now - 30 * DAY),
        "lastViewedAt": rfc3339(max(when(item) for item in views)) if views else None,
        "viewsByDay": [
            {"day": (today - offset * DAY).isoformat(),
             "count": sum(1 for item in views if when(item).date() == today - offset * DAY)}
            for offset in range(7)
        ],
        "api": {
            "totalInvocations": len(calls),
            "invocations7d": sum(1 for item in calls if when(item) >= now - 7 * DAY),
            "invocations30d": len(calls_30d),
            "avgDurationMs": int(half_up(sum(durations) / len(durations))) if durations else 0,
            "errorCount30d": errors,
            "errorRate30d": percent(errors, len(calls_30d)),
            "peakMemoryBytes": max((item["metadata"]["memory_peak_bytes"] for item in calls_30d), default=0),
            "totalComputeMs": int(half_up(sum(durations))),
        },
    }


def expected_history(events: list[dict[str, Any]], app: dict[str, Any], today: date) -> dict[str, Any]:
    calls = sorted((item for item in of_app(events, app) if item["name"] == "app.api_invoked"), key=when,
                   reverse=True)
    recent = [
        {"method": item["metadata"]["method"], "path": item["metadata"]["path"],
         "username": item["metadata"]["username"], "startedAt": rfc3339(when(item)),
         "durationMs": whole(item["metadata"]["duration_ms"]) if "duration_ms" in item["metadata"] else None,
         "statusCode": item["metadata"]["status_code"], "memoryPeakBytes": item["metadata"]["memory_peak_bytes"],
         "error": item["metadata"]["error"]}
        for item in calls[:100]
    ]
    daily = []
    for offset in range(30):
        day = today - offset * DAY
        of_day = [item for item in calls if when(item).date() == day]
        durations = [item["metadata"]["duration_ms"] for item in of_day if "duration_ms" in item["metadata"]]
        daily.append({"day": day.isoformat(), "count": len(of_day),
                      "avgDurationMs": int(half_up(sum(durations) / len(durations))) if durations else 0,
                      "errorCount": sum(1 for item in of_day if failed(item))})
    return {"recent": recent, "daily": daily}


# Registration --------------------------------------------------------------------------------------------


def test_apps_are_registered_per_workspace_and_found_by_uuid_or_slug(
    api: TestClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    app = new_app(api, tenant, slug="crm-dashboard", name="CRM dashboard")
    assert set(app) == {"id", "slug", "name"} and app["slug"] == "crm-dashboard"
    for reference in (app["id"], app["id"].upper(), "crm-dashboard"):
        response = api.get(f"/api/apps/{reference}", headers=bearer(tenant.viewer))
        assert response.status_code == 200 and response.json() == app
    assert api.get("/api/apps", headers=bearer(tenant.viewer)).json() == [app]

    again = api.post("/api/apps", json={"name": "x", "slug": "crm-dashboard"}, headers=bearer(tenant.admin))
    assert again.status_code == 409
    assert again.json()["status_code"] == 409
    elsewhere = new_app(api, other_tenant, slug="crm-dashboard")
    assert elsewhere["id"] != app["id"]

    for other in (elsewhere["id"], "no-such-app", str(uuid.uuid4())):
        assert api.get(f"/api/apps/{other}", headers=bearer(tenant.admin)).status_code == 404
    assert api.get(f"/api/apps/{app['id']}/stats", headers=bearer(other_tenant.admin)).status_code == 404
    # The operator reads any workspace, named by workspace_id.
    assert api.get(f"/api/apps/crm-dashboard?workspace_id={tenant.id}").json() == app

    bad = ["Upper", "-dash", "a" * 64, "sp ace", "semi;colon", "", "ok\n", str(uuid.uuid4()), uuid.uuid4().hex]
    for slug in bad:
        response = api.post("/api/apps", json={"name": "x", "slug": slug}, headers=bearer(tenant.member))
        assert response.status_code == 422, (slug, response.text)
    assert api.post("/api/apps", json={"slug": "no-name"}, headers=bearer(tenant.member)).status_code in (400, 422)
    response = api.post("/api/apps", json={"name": "x", "slug": "by-viewer"}, headers=bearer(tenant.viewer))
    assert response.status_code == 403


def test_concurrent_creates_of_one_slug_make_one_app(api: TestClient, tenant: Tenant) -> None:
    def create(_: int) -> int:
        return api.post("/api/apps", json={"name": "x", "slug": "race"}, headers=tenant.headers).status_code

    with ThreadPoolExecutor(6) as pool:
        codes = sorted(pool.map(create, range(6)))
    assert codes == [201] + [409] * 5
    assert [app["slug"] for app in api.get("/api/apps", headers=tenant.headers).json()] == ["race"]


# Statistics ----------------------------------------------------------------------------------------------


def test_stats_and_api_history_match_a_brute_force_computation(
    api: TestClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    app = new_app(api, tenant)
    other_app = new_app(api, tenant)
    twin = new_app(api, other_tenant, slug=app["slug"])  # same slug, other workspace: counts nowhere here
    now = datetime.now(UTC)
    rng = random.Random(7)
    events = generated_events(app, other_app, now, 1500, rng)
    # A few that the edges of the day and of the windows must not lose: now, and just in the future.
    events.append(event("app.viewed", now, {"app_id": app["slug"], "viewer_id": "fresh"}))
    events.append(event("app.api_invoked", now + timedelta(minutes=2),
                        {"app_id": app["id"], "method": "GET", "path": "/p", "username": "late", "status_code": 200,
                         "duration_ms": 3, "memory_peak_bytes": 5, "error": None}))
    assert ingest(api, tenant, events[:800]) == {"inserted": 800, "duplicates": 0}
    # Retried with the rest: the duplicates are counted nowhere.
    assert ingest(api, tenant, events)["duplicates"] == 800
    ingest(api, other_tenant, [event("app.viewed", now, {"app_id": twin["slug"], "viewer_id": "x"})])

    response = api.get(f"/api/apps/{app['slug']}/stats", headers=bearer(tenant.viewer))
    assert response.status_code == 200, response.text
    stats = response.json()
    storage = stats.pop("storage")
    assert stats == expected_stats(events, app, now)
    assert stats["api"]["errorCount30d"] > 0 and stats["views7d"] > 0
    assert storage == {"hasWorkspace": False, "schemaSize": 0, "tableCount": 0, "quotaBytes": None,
                       "quotaPercent": None}

    response = api.get(f"/api/apps/{app['id']}/stats/api", headers=bearer(tenant.member))
    assert response.status_code == 200, response.text
    assert response.json() == expected_history(events, app, now.date())

    sparse = api.get(f"/api/apps/{twin['id']}/stats", headers=bearer(other_tenant.viewer)).json()
    assert (sparse["totalViews"], sparse["uniqueViewers"], sparse["api"]["totalInvocations"]) == (1, 1, 0)
    assert sparse["api"]["errorRate30d"] == 0 and sparse["api"]["avgDurationMs"] == 0
    history = api.get(f"/api/apps/{twin['id']}/stats/api", headers=bearer(other_tenant.member)).json()
    assert history["recent"] == [] and len(history["daily"]) == 30
    assert all(day["count"] == 0 for day in history["daily"])

    # An error sent as an object is an error too, and reads back as its JSON; bare fields may be absent.
    ingest(api, other_tenant, [event("app.api_invoked", now, {"app_id": twin["id"], "status_code": 200,
                                                              "error": {"message": "boom", "code": 7}})])
    sparse = api.get(f"/api/apps/{twin['id']}/stats", headers=bearer(other_tenant.viewer)).json()["api"]
    assert (sparse["errorCount30d"], sparse["errorRate30d"], sparse["avgDurationMs"]) == (1, 100.0, 0)
    [call] = api.get(f"/api/apps/{twin['id']}/stats/api", headers=bearer(other_tenant.member)).json()["recent"]
    assert json.loads(call.pop("error")) == {"message": "boom", "code": 7}
    assert call == {"method": None, "path": None, "username": None, "startedAt": rfc3339(now), "durationMs": None,
                    "statusCode": 200, "memoryPeakBytes": None}

    # Numbers past the decimal context's 28 digits are whole already, and read back as they are.
    huge = new_app(api, other_tenant)
    ingest(api, other_tenant, [event("app.api_invoked", now, {"app_id": huge["id"], "status_code": 1e300,
                                                              "duration_ms": 1e300, "memory_peak_bytes": 1e300})])
    api_stats = api.get(f"/api/apps/{huge['id']}/stats", headers=bearer(other_tenant.viewer)).json()["api"]
    assert api_stats["peakMemoryBytes"] == int(1e300) and api_stats["avgDurationMs"] == int(1e300)
    [call] = api.get(f"/api/apps/{huge['id']}/stats/api", headers=bearer(other_tenant.member)).json()["recent"]
    assert call["statusCode"] == int(1e300)


# Permissions ---------------------------------------------------------------------------------------------


def test_permission_matrix(api: TestClient, tenant: Tenant, other_tenant: Tenant, admin_ch: Client) -> None:
    app = new_app(api, tenant)
    database = f"app_{uuid.UUID(app['id']).hex}"
    admin_ch.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    admin_ch.command(f"CREATE TABLE {database}.t (id UInt32) ENGINE = MergeTree ORDER BY id")
    reads = {
        "stats": lambda headers: api.get(f"/api/apps/{app['id']}/stats", headers=headers),
        "tables": lambda headers: api.get(f"/api/apps/{app['id']}/stats/tables", headers=headers),
        "preview": lambda headers: api.post(f"/api/apps/{app['id']}/stats/tables/t/preview", json={},
                                            headers=headers),
        "api": lambda headers: api.get(f"/api/apps/{app['id']}/stats/api", headers=headers),
    }
    expected = {
        "viewer": {"stats": 200, "tables": 403, "preview": 403, "api": 403},
        "member": {"stats": 200, "tables": 200, "preview": 200, "api": 200},
        "admin": {"stats": 200, "tables": 200, "preview": 200, "api": 200},
        "producer": {"stats": 200, "tables": 200, "preview": 200, "api": 200},
        "other workspace": {"stats": 404, "tables": 404, "preview": 404, "api": 404},
        "no token": {"stats": 401, "tables": 401, "preview": 401, "api": 401},
    }
    callers = {
        "viewer": bearer(tenant.viewer), "member": bearer(tenant.member), "admin": bearer(tenant.admin),
        "producer": tenant.headers, "other workspace": bearer(other_tenant.admin), "no token": {"Authorization": ""},
    }
    for caller, codes in expected.items():
        for route, call in reads.items():
            assert call(callers[caller]).status_code == codes[route], (caller, route)
    # The operator reads every workspace, named by workspace_id.
    scoped = f"?workspace_id={tenant.id}"
    assert api.get(f"/api/apps/{app['id']}/stats{scoped}").status_code == 200
    assert api.get(f"/api/apps/{app['id']}/stats/api{scoped}").status_code == 200
    assert api.post(f"/api/apps/{app['id']}/stats/tables/t/preview{scoped}").status_code == 200
    operator = api.get(f"/api/apps/{app['id']}/stats/tables{scoped}")
    assert operator.status_code == 200 and [table["name"] for table in operator.json()] == ["t"]

    # Only an admin provisions the database; the others are refused before anything is made.
    for headers in (bearer(tenant.viewer), bearer(tenant.member), tenant.headers):
        assert api.post(f"/api/apps/{app['id']}/database", headers=headers).status_code == 403
    assert api.post(f"/api/apps/{app['id']}/database", headers=bearer(other_tenant.admin)).status_code == 404
    assert api.post("/api/apps/no-such-app/database", headers=bearer(tenant.admin)).status_code == 404


# The app's database --------------------------------------------------------------------------------------

ITEMS = """
CREATE TABLE {db}.items
(
    id UUID,
    name String,
    price Decimal(10, 2),
    created Date,
    seen DateTime64(3, 'UTC'),
    note Nullable(String),
    tags Array(String),
    big UInt64,
    label String ALIAS upper(name),
    INDEX name_idx name TYPE bloom_filter GRANULARITY 1
)
ENGINE = MergeTree ORDER BY (id)
"""


def owner_or_admin(clickhouse_url: str, credentials: dict[str, Any] | None, admin_ch: Client) -> Client:
    if credentials is None:
        return admin_ch
    return connect(clickhouse_url, credentials["username"], credentials["password"], credentials["database"])


def test_tables_preview_paging_and_storage(
    api: TestClient, tenant: Tenant, other_tenant: Tenant, admin_ch: Client, clickhouse_url: str
) -> None:
    app = new_app(api, tenant)
    assert api.get(f"/api/apps/{app['id']}/stats/tables", headers=bearer(tenant.member)).json() == []
    before = api.post(f"/api/apps/{app['id']}/stats/tables/items/preview", headers=bearer(tenant.member))
    assert before.status_code == 404
    credentials = provision(api, tenant, app, admin_ch, quota_bytes=10_000_000)
    database = f"app_{uuid.UUID(app['id']).hex}"
    owner = owner_or_admin(clickhouse_url, credentials, admin_ch)
    owner.command(ITEMS.format(db=database))
    rows = [[uuid.uuid4(), f"item {n}", Decimal(n) / 4, date(2024, 1, 1) + n * DAY,
             datetime(2024, 2, 1, 10, 0, n, 5000 * n, tzinfo=UTC), None if n % 3 else f"note {n}", ["a", "b"][: n % 3],
             2**64 - 1 - n] for n in range(60)]
    owner.insert(f"{database}.items", rows,
                 column_names=["id", "name", "price", "created", "seen", "note", "tags", "big"])
    owner.command(f"CREATE TABLE {database}._migrations (name String) ENGINE = MergeTree ORDER BY name")
    owner.command(f"CREATE TABLE {database}.`données` (x UInt8) ENGINE = Memory")
    owner.command(f"INSERT INTO {database}.`données` VALUES (1), (2)")
    owner.command(f"CREATE VIEW {database}.items_view AS SELECT id FROM {database}.items")
    if owner is admin_ch:  # a name only an operator could type: quoting must hold for it too
        owner.command(f"CREATE TABLE {database}.`we``ird` (x UInt8) ENGINE = Memory")

    tables = api.get(f"/api/apps/{app['slug']}/stats/tables", headers=bearer(tenant.member)).json()
    names = [table["name"] for table in tables]
    assert "_migrations" not in names and {"items", "données", "items_view"} <= set(names)
    items = next(table for table in tables if table["name"] == "items")
    assert items["rowCount"] == 60 and items["sizeBytes"] > 0
    columns = {column["name"]: column for column in items["columns"]}
    assert columns["id"] == {"name": "id", "type": "UUID", "nullable": False, "primaryKey": True, "indexed": True}
    assert columns["name"]["indexed"] and not columns["name"]["primaryKey"]
    assert columns["note"] == {"name": "note", "type": "Nullable(String)", "nullable": True, "primaryKey": False,
                               "indexed": False}
    assert columns["price"]["type"] == "Decimal(10, 2)"

    sizes = dict(admin_ch.query("SELECT name, total_bytes FROM system.tables WHERE database = {db:String}",
                                parameters={"db": database}).result_rows)
    storage = api.get(f"/api/apps/{app['id']}/stats", headers=bearer(tenant.viewer)).json()["storage"]
    schema_size = sum(size or 0 for size in sizes.values())
    quota = 10_000_000 if credentials else 1024**3
    assert storage == {"hasWorkspace": True, "schemaSize": schema_size, "tableCount": len(sizes) - 1,
                       "quotaBytes": quota, "quotaPercent": percent(schema_size, quota)}

    preview = api.post(f"/api/apps/{app['id']}/stats/tables/items/preview", headers=bearer(tenant.member))
    assert preview.status_code == 200, preview.text
    page = preview.json()
    assert (page["rowCount"], page["totalRows"], len(page["rows"])) == (25, 60, 25)
    assert page["fields"] == [{"name": "id", "type": "UUID"}, {"name": "name", "type": "String"},
                              {"name": "price", "type": "Decimal(10, 2)"}, {"name": "created", "type": "Date"},
                              {"name": "seen", "type": "DateTime64(3, 'UTC')"},
                              {"name": "note", "type": "Nullable(String)"}, {"name": "tags", "type": "Array(String)"},
                              {"name": "big", "type": "UInt64"}]
    by_id = {str(row[0]): row for row in rows}
    seen: list[str] = []
    for offset, size in ((0, 25), (25, 25), (50, 10), (60, 0)):
        response = api.post(f"/api/apps/{app['id']}/stats/tables/items/preview",
                            json={"limit": 25, "offset": offset}, headers=bearer(tenant.member))
        assert response.status_code == 200 and response.json()["rowCount"] == size
        for row in response.json()["rows"]:
            source = by_id[row["id"]]
            assert row == {"id": str(source[0]), "name": source[1], "price": str(source[2]),
                           "created": source[3].isoformat(), "seen": rfc3339(source[4]), "note": source[5],
                           "tags": source[6], "big": str(source[7])}
            seen.append(row["id"])
    assert sorted(seen) == sorted(by_id)  # every row once: the pages follow one order
    one = api.post(f"/api/apps/{app['id']}/stats/tables/items/preview", json={"limit": 1, "offset": 59},
                   headers=bearer(tenant.member)).json()
    assert one["rowCount"] == 1 and one["totalRows"] == 60
    for body in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"limit": "ten"}):
        response = api.post(f"/api/apps/{app['id']}/stats/tables/items/preview", json=body,
                            headers=bearer(tenant.member))
        assert response.status_code in (400, 422), body
    unicode = api.post(f"/api/apps/{app['id']}/stats/tables/{quote('données')}/preview",
                       headers=bearer(tenant.member)).json()
    assert unicode["totalRows"] == 2 and unicode["fields"] == [{"name": "x", "type": "UInt8"}]
    if owner is admin_ch:
        weird = api.post(f"/api/apps/{app['id']}/stats/tables/{quote('we`ird')}/preview",
                         headers=bearer(tenant.member))
        assert weird.status_code == 200 and weird.json()["totalRows"] == 0
    # A view reads other objects with the API's grants: listed, never previewed.
    assert api.post(f"/api/apps/{app['id']}/stats/tables/items_view/preview",
                    headers=bearer(tenant.member)).status_code == 404


def test_table_names_that_are_not_the_apps_own_are_404_and_run_nothing(
    api: TestClient, tenant: Tenant, admin_ch: Client
) -> None:
    app, other = new_app(api, tenant), new_app(api, tenant)
    database, other_database = (f"app_{uuid.UUID(item['id']).hex}" for item in (app, other))
    for name in (database, other_database):
        admin_ch.command(f"CREATE DATABASE IF NOT EXISTS {name}")
    admin_ch.command(f"CREATE TABLE {database}.items (id UInt32) ENGINE = MergeTree ORDER BY id")
    admin_ch.command(f"INSERT INTO {database}.items VALUES (1), (2), (3)")
    admin_ch.command(f"CREATE TABLE {database}._migrations (name String) ENGINE = MergeTree ORDER BY name")
    admin_ch.command(f"CREATE TABLE {other_database}.secret (s String) ENGINE = MergeTree ORDER BY s")
    admin_ch.command(f"INSERT INTO {other_database}.secret VALUES ('hidden')")
    attempts = [
        "_migrations", "secret", f"{other_database}.secret", f"`{other_database}`.`secret`", "system.users",
        "../secret", "..%2Fsecret", "items; DROP TABLE items", "items`; DROP TABLE items; --", "items' OR '1'='1",
        'items" --', "`items`", "items ", " items", "ITEMS", "items\u0000", "ítems", "items\u200b", "テーブル",
        "default.events", "events", "%00", "*", "items/../items",
    ]
    for name in attempts:
        response = api.post(f"/api/apps/{app['id']}/stats/tables/{quote(name, safe='')}/preview",
                            headers=bearer(tenant.member))
        assert response.status_code == 404, (name, response.status_code, response.text)
        assert "hidden" not in response.text and "SELECT" not in response.text
    # Dot segments left as they are: the router resolves them to no route at all.
    assert api.post(f"/api/apps/{app['id']}/stats/tables/../preview",
                    headers=bearer(tenant.member)).status_code in (404, 405)
    assert admin_ch.query(f"SELECT count() FROM {database}.items").result_rows[0][0] == 3
    good = api.post(f"/api/apps/{app['id']}/stats/tables/items/preview", headers=bearer(tenant.member))
    assert good.status_code == 200 and good.json()["totalRows"] == 3
    # The other app's own table is previewed through that app only.
    assert api.post(f"/api/apps/{other['id']}/stats/tables/secret/preview",
                    headers=bearer(tenant.member)).json()["rows"] == [{"s": "hidden"}]


def test_database_is_provisioned_once_with_a_user_confined_to_it(
    api: TestClient, tenant: Tenant, admin_ch: Client, clickhouse_url: str
) -> None:
    app, other = new_app(api, tenant), new_app(api, tenant)
    database = f"app_{uuid.UUID(app['id']).hex}"
    first = api.post(f"/api/apps/{app['id']}/database", headers=bearer(tenant.admin))
    assert first.status_code == 201, first.text
    credentials = first.json()
    assert credentials["database"] == database and credentials["quota_bytes"] == 1024**3
    assert credentials["username"].startswith("app_") and len(credentials["password"]) >= 24
    assert api.post(f"/api/apps/{app['slug']}/database", headers=bearer(tenant.admin)).status_code == 409
    other_credentials = api.post(f"/api/apps/{other['id']}/database", json={"quota_bytes": 5000},
                                 headers=bearer(tenant.admin)).json()
    other_owner = connect(clickhouse_url, other_credentials["username"], other_credentials["password"],
                          other_credentials["database"])
    other_owner.command("CREATE TABLE secret (s String) ENGINE = MergeTree ORDER BY s")
    other_owner.command("INSERT INTO secret VALUES ('hidden')")

    owner = connect(clickhouse_url, credentials["username"], credentials["password"], database)
    owner.command("CREATE TABLE notes (id UInt32, body String) ENGINE = MergeTree ORDER BY id")
    owner.command("INSERT INTO notes VALUES (1, 'mine')")
    assert owner.query("SELECT body FROM notes").result_rows == [("mine",)]
    forbidden = [
        f"SELECT * FROM {other_credentials['database']}.secret",
        "SELECT count() FROM default.events",
        "SELECT name FROM system.users",
        f"CREATE TABLE leak ENGINE = MergeTree ORDER BY s AS SELECT s FROM {other_credentials['database']}.secret",
        "CREATE VIEW leak_view AS SELECT * FROM default.events",
        f"CREATE TABLE {other_credentials['database']}.planted (x UInt8) ENGINE = Memory",
        "DROP DATABASE default",
    ]
    for sql in forbidden:
        with pytest.raises(DatabaseError) as error:
            owner.command(sql)
        assert "ACCESS_DENIED" in str(error.value) or "Not enough privileges" in str(error.value), sql
    with pytest.raises(DatabaseError):
        connect(clickhouse_url, credentials["username"], "wrong password", database).command("SELECT 1")
    storage = api.get(f"/api/apps/{other['id']}/stats", headers=bearer(tenant.viewer)).json()["storage"]
    assert storage["hasWorkspace"] and storage["quotaBytes"] == 5000 and storage["tableCount"] == 1
    assert math.isclose(storage["quotaPercent"], percent(storage["schemaSize"], 5000))


def test_a_failed_provisioning_leaves_nothing_behind(
    api: TestClient, tenant: Tenant, admin_ch: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = new_app(api, tenant)
    database = f"app_{uuid.UUID(app['id']).hex}"

    async def writable(client: Any) -> bool:
        return True

    async def failing_owner(client: Any, user: str, password: str, database: str) -> None:
        raise DatabaseError("Code: 497. DB::Exception: granting failed in CREATE USER app_x")

    monkeypatch.setattr(queries, "can_create_users", writable)
    monkeypatch.setattr(queries, "create_owner", failing_owner)
    for _ in range(2):  # a retry starts from scratch: no 409 for a database that was rolled back
        response = api.post(f"/api/apps/{app['id']}/database", headers=bearer(tenant.admin))
        assert response.status_code == 500 and "CREATE USER" not in response.text
        assert not admin_ch.query("SELECT count() FROM system.databases WHERE name = {db:String}",
                                  parameters={"db": database}).result_rows[0][0]
    storage = api.get(f"/api/apps/{app['id']}/stats", headers=bearer(tenant.admin)).json()["storage"]
    assert storage["hasWorkspace"] is False


def test_an_embedded_user_that_does_not_appear_is_rolled_back(
    api: TestClient, tenant: Tenant, admin_ch: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = new_app(api, tenant)
    database, owner = f"app_{uuid.UUID(app['id']).hex}", f"app_{uuid.UUID(app['id']).hex}_owner"
    folder = users_folder(settings.data_path)

    async def never(*credentials: str) -> bool:
        return False

    with monkeypatch.context() as patch:
        patch.setattr(service, "logs_in", never)
        patch.setattr(service, "EMBEDDED_RESTART_SECONDS", 5)
        response = api.post(f"/api/apps/{app['id']}/database", headers=bearer(tenant.admin))
    assert response.status_code == 503 and owner not in response.text
    assert not (folder / f"{owner}.xml").exists()
    assert not admin_ch.query("SELECT count() FROM system.databases WHERE name = {db:String}",
                              parameters={"db": database}).result_rows[0][0]
    assert api.post(f"/api/apps/{app['id']}/database", headers=bearer(tenant.admin)).status_code == 201


def test_a_server_that_cannot_take_users_gets_501_and_nothing_is_made(
    api: TestClient, tenant: Tenant, admin_ch: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = new_app(api, tenant)
    database = f"app_{uuid.UUID(app['id']).hex}"
    # A server with only its read-only users.xml that is not this API's embedded one (no users folder here).
    monkeypatch.setattr(routes, "users_folder", lambda data_dir: tmp_path / "absent")
    for _ in range(2):
        response = api.post(f"/api/apps/{app['id']}/database", headers=bearer(tenant.admin))
        assert response.status_code == 501, response.text
    assert not admin_ch.query("SELECT count() FROM system.databases WHERE name = {db:String}",
                              parameters={"db": database}).result_rows[0][0]
