"""Helpers for integration tests: direct looks at the real broker and Redis."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from runledger.services.runtime import kafka as clients
from runledger.settings import Settings
from runledger.topics import topics_for


def settings_for(stack) -> Settings:
    return Settings(
        kafka_bootstrap=f"127.0.0.1:{stack.broker_port}",
        embedded_broker=True,
        partitions=stack.partitions,
        redis_url=stack.redis_url,
    )


async def _events_end(stack) -> int:
    settings = settings_for(stack)
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


async def _read_events(stack) -> list:
    from runledger.messages.codec import decode_event

    settings = settings_for(stack)
    topics = topics_for(settings)
    consumer = clients.consumer(settings)
    await consumer.start()
    try:
        tps = [TopicPartition(topics.events.name, p) for p in range(topics.events.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out, remaining = [], {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, records in batch.items():
                out += [decode_event(r.value) for r in records if r.offset < ends[tp]]
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


def all_events(stack) -> list:
    return asyncio.run(_read_events(stack))
