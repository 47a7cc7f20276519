"""CONTRACT.md section 8, live streams: the app under uvicorn (in its own processes, or in a thread where a test
shortens an interval), a real redis-server and the real ClickHouse server; clients read the raw SSE bytes."""

import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
import pytest
import uvicorn
from litestar.testing import TestClient
from redis.asyncio import Redis

from app.config import Settings
from app.main import create_app
from app.stream import routes
from app.stream.broker import DEFAULT_PUBLISH_RETRY_AFTER, RedisBroker, StreamItem, channel_name
from tests.conftest import OPERATOR_TOKEN, Tenant, bearer, free_port
from tests.redis_server import RedisProcess, start_redis

REPO = Path(__file__).resolve().parents[1]
SEP = b"\r\n"
STARTUP_TIMEOUT = 60.0
# Streams stay quiet for long stretches; only the keep-alive interval bounds the gap between two reads.
STREAM_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
UNLIMITED = httpx.Limits(max_connections=None, max_keepalive_connections=None)
# In a frame of the load test: the producer's key (metadata is empty there, so the first match is the event's).
EXTERNAL_ID = re.compile(rb'"external_id":"([^"]*)"')

T = TypeVar("T")


def sync_client() -> httpx.Client:
    return httpx.Client(timeout=10, verify=False)  # plain http: no CA bundle to load for every client


def async_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=STREAM_TIMEOUT, limits=UNLIMITED, verify=False)


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    # A hang fails the test, not the whole run.
    return asyncio.run(asyncio.wait_for(coro, timeout))


# Servers --------------------------------------------------------------------------------------------------


class ApiServer:
    """The app under uvicorn in a process of its own, as deployed."""

    def __init__(self, clickhouse_url: str, redis_url: str, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = data_dir / f"uvicorn-{self.port}.log"
        environ = {key: value for key, value in os.environ.items()
                   if key not in {"REDIS_URL", "CLICKHOUSE_URL", "WORKERS"}}
        environ.update(CLICKHOUSE_URL=clickhouse_url, REDIS_URL=redis_url, ADMIN_TOKEN=OPERATOR_TOKEN,
                       DATA_DIR=str(data_dir))
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "warning", "--no-access-log",
                 # Open streams never end by themselves; uvicorn would wait for them forever on SIGTERM.
                 "--timeout-graceful-shutdown", "5"],
                cwd=REPO, env=environ, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"API process exited:\n{self.log.read_text()[-3000:]}")
            try:
                with sync_client() as http:
                    if http.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                        return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"API process never became healthy:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_servers(count: int, clickhouse_url: str, redis_url: str, data_dir: Path) -> list[ApiServer]:
    servers = [ApiServer(clickhouse_url, redis_url, data_dir / str(index)) for index in range(count)]
    try:
        for server in servers:
            server.wait_healthy()
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


class ThreadServer:
    """The app under uvicorn in a thread of the test process, so a test can patch the stream module's intervals."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("in-thread API server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def task_count(self) -> int:
        """Tasks alive on the server's event loop (the counting task included)."""

        async def count() -> int:
            return len(asyncio.all_tasks())

        loop = self.server.servers[0].get_loop()
        return asyncio.run_coroutine_threadsafe(count(), loop).result(5)


Server = ApiServer | ThreadServer


@pytest.fixture(scope="module")
def pair(
    clickhouse_url: str, redis_process: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ApiServer]]:
    """Two API processes sharing ClickHouse and Redis, as with WORKERS=2."""
    servers = start_servers(2, clickhouse_url, redis_process.url, tmp_path_factory.mktemp("pair"))
    yield servers
    for server in servers:
        server.stop()


# A small per-connection queue, so a stalled reader overflows after little traffic.
IN_THREAD_QUEUE_SIZE = 100


@pytest.fixture(scope="module")
def in_thread(settings: Settings) -> Iterator[ThreadServer]:
    server = ThreadServer(msgspec.structs.replace(settings, stream_queue_size=IN_THREAD_QUEUE_SIZE))
    server.start()
    yield server
    server.stop()


# SSE client ---------------------------------------------------------------------------------------------


@dataclass
class Frame:
    id: str | None = None
    event: str | None = None
    data: str | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> Any:
        assert self.data is not None
        return msgspec.json.decode(self.data)


