"""Exact dedup under concurrency, failure and crash: every acknowledged event stored exactly once, and every
customer given one number (app/customers/numbers.py), however many requests name it first at once."""

import asyncio
import os
import random
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgspec
import pytest
from litestar.testing import TestClient

from app.config import Settings
from app.events import service
from app.main import REDIS_TIMEOUT_SECONDS, create_app
from app.warehouse.client import connect
from app.warehouse.embedded import EmbeddedServer
from tests.api_process import ApiProcess
from tests.conftest import OPERATOR_TOKEN, Tenant, create_tenant, free_port, run_sql
from tests.redis_server import start_redis


def batch(keys: list[str]) -> dict:
    return {"events": [{"name": "dedup.test", "external_customer_id": "c", "external_id": key} for key in keys]}


def stored_counts(clickhouse_url: str, workspace_id: str) -> dict[str, int]:
    async def query() -> dict[str, int]:
        client = await connect(clickhouse_url)
        try:
            result = await client.query(
                "SELECT external_id, count() FROM events WHERE workspace_id = {w:UUID} GROUP BY external_id",
                parameters={"w": workspace_id},
            )
            return {row[0]: row[1] for row in result.result_rows}
        finally:
            await client.close()

    return asyncio.run(query())


@pytest.fixture(scope="module")
def two_processes(clickhouse_url: str, redis_process, tmp_path_factory) -> list[ApiProcess]:
    processes = [ApiProcess(clickhouse_url, redis_process.url, tmp_path_factory.mktemp(f"api{i}")) for i in range(2)]
    yield processes
    for process in processes:
        process.stop()


