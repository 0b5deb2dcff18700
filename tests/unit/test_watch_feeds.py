"""The watch feeds' registry in the ingress (one per watched run): a feed whose start failed is
not left behind for later watchers to wait on for ever."""

from __future__ import annotations

import asyncio

import pytest

from runledger.services.ingress.rest_logs import LogsContext
from runledger.settings import Settings


class FlakyTimelines:
    """The store's two calls a feed's start makes; the first ``failures`` starts fail like Redis down."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    async def last_timeline_id(self, run_id: str) -> str:
        await asyncio.sleep(0.01)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Redis is down")
        return "0-0"

    def timeline_key(self, run_id: str) -> str:
        return f"tl:{run_id}"


async def _watchers_after_a_failed_start() -> None:
    ctx = LogsContext(Settings(redis_url="redis://127.0.0.1:1"))  # never reached: the feed's XREAD only retries
    ctx.store = FlakyTimelines(failures=1)
    first, second = await asyncio.gather(ctx.feed("r1"), ctx.feed("r1"), return_exceptions=True)
    assert isinstance(first, ConnectionError)  # the one that started it fails ...
    assert not isinstance(second, BaseException) and not second.failed  # ... one waiting on it starts another
    assert ctx.feeds == {"r1": second}
    second.close()


def test_a_feed_whose_start_failed_is_not_left_for_later_watchers():
    asyncio.run(asyncio.wait_for(_watchers_after_a_failed_start(), 5))


async def _first_watcher_leaves_during_the_start() -> None:
    ctx = LogsContext(Settings(redis_url="redis://127.0.0.1:1"))
    ctx.store = FlakyTimelines(failures=0)
    leaving = asyncio.create_task(ctx.feed("r1"))
    await asyncio.sleep(0)
    staying = asyncio.create_task(ctx.feed("r1"))
    await asyncio.sleep(0)
    leaving.cancel()
    feed = await staying
    assert not feed.failed and ctx.feeds == {"r1": feed}
    with pytest.raises(asyncio.CancelledError):
        await leaving
    feed.close()


def test_a_watcher_that_leaves_while_starting_the_feed_does_not_strand_the_others():
    asyncio.run(asyncio.wait_for(_first_watcher_leaves_during_the_start(), 5))
