"""Stopping background tasks for sure.

Python 3.11's ``asyncio.wait_for`` returns what it waited for, and drops the cancellation, when a
cancel is delivered just as the awaited call completes (it checks ``fut.done()`` after catching
``CancelledError``; 3.12 rebuilt ``wait_for`` on ``asyncio.timeout`` and fixed it). redis-py
reads replies through it, so a task cancelled in the middle of a Redis call often carries on as if
nothing had happened: 150 of 200 cancels of a task in a Redis GET were lost here. A loop that was
cancelled once then ran on, and the scheduling service never stopped on SIGTERM (its stop awaited
the timer task it had cancelled). ``stop_tasks`` cancels again until every task has ended.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

RECANCEL_SECONDS = 0.05  # a lost cancel is repeated this soon


async def stop_tasks(*tasks: asyncio.Task | None, timeout: float = 10.0) -> None:
    """Cancel ``tasks`` (None and finished ones are skipped) and wait until each has ended,
    cancelling again while one runs on; after ``timeout`` s, log the ones left and return."""
    pending = {task for task in tasks if task is not None and not task.done()}
    deadline = asyncio.get_running_loop().time() + timeout
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_SECONDS)
        if pending and asyncio.get_running_loop().time() > deadline:
            log.error("tasks still running after %.0f s of cancelling: %s", timeout, [t.get_name() for t in pending])
            return
    for task in tasks:  # retrieve what they raised, so asyncio does not report it as never retrieved
        if task is not None and task.done() and not task.cancelled():
            task.exception()
