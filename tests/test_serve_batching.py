"""The endpoint's batcher: batches form when the scorer is free, a lone request never waits."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rayrec.serve.batching import Batcher


class Scorer:
    """Doubles its items; the first batch can be held until the test releases it."""

    def __init__(self, hold_first: bool = False):
        self.batches: list[list] = []
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            self.release.wait(10)
        return [ValueError(f"bad {i}") if i == "bad" else i * 2 for i in items]


def run(coro):
    return asyncio.run(coro)


async def scoring(b: Batcher, scorer: Scorer, item) -> asyncio.Future:
    """Submit `item` and return once its batch is on the scorer (held there)."""
    first = asyncio.ensure_future(b.submit(item))
    while not scorer.batches:
        await asyncio.sleep(0.001)
    return first


def test_a_lone_request_is_scored_at_once_in_a_batch_of_one():
    scorer = Scorer()

    async def go():
        b = Batcher(scorer, ThreadPoolExecutor(1), max_size=32, wait_s=0.0)
        t = time.perf_counter()
        out = await b.submit(21)
        return out, time.perf_counter() - t

    out, took = run(go())
    assert out == 42 and scorer.batches == [[21]]
    assert took < 1.0


def test_requests_arriving_while_a_batch_scores_form_the_next_batch_up_to_max_size():
    scorer, sizes, waited = Scorer(hold_first=True), [], []

    def observe(waits, seconds):
        sizes.append(len(waits))
        waited.append(min(waits))

    async def go():
        b = Batcher(scorer, ThreadPoolExecutor(1), max_size=8, observe=observe)
        first = await scoring(b, scorer, 0)
        rest = [asyncio.ensure_future(b.submit(i)) for i in range(1, 21)]
        await asyncio.sleep(0.01)
        scorer.release.set()
        return await first, await asyncio.gather(*rest)

    first, rest = run(go())
    assert first == 0 and rest == [2 * i for i in range(1, 21)]
    assert scorer.batches == [[0], list(range(1, 9)), list(range(9, 17)), list(range(17, 21))]
    assert sizes == [1, 8, 8, 4]
    assert waited[0] >= 0 and min(waited[1:]) >= 0.01     # the followers waited out the held batch


def test_a_bad_item_fails_only_its_own_caller_and_a_failed_batch_fails_each_caller():
    scorer = Scorer(hold_first=True)

    async def go():
        b = Batcher(scorer, ThreadPoolExecutor(1), max_size=8)
        first = await scoring(b, scorer, 1)
        good, bad = asyncio.ensure_future(b.submit(2)), asyncio.ensure_future(b.submit("bad"))
        await asyncio.sleep(0.01)
        scorer.release.set()
        assert await first == 2 and await good == 4
        with pytest.raises(ValueError, match="bad bad"):
            await bad

        def broken(items):
            raise RuntimeError("the scorer died")

        b2 = Batcher(broken, ThreadPoolExecutor(1), max_size=8)
        results = await asyncio.gather(b2.submit(1), b2.submit(2), return_exceptions=True)
        assert [str(r) for r in results] == ["the scorer died"] * 2

    run(go())


def test_a_request_that_gave_up_is_not_scored():
    scorer = Scorer(hold_first=True)

    async def go():
        b = Batcher(scorer, ThreadPoolExecutor(1), max_size=8)
        first = await scoring(b, scorer, 1)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(b.submit(5), 0.01)      # times out while the scorer is held
        kept = asyncio.ensure_future(b.submit(6))
        scorer.release.set()
        return await first, await kept

    assert run(go()) == (2, 12)
    assert scorer.batches == [[1], [6]]


def test_wait_s_lets_a_free_scorer_wait_for_company():
    scorer = Scorer()

    async def go():
        b = Batcher(scorer, ThreadPoolExecutor(1), max_size=8, wait_s=0.2)
        first = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(b.submit(2))
        return await first, await second

    assert run(go()) == (2, 4)
    assert scorer.batches == [[1, 2]]
