"""Fixtures every test uses: one real ClickHouse server and one real redis-server per session, a migrated
database, the API under test, and fresh workspaces (tenancy isolates tests from each other)."""

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from litestar.testing import TestClient

from app.config import Settings
from app.main import create_app
from app.warehouse.client import connect
from app.warehouse.embedded import EmbeddedServer
from tests.redis_server import RedisProcess, start_redis

OPERATOR_TOKEN = "operator-test-token"


def run_sql(clickhouse_url: str, sql: str, parameters: dict | None = None) -> list[tuple]:
    """The rows of one query, straight from ClickHouse."""
    async def query() -> list[tuple]:
        client = await connect(clickhouse_url)
        try:
            return list((await client.query(sql, parameters=parameters)).result_rows)
        finally:
            await client.close()

    return asyncio.run(query())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="eventstore-tests-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def clickhouse_url(tmp_root: Path) -> Iterator[str]:
    """A real ClickHouse server: the official image where a Docker engine runs, else the embedded one."""
    if os.environ.get("TEST_CLICKHOUSE_URL"):
        yield os.environ["TEST_CLICKHOUSE_URL"]
    elif docker_available():
        from testcontainers.clickhouse import ClickHouseContainer  # noqa: PLC0415

        with ClickHouseContainer("clickhouse/clickhouse-server:26.9") as container:
            yield container.get_connection_url().replace("clickhouse://", "http://").replace(":9000", ":8123")
    else:
        # The API's DATA_DIR too: it gives an app's user to this server through its users folder.
        server = EmbeddedServer(tmp_root / "data", free_port(), free_port())
        server.start()
        server.supervise()
        yield server.url
        server.stop()


@pytest.fixture(scope="session")
def redis_process() -> Iterator[RedisProcess]:
    process = start_redis()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def settings(clickhouse_url: str, redis_process: RedisProcess, tmp_root: Path) -> Settings:
    return Settings(
        admin_token=OPERATOR_TOKEN,
        clickhouse_url=clickhouse_url,
        redis_url=redis_process.url,
        data_dir=str(tmp_root / "data"),
    )


@pytest.fixture(scope="session")
def api(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {OPERATOR_TOKEN}"
        yield client


def all_pages(api: TestClient, path: str, headers: dict[str, str], params: dict | None = None, take: int = 100,
              between=None) -> list[dict]:
    """Every item of a cursor-paged listing, following `cursor` to the end; `between` runs after each page."""
    items, cursor = [], None
    while True:
        query = {**(params or {}), "take": take, **({"cursor": cursor} if cursor else {})}
        response = api.get(path, params=query, headers=headers)
        assert response.status_code == 200, response.text
        items.extend(response.json()["items"])
        if not (cursor := response.json()["cursor"]):
            return items
        if between is not None:
            between()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Tenant:
    """A fresh workspace with a producer token, an admin, a member and a viewer, each with a user token."""

    id: str
    token: str
    admin: str
    member: str
    viewer: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


def create_user_token(api: TestClient, workspace_id: str | None = None, role: str | None = None) -> str:
    user = api.post("/api/users", json={"email": f"{uuid.uuid4().hex}@example.com"}).json()
    if workspace_id is not None:
        response = api.put(f"/api/workspaces/{workspace_id}/members/{user['id']}", json={"role": role})
        assert response.status_code == 200, response.text
    return api.post(f"/api/users/{user['id']}/tokens").json()["token"]


def create_tenant(api: TestClient) -> Tenant:
    workspace = api.post("/api/workspaces", json={"name": f"ws-{uuid.uuid4().hex[:8]}"}).json()
    token = api.post(f"/api/workspaces/{workspace['id']}/tokens", json={"name": "producer"}).json()["token"]
    return Tenant(
        id=workspace["id"],
        token=token,
        admin=create_user_token(api, workspace["id"], "admin"),
        member=create_user_token(api, workspace["id"], "member"),
        viewer=create_user_token(api, workspace["id"], "viewer"),
    )


@pytest.fixture
def tenant(api: TestClient) -> Tenant:
    return create_tenant(api)


@pytest.fixture
def other_tenant(api: TestClient) -> Tenant:
    return create_tenant(api)
