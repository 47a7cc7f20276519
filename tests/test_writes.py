"""app/events/writes.py: a listing starts before the earliest stamp still being written, whether the write runs in
its own process or in another sharing the Redis server, and ingestion goes on when Redis is gone."""

import asyncio
from uuid import uuid4

from redis.asyncio import Redis

from app.events.writes import LocalWrites, RedisWrites
from tests.conftest import free_port


def test_a_write_holds_listings_of_its_workspaces_before_its_stamp() -> None:
    async def run() -> None:
        writes, workspace, other = LocalWrites(), uuid4(), uuid4()
        async with writes.writing([workspace]) as stamp:
            async with writes.writing([workspace]) as later:
                assert later >= stamp
            assert await writes.settled(workspace) < stamp  # the earlier write still runs
            assert await writes.settled(other) >= stamp
        assert await writes.settled(workspace) >= stamp

    asyncio.run(run())


def test_writes_in_one_process_hold_listings_in_another(redis_process) -> None:
    async def run() -> None:
        writer, reader = Redis.from_url(redis_process.url), Redis.from_url(redis_process.url)
        try:
            writes, listings = RedisWrites(writer), RedisWrites(reader)
            workspace, other = uuid4(), uuid4()
            async with writes.writing([workspace, other]) as stamp:
                assert await listings.settled(workspace) < stamp
                assert await listings.settled(other) < stamp
                async with writes.writing([other]) as later:
                    assert await listings.settled(other) < stamp <= later
            assert await listings.settled(workspace) >= stamp
            assert await listings.settled(other) >= stamp
        finally:
            await writer.aclose()
            await reader.aclose()

    asyncio.run(run())


def test_writes_go_on_without_redis() -> None:
    async def run() -> None:
        gone = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
        try:
            writes, workspace = RedisWrites(gone), uuid4()
            async with writes.writing([workspace]) as stamp:
                assert await writes.settled(workspace) < stamp  # this process's own writes still count
            assert await writes.settled(workspace) >= stamp
        finally:
            await gone.aclose()

    asyncio.run(run())
