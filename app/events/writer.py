"""One insert at a time per process; whatever arrived meanwhile goes into the next one.

Many small batches become few large inserts without an artificial delay: while an insert is in flight, new
requests queue, and the next insert takes them all. Each request awaits its own rows' insert, so 200 still
means the rows are stored.
"""

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from clickhouse_connect.driver.asyncclient import AsyncClient

log = logging.getLogger(__name__)

MAX_ROWS_PER_INSERT = 200_000

Rows = list[Sequence[Any]]


class EventWriter:
    def __init__(self, client: AsyncClient, table: str, columns: Sequence[str]) -> None:
        self.client = client
        self.table = table
        self.columns = list(columns)
        self._queue: asyncio.Queue[tuple[Rows, asyncio.Future[None]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.table}-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            future.set_exception(asyncio.CancelledError("the writer stopped"))

    async def write(self, rows: Rows) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((rows, future))
        await future

    async def _run(self) -> None:
        while True:
            pending = [await self._queue.get()]
            count = len(pending[0][0])
            while count < MAX_ROWS_PER_INSERT and not self._queue.empty():
                pending.append(self._queue.get_nowait())
                count += len(pending[-1][0])
            rows = [row for batch, _ in pending for row in batch]
            try:
                await self.client.insert(self.table, rows, column_names=self.columns)
            except Exception as error:  # noqa: BLE001 - every waiting request gets the failure
                for _, future in pending:
                    if not future.done():
                        future.set_exception(error)
            else:
                for _, future in pending:
                    if not future.done():
                        future.set_result(None)
