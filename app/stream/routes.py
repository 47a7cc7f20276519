"""Live streams of stored events as Server-Sent Events (CONTRACT.md section 8).

A stream answers `: ready` once its subscription is live everywhere (so a client knows from then on it misses
nothing), then one frame per stored event: `id: <event id>` / `event: <event name>` / `data: <stored event JSON>`.
It ends with a final `event: overflow` or `event: unavailable` frame when the broker gives up on it; clients
reconnect. Streams of users re-read their memberships periodically and follow them.
"""

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from uuid import UUID

import msgspec
from clickhouse_connect.driver.asyncclient import AsyncClient
from litestar import Controller, get
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import State
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.response.sse import DEFAULT_SEPARATOR

from app.auth.service import Principal, readable_workspaces, workspace_access
from app.stream.broker import ITEM_EVENT, ITEM_OVERFLOW, ITEM_UNAVAILABLE, Broker, StreamItem, Subscription

log = logging.getLogger(__name__)

# The contract asks for a comment line at least every 15 s; sent on this clock whether or not events flow.
KEEPALIVE_SECONDS = 10.0
# How stale a user's stream may be after a membership change (a ClickHouse query per user stream per period).
MEMBERSHIP_RECHECK_SECONDS = 5.0
# Frames are written in chunks of whatever is ready, up to this many: one write per event would cost more than
# the rest of the delivery together once a workspace has many subscribers.
MAX_FRAMES_PER_CHUNK = 1000
# Encoded frames kept per process (about 0.5 KiB each), enough for the backlog of streams a little behind.
FRAME_CACHE_SIZE = 10_000
FRAME_CACHE_STATE_KEY = "stream_frame_cache"

SEP = DEFAULT_SEPARATOR.encode()
READY = b": ready" + SEP + SEP
KEEPALIVE = b": keep-alive" + SEP + SEP
FINAL_DETAIL = {
    ITEM_OVERFLOW: "this client fell behind the live stream; reconnect",
    ITEM_UNAVAILABLE: "live events are unavailable right now; reconnect shortly",
}

Coverage = Callable[[], Awaitable[set[str] | None]]


@dataclass
class _Chunk(ServerSentEventMessage):
    """Frames we encoded ourselves, written at once through Litestar's SSE response."""

    raw: bytes = b""

    def encode(self) -> bytes:
        return self.raw


def _field(name: bytes, value: bytes) -> bytes:
    # An SSE field ends at the first line break: a value holding one is split over several lines of the field,
    # which a client joins back with "\n" (JSON stays the same JSON: a raw line break only sits between tokens).
    if b"\n" in value or b"\r" in value:
        lines = value.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        return b"".join(name + b": " + line + SEP for line in lines)
    return name + b": " + value + SEP


def event_frame(item: StreamItem) -> bytes:
    # An event name may hold a line break; on the `event:` line it would end the field, so it is dropped there.
    name = item.name
    if "\n" in name or "\r" in name:
        name = name.replace("\r", "").replace("\n", "")
    return b"id: " + item.event_id.encode() + SEP + b"event: " + name.encode() + SEP + _field(b"data", item.data) + SEP


def final_frame(kind: str) -> bytes:
    # A data line is needed: browsers do not dispatch an event whose data is empty.
    data = msgspec.json.encode({"detail": FINAL_DETAIL.get(kind, FINAL_DETAIL[ITEM_UNAVAILABLE])})
    return b"event: " + kind.encode() + SEP + b"data: " + data + SEP + SEP


class FrameCache:
    """Recent events' frames, shared by the streams of a process.

    The broker hands every subscriber of a message the same StreamItem objects, so keyed by object identity an
    event is encoded once however many streams send it; the entry holds the item, so its id is not reused.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._frames: OrderedDict[int, tuple[StreamItem, bytes]] = OrderedDict()

    def frame(self, item: StreamItem) -> bytes:
        entry = self._frames.get(id(item))
        if entry is not None and entry[0] is item:
            return entry[1]
        frame = event_frame(item)
        if len(self._frames) >= self._size:
            self._frames.popitem(last=False)
        self._frames[id(item)] = (item, frame)
        return frame


def frame_cache(state: State) -> FrameCache:
    """The process's cache, made on first use (it lives as long as the application)."""
    cache = state.get(FRAME_CACHE_STATE_KEY)
    if cache is None:
        cache = state[FRAME_CACHE_STATE_KEY] = FrameCache(FRAME_CACHE_SIZE)
    return cache


async def _take(sub: Subscription, timeout: float) -> list[StreamItem] | None:
    """Every item ready now, waiting up to `timeout` for the first: [] if none came, None if the stream ended.
    Taking all that is ready lets a stream write them in one chunk instead of once per event."""
    try:
        if sub.buffered:
            items = [await anext(sub)]
        else:
            async with asyncio.timeout(timeout):
                items = [await anext(sub)]
        while len(items) < MAX_FRAMES_PER_CHUNK and sub.buffered:
            items.append(await anext(sub))
    except TimeoutError:
        return []
    except StopAsyncIteration:
        return None
    return items


