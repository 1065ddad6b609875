"""Dynamic batching that forms a batch when the scorer is free.

Why not `@serve.batch`: Ray Serve's batcher forms the next batch as soon as the wait
timeout passes, whether or not the previous batch has finished, and queues the formed
batches behind a semaphore. With a CPU model that takes longer to score than the timeout,
every batch is small: on the quickstart model, over 3 s at one client and 3 s at 32
clients, its batches held 1.56 sessions on average, and one client paid the timeout on
every request (BENCHMARKS.md, "Third measurement").

Here one loop owns the scorer. When it is free it takes every session waiting, up to
`max_size`, and scores them together on the worker thread; the sessions that arrive
meanwhile make up the next batch. A lone request is scored at once (no timeout to wait
out); under load batches grow to what the arrival rate fills in one scoring time.
`wait_s` > 0 waits that long for company when fewer than `max_size` are waiting, for
scorers (a GPU) whose batch of 32 costs about what a batch of 1 does.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import Executor
from typing import Callable, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """`await submit(item)` -> the result `run` gave for it, scored with whatever else was
    waiting. `run(items)` runs on `executor` and returns one result per item; a result that
    is an exception is raised to that item's caller only. `observe(waits, seconds)` hears,
    after each batch, how long each of its items waited for the scorer and how long the
    batch took to score (both on the scoring thread's clock)."""

    def __init__(self, run: Callable[[list[Item]], list], executor: Executor, max_size: int, wait_s: float = 0.0,
                 observe: Callable[[list[float], float], None] | None = None):
        self.run, self.executor, self.max_size, self.wait_s = run, executor, max_size, wait_s
        self.observe = observe
        self.waiting: deque[tuple[Item, asyncio.Future, float]] = deque()
        self.loop_task: asyncio.Task | None = None

    async def submit(self, item: Item) -> Result:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((item, future, time.perf_counter()))
        if self.loop_task is None or self.loop_task.done():
            self.loop_task = asyncio.get_running_loop().create_task(self.drain())
        return await future

    async def drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.waiting:
            if self.wait_s > 0 and len(self.waiting) < self.max_size:
                await asyncio.sleep(self.wait_s)
            batch = []
            while self.waiting and len(batch) < self.max_size:
                entry = self.waiting.popleft()
                if not entry[1].done():       # a request that timed out or went away is not scored
                    batch.append(entry)
            if not batch:
                continue
            try:
                started, results, seconds = await loop.run_in_executor(self.executor, timed, self.run,
                                                                       [item for item, _, _ in batch])
            except Exception as e:  # the whole batch failed: each caller sees why
                started, results, seconds = time.perf_counter(), [e] * len(batch), 0.0
            if self.observe:
                self.observe([started - queued for _, _, queued in batch], seconds)
            for (_, future, _), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)


def timed(run: Callable[[list], list], items: list) -> tuple[float, list, float]:
    """(when it started, run(items), how long it took), on the thread that runs it."""
    started = time.perf_counter()
    results = run(items)
    return started, results, time.perf_counter() - started
