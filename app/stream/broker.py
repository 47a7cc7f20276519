"""Live fan-out of stored events to stream (SSE) subscribers.

Every event is published once, after its insert is acknowledged, to a channel
per workspace. With Redis each API process holds one pub/sub connection and
subscribes once per channel it has local listeners for; without Redis a single
process fans out in memory. Live streams are best effort by design: a slow
consumer or a Redis outage ends the affected streams with a final item telling
the client why, and never slows ingestion or the other subscribers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Protocol

import msgspec
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "events:"
DEFAULT_QUEUE_SIZE = 1000
# Bounded so a stream never hangs on a Redis that accepts connections but does
# not answer; the subscriber gets `unavailable` and its client reconnects.
DEFAULT_READY_TIMEOUT = 5.0
# After a failed PUBLISH, batches are dropped without trying for this long, so
# an unreachable Redis costs ingestion one connect timeout, not one per batch.
DEFAULT_PUBLISH_RETRY_AFTER = 1.0
# Publishes beyond this many at once wait for a connection (at most the socket timeout) instead of failing:
# requests coalesced into one insert all publish at the same moment, and a plain pool (100 connections) would
# drop the events of the 101st and later, unseen by their subscribers.
PUBLISH_CONNECTIONS = 32
PUBLISH_TIMEOUT = 5.0

ITEM_EVENT = "event"
ITEM_OVERFLOW = "overflow"
ITEM_UNAVAILABLE = "unavailable"


class StreamItem(msgspec.Struct, frozen=True):
    kind: str  # "event" | "overflow" | "unavailable"
    event_id: str = ""
    name: str = ""
    data: bytes = b""  # the stored event as JSON bytes (the SSE `data:` line)


OVERFLOW = StreamItem(kind=ITEM_OVERFLOW)
UNAVAILABLE = StreamItem(kind=ITEM_UNAVAILABLE)

# One PUBLISH carries a whole batch as a msgpack list of (event_id, name, json);
# msgpack keeps the JSON bytes as binary instead of re-escaping them.
_BATCH_ENCODER = msgspec.msgpack.Encoder()
_BATCH_DECODER = msgspec.msgpack.Decoder(list[tuple[str, str, bytes]])


def channel_name(workspace_id: str) -> str:
    return f"{CHANNEL_PREFIX}{workspace_id}"


def _to_items(rows: Sequence[tuple[str, str, bytes]]) -> list[StreamItem]:
    return [StreamItem(ITEM_EVENT, event_id, name, bytes(data)) for event_id, name, data in rows]


class _Hub(Protocol):
    """What a Subscription needs from the broker that created it."""

    def _detach(self, sub: Subscription) -> None: ...

    def _is_active(self, sub: Subscription) -> bool: ...


class Subscription:
    """A live stream of StreamItems for one client.

    Iteration ends after an `overflow` or `unavailable` item, or once close()
    is called. close() is synchronous in effect (it never waits on Redis), so
    it is safe in `finally` blocks of cancelled tasks; the broker unsubscribes
    the Redis channel in the background.
    """

    def __init__(
        self,
        hub: _Hub,
        workspace_ids: tuple[str, ...],
        names: frozenset[str] | None,
        queue_size: int,
        ready_timeout: float,
    ) -> None:
        self.workspace_ids = workspace_ids
        self.names = names
        self._hub = hub
        self._queue_size = max(1, queue_size)
        self._ready_timeout = ready_timeout
        self._buffer: deque[StreamItem] = deque()
        # Signals "something changed" (items, end, activation); waiters re-check
        # their condition, so one event serves both ready() and __anext__.
        self._wakeup = asyncio.Event()
        self._ended = False  # no more items will be accepted
        self._closed = False
        self._readied = False

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def buffered(self) -> int:
        """Items ready to be taken without waiting: a consumer may take them all before writing once."""
        return len(self._buffer)

    async def ready(self) -> None:
        """Return once the subscription is live everywhere (Redis SUBSCRIBE confirmed).

        Never raises for Redis trouble: the subscription then ends with an
        `unavailable` item instead.
        """
        if self._readied:
            return
        try:
            async with asyncio.timeout(self._ready_timeout):
                while not (self._ended or self._hub._is_active(self)):
                    self._wakeup.clear()
                    await self._wakeup.wait()
        except TimeoutError:
            logger.warning("stream subscription not confirmed within %.1fs", self._ready_timeout)
            self._end(UNAVAILABLE)
        self._readied = True

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> StreamItem:
        if not self._readied:
            await self.ready()
        while not self._buffer:
            if self._ended:
                await self.close()
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._buffer.popleft()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        if not self._ended:
            self._ended = True
            self._hub._detach(self)
        self._wakeup.set()

    async def __aenter__(self) -> Subscription:
        await self.ready()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # Called by brokers, always from the event loop thread.

    def _deliver(self, items: list[StreamItem]) -> None:
        if self._ended:
            return
        if self.names is not None:
            names = self.names
            items = [item for item in items if item.name in names]
            if not items:
                return
        buffered = len(self._buffer)
        # The bound applies to backlog: a single batch larger than the queue is
        # still accepted by a consumer that has caught up, otherwise one big
        # ingestion request would end every stream at once.
        if buffered and buffered + len(items) > self._queue_size:
            self._end(OVERFLOW)
            return
        self._buffer.extend(items)
        self._wakeup.set()

    def _end(self, final: StreamItem) -> None:
        # Items already buffered stay ahead of the final one, so the client
        # learns the last event id it saw before the gap.
        if self._ended:
            return
        self._ended = True
        self._buffer.append(final)
        self._wakeup.set()
        self._hub._detach(self)

    def _wake(self) -> None:
        self._wakeup.set()


class Broker(Protocol):
    kind: str  # "redis" or "absent" (in-process)

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, workspace_id: str, items: list[tuple[str, str, bytes]]) -> None: ...

    def listened(self, workspace_id: str) -> bool:
        """Whether events published now for this workspace may reach a subscriber: when not, a publisher
        need not encode them."""
        ...

    def subscribe(
        self, workspace_ids: list[str], names: frozenset[str] | None = None
    ) -> Subscription: ...

    async def healthy(self) -> bool: ...


def _unique(workspace_ids: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(workspace_ids))


class LocalBroker:
    """In-process fan-out, for a single API process without Redis."""

    kind = "absent"

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self._queue_size = queue_size
        self._channels: dict[str, set[Subscription]] = {}
        self._stopped = False

    async def start(self) -> None:
        self._stopped = False

    async def stop(self) -> None:
        self._stopped = True
        subs = {sub for subs in self._channels.values() for sub in subs}
        self._channels.clear()
        for sub in subs:
            sub._end(UNAVAILABLE)

    async def publish(self, workspace_id: str, items: list[tuple[str, str, bytes]]) -> None:
        subs = self._channels.get(workspace_id)
        if subs and items:
            stream_items = _to_items(items)
            for sub in tuple(subs):
                sub._deliver(stream_items)
        # Give woken consumers a turn, so back-to-back batches from one
        # ingestion request are drained rather than piling up into an overflow.
        await asyncio.sleep(0)

    def listened(self, workspace_id: str) -> bool:
        return bool(self._channels.get(workspace_id))

    def subscribe(
        self, workspace_ids: list[str], names: frozenset[str] | None = None
    ) -> Subscription:
        sub = Subscription(self, _unique(workspace_ids), names, self._queue_size, DEFAULT_READY_TIMEOUT)
        if self._stopped:
            sub._end(UNAVAILABLE)
            return sub
        for workspace_id in sub.workspace_ids:
            self._channels.setdefault(workspace_id, set()).add(sub)
        return sub

    async def healthy(self) -> bool:
        return True

    def _detach(self, sub: Subscription) -> None:
        for workspace_id in sub.workspace_ids:
            subs = self._channels.get(workspace_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._channels[workspace_id]

    def _is_active(self, sub: Subscription) -> bool:
        return True


class _Channel:
    """Local listeners of one Redis channel."""

    __slots__ = ("subscribers", "confirmed")

    def __init__(self) -> None:
        self.subscribers: set[Subscription] = set()
        self.confirmed = False  # Redis acknowledged our SUBSCRIBE


class RedisBroker:
    """Fan-out across API processes through Redis pub/sub.

    Two tasks per process: a housekeeper that alone sends SUBSCRIBE and
    UNSUBSCRIBE (so subscribe() and close() stay synchronous and cancel-safe),
    and a reader that owns the pub/sub connection's incoming side. On any
    pub/sub connection error every subscription ends with `unavailable` and the
    connection is thrown away; the next subscription opens a fresh one.
    """

    kind = "redis"

    def __init__(
        self,
        url: str,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        *,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        publish_retry_after: float = DEFAULT_PUBLISH_RETRY_AFTER,
    ) -> None:
        self._url = url
        self._queue_size = queue_size
        self._ready_timeout = ready_timeout
        self._publish_retry_after = publish_retry_after
        self._client: Redis | None = None
        self._pubsub_client: Redis | None = None
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()
        self._channels: dict[str, _Channel] = {}
        self._requested: set[str] = set()  # SUBSCRIBEd on the current connection
        # SUBSCRIBE acks still to come per channel: a channel unsubscribed and
        # resubscribed must not be confirmed by the ack of the earlier SUBSCRIBE.
        self._pending_acks: dict[str, int] = {}
        self._running = False
        self._stopped = False
        self._publish_paused_until = 0.0
        self._publish_failing = False
        self._dropped = 0

    async def start(self) -> None:
        if self._running:
            return
        # Publishing retries once at once: the first command after a Redis
        # restart meets a dead pooled connection and just needs a new one.
        self._client = Redis.from_pool(
            BlockingConnectionPool.from_url(
                self._url,
                max_connections=PUBLISH_CONNECTIONS,
                timeout=PUBLISH_TIMEOUT,
                socket_connect_timeout=2,
                socket_timeout=PUBLISH_TIMEOUT,
                retry=Retry(NoBackoff(), 1),
            )
        )
        # Pub/sub must not retry: redis-py would silently reconnect and
        # resubscribe, hiding the gap in which events were lost. We prefer to
        # end streams with `unavailable` and let clients reconnect.
        self._pubsub_client = Redis.from_url(
            self._url,
            socket_connect_timeout=2,
            socket_timeout=5,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
        )
        self._dirty = asyncio.Event()  # bound to the loop that runs the broker
        self._running = True
        self._stopped = False
        self._housekeeper = asyncio.create_task(self._keep_house(), name="stream-broker-housekeeper")

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._stopped = True
        tasks = [task for task in (self._housekeeper, self._reader) if task is not None]
        pubsub = self._pubsub
        self._housekeeper = None
        self._reader = None
        self._pubsub = None
        self._end_all()
        await _cancel_and_wait(tasks)
        await _close_quietly(pubsub)
        for client in (self._client, self._pubsub_client):
            if client is not None:
                try:
                    await client.aclose()
                except Exception:  # shutting down: nothing useful to do with it
                    logger.debug("closing redis client failed", exc_info=True)
        self._client = None
        self._pubsub_client = None

    async def publish(self, workspace_id: str, items: list[tuple[str, str, bytes]]) -> None:
        if not items:
            return
        client = self._client
        now = time.monotonic()
        if client is None or now < self._publish_paused_until:
            self._dropped += len(items)
            return
        try:
            await client.publish(channel_name(workspace_id), _BATCH_ENCODER.encode(items))
        except Exception as exc:  # never into ingestion: live delivery is best effort
            self._dropped += len(items)
            self._publish_paused_until = now + self._publish_retry_after
            if not self._publish_failing:
                self._publish_failing = True
                logger.warning("redis publish failed, dropping live events until it recovers: %s", exc)
            return
        if self._publish_failing:
            logger.info("redis publish recovered; %d live events were dropped", self._dropped)
            self._publish_failing = False
            self._dropped = 0

    def listened(self, workspace_id: str) -> bool:
        return True  # the subscribers of the other API processes are not known here

    def subscribe(
        self, workspace_ids: list[str], names: frozenset[str] | None = None
    ) -> Subscription:
        sub = Subscription(self, _unique(workspace_ids), names, self._queue_size, self._ready_timeout)
        if not self._running:
            if not self._stopped:
                raise RuntimeError("RedisBroker.subscribe() called before start()")
            sub._end(UNAVAILABLE)
            return sub
        for workspace_id in sub.workspace_ids:
            self._channels.setdefault(channel_name(workspace_id), _Channel()).subscribers.add(sub)
        self._dirty.set()
        return sub

    async def healthy(self) -> bool:
        client = self._client
        if client is None:
            return False
        try:
            async with asyncio.timeout(2):
                return bool(await client.ping())
        except Exception:
            return False

    def _detach(self, sub: Subscription) -> None:
        for workspace_id in sub.workspace_ids:
            channel = self._channels.get(channel_name(workspace_id))
            if channel is not None:
                channel.subscribers.discard(sub)
                if not channel.subscribers:
                    self._dirty.set()

    def _is_active(self, sub: Subscription) -> bool:
        for workspace_id in sub.workspace_ids:
            channel = self._channels.get(channel_name(workspace_id))
            if channel is None or not channel.confirmed:
                return False
        return True

    def _end_all(self) -> None:
        subs = {sub for channel in self._channels.values() for sub in channel.subscribers}
        self._channels.clear()
        self._requested.clear()
        self._pending_acks.clear()
        for sub in subs:
            sub._end(UNAVAILABLE)

    def _abandon_pubsub(self) -> tuple[PubSub | None, asyncio.Task[None] | None]:
        """Forget the current pub/sub connection and end every subscription."""
        pubsub, reader = self._pubsub, self._reader
        self._pubsub = None
        self._reader = None
        self._end_all()
        return pubsub, reader

    async def _keep_house(self) -> None:
        while self._running:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._reconcile()
            except Exception as exc:
                logger.warning("redis pub/sub unavailable, ending live streams: %s", exc)
                pubsub, reader = self._abandon_pubsub()
                await _cancel_and_wait([reader] if reader is not None else [])
                await _close_quietly(pubsub)

    async def _reconcile(self) -> None:
        for name in [name for name, channel in self._channels.items() if not channel.subscribers]:
            del self._channels[name]
        to_subscribe = [name for name in self._channels if name not in self._requested]
        to_unsubscribe = [name for name in self._requested if name not in self._channels]
        if to_unsubscribe:
            pubsub = self._pubsub
            assert pubsub is not None  # requested channels imply a connection
            self._requested.difference_update(to_unsubscribe)
            if not await self._send(pubsub, pubsub.unsubscribe, to_unsubscribe):
                return
        if to_subscribe:
            pubsub = self._pubsub
            if pubsub is None:
                assert self._pubsub_client is not None
                pubsub = self._pubsub = self._pubsub_client.pubsub()
            # Counted before sending: the reader may see the ack before we resume.
            self._requested.update(to_subscribe)
            for name in to_subscribe:
                self._pending_acks[name] = self._pending_acks.get(name, 0) + 1
            if not await self._send(pubsub, pubsub.subscribe, to_subscribe):
                return
            if self._reader is None:
                self._reader = asyncio.create_task(self._read(pubsub), name="stream-broker-reader")

    async def _send(
        self, pubsub: PubSub, command: Callable[..., Awaitable[object]], channels: list[str]
    ) -> bool:
        """Send a pub/sub command; False if the connection was abandoned meanwhile."""
        try:
            await command(*channels)
        except Exception:
            if pubsub is self._pubsub:
                raise
        if pubsub is self._pubsub:
            return True
        # The reader gave up on this connection while we were sending (its
        # streams already ended), and redis-py may even have reconnected it
        # for our command. Whoever subscribed since gets a fresh connection.
        await _close_quietly(pubsub)
        self._dirty.set()
        return False

    async def _read(self, pubsub: PubSub) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                kind = message["type"]
                if kind == "message":
                    self._dispatch(message["channel"], message["data"])
                    # Let the woken consumers drain before the next batch, so
                    # a burst of batches doesn't read as a stalled consumer.
                    await asyncio.sleep(0)
                elif kind == "subscribe":
                    self._confirm(message["channel"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if pubsub is self._pubsub:
                logger.warning("redis pub/sub connection lost, ending live streams: %s", exc)
                self._abandon_pubsub()
            await _close_quietly(pubsub)

    def _confirm(self, raw_channel: bytes | str) -> None:
        name = raw_channel.decode() if isinstance(raw_channel, bytes) else raw_channel
        left = self._pending_acks.get(name, 0) - 1
        if left > 0:
            self._pending_acks[name] = left
            return
        self._pending_acks.pop(name, None)
        channel = self._channels.get(name)
        if channel is None or name not in self._requested:
            return
        channel.confirmed = True
        for sub in tuple(channel.subscribers):
            sub._wake()

    def _dispatch(self, raw_channel: bytes | str, payload: bytes) -> None:
        name = raw_channel.decode() if isinstance(raw_channel, bytes) else raw_channel
        channel = self._channels.get(name)
        if channel is None or not channel.subscribers:
            return
        try:
            rows = _BATCH_DECODER.decode(payload)
        except msgspec.DecodeError as exc:
            logger.warning("dropping undecodable message on %s: %s", name, exc)
            return
        items = _to_items(rows)
        for sub in tuple(channel.subscribers):
            sub._deliver(items)


async def _cancel_and_wait(tasks: list[asyncio.Task[None]]) -> None:
    # redis-py sends through asyncio.wait_for, which on Python 3.11 swallows a
    # cancellation that races with the send completing; so cancel until done.
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)


async def _close_quietly(pubsub: PubSub | None) -> None:
    if pubsub is None:
        return
    try:
        await pubsub.aclose()
    except Exception:  # the connection is already broken; we only release it
        logger.debug("closing redis pub/sub failed", exc_info=True)


def make_broker(redis_url: str | None, queue_size: int = DEFAULT_QUEUE_SIZE) -> Broker:
    if redis_url:
        return RedisBroker(redis_url, queue_size)
    return LocalBroker(queue_size)