def parse_frame(raw: bytes) -> Frame:
    frame = Frame()
    data: list[str] = []
    for line in raw.decode().split("\r\n"):
        if line.startswith(":"):
            frame.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(": ")
        if name == "id":
            frame.id = value
        elif name == "event":
            frame.event = value
        elif name == "data":
            data.append(value)
        else:
            raise AssertionError(f"unexpected SSE line {line!r}")
    frame.data = "\n".join(data) if data else None
    return frame


class SseReader:
    """Frames of one open text/event-stream response, as they arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._chunks = response.aiter_raw()
        self._buffer = b""
        self._frames: deque[bytes] = deque()

    async def raw_frame(self) -> bytes | None:
        """The next frame's bytes; None once the server ended the stream."""
        while not self._frames:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                return None
            parts = (self._buffer + chunk).split(SEP + SEP)
            self._buffer = parts.pop()
            self._frames.extend(parts)
        return self._frames.popleft()

    async def frames_block(self) -> bytes | None:
        """Every complete frame read so far, as one block of bytes (b"" if none); None once the stream ended."""
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            return None
        complete, _, self._buffer = (self._buffer + chunk).rpartition(SEP + SEP)
        held = b"".join(frame + SEP + SEP for frame in self._frames)
        self._frames.clear()
        return held + complete + SEP + SEP if complete else held

    async def frame(self, timeout: float = 5) -> Frame | None:
        async with asyncio.timeout(timeout):
            raw = await self.raw_frame()
        return None if raw is None else parse_frame(raw)

    async def event(self, timeout: float = 5) -> Frame | None:
        """The next frame that is not only comments."""
        while (frame := await self.frame(timeout)) is not None and frame.event is None:
            pass
        return frame

    async def events(self, count: int, timeout: float = 5) -> list[Frame]:
        frames = []
        for _ in range(count):
            frame = await self.event(timeout)
            assert frame is not None, f"the stream ended after {len(frames)} of {count} events"
            frames.append(frame)
        return frames


@asynccontextmanager
async def open_stream(client: httpx.AsyncClient, url: str, token: str, **params: Any) -> AsyncIterator[SseReader]:
    """A stream that answered `: ready`: from now on it misses nothing."""
    async with client.stream("GET", url, headers=bearer(token), params=params) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(response)
        first = await reader.frame()
        assert first is not None and first.comments == ["ready"], first
        yield reader


def workspace_url(server: Server, workspace_id: str) -> str:
    return f"{server.url}/api/stream/workspaces/{workspace_id}"


def user_url(server: Server) -> str:
    return f"{server.url}/api/stream/user"


def event(name: str = "x", **fields: Any) -> dict[str, Any]:
    return {"name": name, "external_customer_id": "c1", "external_id": uuid.uuid4().hex, **fields}


async def ingest(client: httpx.AsyncClient, server: Server, token: str, events: list[dict[str, Any]]) -> dict[str, int]:
    response = await client.post(f"{server.url}/api/events/ingest", json={"events": events}, headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()


def external_ids(frames: list[Frame]) -> list[str]:
    return [frame.json["external_id"] for frame in frames]


async def numsub(redis_url: str, workspace_id: str) -> int:
    redis = Redis.from_url(redis_url)
    try:
        return int((await redis.pubsub_numsub(channel_name(workspace_id)))[0][1])
    finally:
        await redis.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 3) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


# (a) delivery across processes ----------------------------------------------------------------------------


