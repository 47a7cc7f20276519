"""One customer, whether its events named it by id before it had an external id or by the external id it has
since: counted once (its customer number, app/customers/numbers.py) and found by either in every filter."""

import asyncio
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from litestar.testing import TestClient

from app.warehouse.client import connect, with_database
from app.warehouse.migrations import migrate, migration_files
from tests.conftest import Tenant
from tests.test_statistics import EVENT_COLUMNS, event_row

DAY = datetime(2026, 10, 5, tzinfo=UTC)


def probe(day: int, **customer: str) -> dict:
    return {"name": "probe.event", "timestamp": (DAY + timedelta(days=day, hours=12)).isoformat(), **customer}


def ingest(api: TestClient, tenant: Tenant, events: list[dict]) -> None:
    response = api.post("/api/events/ingest", json={"events": events}, headers=tenant.headers)
    assert response.status_code == 200, response.text


def test_a_customer_given_an_external_id_later_is_one_customer(api: TestClient, tenant: Tenant) -> None:
    customer = api.post("/api/customers", json={"name": "no external id yet"}, headers=tenant.headers).json()
    ingest(api, tenant, [probe(0, customer_id=customer["id"]), probe(1, external_customer_id="someone-else")])
    patched = api.patch(f"/api/customers/{customer['id']}", json={"external_id": "late"}, headers=tenant.headers)
    assert patched.status_code == 200, patched.text
    ingest(api, tenant, [probe(1, customer_id=customer["id"]), probe(2, external_customer_id="late")])
    params = {"start_date": "2026-10-05", "end_date": "2026-10-07", "interval": "day", "name": "probe.event"}
    rollups = api.get("/api/events/statistics/timeseries", params=params, headers=tenant.headers)
    raw = api.get("/api/events/statistics/timeseries", headers=tenant.headers,
                  params={**params, "external_customer_id": ["late", "someone-else"]})
    for answer in (rollups, raw):
        assert answer.status_code == 200, answer.text
        assert [p["stats"][0]["customers"] for p in answer.json()["periods"]] == [1, 2, 1]
        assert answer.json()["totals"][0]["customers"] == 2
    assert (rollups.headers["X-Statistics-Source"], raw.headers["X-Statistics-Source"]) == ("1d", "raw")
    for customer in ({"external_customer_id": "late"}, {"customer_id": customer["id"]}):
        listed = api.get("/api/events", params={**customer, "name": "probe.event"}, headers=tenant.headers).json()
        assert [event["timestamp"][:10] for event in listed["items"]] == ["2026-10-07", "2026-10-06", "2026-10-05"]
    metrics = api.get("/api/metrics", headers=tenant.headers,
                      params={**params, "metrics": "active_users", "name": []}).json()
    # Every event of the customer's, the system events of its creation and change included, is one customer.
    assert metrics["totals"]["active_users"] == 2


def test_the_migration_numbers_a_customers_keys_alike(clickhouse_url: str, tmp_path: Path) -> None:
    database = f"numbers_{uuid.uuid4().hex[:8]}"
    workspace_id, customer_id = uuid.uuid4(), uuid.uuid4()
    numbering = next(path for path in migration_files() if path.name.startswith("0008_"))
    for path in migration_files():
        if path.name < numbering.name:
            shutil.copy(path, tmp_path / path.name)
    events = [{"name": "probe.event", "timestamp": (DAY + timedelta(hours=hour)).isoformat(), "metadata": {},
               "external_customer_id": customer, "external_id": f"e{hour}"}
              for hour, customer in enumerate(["other", "late", "other", "late"])]

    async def scenario() -> tuple[list[tuple], list[tuple]]:
        admin = await connect(clickhouse_url)
        await admin.command(f"CREATE DATABASE {database}")
        client = await connect(with_database(clickhouse_url, database))
        try:
            await migrate(client, tmp_path)
            await client.insert("customers", [[workspace_id, customer_id, "late", "{}", DAY]],
                                column_names=["workspace_id", "id", "external_id", "metadata", "created_at"])
            rows = [event_row(workspace_id, event) for event in events]
            rows[1][6] = f"c:{customer_id}"  # sent by id before the customer had its external id
            await client.insert("events", rows, column_names=EVENT_COLUMNS)
            shutil.copy(numbering, tmp_path / numbering.name)
            await migrate(client, tmp_path)
            numbers = await client.query("SELECT customer_key, number FROM customer_numbers ORDER BY customer_key")
            stored = await client.query("SELECT DISTINCT customer_key, customer_number FROM events ORDER BY customer_key")
            return list(numbers.result_rows), list(stored.result_rows)
        finally:
            await client.close()
            await admin.command(f"DROP DATABASE IF EXISTS {database}")
            await admin.close()

    numbers, stored = asyncio.run(scenario())
    # "other" came first; the customer's two keys share the next number.
    assert numbers == [(f"c:{customer_id}", 2), ("x:late", 2), ("x:other", 1)]
    assert stored == numbers
