"""Drop the read models and wait for the projector to rebuild them from the event log."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from aiokafka import TopicPartition

from runledger.services.runtime import kafka as clients
from runledger.readmodel.keys import Keys
from runledger.settings import Settings
from runledger.topics import topics_for


async def rebuild_read_models(settings: Settings, timeout: float = 300.0) -> dict[str, int]:
    keys = Keys(settings.redis_prefix)
    redis = aioredis.from_url(settings.redis_url)
    topics = topics_for(settings)
    consumer = clients.consumer(settings)
    await consumer.start()
    try:
        tps = [TopicPartition(topics.events.name, p) for p in range(topics.events.partitions)]
        # The fence pauses the projector (it watches the key) while the documents go.
        await redis.set(keys.rebuild_fence, "1", ex=600)
        dropped = 0
        try:
            batch: list[bytes] = []
            async for key in redis.scan_iter(match=keys.read_model_pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    dropped += await redis.unlink(*batch)
                    batch = []
            if batch:
                dropped += await redis.unlink(*batch)
        finally:
            await redis.delete(keys.rebuild_fence)
        end = await consumer.end_offsets(tps)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            values = await redis.mget([keys.checkpoint(tp.partition) for tp in tps])
            if all(int(v or 0) >= end[tp] for tp, v in zip(tps, values)):
                break
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the projector did not finish replaying; is it running?")
            await asyncio.sleep(0.1)
        count = 0
        async for _ in redis.scan_iter(match=keys.read_model_pattern, count=1000):
            count += 1
        return {"dropped": dropped, "events": sum(end.values()), "keys": count}
    finally:
        await consumer.stop()
        await redis.aclose()