def test_delivery_within_one_second_across_two_processes(pair: list[ApiServer], tenant: Tenant) -> None:
    subscriber_side, ingest_side = pair

    async def timed(reader: SseReader, into: list[tuple[float, Frame]]) -> None:
        while (frame := await reader.event(timeout=30)) is not None:
            into.append((time.monotonic(), frame))

    async def scenario() -> None:
        async with (
            async_client() as client,
            open_stream(client, workspace_url(subscriber_side, tenant.id), tenant.token) as workspace_stream,
            open_stream(client, user_url(subscriber_side), tenant.member) as user_stream,
        ):
            received: dict[str, list[tuple[float, Frame]]] = {"workspace": [], "user": []}
            readers = [asyncio.create_task(timed(workspace_stream, received["workspace"])),
                       asyncio.create_task(timed(user_stream, received["user"]))]
            acked = []
            for round_ in range(5):
                await ingest(client, ingest_side, tenant.token, [event(f"round.{round_}")])
                acked.append(time.monotonic())
                await asyncio.sleep(0.1)
            await eventually(lambda: _gathered(received, 5))
            for reader in readers:
                reader.cancel()
            for frames in received.values():
                assert [frame.event for _, frame in frames] == [f"round.{round_}" for round_ in range(5)]
                assert all(at - ack < 1.0 for (at, _), ack in zip(frames, acked, strict=True))
            # Each frame is the stored event, as the API returns it.
            for _, frame in received["workspace"]:
                response = await client.get(f"{ingest_side.url}/api/events/{frame.id}", headers=bearer(tenant.token))
                stored = response.json()
                stored.pop("child_count")
                assert frame.json == stored
                assert frame.id == stored["id"] and frame.event == stored["name"]

    run(scenario())


async def _gathered(received: dict[str, list[tuple[float, Frame]]], count: int) -> bool:
    return all(len(frames) >= count for frames in received.values())


# (b) name filter and dedup ----------------------------------------------------------------------------------


def test_name_filter(pair: list[ApiServer], tenant: Tenant) -> None:
    async def scenario() -> None:
        async with (
            async_client() as client,
            open_stream(client, workspace_url(pair[0], tenant.id), tenant.token, name=["a", "b"]) as a_or_b,
            open_stream(client, user_url(pair[1]), tenant.viewer, name="b") as only_b,
            open_stream(client, workspace_url(pair[1], tenant.id), tenant.admin) as everything,
        ):
            names = ["a", "c", "b", "c", "a"]
            await ingest(client, pair[1], tenant.token, [event(name) for name in names])
            await ingest(client, pair[0], tenant.token, [event("c"), event("b")])
            assert [frame.event for frame in await a_or_b.events(4)] == ["a", "b", "a", "b"]
            assert [frame.event for frame in await only_b.events(2)] == ["b", "b"]
            assert [frame.event for frame in await everything.events(7)] == names + ["c", "b"]

    run(scenario())


def test_duplicates_are_never_streamed(pair: list[ApiServer], tenant: Tenant) -> None:
    async def scenario() -> None:
        async with (
            async_client() as client,
            open_stream(client, workspace_url(pair[0], tenant.id), tenant.token) as stream,
        ):
            first, second = event(external_id="dup-1"), event(external_id="dup-2")
            assert await ingest(client, pair[1], tenant.token, [first]) == {"inserted": 1, "duplicates": 0}
            assert await ingest(client, pair[0], tenant.token, [first]) == {"inserted": 0, "duplicates": 1}
            counts = await ingest(client, pair[1], tenant.token, [second, second, first])
            assert counts == {"inserted": 1, "duplicates": 2}
            await ingest(client, pair[1], tenant.token, [event(external_id="sentinel")])
            assert external_ids(await stream.events(3)) == ["dup-1", "dup-2", "sentinel"]

    run(scenario())


def test_frames_survive_line_breaks_in_names_and_metadata(pair: list[ApiServer], tenant: Tenant) -> None:
    async def scenario() -> None:
        async with (
            async_client() as client,
            open_stream(client, workspace_url(pair[0], tenant.id), tenant.token) as stream,
        ):
            await ingest(client, pair[0], tenant.token, [event("two\nlines", metadata={"text": "a\nb\r\nc"})])
            (frame,) = await stream.events(1)
            assert frame.event == "twolines"
            assert frame.json["name"] == "two\nlines" and frame.json["metadata"] == {"text": "a\nb\r\nc"}

    run(scenario())


# (c) auth -----------------------------------------------------------------------------------------------


