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
from aiokafka import TopicPartition
from pydantic import ValidationError
from redis.exceptions import WatchError

from runledger.messages.codec import decode_event
from runledger.readmodel.keys import Keys
from runledger.readmodel.projection import Changes, Projection
from runledger.services.runtime.consumer import ConsumerService
from runledger.services.runtime.process import run_until_stopped
from runledger.settings import Settings
from runledger.topics import PROJECTOR


class ProjectorService(ConsumerService):
    group = PROJECTOR
    max_records = 2000
    REALIGN_SECONDS = 0.5

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.keys = Keys(settings.redis_prefix)
        self.projection = Projection(self.keys)
        self.redis = aioredis.from_url(settings.redis_url)
        self._last_realign = 0.0

    def source(self):
        return self.topics.events

    async def stop_resources(self) -> None:
        await self.redis.aclose()

    def details(self) -> dict:
        return {"applied": self.handled}

    async def handle(self, batch: dict) -> None:
        for tp, records in batch.items():
            await self.apply(tp, records)
        loop = asyncio.get_running_loop()
        if not batch and loop.time() - self._last_realign > self.REALIGN_SECONDS:
            await self.realign()
            self._last_realign = loop.time()

    async def on_assigned(self, partitions: list[int]) -> None:
        await self.seek_to_checkpoints([TopicPartition(self.topics.events.name, p) for p in partitions])

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
                    changes = await self._project(pipe, fresh)
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
                    self.handled += len(fresh)
                    return
            except WatchError:
                continue

    async def _project(self, pipe, records) -> Changes:
        """The changes ``records`` make, loading the documents they need. A record that cannot be
        decoded or projected goes to the dead-letter topic (before the checkpoint passes it) and
        contributes nothing; the rest of the batch is applied."""
        envelopes = []
        for record in records:
            try:
                envelopes.append((record, decode_event(record.value)))
            except (ValidationError, ValueError) as exc:
                await self.dead_letter(record, "decode", exc)
        needed: dict[str, None] = {}
        for record, env in list(envelopes):
            try:
                needed.update(dict.fromkeys(self.projection.keys_needed(env)))
            except Exception as exc:
                await self.dead_letter(record, "project", exc)
                envelopes.remove((record, env))
        keys = list(needed)
        loaded = await pipe.mget(keys) if keys else []
        docs = {k: (orjson.loads(v) if v is not None else None) for k, v in zip(keys, loaded)}
        changes = Changes()
        try:
            for _, env in envelopes:
                self.projection.apply(env, docs, changes)
            return changes
        except Exception:
            pass  # rare: redo one event at a time, so only the bad one is set aside
        docs = {k: (orjson.loads(v) if v is not None else None) for k, v in zip(keys, loaded)}
        changes = Changes()
        for record, env in envelopes:
            trial_docs, trial = dict(docs), changes.copy()
            try:
                self.projection.apply(env, trial_docs, trial)
            except Exception as exc:
                await self.dead_letter(record, "project", exc)
                continue
            docs, changes = trial_docs, trial
        return changes



def main() -> None:
    run_until_stopped(ProjectorService(Settings()))
