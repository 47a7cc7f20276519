"""Broker tests against real redis-server processes (no mocks)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from redis.asyncio import Redis

from app.stream.broker import (
    Broker,
    LocalBroker,
    RedisBroker,
    StreamItem,
    Subscription,
    make_broker,
)
from tests.redis_server import RedisProcess, start_redis

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
    # A hang must fail the test, not the whole run.
    return asyncio.run(asyncio.wait_for(coro, timeout))


def batch(start: int, count: int, name: str = "click") -> list[tuple[str, str, bytes]]:
    return [(f"e{i}", name, b'{"i":%d}' % i) for i in range(start, start + count)]


async def take(sub: Subscription, count: int, timeout: float = 5) -> list[StreamItem]:
    items: list[StreamItem] = []
    async with asyncio.timeout(timeout):
        async for item in sub:
            items.append(item)
            if len(items) == count:
                break
    return items


async def drain(sub: Subscription, timeout: float = 5) -> list[StreamItem]:
    async with asyncio.timeout(timeout):
        return [item async for item in sub]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisProcess]:
    server = start_redis()
    yield server
    server.cleanup()


BrokerFactory = Callable[..., Broker]


@pytest.fixture(params=["local", "redis"])
def new_broker(request: pytest.FixtureRequest, redis_server: RedisProcess) -> BrokerFactory:
    def factory(queue_size: int = 1000) -> Broker:
        if request.param == "local":
            return LocalBroker(queue_size)
        return RedisBroker(redis_server.url, queue_size)

    return factory


@asynccontextmanager
async def running(broker: Broker) -> AsyncIterator[Broker]:
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


async def numsub(url: str, channel: str) -> int:
    client = Redis.from_url(url)
    try:
        return int((await client.pubsub_numsub(channel))[0][1])
    finally:
        await client.aclose()


def test_make_broker(redis_server: RedisProcess) -> None:
    assert make_broker(None).kind == "absent"
    assert make_broker(redis_server.url).kind == "redis"


def test_delivery_filter_and_merge(new_broker: BrokerFactory) -> None:
    async def scenario() -> None:
        async with running(new_broker()) as broker:
            assert await broker.healthy()
            async with (
                broker.subscribe(["w1"]) as everything,
                broker.subscribe(["w1"], frozenset({"view"})) as views,
                broker.subscribe(["w1", "w2"]) as merged,
            ):
                mixed = batch(0, 2, "click") + batch(2, 2, "view") + batch(4, 1, "click")
                await broker.publish("w1", mixed)
                await broker.publish("w2", batch(100, 1, "signup"))
                await broker.publish("w3", batch(200, 1))  # nobody listens

                got = await take(everything, 5)
                assert [(i.kind, i.event_id, i.name, i.data) for i in got] == [
                    ("event", eid, name, data) for eid, name, data in mixed
                ]
                assert [i.event_id for i in await take(views, 2)] == ["e2", "e3"]
                assert [i.event_id for i in await take(merged, 6)] == [
                    "e0", "e1", "e2", "e3", "e4", "e100",
                ]

    run(scenario())


def test_listened_says_whether_a_publish_may_reach_anyone(new_broker: BrokerFactory) -> None:
    async def scenario() -> None:
        async with running(new_broker()) as broker:
            local = isinstance(broker, LocalBroker)
            assert broker.listened("w1") is not local  # with Redis, another process may listen
            async with broker.subscribe(["w1"]):
                assert broker.listened("w1")
                assert broker.listened("w2") is not local
            assert broker.listened("w1") is not local

    run(scenario())


def test_two_processes_share_events(redis_server: RedisProcess) -> None:
    async def scenario() -> None:
        async with (
            running(RedisBroker(redis_server.url)) as api_a,
            running(RedisBroker(redis_server.url)) as api_b,
        ):
            async with api_b.subscribe(["shared"]) as sub:
                started = time.monotonic()
                await api_a.publish("shared", batch(0, 3))
                got = await take(sub, 3, timeout=1)
                assert time.monotonic() - started < 1
                assert [i.event_id for i in got] == ["e0", "e1", "e2"]

    run(scenario())


def test_fanout_to_100_subscribers_in_order(new_broker: BrokerFactory) -> None:
    total, per_batch, readers = 10_000, 1_000, 100

    async def consume(sub: Subscription) -> list[str]:
        async with sub:
            return [item.event_id for item in await take(sub, total, timeout=15)]

    async def scenario() -> None:
        async with running(new_broker()) as broker:
            subs = [broker.subscribe(["fan"]) for _ in range(readers)]
            await asyncio.gather(*(sub.ready() for sub in subs))
            consumers = [asyncio.create_task(consume(sub)) for sub in subs]
            for start in range(0, total, per_batch):
                await broker.publish("fan", batch(start, per_batch))
            expected = [f"e{i}" for i in range(total)]
            for result in await asyncio.gather(*consumers):
                assert result == expected

    run(scenario(), timeout=30)


def test_stalled_subscriber_overflows_without_hurting_others(new_broker: BrokerFactory) -> None:
    queue_size, batches, per_batch = 100, 50, 20

    async def scenario() -> None:
        async with running(new_broker(queue_size)) as broker:
            async with broker.subscribe(["slow"]) as stalled, broker.subscribe(["slow"]) as live:
                live_task = asyncio.create_task(take(live, batches * per_batch))
                slowest = 0.0
                for n in range(batches):
                    started = time.monotonic()
                    await broker.publish("slow", batch(n * per_batch, per_batch))
                    slowest = max(slowest, time.monotonic() - started)
                assert slowest < 0.1

                received = await live_task
                assert [i.event_id for i in received] == [f"e{i}" for i in range(batches * per_batch)]

                # The stalled one keeps what it had buffered, then learns of the gap and ends.
                leftover = await drain(stalled)
                assert leftover[-1].kind == "overflow"
                events = leftover[:-1]
                assert 0 < len(events) <= queue_size
                assert [i.event_id for i in events] == [f"e{i}" for i in range(len(events))]
                assert stalled.ended

    run(scenario())


def test_close_cleans_up(redis_server: RedisProcess) -> None:
    channel = "events:tidy"

    async def wait_numsub(expected: int) -> None:
        async with asyncio.timeout(2):
            while await numsub(redis_server.url, channel) != expected:
                await asyncio.sleep(0.02)

    async def listen_forever(sub: Subscription) -> None:
        async with sub:
            async for _ in sub:
                pass

    async def scenario() -> None:
        broker = RedisBroker(redis_server.url)
        own_tasks = asyncio.all_tasks()
        async with running(broker):
            subs = [broker.subscribe(["tidy"]) for _ in range(3)]
            await asyncio.gather(*(sub.ready() for sub in subs))
            listeners = [asyncio.create_task(listen_forever(sub)) for sub in subs]
            await asyncio.sleep(0.05)
            await wait_numsub(1)  # one connection per process, however many listeners

            await subs[0].close()  # closed from elsewhere: the listener just ends
            await subs[0].close()  # idempotent
            await asyncio.wait_for(listeners[0], 1)
            listeners[1].cancel()  # client disconnect: the task running the stream is cancelled
            await asyncio.wait([listeners[1]])
            await wait_numsub(1)  # one local listener is left

            await subs[2].close()
            await asyncio.wait_for(listeners[2], 1)
            await wait_numsub(0)

            leftovers = asyncio.all_tasks() - own_tasks
            assert all(task.get_name().startswith("stream-broker-") for task in leftovers), leftovers

            # Resubscribing straight after the last listener left must not miss anything.
            async with broker.subscribe(["tidy"]) as again:
                await broker.publish("tidy", batch(0, 2))
                assert [i.event_id for i in await take(again, 2)] == ["e0", "e1"]
        assert asyncio.all_tasks() == own_tasks

    run(scenario())


def test_redis_outage_degrades_and_recovers() -> None:
    with start_redis() as server:

        async def scenario() -> None:
            broker = RedisBroker(server.url, publish_retry_after=0.2)
            async with running(broker):
                sub = broker.subscribe(["down"])
                await sub.ready()
                await broker.publish("down", batch(0, 2))
                assert [i.event_id for i in await take(sub, 2)] == ["e0", "e1"]

                server.kill()
                assert await take(sub, 1, timeout=2) == [StreamItem(kind="unavailable")]
                assert await drain(sub) == []

                started = time.monotonic()
                for n in range(5):
                    await broker.publish("down", batch(n, 1))  # must not raise
                assert time.monotonic() - started < 1
                assert not await broker.healthy()
                during = broker.subscribe(["down"])
                assert await drain(during) == [StreamItem(kind="unavailable")]

                server.start()
                assert await broker.healthy()
                async with broker.subscribe(["down"]) as after:
                    async with asyncio.timeout(3):
                        # Publishing may still be paused from the outage; keep trying.
                        while True:
                            await broker.publish("down", batch(10, 1))
                            try:
                                first = await take(after, 1, timeout=0.3)
                                break
                            except TimeoutError:
                                continue
                    assert first[0].event_id == "e10"
                    await broker.publish("down", batch(11, 3))
                    got: list[str] = []
                    async with asyncio.timeout(2):
                        async for item in after:
                            got.append(item.event_id)
                            if item.event_id == "e13":
                                break
                    # Retried e10s may still trail in before the new batch.
                    assert [eid for eid in got if eid != "e10"] == ["e11", "e12", "e13"]
                    assert await numsub(server.url, "events:down") == 1

        run(scenario())