def post(url: str, tenant: Tenant, body: dict) -> dict:
    response = httpx.post(f"{url}/api/events/ingest", json=body, headers=tenant.headers, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def post_at_once(processes: list[ApiProcess], tenant: Tenant, bodies: list[dict]) -> list[dict]:
    """Each body from its own thread, in turn to each process."""
    with ThreadPoolExecutor(12) as pool:
        return list(pool.map(lambda i: post(processes[i % len(processes)].url, tenant, bodies[i]), range(len(bodies))))


def test_concurrent_requests_across_two_processes_store_each_key_once(
    api: TestClient, two_processes: list[ApiProcess], clickhouse_url: str
) -> None:
    tenant = create_tenant(api)
    keys = [f"k{i}" for i in range(600)]
    rng = random.Random(7)
    # 24 overlapping batches, each a random half of the keys, sent at once half to each process.
    batches = [rng.sample(keys, 300) for _ in range(24)]
    answers = post_at_once(two_processes, tenant, [batch(keys) for keys in batches])
    assert sum(answer["inserted"] for answer in answers) == len(set().union(*batches))
    assert sum(answer["inserted"] + answer["duplicates"] for answer in answers) == 24 * 300
    counts = stored_counts(clickhouse_url, tenant.id)
    assert set(counts) == set().union(*batches) and set(counts.values()) == {1}


def alter(clickhouse_url: str, sql: str) -> None:
    run_sql(clickhouse_url, sql)


def test_customers_first_named_at_once_in_two_processes_get_one_number_each(
    api: TestClient, two_processes: list[ApiProcess], clickhouse_url: str
) -> None:
    tenant = create_tenant(api)
    customers = [f"cust-{i}" for i in range(300)]
    rng = random.Random(11)
    # 24 batches at once, half to each process, each naming a random third of the customers, all new.
    batches = [[{"name": "numbering.test", "external_customer_id": customer} for customer in rng.sample(customers, 100)]
               for _ in range(24)]
    post_at_once(two_processes, tenant, [{"events": events} for events in batches])
    numbers = run_sql(clickhouse_url, "SELECT customer_key, number FROM customer_numbers WHERE workspace_id = {w:UUID}",
                      {"w": tenant.id})
    # One number per customer, none shared, dense from 1.
    assert sorted(key for key, _ in numbers) == sorted(f"x:{customer}" for customer in customers)
    assert sorted(number for _, number in numbers) == list(range(1, len(customers) + 1))
    stored = run_sql(clickhouse_url, "SELECT DISTINCT customer_key, customer_number FROM events WHERE workspace_id = {w:UUID}",
                     {"w": tenant.id})
    assert sorted(stored) == sorted(numbers)


def test_shares_first_named_at_once_in_two_processes_get_one_number_each(
    api: TestClient, two_processes: list[ApiProcess], clickhouse_url: str
) -> None:
    tenant = create_tenant(api)
    shares = [f"share-{i}" for i in range(300)]
    rng = random.Random(12)
    batches = [[{"name": "file_share.downloaded", "external_customer_id": "c", "metadata": {"share_id": share}}
                for share in rng.sample(shares, 100)] for _ in range(24)]
    post_at_once(two_processes, tenant, [{"events": events} for events in batches])
    numbers = run_sql(clickhouse_url, "SELECT share_id, number FROM share_numbers WHERE workspace_id = {w:UUID}",
                      {"w": tenant.id})
    # One number per share, none shared, dense from 1; every event carries its share's.
    assert sorted(share for share, _ in numbers) == sorted(shares)
    assert sorted(number for _, number in numbers) == list(range(1, len(shares) + 1))
    stored = run_sql(clickhouse_url, "SELECT DISTINCT share_id, share_number FROM events WHERE workspace_id = {w:UUID}",
                     {"w": tenant.id})
    assert sorted(stored) == sorted(numbers)


def at_once(processes: list[ApiProcess], count: int, send) -> list[int]:
    """`send(url, i)` from `count` threads, in turn to each process: the status codes, sorted."""
    with ThreadPoolExecutor(count) as pool:
        return sorted(pool.map(lambda i: send(processes[i % len(processes)].url, i).status_code, range(count)))


def test_one_external_id_given_at_once_in_two_processes_is_one_customer(
    api: TestClient, two_processes: list[ApiProcess], clickhouse_url: str
) -> None:
    tenant = create_tenant(api)
    created = at_once(two_processes, 8, lambda url, i: httpx.post(
        f"{url}/api/customers", json={"external_id": "posted-at-once", "name": f"n{i}"}, headers=tenant.headers,
        timeout=60))
    assert created == [201] + [409] * 7
    others = [api.post("/api/customers", json={"name": f"m{i}"}, headers=tenant.headers).json()["id"] for i in range(8)]
    patched = at_once(two_processes, 8, lambda url, i: httpx.patch(
        f"{url}/api/customers/{others[i]}", json={"external_id": "patched-at-once"}, headers=tenant.headers,
        timeout=60))
    assert patched == [200] + [409] * 7
    rows = run_sql(clickhouse_url, "SELECT external_id, count() FROM customers FINAL WHERE workspace_id = {w:UUID} "
                   "AND NOT deleted AND external_id IS NOT NULL GROUP BY external_id", {"w": tenant.id})
    assert sorted(rows) == [("patched-at-once", 1), ("posted-at-once", 1)]


def test_one_email_given_at_once_in_two_processes_is_one_user(two_processes: list[ApiProcess]) -> None:
    email = f"{uuid.uuid4().hex}@race.test"
    created = at_once(two_processes, 8, lambda url, i: httpx.post(
        f"{url}/api/users", json={"email": email if i % 2 else email.upper()},
        headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}, timeout=60))
    assert created == [201] + [409] * 7


def test_changes_to_one_customer_at_once_in_two_processes_all_hold(
    api: TestClient, two_processes: list[ApiProcess], clickhouse_url: str
) -> None:
    tenant = create_tenant(api)

    def customer_at_once(*changes) -> tuple[list[int], dict]:
        created = api.post("/api/customers", json={"name": "before"}, headers=tenant.headers).json()
        codes = at_once(two_processes, len(changes), lambda url, i: changes[i](f"{url}/api/customers/{created['id']}"))
        return codes, api.get(f"/api/customers/{created['id']}", headers=tenant.headers)

    def patch(body: dict):
        return lambda url: httpx.patch(url, json=body, headers=tenant.headers, timeout=60)

    def delete(url: str):
        return httpx.delete(url, headers=tenant.headers, timeout=60)

    for round_ in range(5):
        codes, after = customer_at_once(patch({"name": "renamed"}), patch({"email": "e@x.test"}))
        assert codes == [200, 200] and (after.json()["name"], after.json()["email"]) == ("renamed", "e@x.test")
        given = f"given-{round_}"
        codes, after = customer_at_once(patch({"external_id": given}), patch({"name": "renamed"}))
        assert codes == [200, 200] and (after.json()["external_id"], after.json()["name"]) == (given, "renamed")
        # One of two external ids: the second to run finds the first set (422) and the first id stays.
        one, two = f"one-{round_}", f"two-{round_}"
        codes, after = customer_at_once(patch({"external_id": one}), patch({"external_id": two}))
        assert codes == [200, 422] and after.json()["external_id"] in (one, two)
        codes, after = customer_at_once(patch({"name": "renamed"}), delete)
        assert codes in ([200, 204], [204, 404]) and after.status_code == 404
        codes, after = customer_at_once(delete, delete)
        assert codes == [204, 404] and after.status_code == 404
    deleted = run_sql(clickhouse_url, "SELECT count() FROM events WHERE workspace_id = {w:UUID} "
                      "AND name = 'customer.deleted'", {"w": tenant.id})
    assert deleted == [(10,)]


