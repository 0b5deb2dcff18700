"""The embedded broker's client fixes (``services.runtime.tansu_compat``) against the real Tansu."""

from __future__ import annotations

import asyncio
import time

from aiokafka import TopicPartition

from runledger.services.runtime import kafka, tansu_compat
from tests.conftest import unique


async def _wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_an_idle_consumer_fetches_with_the_idle_wait_and_returns_to_its_own_with_records(stack):
    settings = stack.settings()
    assert settings.idle_fetch_max_wait_ms == 50 and settings.effective_fetch_max_wait_ms == 10
    topic = unique("idle-fetch")
    producer = kafka.producer(settings)
    await producer.start()
    await producer.send_and_wait(topic, b"first")  # creates the topic
    consumer = kafka.consumer(settings, topic)
    await consumer.start()
    try:
        fetcher = consumer._fetcher
        received = []

        async def consume():
            while True:
                batches = await consumer.getmany(timeout_ms=100)
                received.extend(record.value for records in batches.values() for record in records)

        task = asyncio.create_task(consume())
        await _wait_until(lambda: received == [b"first"])
        assert fetcher._fetch_max_wait_ms == 10
        # Nothing for more than IDLE_AFTER_SECONDS: the next fetches wait 50 ms.
        await _wait_until(lambda: fetcher._fetch_max_wait_ms == 50, timeout=tansu_compat.IDLE_AFTER_SECONDS + 5)
        # A record still arrives, and with it the consumer's own wait comes back.
        await producer.send_and_wait(topic, b"second")
        await _wait_until(lambda: received == [b"first", b"second"])
        await _wait_until(lambda: fetcher._fetch_max_wait_ms == 10, timeout=1)

        # Paused right away, for longer than an idle spell: no fetches meanwhile, so the fetches after
        # the resume start a new spell at 10 ms (the reply waiter of the command bus pauses like this).
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.pause(*partitions)
        await asyncio.sleep(tansu_compat.IDLE_AFTER_SECONDS + 0.5)
        consumer.resume(*partitions)
        await asyncio.sleep(0.3)
        assert fetcher._fetch_max_wait_ms == 10
        task.cancel()
    finally:
        await consumer.stop()
        await producer.stop()