def test_auth(pair: list[ApiServer], tenant: Tenant, other_tenant: Tenant) -> None:
    server = pair[0]

    def status(url: str, token: str | None) -> tuple[int, dict[str, Any]]:
        with sync_client() as http:
            response = http.get(url, headers=bearer(token) if token else {})
        return response.status_code, response.json()

    code, body = status(workspace_url(server, tenant.id), None)
    assert code == 401 and body["status_code"] == 401
    assert status(user_url(server), None)[0] == 401
    assert status(user_url(server), "evt_unknown")[0] == 401
    assert status(workspace_url(server, tenant.id), "evt_unknown")[0] == 401
    for token in (other_tenant.token, other_tenant.admin):
        code, body = status(workspace_url(server, tenant.id), token)
        assert code == 404 and body == {"status_code": 404, "detail": "Workspace not found", "extra": None}
    assert status(workspace_url(server, str(uuid.uuid4())), OPERATOR_TOKEN)[0] == 404
    assert status(f"{server.url}/api/stream/workspaces/not-a-uuid", tenant.token)[0] in (400, 404)

    async def scenario() -> None:
        async with (
            async_client() as client,
            open_stream(client, workspace_url(server, tenant.id), tenant.viewer) as viewer_stream,
            open_stream(client, user_url(server), other_tenant.member) as outsider,
            open_stream(client, user_url(server), OPERATOR_TOKEN) as operator,
        ):
            ours = event()
            await ingest(client, pair[1], tenant.token, [ours])
            theirs = event()
            await ingest(client, pair[1], other_tenant.token, [theirs])
            assert external_ids(await viewer_stream.events(1)) == [ours["external_id"]]
            assert external_ids(await outsider.events(1)) == [theirs["external_id"]]
            assert external_ids(await operator.events(2)) == [ours["external_id"], theirs["external_id"]]

    run(scenario())


def test_membership_removal_ends_coverage(
    in_thread: ThreadServer, api: TestClient, tenant: Tenant, other_tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routes, "MEMBERSHIP_RECHECK_SECONDS", 0.2)
    user = api.post("/api/users", json={"email": f"{uuid.uuid4().hex}@example.com"}).json()
    for workspace in (tenant, other_tenant):
        response = api.put(f"/api/workspaces/{workspace.id}/members/{user['id']}", json={"role": "viewer"})
        assert response.status_code == 200, response.text
    token = api.post(f"/api/users/{user['id']}/tokens").json()["token"]

    async def remove(client: httpx.AsyncClient, workspace: Tenant) -> None:
        response = await client.delete(f"{in_thread.url}/api/workspaces/{workspace.id}/members/{user['id']}",
                                       headers=bearer(OPERATOR_TOKEN))
        assert response.status_code == 204, response.text

    async def add(client: httpx.AsyncClient, workspace: Tenant) -> None:
        response = await client.put(f"{in_thread.url}/api/workspaces/{workspace.id}/members/{user['id']}",
                                    json={"role": "viewer"}, headers=bearer(OPERATOR_TOKEN))
        assert response.status_code == 200, response.text

    async def scenario() -> None:
        async with (
            async_client() as client,
            open_stream(client, user_url(in_thread), token) as user_stream,
            open_stream(client, workspace_url(in_thread, tenant.id), token) as workspace_stream,
        ):
            before = [event(), event()]
            await ingest(client, in_thread, tenant.token, [before[0]])
            await ingest(client, in_thread, other_tenant.token, [before[1]])
            assert external_ids(await user_stream.events(2)) == [item["external_id"] for item in before]
            assert external_ids(await workspace_stream.events(1)) == [before[0]["external_id"]]

            await remove(client, tenant)
            assert await workspace_stream.event(timeout=3) is None  # the workspace's stream ends
            await asyncio.sleep(1)  # several re-checks: the user stream now covers other_tenant alone
            after = [event(), event()]
            await ingest(client, in_thread, tenant.token, [after[0]])
            await ingest(client, in_thread, other_tenant.token, [after[1]])
            assert external_ids(await user_stream.events(1)) == [after[1]["external_id"]]

            await add(client, tenant)
            await asyncio.sleep(1)  # ...and both again
            again = event()
            await ingest(client, in_thread, tenant.token, [again])
            assert external_ids(await user_stream.events(1)) == [again["external_id"]]

            await remove(client, tenant)
            await remove(client, other_tenant)
            await asyncio.sleep(1)
            # Covering none, the user stream stays open, as one opened with none does, and joins the next.
            await add(client, other_tenant)
            await asyncio.sleep(1)
            last = event()
            await ingest(client, in_thread, other_tenant.token, [last])
            assert external_ids(await user_stream.events(1)) == [last["external_id"]]

    run(scenario())


# keep-alive and cleanup ---------------------------------------------------------------------------------


