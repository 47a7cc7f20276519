"""The ingest pipeline's rounds: a lone job at once, waiting jobs gathered into fewer, larger rounds."""

import asyncio
import time

from app.events.coalescer import Coalescer

INTERVAL = 0.5


class Rounds:
    """A process that records each round's jobs and start time, and takes `duration` seconds."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.rounds: list[tuple[float, list[int]]] = []

    async def __call__(self, jobs: list[int]) -> list[int | Exception]:
        self.rounds.append((time.monotonic(), jobs))
        await asyncio.sleep(self.duration)
        return [job * 10 for job in jobs]


def test_a_lone_job_runs_at_once_even_just_after_a_round() -> None:
    async def scenario() -> list[float]:
        rounds = Rounds(0.01)
        pipeline = Coalescer(rounds, lambda job: 1, 100, "test", INTERVAL)
        pipeline.start()
        waits = []
        for job in range(3):
            started = time.monotonic()
            assert await pipeline.submit(job) == job * 10
            waits.append(time.monotonic() - started)
        await pipeline.stop()
        return waits

    assert max(asyncio.run(scenario())) < INTERVAL / 2


def test_jobs_waiting_at_the_end_of_a_round_are_gathered_after_the_interval() -> None:
    async def scenario() -> Rounds:
        rounds = Rounds(0.05)
        pipeline = Coalescer(rounds, lambda job: 1, 100, "test", INTERVAL)
        pipeline.start()
        first = asyncio.create_task(pipeline.submit(0))
        await asyncio.sleep(0.01)  # round 1 runs; these queue behind it
        waiting = [asyncio.create_task(pipeline.submit(job)) for job in (1, 2)]
        await asyncio.sleep(0.1)  # round 1 is over; these queue during the pause
        late = [asyncio.create_task(pipeline.submit(job)) for job in (3, 4)]
        results = await asyncio.gather(first, *waiting, *late)
        assert results == [0, 10, 20, 30, 40]
        await pipeline.stop()
        return rounds

    rounds = asyncio.run(scenario()).rounds
    assert [jobs for _, jobs in rounds] == [[0], [1, 2, 3, 4]]
    assert rounds[1][0] - rounds[0][0] >= INTERVAL - 0.01


def test_the_size_limit_still_splits_rounds() -> None:
    async def scenario() -> Rounds:
        rounds = Rounds(0.02)
        pipeline = Coalescer(rounds, lambda job: job, 5, "test", 0.0)
        pipeline.start()
        blocker = asyncio.create_task(pipeline.submit(1))
        await asyncio.sleep(0.005)
        assert await asyncio.gather(blocker, *(pipeline.submit(job) for job in (3, 3, 3))) == [10, 30, 30, 30]
        await pipeline.stop()
        return rounds

    # A round takes jobs while it is under its size: 3 + 3 reaches 5, so the last waits for the next round.
    assert [jobs for _, jobs in asyncio.run(scenario()).rounds] == [[1], [3, 3], [3]]


def test_producers_answered_together_share_the_next_round_though_they_send_one_by_one() -> None:
    async def scenario() -> Rounds:
        rounds = Rounds(0.05)
        pipeline = Coalescer(rounds, lambda job: 1, 100, "test", INTERVAL)
        pipeline.start()

        async def producer(job: int) -> None:
            assert await pipeline.submit(job) == job * 10
            await asyncio.sleep(0.02 * job)  # answered at once, each sends its next batch a little later
            assert await pipeline.submit(job + 10) == (job + 10) * 10

        await asyncio.gather(*(producer(job) for job in range(4)))
        await pipeline.stop()
        return rounds

    rounds = asyncio.run(scenario()).rounds
    assert [sorted(jobs) for _, jobs in rounds] == [[0, 1, 2, 3], [10, 11, 12, 13]]
    # It waited for the fourth (sent 60 ms after the answer), not for the whole interval.
    assert rounds[1][0] - rounds[0][0] < INTERVAL


def test_a_round_waits_for_the_last_rounds_producers_no_longer_than_the_interval() -> None:
    async def scenario() -> tuple[Rounds, float, float]:
        rounds = Rounds(0.01)
        pipeline = Coalescer(rounds, lambda job: 1, 100, "test", INTERVAL)
        pipeline.start()
        await asyncio.gather(*(pipeline.submit(job) for job in range(3)))
        answered = time.monotonic()
        assert await pipeline.submit(3) == 30  # the other two producers have gone away
        waited = time.monotonic() - answered
        await asyncio.sleep(INTERVAL)
        started = time.monotonic()
        assert await pipeline.submit(4) == 40  # long after the last answer: at once
        await pipeline.stop()
        return rounds, waited, time.monotonic() - started

    rounds, waited, alone = asyncio.run(scenario())
    assert [jobs for _, jobs in rounds.rounds] == [[0, 1, 2], [3], [4]]
    assert INTERVAL - 0.05 <= waited < INTERVAL + 0.2
    assert alone < INTERVAL / 2
