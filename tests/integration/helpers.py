"""Helpers for integration tests: direct looks at the real broker and Redis."""

from __future__ import annotations

import asyncio
import time

from aiokafka import TopicPartition

from runledger.services.devstack import read_events
from runledger.services.runtime import kafka as clients
from runledger.topics import topics_for


async def _events_end(stack) -> int:
    settings = stack.settings()
    topics = topics_for(settings)
    consumer = clients.consumer(settings)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topics.events.name, p) for p in range(topics.events.partitions)])
        return sum(ends.values())
    finally:
        await consumer.stop()


def events_in_log(stack) -> int:
    """How many records the events topic holds (all partitions)."""
    return asyncio.run(_events_end(stack))


def all_events(stack) -> list:
    """Every event envelope in the events topic, each partition in offset order."""
    return [envelope for _, _, envelope in asyncio.run(read_events(stack))]


def eventually(predicate, timeout: float = 30.0, *, interval: float = 0.1, what: str = "condition"):
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy and return
    that; AssertionError (with the last value) once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached in {timeout}s (last: {last!r})")
