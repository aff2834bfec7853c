"""Coalesce concurrent calls into batches: many coroutines, few round trips.

Each call to :meth:`Coalescer.submit` hands over a list of items and waits for their
results. Items that arrive while earlier batches are in flight are gathered and sent
together (up to ``max_batch`` items per batch, at most ``max_inflight`` batches at a
time), so 200 tasks posting one reward each cost a handful of script calls rather than
200. Order and atomicity per call are kept: a call's items are never split across
batches, and if a batch fails every call in it gets the error.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

In = TypeVar("In")
Out = TypeVar("Out")


class Coalescer(Generic[In, Out]):
    """Batch concurrent submissions to ``flush`` (one list in, one list out, same order)."""

    def __init__(
        self,
        flush: Callable[[list[In]], Awaitable[Sequence[Out]]],
        *,
        max_batch: int = 1000,
        max_inflight: int = 4,
    ) -> None:
        self._flush = flush
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self._queue: deque[tuple[Sequence[In], asyncio.Future[list[Out]]]] = deque()
        self._inflight = 0
        self.batches = 0  # how many flushes ran (for tests and benchmarks)

    async def submit(self, items: Sequence[In]) -> list[Out]:
        fut: asyncio.Future[list[Out]] = asyncio.get_running_loop().create_future()
        self._queue.append((items, fut))
        if self._inflight < self.max_inflight:
            self._inflight += 1
            asyncio.get_running_loop().create_task(self._drain())
        return await fut

    def _take(self) -> list[tuple[Sequence[In], asyncio.Future[list[Out]]]]:
        taken: list[tuple[Sequence[In], asyncio.Future[list[Out]]]] = []
        size = 0
        while self._queue and (not taken or size + len(self._queue[0][0]) <= self.max_batch):
            items, fut = self._queue.popleft()
            if fut.cancelled():
                continue
            taken.append((items, fut))
            size += len(items)
        return taken

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(0)  # let the submissions of this loop iteration arrive
            while taken := self._take():
                flat = [item for items, _ in taken for item in items]
                self.batches += 1
                try:
                    results = list(await self._flush(flat))
                except BaseException as err:  # every waiter of this batch gets the error
                    for _, fut in taken:
                        if not fut.done():
                            fut.set_exception(err)
                    if not isinstance(err, Exception):
                        raise
                    continue
                start = 0
                for items, fut in taken:
                    if not fut.done():
                        fut.set_result(results[start : start + len(items)])
                    start += len(items)
        finally:
            self._inflight -= 1
