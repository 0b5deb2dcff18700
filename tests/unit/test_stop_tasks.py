"""``stop_tasks`` ends background tasks even when a cancel is lost (see services/runtime/tasks.py)."""

from __future__ import annotations

import asyncio
import logging

from runledger.services.runtime.tasks import stop_tasks


async def _loses_cancels(lost: int, passes: list) -> None:
    """A loop whose first ``lost`` cancels vanish, as Python 3.11's ``wait_for`` loses them."""
    while True:
        passes.append(1)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if lost == 0:
                raise
            lost -= 1  # as if the awaited call had completed just then


async def test_a_task_that_lost_a_cancel_is_cancelled_again_until_it_ends():
    passes: list = []
    task = asyncio.create_task(_loses_cancels(2, passes))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0.01)
    assert not task.done()  # one cancel and an await: what the services did before
    await asyncio.wait_for(stop_tasks(task, None), timeout=5)
    assert task.cancelled() and len(passes) == 3


async def test_finished_and_failed_tasks_are_fine_and_a_task_that_never_ends_is_reported(caplog):
    async def fails():
        raise ValueError("boom")

    failed = asyncio.create_task(fails())
    done = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    await stop_tasks(failed, done)  # nothing to cancel; the error is retrieved, not raised

    stubborn = asyncio.create_task(_loses_cancels(40, []))  # ~2 s of cancels at one per 0.05 s
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR):
        await stop_tasks(stubborn, timeout=0.2)
    assert not stubborn.done() and "still running after" in caplog.text
    await stop_tasks(stubborn, timeout=10)
    assert stubborn.cancelled()
