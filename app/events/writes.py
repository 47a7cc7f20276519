"""Writes under way, so that a listing pinned to a moment counts the same rows on every one of its pages.

A row carries the moment it was stamped (an event's `ingested_at`, a customer's `created_at`), taken before its
insert, and is seen only once the insert ends. A listing whose pages all read "as of" its first page's moment
would miss, on that page, rows stamped earlier whose insert was still running, and count them on the next: a
customer's usage could change between pages, and the keyset skip or repeat it. So a write registers before it
stamps its rows, and a listing starts from `settled`: just before the earliest stamp still being written.
Across API processes the registrations are in Redis, a sorted set per workspace scored by when each began.
"""

import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from uuid import UUID

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A write registered longer ago than this is taken for one whose process died before it could unregister: the
# client gives an insert no longer (its send/receive timeout, app/warehouse/client.py).
STALE_MS = 60_000


def now_ms() -> int:
    return (datetime.now(UTC) - EPOCH) // timedelta(milliseconds=1)


def moment(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


class LocalWrites:
    """The writes of this process."""

    def __init__(self) -> None:
        # workspace -> (ms a write began -> how many writes began then and are still under way)
        self._begun: dict[UUID, Counter[int]] = {}

    @asynccontextmanager
    async def writing(self, workspace_ids: Iterable[UUID]) -> AsyncIterator[datetime]:
        """Registers a write to these workspaces while it runs; yields the stamp its rows carry."""
        begun, workspaces = now_ms(), set(workspace_ids)
        # No await between registering and stamping: nothing in this process can look in between.
        for workspace in workspaces:
            self._begun.setdefault(workspace, Counter())[begun] += 1
        try:
            yield moment(begun)
        finally:
            for workspace in workspaces:
                counts = self._begun[workspace]
                counts[begun] -= 1
                if not counts[begun]:
                    del counts[begun]
                if not counts:
                    del self._begun[workspace]

    def earliest(self, workspace_id: UUID) -> int | None:
        return min(self._begun.get(workspace_id, ()), default=None)

    async def settled(self, workspace_id: UUID) -> datetime:
        """The latest moment by which every row stamped is stored (or its write failed)."""
        return _settled(now_ms(), self.earliest(workspace_id))


class RedisWrites:
    """The writes of every API process sharing this Redis, and this process's own."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.local = LocalWrites()

    @asynccontextmanager
    async def writing(self, workspace_ids: Iterable[UUID]) -> AsyncIterator[datetime]:
        workspaces = sorted({str(workspace) for workspace in workspace_ids})
        token = uuid.uuid4().hex
        async with self.local.writing(map(UUID, workspaces)):
            begun = now_ms()
            registered = await self._register(workspaces, token, begun)
            try:
                # Stamped once the registration is in Redis: a listing that did not see it began before it,
                # so before the stamp too.
                yield moment(max(begun, now_ms()))
            finally:
                if registered:
                    await self._unregister(workspaces, token)

    async def settled(self, workspace_id: UUID) -> datetime:
        now = now_ms()  # before reading: a write not yet registered stamps after this
        earliest = self.local.earliest(workspace_id)
        try:
            found = await self.redis.zrangebyscore(_key(str(workspace_id)), now - STALE_MS, "+inf",
                                                   start=0, num=1, withscores=True)
        except RedisError as error:
            log.warning("Redis unavailable for writes under way, using this process's only: %s", error)
            found = []
        if found:
            earliest = min(int(found[0][1]), earliest if earliest is not None else now)
        return _settled(now, earliest)

    async def _register(self, workspaces: list[str], token: str, begun: int) -> bool:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for workspace in workspaces:
                    pipe.zadd(_key(workspace), {token: begun})
                    pipe.zremrangebyscore(_key(workspace), "-inf", begun - STALE_MS)
                    pipe.pexpire(_key(workspace), STALE_MS)
                await pipe.execute()
        except RedisError as error:
            # As with claims: Redis going away must not stop ingestion; only listings in other processes lose
            # sight of this write.
            log.warning("Redis unavailable to register a write: %s", error)
            return False
        return True

    async def _unregister(self, workspaces: list[str], token: str) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for workspace in workspaces:
                    pipe.zrem(_key(workspace), token)
                await pipe.execute()
        except RedisError as error:
            log.warning("Redis unavailable to unregister a write (it goes stale): %s", error)


def _key(workspace: str) -> str:
    return f"writing:{workspace}"


def _settled(now: int, earliest: int | None) -> datetime:
    return moment(now if earliest is None else min(now, earliest - 1))