def _encode(items: list[StreamItem], cache: FrameCache) -> tuple[list[bytes], bool]:
    """The frames of these items, and whether the last of them ends the stream."""
    frames = []
    for item in items:
        if item.kind != ITEM_EVENT:
            frames.append(final_frame(item.kind))
            return frames, True
        frames.append(cache.frame(item))
    return frames, False


class _Live:
    """One client's stream: its current subscription, and the workspaces it covers."""

    def __init__(self, broker: Broker, cache: FrameCache, workspace_ids: set[str], names: frozenset[str] | None,
                 coverage: Coverage | None) -> None:
        self.broker = broker
        self.cache = cache
        self.names = names
        self.coverage = coverage
        self.workspace_ids = workspace_ids
        self._sub: Subscription | None = None

    @property
    def sub(self) -> Subscription:
        # Subscribed on the first read of the body, so a response that is never sent holds nothing.
        if self._sub is None:
            self._sub = self.broker.subscribe(sorted(self.workspace_ids), self.names)
        return self._sub

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.close()

    async def follow_coverage(self) -> tuple[list[StreamItem], bool]:
        """Resubscribe if the readable workspaces changed: (items the old subscription still held, still open)."""
        assert self.coverage is not None
        try:
            wanted = await self.coverage()
        except Exception as error:  # noqa: BLE001 - the store is down; the next period tries again
            log.warning("could not re-check a stream's workspaces: %s", error)
            return [], True
        if wanted is None:
            return [], False
        if wanted == set(self.sub.workspace_ids):
            return [], True
        # No await from here to the swap: whatever the broker dispatched before the new subscription existed is
        # in the old one's backlog, everything after goes to the new one, so nothing is lost or sent twice.
        old, self._sub = self.sub, self.broker.subscribe(sorted(wanted), self.names)
        held = []
        while old.buffered:
            held.append(await anext(old))
        await old.close()
        return held, True


async def _frames(live: _Live) -> AsyncGenerator[ServerSentEventMessage, None]:
    loop = asyncio.get_running_loop()
    try:
        await live.sub.ready()
        if not live.sub.ended:  # else its backlog holds why (`unavailable`), sent below
            yield _Chunk(raw=READY)
        keepalive_at = loop.time() + KEEPALIVE_SECONDS
        recheck_at = loop.time() + MEMBERSHIP_RECHECK_SECONDS if live.coverage else float("inf")
        held: list[StreamItem] = []
        while True:
            taken = await _take(live.sub, 0 if held else min(keepalive_at, recheck_at) - loop.time())
            frames, final = _encode(held + (taken or []), live.cache)
            held = []
            if loop.time() >= keepalive_at and not final:
                frames.append(KEEPALIVE)
                keepalive_at = loop.time() + KEEPALIVE_SECONDS
            if frames:
                yield _Chunk(raw=b"".join(frames))
            if final or taken is None:
                return
            if loop.time() >= recheck_at:
                held, still_open = await live.follow_coverage()
                if not still_open:
                    return
                await live.sub.ready()
                recheck_at = loop.time() + MEMBERSHIP_RECHECK_SECONDS
    finally:
        await live.close()


def _stream(live: _Live) -> ServerSentEvent:
    frames = _frames(live)
    # Closing the generator after the response, however it ended: a client that disconnects while a chunk is
    # being written leaves it suspended, and its subscription must not wait for the garbage collector.
    return ServerSentEvent(frames, background=BackgroundTask(_close_stream, frames, live))


async def _close_stream(frames: AsyncGenerator[ServerSentEventMessage, None], live: _Live) -> None:
    await frames.aclose()
    await live.close()


def _readable_among(client: AsyncClient, principal: Principal, among: set[str] | None) -> Coverage:
    """What a stream covers now: every readable workspace (a user's stream goes on with none, as it may start
    with none), or those of `among`, None once none is left (a workspace's stream ends)."""
    async def coverage() -> set[str] | None:
        readable = {str(workspace_id) for workspace_id in await readable_workspaces(client, principal)}
        return readable if among is None else (readable & among) or None

    return coverage


def _names(name: list[str] | None) -> frozenset[str] | None:
    return frozenset(name) if name else None


class StreamController(Controller):
    path = "/api/stream"
    tags = ["stream"]

    @get("/workspaces/{workspace_id:uuid}", media_type="text/event-stream")
    async def workspace_stream(
        self, client: AsyncClient, principal: Principal, state: State, workspace_id: UUID,
        name: list[str] | None = None,
    ) -> ServerSentEvent:
        await workspace_access(client, principal, workspace_id)
        workspace = {str(workspace_id)}
        # A producer token's workspace cannot change; a user's membership can be removed mid-stream.
        coverage = None if principal.kind == "workspace" else _readable_among(client, principal, workspace)
        return _stream(_Live(state.broker, frame_cache(state), workspace, _names(name), coverage))

    @get("/user", media_type="text/event-stream")
    async def user_stream(
        self, client: AsyncClient, principal: Principal, state: State, name: list[str] | None = None,
    ) -> ServerSentEvent:
        workspaces = {str(workspace_id) for workspace_id in await readable_workspaces(client, principal)}
        coverage = None if principal.kind == "workspace" else _readable_among(client, principal, None)
        return _stream(_Live(state.broker, frame_cache(state), workspaces, _names(name), coverage))
