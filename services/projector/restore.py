"""Restoring idempotency keys after Redis lost its data (a restart without persistence, a failover
to an empty replica, ``FLUSHALL``).

Each key group has a sentinel key; the ingress refuses (holds, then 503) creates with a key whose
group has no sentinel. The projector writes each created run's key as it projects the run
(``SET NX``: a no-op while Redis has the key), so replaying the log restores every key. When the
sentinels are missing, any projector instance drives the restore to its end:

1. wait a moment, then note where the commands topic ends: every create the ingress sent before
   the loss is in there;
2. wait until the state-transitions service has decided all of them (its committed offsets);
3. note where the events topic ends, and wait until the projector's checkpoints (which went with
   Redis, so it replays from the start) pass it — every key the log names is then restored;
4. write the sentinels: creates go on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import TopicPartition

from runledger.services.runtime import kafka
from runledger.services.runtime import redis as redis_clients
from runledger.topics import TRANSITIONS

SETTLE_SECONDS = 1.0  # a create claimed just before the loss is sent within this


@dataclass
class _Restore:
    settle_until: float
    commands_end: dict[TopicPartition, int] | None = None
    events_end: dict[TopicPartition, int] | None = None


class KeyRestorer:
    def __init__(self, service) -> None:
        self.service = service  # the projector: its consumer, Redis, keys, topics, log, settings
        self._restore: _Restore | None = None

    @property
    def restoring(self) -> bool:
        return self._restore is not None

    async def check(self) -> None:
        s = self.service
        present = await redis_clients.mget(s.redis, s.keys.idempotency_sentinels)
        if all(v is not None for v in present):
            self._restore = None
            return
        loop = asyncio.get_running_loop()
        if self._restore is None:
            s.log.warning("idempotency keys are missing from Redis: restoring them from the event log")
            self._restore = _Restore(settle_until=loop.time() + SETTLE_SECONDS)
        r = self._restore
        if loop.time() < r.settle_until:
            return
        if r.commands_end is None:
            r.commands_end = await self._ends(s.topics.commands)
        if r.events_end is None:
            committed = await kafka.committed_offsets(s.settings, TRANSITIONS.id, list(r.commands_end))
            if any(committed.get(tp, 0) < end for tp, end in r.commands_end.items() if end > 0):
                return  # the writer has not decided every create sent before the loss yet
            r.events_end = await self._ends(s.topics.events)
        checkpoints = await redis_clients.mget(s.redis, [s.keys.checkpoint(tp.partition) for tp in r.events_end])
        if any(int(cp or 0) < end for cp, end in zip(checkpoints, r.events_end.values())):
            return  # the projection (and with it every key) has not replayed that far yet
        async with s.redis.pipeline(transaction=False) as pipe:
            for key in s.keys.idempotency_sentinels:
                pipe.set(key, "1")
            await pipe.execute()
        s.log.info("idempotency keys restored from the event log", events=sum(r.events_end.values()))
        self._restore = None

    async def _ends(self, topic) -> dict[TopicPartition, int]:
        tps = [TopicPartition(topic.name, p) for p in range(topic.partitions)]
        return await self.service.consumer.end_offsets(tps)