def test_changes_to_one_usage_metric_at_once_in_two_processes_all_hold(
    api: TestClient, two_processes: list[ApiProcess]
) -> None:
    tenant = create_tenant(api)
    metric = {"name": "before", "interval_days": 30, "match_events": [{"name": "x"}]}

    def metric_at_once(*changes) -> tuple[list[int], httpx.Response]:
        created = api.post("/api/usage-metrics", json=metric, headers=tenant.headers).json()
        codes = at_once(two_processes, len(changes),
                        lambda url, i: changes[i](f"{url}/api/usage-metrics/{created['id']}"))
        return codes, api.get(f"/api/usage-metrics/{created['id']}", headers=tenant.headers)

    def patch(url: str):
        return httpx.patch(url, json={"name": "renamed"}, headers=tenant.headers, timeout=60)

    def delete(url: str):
        return httpx.delete(url, headers=tenant.headers, timeout=60)

    for _ in range(5):
        codes, after = metric_at_once(patch, lambda url: httpx.patch(url, json={"interval_days": 7},
                                                                      headers=tenant.headers, timeout=60))
        assert codes == [200, 200] and (after.json()["name"], after.json()["interval_days"]) == ("renamed", 7)
        codes, after = metric_at_once(patch, delete)
        assert codes in ([200, 204], [204, 404]) and after.status_code == 404


def test_one_email_in_two_cases_beyond_ascii_is_one_user(api: TestClient) -> None:
    local = uuid.uuid4().hex
    assert api.post("/api/users", json={"email": f"Ä{local}@race.test"}).status_code == 201
    assert api.post("/api/users", json={"email": f"ä{local}@race.test"}).status_code == 409


@pytest.mark.parametrize("table", ["customer_numbers", "share_numbers"])
def test_a_refused_number_is_a_503_and_nothing_is_stored(
    api: TestClient, clickhouse_url: str, tenant: Tenant, table: str
) -> None:
    alter(clickhouse_url, f"ALTER TABLE {table} ADD CONSTRAINT refuse_for_test CHECK 0 = 1")
    body = {"events": [{"name": "numbering.test", "external_customer_id": "new-customer", "external_id": "n1",
                        "metadata": {"share_id": "new-share"}}]}
    try:
        refused = api.post("/api/events/ingest", json=body, headers=tenant.headers)
    finally:
        alter(clickhouse_url, f"ALTER TABLE {table} DROP CONSTRAINT refuse_for_test")
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert "refuse_for_test" not in refused.text
    assert stored_counts(clickhouse_url, tenant.id) == {}
    assert api.post("/api/events/ingest", json=body, headers=tenant.headers).json() == {"inserted": 1, "duplicates": 0}
    assert run_sql(clickhouse_url, "SELECT customer_number, share_number FROM events WHERE workspace_id = {w:UUID}",
                   {"w": tenant.id}) == [(1, 1)]


def test_a_refused_insert_is_a_503_and_its_retry_is_stored(api: TestClient, clickhouse_url: str, tenant: Tenant,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "INSERT_RETRY_SECONDS", 1.0)  # refused each time it is sent, then a 503
    alter(clickhouse_url, "ALTER TABLE events ADD CONSTRAINT refuse_for_test CHECK 0 = 1")
    try:
        refused = api.post("/api/events/ingest", json=batch(["r1", "r2"]), headers=tenant.headers)
    finally:
        alter(clickhouse_url, "ALTER TABLE events DROP CONSTRAINT refuse_for_test")
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert "CONSTRAINT" not in refused.text and "refuse_for_test" not in refused.text
    retried = api.post("/api/events/ingest", json=batch(["r1", "r2"]), headers=tenant.headers)
    assert retried.json() == {"inserted": 2, "duplicates": 0}
    assert stored_counts(clickhouse_url, tenant.id) == {"r1": 1, "r2": 1}


