"""Many concurrent requests, one round of work: whatever queued while the last round ran goes into the next.

Under light load a job runs at once. Under load each round takes all the jobs that arrived meanwhile, so small
batches from many producers share lookups and one insert; and when jobs are already waiting as a round ends, the
next starts no sooner than `min_interval` after it began, so it gathers more of them: ClickHouse pays for each
insert (a part in the table and in each view's table, all merged later) more than for its rows.

A round also waits, until `min_interval` after the last round answered, for as many jobs as that round had:
producers answered together send their next batches together, but one by one, and the first of them would
otherwise start a round alone while the others queue behind it (two inserts where one would do). Under light
load the last answer is long past, and a job runs at once.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")


class Coalescer(Generic[Job, Result]):
    def __init__(
        self,
        process: Callable[[list[Job]], Awaitable[list[Result | Exception]]],
        size: Callable[[Job], int],
        max_size: int,
        name: str,
        min_interval: float = 0.0,
    ) -> None:
        self._process = process
        self._size = size
        self._max_size = max_size
        self._name = name
        self._min_interval = min_interval
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future[Result]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        # The last round: how many jobs it answered, and when (time.monotonic()).
        self._answered = 0
        self._answered_at = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            future.cancel()

    async def submit(self, job: Job) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        await self._queue.put((job, future))
        return await future

    async def _gather(self) -> list[tuple[Job, asyncio.Future[Result]]]:
        """The next round's jobs: those waiting, and more until there are as many as the last round answered
        or `min_interval` has passed since it answered."""
        batch = [await self._queue.get()]
        size = self._size(batch[0][0])
        deadline = self._answered_at + self._min_interval
        while size < self._max_size:
            if self._queue.empty():
                left = deadline - time.monotonic()
                if len(batch) >= self._answered or left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except TimeoutError:
                    break
            else:
                batch.append(self._queue.get_nowait())
            size += self._size(batch[-1][0])
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._gather()
            started = time.monotonic()
            try:
                results = await self._process([job for job, _ in batch])
            except Exception as error:  # noqa: BLE001 - every job of the round shares the failure
                results = [error] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
            self._answered, self._answered_at = len(batch), time.monotonic()
            if not self._queue.empty():
                await asyncio.sleep(self._min_interval - (time.monotonic() - started))