def test_keep_alive_comments(in_thread: ThreadServer, tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    assert routes.KEEPALIVE_SECONDS <= 15
    monkeypatch.setattr(routes, "KEEPALIVE_SECONDS", 0.2)

    async def scenario() -> None:
        async with (
            async_client() as client,
            open_stream(client, workspace_url(in_thread, tenant.id), tenant.token) as stream,
        ):
            started = time.monotonic()
            comments = []
            while time.monotonic() - started < 1.1:
                frame = await stream.frame(timeout=1)
                assert frame is not None and frame.event is None
                comments += frame.comments
            assert 3 <= comments.count("keep-alive") <= 6
            # ...and while events flow, too.
            await ingest(client, in_thread, tenant.token, [event() for _ in range(5)])
            seen = []
            while "keep-alive" not in seen:
                frame = await stream.frame(timeout=1)
                assert frame is not None
                seen += frame.comments

    run(scenario())


def test_disconnected_clients_are_cleaned_up_at_once(
    in_thread: ThreadServer, settings: Settings, tenant: Tenant
) -> None:
    assert settings.redis_url is not None
    redis_url = settings.redis_url

    async def nobody_left() -> bool:
        return await numsub(redis_url, tenant.id) == 0 and in_thread.task_count() <= baseline

    async def scenario() -> None:
        async with async_client() as client:
            async with open_stream(client, user_url(in_thread), tenant.member):
                pass  # one stream opened and closed, so the baseline counts no first-use task
        await eventually(lambda: _numsub_is(redis_url, tenant.id, 0))

        async with async_client() as client:
            async with (
                open_stream(client, workspace_url(in_thread, tenant.id), tenant.token),
                open_stream(client, user_url(in_thread), tenant.member),
                open_stream(client, workspace_url(in_thread, tenant.id), tenant.viewer, name="x"),
            ):
                assert await numsub(redis_url, tenant.id) == 1  # one Redis subscription per process
                assert in_thread.task_count() > baseline
        await eventually(nobody_left, timeout=2)

        # A client that hangs up in the middle of a burst, with unread frames on the wire.
        async with async_client() as client:
            async with open_stream(client, workspace_url(in_thread, tenant.id), tenant.token) as stream:
                await ingest(client, in_thread, tenant.token, [event(metadata={"pad": "p" * 2000}) for _ in range(90)])
                await stream.events(3)
        await eventually(nobody_left, timeout=2)

    baseline = in_thread.task_count()
    run(scenario())


async def _numsub_is(redis_url: str, workspace_id: str, count: int) -> bool:
    return await numsub(redis_url, workspace_id) == count


# (d) fan-out --------------------------------------------------------------------------------------------


def test_100_subscribers_get_10000_events_exactly_once_in_order(pair: list[ApiServer], tenant: Tenant) -> None:
    subscribers, producers, batches, per_batch = 100, 2, 10, 500
    expected = {producer: [f"p{producer}-{i}" for i in range(batches * per_batch)] for producer in range(producers)}
    total = producers * batches * per_batch

    async def subscribe(client: httpx.AsyncClient, index: int, ready: asyncio.Event, started: list[int]) -> list[str]:
        server = pair[index % 2]
        if index % 4 < 2:
            url, token = workspace_url(server, tenant.id), tenant.token
        else:
            url, token = user_url(server), tenant.member
        seen: list[bytes] = []
        async with open_stream(client, url, token) as stream:
            started.append(index)
            if len(started) == subscribers:
                ready.set()
            while len(seen) < total:
                # Parsed a block at a time: the client shares two cores with both servers and ClickHouse.
                block = await stream.frames_block()
                assert block is not None, f"subscriber {index}: the stream ended after {len(seen)} events"
                found = EXTERNAL_ID.findall(block)
                assert b"event: overflow" not in block and b"event: unavailable" not in block, (
                    f"subscriber {index} was cut off after {len(seen) + len(found)} events: {block[-120:]!r}")
                assert len(found) == block.count(b"\r\nevent: "), "an event frame without its data"
                seen += found
        return [item.decode() for item in seen]

    async def produce(client: httpx.AsyncClient, producer: int) -> None:
        ids = expected[producer]
        for start in range(0, len(ids), per_batch):
            batch = [{"name": f"load.{producer}", "external_customer_id": "c1", "external_id": external_id}
                     for external_id in ids[start:start + per_batch]]
            await ingest(client, pair[producer % 2], tenant.token, batch)

    async def scenario() -> None:
        async with async_client() as client:
            ready, started = asyncio.Event(), []
            readers = [asyncio.create_task(subscribe(client, index, ready, started)) for index in range(subscribers)]
            await asyncio.wait_for(ready.wait(), 30)
            began = time.monotonic()
            await asyncio.gather(*(produce(client, producer) for producer in range(producers)))
            results = await asyncio.gather(*readers)
            print(f"\n{subscribers} subscribers x {total} events delivered in {time.monotonic() - began:.1f}s")
        for seen in results:
            assert len(seen) == total and len(set(seen)) == total
            for producer, ids in expected.items():
                assert [item for item in seen if item.startswith(f"p{producer}-")] == ids

    run(scenario(), timeout=120)


def test_many_small_producers_at_once_lose_nothing(pair: list[ApiServer], tenant: Tenant) -> None:
    """The writer coalesces concurrent requests into one insert, so their publishes all start together."""
    producers = 200

    async def scenario() -> None:
        async with (
            async_client() as client,
            open_stream(client, workspace_url(pair[0], tenant.id), tenant.token) as stream,
        ):
            sent = [event(f"small.{i}") for i in range(producers)]
            await asyncio.gather(*(ingest(client, pair[1], tenant.token, [item]) for item in sent))
            received = await stream.events(producers, timeout=10)
            assert sorted(external_ids(received)) == sorted(item["external_id"] for item in sent)

    run(scenario())


def test_simultaneous_publishes_beyond_the_redis_pool_are_all_delivered(redis_process: RedisProcess) -> None:
    """Broker level, where the moment is exact: requests finishing one coalesced insert publish together."""
    publishes = 300

    async def scenario() -> None:
        broker = RedisBroker(redis_process.url)
        await broker.start()
        try:
            async with broker.subscribe([f"pool-{uuid.uuid4()}"]) as sub:
                channel = sub.workspace_ids[0]
                await asyncio.gather(*(broker.publish(channel, [(f"e{i}", "x", b"{}")]) for i in range(publishes)))
                received = set()
                async with asyncio.timeout(5):
                    async for item in sub:
                        received.add(item.event_id)
                        if len(received) == publishes:
                            break
        finally:
            await broker.stop()

    run(scenario())


def test_frames_are_encoded_once_per_process_and_exactly() -> None:
    cache = routes.FrameCache(2)
    first, second, third = (StreamItem("event", f"e{i}", "n\nx", b'{"a":\n1}') for i in range(3))
    frame = cache.frame(first)
    assert frame == b'id: e0\r\nevent: nx\r\ndata: {"a":\r\ndata: 1}\r\n\r\n' == routes.event_frame(first)
    assert cache.frame(first) is frame  # the second subscriber gets the same bytes, not a new encoding
    cache.frame(second)
    cache.frame(third)  # evicts the oldest
    assert cache.frame(first) is not frame and cache.frame(first) == frame


# (e) overflow -------------------------------------------------------------------------------------------


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """An HTTP/1.1 chunked body: its content, and whether its last chunk arrived."""
    content, rest = b"", body
    while SEP in rest:
        size_line, _, after = rest.partition(SEP)
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return content, True
        if len(after) < size + 2:
            break
        content += after[:size]
        rest = after[size + 2:]
    return content, False


def test_a_stalled_consumer_overflows_and_the_others_do_not(in_thread: ThreadServer, tenant: Tenant) -> None:
    batches, per_batch = 60, 50  # each batch within the queue; together far beyond what socket buffers hold
    pad = "p" * 4000

    def stalled_reader() -> tuple[socket.socket, bytes]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # stall sooner
        sock.connect(("127.0.0.1", in_thread.port))
        sock.sendall(f"GET /api/stream/workspaces/{tenant.id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Authorization: Bearer {tenant.token}\r\n\r\n".encode())
        head = b""
        while b": ready" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head
        return sock, head

    async def scenario(sock: socket.socket) -> None:
        async with (
            async_client() as client,
            open_stream(client, workspace_url(in_thread, tenant.id), tenant.member) as reading,
        ):
            for number in range(batches):
                # Paced on the reading subscriber, who must get everything while the stalled one is cut off.
                await ingest(client, in_thread, tenant.token, [event(metadata={"pad": pad}) for _ in range(per_batch)])
                assert len(await reading.events(per_batch)) == per_batch, number

    sock, body = stalled_reader()
    try:
        run(scenario(sock), timeout=120)
        sock.settimeout(10)
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            body += chunk
    finally:
        sock.close()
    content, complete = dechunk(body.partition(b"\r\n\r\n")[2])
    frames = [parse_frame(raw) for raw in content.split(SEP + SEP) if raw]
    assert complete, "the stalled stream was not ended"
    assert frames[-1].event == "overflow" and frames[-1].id is None and "detail" in frames[-1].json
    delivered = [frame for frame in frames if frame.id is not None]
    assert 0 < len(delivered) < batches * per_batch


# (f) Redis outage -----------------------------------------------------------------------------------------


def test_redis_outage_degrades_streams_and_pauses_ingestion(
    clickhouse_url: str, tenant: Tenant, tmp_path_factory: pytest.TempPathFactory
) -> None:
    redis = start_redis()  # our own: the session's redis-server stays up for the other tests
    servers: list[ApiServer] = []
    try:
        servers = start_servers(2, clickhouse_url, redis.url, tmp_path_factory.mktemp("outage"))
        run(_outage(redis, *servers, tenant), timeout=120)
    finally:
        for server in servers:
            server.stop()
        redis.cleanup()


async def _outage(redis: RedisProcess, subscriber_side: ApiServer, ingest_side: ApiServer, tenant: Tenant) -> None:
    statuses: list[int] = []
    stream_url = workspace_url(subscriber_side, tenant.id)

    async def keep_ingesting(client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            response = await client.post(f"{ingest_side.url}/api/events/ingest", json={"events": [event("steady")]},
                                         headers=bearer(tenant.token))
            statuses.append(response.status_code)
            if response.status_code == 503:
                assert response.headers["retry-after"] and "Redis" in response.json()["detail"]
            await asyncio.sleep(0.05)

    async with async_client() as client:
        async with open_stream(client, workspace_url(subscriber_side, tenant.id), tenant.token) as stream:
            first = event("before")
            await ingest(client, ingest_side, tenant.token, [first])
            assert external_ids(await stream.events(1)) == [first["external_id"]]

            stop = asyncio.Event()
            producer = asyncio.create_task(keep_ingesting(client, stop))
            await asyncio.sleep(0.3)
            await asyncio.to_thread(redis.kill)
            frames = []
            while (frame := await stream.event(timeout=10)) is not None:
                frames.append(frame)
            assert frames[-1].event == "unavailable" and frames[-1].id is None

            during = len(statuses)
            await asyncio.sleep(1.5)
            # Ingestion answers 503 while its claims cannot be taken across processes: never a silent duplicate.
            # (The first may have taken its claims just before Redis went.)
            assert set(statuses[during + 1:]) == {503}, statuses[during:]
            async with client.stream("GET", stream_url, headers=bearer(tenant.token)) as response:
                assert response.status_code == 200
                assert (await SseReader(response).event()).event == "unavailable"  # type: ignore[union-attr]

            await asyncio.to_thread(redis.start)
            # Publishing backs off this long after a failure; events published within it are dropped, unseen.
            await asyncio.sleep(DEFAULT_PUBLISH_RETRY_AFTER + 0.5)
            stop.set()
            await producer
        assert set(statuses) == {200, 503} and statuses[-1] == 200, statuses

        # Streams resume: the first attempt may meet a connection that died with the old server; clients retry.
        deadline = time.monotonic() + 10
        while True:
            async with client.stream("GET", stream_url, headers=bearer(tenant.token)) as response:
                reader = SseReader(response)
                if (await reader.frame()).comments == ["ready"]:  # type: ignore[union-attr]
                    after = event("after")
                    await ingest(client, ingest_side, tenant.token, [after])
                    assert external_ids(await reader.events(1, timeout=1)) == [after["external_id"]]
                    return
            assert time.monotonic() < deadline, "streams did not resume after Redis came back"
            await asyncio.sleep(0.2)