def test_an_insert_cut_off_midway_is_completed_by_its_retry_and_stored_once(
    api: TestClient, clickhouse_url: str, tenant: Tenant
) -> None:
    # A view refusing the batch fails the insert after `events` and some of its views may have taken it.
    alter(clickhouse_url, "CREATE TABLE refused_for_test (x UInt8) ENGINE = Null")
    alter(clickhouse_url, "CREATE MATERIALIZED VIEW refuse_for_test TO refused_for_test AS "
                          "SELECT throwIf(name = 'cut.off', 'refused for test') AS x FROM events")
    seen_while_refused: list[int] = []

    def lift_the_refusal() -> None:
        time.sleep(1.5)  # the API sends its rows again every 0.5 s meanwhile
        seen_while_refused.append(run_sql(clickhouse_url, "SELECT count() FROM events WHERE workspace_id = {w:UUID}",
                                          {"w": tenant.id})[0][0])
        alter(clickhouse_url, "DROP VIEW refuse_for_test")

    lifter = threading.Thread(target=lift_the_refusal)
    lifter.start()
    body = {"events": [{"name": "cut.off", "external_customer_id": "c", "external_id": f"cut-{i}"} for i in range(3)]}
    try:
        response = api.post("/api/events/ingest", json=body, headers=tenant.headers)
    finally:
        lifter.join()
        alter(clickhouse_url, "DROP VIEW IF EXISTS refuse_for_test")
        alter(clickhouse_url, "DROP TABLE refused_for_test")
    assert response.json() == {"inserted": 3, "duplicates": 0}
    # Seen in every run so far: the first attempt had stored the events and not all of their views. ClickHouse
    # does not promise that order, so the test holds either way; the counts below are what it is about.
    assert seen_while_refused in ([3], [0])
    assert stored_counts(clickhouse_url, tenant.id) == {f"cut-{i}": 1 for i in range(3)}
    workspace = {"w": tenant.id}
    for table, count in [("events_by_time", "count()"), ("events_by_customer", "count()"),
                         ("event_stats_1d", "sum(occurrences)"), ("event_stats_15m", "sum(occurrences)"),
                         ("customer_usage", "sum(events) / 3")]:
        assert run_sql(clickhouse_url, f"SELECT {count} FROM {table} WHERE workspace_id = {{w:UUID}}",
                       workspace) == [(3,)], table
    types = api.get("/api/event-types", headers=tenant.headers).json()
    assert [(item["name"], item["occurrences"]) for item in types] == [("cut.off", 3)]


def test_an_insert_cut_off_by_a_crash_is_completed_once_the_store_is_back(tmp_path: Path) -> None:
    # Killed while the insert runs and back only after the 10 s a refused insert is sent again for: the round
    # keeps sending its rows while the server cannot be reached, and every table ends with each event once.
    server = EmbeddedServer(tmp_path / "ch", free_port(), free_port())
    server.start()
    settings = Settings(admin_token=OPERATOR_TOKEN, clickhouse_url=server.url, data_dir=str(tmp_path / "api"))
    events = [{"name": "crash.test", "external_customer_id": f"c{i % 50}", "external_id": f"k{i}",
               "metadata": {"n": i, "s": "x" * 200}} for i in range(10_000)]
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as api:
            api.headers["Authorization"] = f"Bearer {OPERATOR_TOKEN}"
            tenant = create_tenant(api)
            answer: list[tuple[httpx.Response, float]] = []
            sender = threading.Thread(target=lambda: answer.append(
                (api.post("/api/events/ingest", json={"events": events}, headers=tenant.headers), time.monotonic())))
            sender.start()
            assert wait_for_insert(server), "the insert never started"
            os.kill(server.pid, signal.SIGKILL)
            killed = time.monotonic()
            time.sleep(service.INSERT_RETRY_SECONDS + 2)
            server.start()
            sender.join()
            response, answered = answer[0]
            assert answered - killed > service.INSERT_RETRY_SECONDS, "answered before the store came back"
            assert response.json() == {"inserted": 10_000, "duplicates": 0}
            for table, count in [("events", "count()"), ("events_by_time", "count()"),
                                 ("events_by_customer", "count()"), ("event_stats_1h", "sum(occurrences)"),
                                 ("field_stats_15m", "sum(value_count)"), ("customer_usage", "sum(events) / 3")]:
                assert run_sql(server.url, f"SELECT {count} FROM {table} WHERE workspace_id = {{w:UUID}}",
                               {"w": tenant.id}) == [(10_000,)], table
    finally:
        server.stop()


