"""Claims on dedup keys, held while an event's insert is under way.

An `external_id` is checked against the store and written under a claim, so two requests carrying the same
key never both pass the check (ARCHITECTURE.md: exact dedup before the insert). A claim lives only as long
as the write: a failed write releases it, so the producer's retry is stored rather than skipped.
"""

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.errors import StoreUnavailable

log = logging.getLogger(__name__)

# A claim is kept alive while its write runs; a process that dies mid-write lets go within the TTL.
CLAIM_TTL_MS = 10_000
CLAIM_REFRESH_SECONDS = 3.0
CLAIM_WAIT_SECONDS = 30.0
# Compare-and-delete: a claim that expired and was taken by another process is not ours to remove.
RELEASE_SCRIPT = """
local released = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then released = released + redis.call('DEL', key) end
end
return released
"""


class LocalClaims:
    """Claims among the requests of one process."""

    def __init__(self) -> None:
        # (workspace, key) -> the release its claim will signal. The workspace as a string: a UUID hashes in
        # Python, and a batch claims thousands of keys.
        self._held: dict[tuple[str, str], asyncio.Event] = {}

    @asynccontextmanager
    async def claim(self, workspace_id: UUID, keys: list[str]) -> AsyncIterator[None]:
        # One signal for all the keys of a claim, as they are all let go at once.
        released = asyncio.Event()
        workspace = str(workspace_id)
        taken: list[tuple[str, str]] = []
        try:
            # One global order of acquisition, so two batches sharing keys never wait on each other in a cycle.
            for key in sorted(set(keys)):
                slot = (workspace, key)
                while (holder := self._held.get(slot)) is not None:
                    await holder.wait()
                self._held[slot] = released
                taken.append(slot)
            yield
        finally:
            for slot in taken:
                del self._held[slot]
            released.set()


class RedisClaims:
    """Claims across API processes, in Redis; within the process they queue locally first."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.local = LocalClaims()
        self._release = redis.register_script(RELEASE_SCRIPT)

    @asynccontextmanager
    async def claim(self, workspace_id: UUID, keys: list[str]) -> AsyncIterator[None]:
        async with self.local.claim(workspace_id, keys):
            names = [f"claim:{workspace_id}:{key}" for key in sorted(set(keys))]
            if not names:
                yield
                return
            token = uuid.uuid4().hex
            try:
                await self._acquire_all(names, token)
            except RedisError as error:
                # Without them another process could store the same key, or give two customers one number for
                # good: a 503 the producer retries, rather than a duplicate it never hears of.
                log.warning("Redis unavailable for claims: %s", error)
                raise StoreUnavailable("Redis, which keeps ingestion exact across API processes, is unavailable; "
                                       "retry shortly") from error
            refresher = asyncio.create_task(self._keep_alive(names))
            try:
                yield
            finally:
                refresher.cancel()
                await asyncio.gather(refresher, return_exceptions=True)
                await self._release_quietly(names, token)

    async def _acquire_all(self, names: list[str], token: str) -> None:
        """All of the claims or none: a partial set held while waiting could deadlock with another process."""
        deadline = asyncio.get_running_loop().time() + CLAIM_WAIT_SECONDS
        while True:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.set(name, token, nx=True, px=CLAIM_TTL_MS)
                results = await pipe.execute()
            if all(results):
                return
            taken = [name for name, ok in zip(names, results, strict=True) if ok]
            if taken:
                await self._release(keys=taken, args=[token])
            if asyncio.get_running_loop().time() > deadline:
                raise StoreUnavailable("Another request holds these external ids; retry shortly")
            await asyncio.sleep(random.uniform(0.005, 0.03))

    async def _keep_alive(self, names: list[str]) -> None:
        while True:
            await asyncio.sleep(CLAIM_REFRESH_SECONDS)
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for name in names:
                        pipe.pexpire(name, CLAIM_TTL_MS)
                    await pipe.execute()
            except RedisError as error:
                log.warning("could not extend dedup claims: %s", error)

    async def _release_quietly(self, names: list[str], token: str) -> None:
        try:
            await self._release(keys=names, args=[token])
        except RedisError as error:  # the claims expire on their own
            log.warning("could not release dedup claims: %s", error)
