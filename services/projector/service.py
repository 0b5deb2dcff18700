"""The projector: maintains the Redis read models from the event log.

Its position in each partition is a checkpoint stored in Redis *in the same transaction* as
the documents it wrote, so a crash can never apply a batch twice or skip one. If the read
models are dropped (``runledger read-models rebuild``), the checkpoints go with them and the
projector replays that partition from offset 0. After each batch it publishes its progress so
the ingress can answer a write only once the write is readable.
"""

from __future__ import annotations

import asyncio

import orjson
import redis.asyncio as aioredis
from aiokafka import ConsumerRebalanceListener, TopicPartition
from redis.exceptions import WatchError

from runledger.services.runtime.process import run_until_stopped
from runledger.services.runtime.health import HealthServer
from runledger.services.runtime import kafka as clients
from runledger.services.runtime.logs import configure
from runledger.messages.codec import decode_event
from runledger.readmodel.keys import Keys
from runledger.readmodel.projection import Changes, Projection
from runledger.settings import Settings

GROUP_ID = "runledger-projector"


class ProjectorService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = configure("projector", settings.log_level, settings.log_json)
        self.keys = Keys(settings.redis_prefix)
        self.projection = Projection(self.keys)
        self.redis = aioredis.from_url(settings.redis_url)
        self.ready = False
        self.stopping = asyncio.Event()
        self.applied = 0

    async def run(self) -> None:
        await clients.wait_for_broker(self.settings)
        self.topics = await clients.ensure_topics(self.settings)
        self.consumer = clients.consumer(self.settings, group_id=GROUP_ID, max_poll_records=2000)
        health = HealthServer(self.settings.health_port, lambda: self.ready, self._details)
        await health.start()
        self.consumer.subscribe([self.topics.events], listener=_Rebalance(self))
        await self.consumer.start()
        self.log.info("started", topic=self.topics.events)
        try:
            last_realign = 0.0
            loop = asyncio.get_running_loop()
            while not self.stopping.is_set():
                batch = await self.consumer.getmany(timeout_ms=200, max_records=2000)
                for tp, records in batch.items():
                    await self.apply(tp, records)
                if not batch and loop.time() - last_realign > self.REALIGN_SECONDS:
                    await self.realign()
                    last_realign = loop.time()
        finally:
            self.ready = False
            await self.consumer.stop()
            await health.stop()
            await self.redis.aclose()

    def _details(self) -> dict:
        return {"service": "projector", "applied": self.applied}

    REALIGN_SECONDS = 0.5

    async def realign(self) -> None:
        """When idle, notice dropped read models (checkpoint behind our position) and replay."""
        tps = sorted(self.consumer.assignment())
        if not tps or await self.redis.exists(self.keys.rebuild_fence):
            return
        values = await self.redis.mget([self.keys.checkpoint(tp.partition) for tp in tps])
        for tp, value in zip(tps, values):
            checkpoint = int(value or 0)
            if checkpoint < await self.consumer.position(tp):
                self.log.info("read model behind the consumer: replaying", partition=tp.partition, checkpoint=checkpoint)
                self.consumer.seek(tp, checkpoint)

    async def seek_to_checkpoints(self, tps) -> None:
        values = await self.redis.mget([self.keys.checkpoint(tp.partition) for tp in tps]) if tps else []
        for tp, value in zip(tps, values):
            self.consumer.seek(tp, int(value or 0))

    async def apply(self, tp: TopicPartition, records) -> None:
        checkpoint_key = self.keys.checkpoint(tp.partition)
        while True:
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(checkpoint_key, self.keys.rebuild_fence)
                    checkpoint, fence = await pipe.mget(checkpoint_key, self.keys.rebuild_fence)
                    if fence is not None:  # a rebuild is dropping the read models: wait for it
                        await pipe.reset()
                        await asyncio.sleep(0.05)
                        continue
                    position = int(checkpoint or 0)
                    fresh = [r for r in records if r.offset >= position]
                    if not fresh:
                        return
                    if fresh[0].offset > position:  # read models were dropped: replay from there
                        self.consumer.seek(tp, position)
                        return
                    envelopes = [decode_event(r.value) for r in fresh]
                    needed = list(dict.fromkeys(k for env in envelopes for k in self.projection.keys_needed(env)))
                    loaded = await pipe.mget(needed)
                    docs = {k: (orjson.loads(v) if v is not None else None) for k, v in zip(needed, loaded)}
                    changes = Changes()
                    for env in envelopes:
                        self.projection.apply(env, docs, changes)
                    end = fresh[-1].offset + 1
                    pipe.multi()
                    if changes.docs:
                        pipe.mset({k: orjson.dumps(v) for k, v in changes.docs.items()})
                    for key, score, member in changes.zadd:
                        pipe.zadd(key, {member: score})
                    for key, member in changes.sadd:
                        pipe.sadd(key, member)
                    for key, field, value in changes.hset:
                        pipe.hset(key, field, value)
                    pipe.set(checkpoint_key, end)
                    pipe.publish(self.keys.progress_channel, f"{tp.partition}:{end}")
                    await pipe.execute()
                    self.applied += len(fresh)
                    return
            except WatchError:
                continue


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: ProjectorService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked) -> None:
        self.service.ready = False

    async def on_partitions_assigned(self, assigned) -> None:
        await self.service.seek_to_checkpoints(sorted(assigned))
        self.service.ready = True


def main() -> None:
    run_until_stopped(ProjectorService(Settings()))