def wait_for_insert(server: EmbeddedServer, timeout: float = 30) -> bool:
    """Whether an insert into events began running within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = run_sql(server.url, "SELECT count() FROM system.processes WHERE query ILIKE 'INSERT INTO%events%'")
        if running[0][0]:
            return True
        time.sleep(0.01)
    return False


def test_no_store_is_a_503_with_retry_after_and_nothing_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "INSERT_RETRY_SECONDS", 1.0)
    server = EmbeddedServer(tmp_path / "ch", free_port(), free_port())
    server.start()
    settings = Settings(admin_token=OPERATOR_TOKEN, clickhouse_url=server.url, data_dir=str(tmp_path / "api"))
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as api:
            api.headers["Authorization"] = f"Bearer {OPERATOR_TOKEN}"
            tenant = create_tenant(api)
            server.stop()
            down = api.post("/api/events/ingest", json=batch(["n1"]), headers=tenant.headers)
            assert down.status_code == 503 and down.headers["retry-after"]
            assert api.get("/api/health").status_code == 503
            server.start()
            assert api.get("/api/health").status_code == 200
            up = api.post("/api/events/ingest", json=batch(["n1"]), headers=tenant.headers)
            assert up.json() == {"inserted": 1, "duplicates": 0}
    finally:
        server.stop()


def test_a_hung_redis_is_a_503_within_seconds_and_nothing_stored(settings: Settings, clickhouse_url: str,
                                                                 tenant: Tenant) -> None:
    redis = start_redis()
    try:
        with TestClient(create_app(msgspec.structs.replace(settings, redis_url=redis.url)),
                        raise_server_exceptions=False) as api:
            redis.pause()
            # Resumed by a timer, so a request that waits on Redis fails the test rather than hanging it.
            resumer = threading.Timer(3 * REDIS_TIMEOUT_SECONDS + 1, redis.resume)
            resumer.start()
            started = time.monotonic()
            hung = api.post("/api/events/ingest", json=batch(["h1", "h2"]), headers=tenant.headers)
            waited = time.monotonic() - started
            resumer.join()
            assert hung.status_code == 503 and hung.headers["retry-after"], hung.text
            assert waited < 3 * REDIS_TIMEOUT_SECONDS
            assert stored_counts(clickhouse_url, tenant.id) == {}
            answered = api.post("/api/events/ingest", json=batch(["h1", "h2"]), headers=tenant.headers)
            assert answered.json() == {"inserted": 2, "duplicates": 0}
    finally:
        redis.cleanup()


def test_killing_an_api_process_mid_load_loses_no_acknowledged_event(
    api: TestClient, clickhouse_url: str, redis_process, tmp_path: Path
) -> None:
    tenant = create_tenant(api)
    victim = ApiProcess(clickhouse_url, redis_process.url, tmp_path / "victim")
    survivor = ApiProcess(clickhouse_url, redis_process.url, tmp_path / "survivor")
    batches = [[f"b{b}-{i}" for i in range(200)] for b in range(60)]
    acknowledged: set[str] = set()
    lock = threading.Lock()

    def produce(numbers: range) -> None:
        for number in numbers:
            keys = batches[number]
            target = victim if number % 2 else survivor
            while True:
                try:
                    response = httpx.post(f"{target.url}/api/events/ingest", json=batch(keys), headers=tenant.headers, timeout=60)
                    if response.status_code == 200:
                        with lock:
                            acknowledged.update(keys)
                        break
                except httpx.TransportError:
                    pass
                target = survivor  # the producer's retry goes elsewhere, as behind a load balancer
                time.sleep(0.05)

    try:
        threads = [threading.Thread(target=produce, args=(range(start, 60, 4),)) for start in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        victim.kill()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
    finally:
        victim.stop()
        survivor.stop()
    counts = stored_counts(clickhouse_url, tenant.id)
    assert acknowledged == {key for keys in batches for key in keys}
    assert set(counts) == acknowledged and set(counts.values()) == {1}
