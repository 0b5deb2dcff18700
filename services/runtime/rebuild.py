"""Drop the read models and wait for the projector to rebuild them from the event log."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from runledger.readmodel.keys import Keys
from runledger.services.runtime import kafka as clients
from runledger.services.runtime import redis as redis_clients
from runledger.settings import Settings
from runledger.topics import topics_for

FENCE_SECONDS = 600


async def rebuild_read_models(settings: Settings, timeout: float = 300.0) -> dict[str, int]:
    keys = Keys(settings.redis_prefix, settings.partitions)
    redis = redis_clients.client(settings)
    topics = topics_for(settings)
    consumer = clients.consumer(settings)
    await consumer.start()
    try:
        tps = [TopicPartition(topics.events.name, p) for p in range(topics.events.partitions)]
        # One fence per partition, in the partition's slot: the projector's batch script refuses
        # to write while its partition's fence is up, so nothing is written while the keys go.
        fences = [keys.rebuild_fence(p) for p in range(topics.events.partitions)]
        for fence in fences:
            await redis.set(fence, "1", ex=FENCE_SECONDS)
        try:
            dropped = await redis_clients.drop(redis, keys.read_model_pattern)
        finally:
            for fence in fences:
                await redis.delete(fence)
        end = await consumer.end_offsets(tps)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            values = await redis_clients.mget(redis, [keys.checkpoint(tp.partition) for tp in tps])
            whole = await redis_clients.mget(redis, [keys.whole(tp.partition) for tp in tps])
            if all(int(v or 0) >= end[tp] for tp, v in zip(tps, values)) and all(w is not None for w in whole):
                break
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the projector did not finish replaying; is it running?")
            await asyncio.sleep(0.1)
        count = await redis_clients.count(redis, keys.read_model_pattern)
        return {"dropped": dropped, "events": sum(end.values()), "keys": count}
    finally:
        await consumer.stop()
        await redis.aclose()
