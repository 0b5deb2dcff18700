"""Redis adapters of the ingress: read-model queries (documents by id, and the execution of the
query planner's index walks) and the idempotency-key store."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from runledger.domain.idempotency import Action, ClaimResult, claim_value, interpret_claim, key_group, scoped_key
from runledger.readmodel.indexes import FLOW_RUN
from runledger.readmodel.keys import Keys
from runledger.readmodel import planner
from runledger.readmodel.planner import Plan
from runledger.services.runtime import redis as redis_clients
from runledger.services.runtime.redis import AsyncRedis

Doc = dict[str, Any]

# Atomically: refuse while the key's group is being restored (its sentinel is missing: Redis lost
# its data), else return the key's value and refresh its TTL to the full period, or claim it.
_CLAIM = """
if redis.call('EXISTS', KEYS[2]) == 0 then return {'restoring'} end
local old = redis.call('GET', KEYS[1])
local ttl = tonumber(ARGV[2])
if old then
  if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) else redis.call('PERSIST', KEYS[1]) end
  return old
end
if ttl > 0 then redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl) else redis.call('SET', KEYS[1], ARGV[1]) end
return false
"""
# The run a key names, refreshing its TTL as a repeat does; nothing when it names none (no claim).
_REFRESH = """
local old = redis.call('GET', KEYS[1])
if not old then return false end
local ttl = tonumber(ARGV[1])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) else redis.call('PERSIST', KEYS[1]) end
return old
"""
# Turn our claim into the run id, only if the key still holds our claim.
_CONFIRM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"""


# A flow and its flow group in one round trip (the group id is inside the flow document).
_FLOW_AND_GROUP = """
local flow = redis.call('GET', KEYS[1])
if not flow then return {false, false} end
local group_id = cjson.decode(flow)['version_group_id']
return {flow, redis.call('GET', ARGV[1] .. group_id)}
"""


class RestoringFromLog(Exception):
    """Redis lost its data and the projector has not finished restoring the idempotency keys and
    read models from the event log: come back shortly."""


class IdempotencyStore:
    def __init__(self, redis: AsyncRedis, keys: Keys, ttl_seconds: int) -> None:
        self.redis, self.keys, self.ttl = redis, keys, ttl_seconds
        self._claim = redis.register_script(_CLAIM)
        self._confirm = redis.register_script(_CONFIRM)
        self._refresh = redis.register_script(_REFRESH)

    async def recorded_run(self, flow_id: str, key: str) -> str | None:
        """The run ``key`` names if its create was recorded (its TTL refreshed, as by a repeat);
        None for a key that names none, or only a claim. Makes no claim."""
        value = await self._refresh(keys=[self.keys.idempotency(scoped_key(flow_id, key))], args=[self.ttl])
        if value is None:
            return None
        found = interpret_claim(value.decode(), "")
        return found.run_id if found.action is Action.RETURN_EXISTING else None

    async def claim(self, flow_id: str, key: str, run_id: str, hold_seconds: float = 0.0) -> ClaimResult:
        """Claim ``key`` for ``run_id`` (or learn which run it names). While Redis's keys are being
        restored from the log, retry for up to ``hold_seconds``, then raise ``RestoringFromLog``."""
        scoped = scoped_key(flow_id, key)
        keys = [self.keys.idempotency(scoped), self.keys.idempotency_sentinel(key_group(scoped))]
        deadline = asyncio.get_running_loop().time() + hold_seconds
        while True:
            previous = await self._claim(keys=keys, args=[claim_value(run_id), self.ttl])
            if not isinstance(previous, list):
                return interpret_claim(previous.decode() if previous is not None else None, run_id)
            if asyncio.get_running_loop().time() >= deadline:
                raise RestoringFromLog("idempotency keys are being restored from the event log after Redis lost them")
            await asyncio.sleep(0.1)

    async def restored(self) -> bool:
        """Every key group's sentinel is present: no restore is under way."""
        return all(v is not None for v in await redis_clients.mget(self.redis, self.keys.idempotency_sentinels))

    async def confirm(self, flow_id: str, key: str, run_id: str, pipe=None) -> None:
        """Confirm now, or queue the confirmation on ``pipe`` (sent with the read that follows it;
        not on a cluster, whose pipelines cannot carry scripts)."""
        redis_key = self.keys.idempotency(scoped_key(flow_id, key))
        await self._confirm(keys=[redis_key], args=[claim_value(run_id), run_id], client=pipe)


@dataclass
class Walk:
    """What an index walk read: the matching documents in walk order, how many documents it
    examined, whether the scan limit cut it short, and where it stopped (for a cursor)."""

    docs: list[Doc]
    examined: int = 0
    truncated: bool = False
    exhausted: bool = True  # nothing left in the index range after ``last``
    last: tuple[float, str] | None = None
    plan: Plan | None = None


class _Desc:
    """Reverses the order of a heap entry (heapq is a min-heap)."""

    __slots__ = ("key",)

    def __init__(self, key) -> None:
        self.key = key

    def __lt__(self, other: "_Desc") -> bool:
        return self.key > other.key


class ReadModels:
    def __init__(self, redis: AsyncRedis, keys: Keys, scan_limit: int = 1000) -> None:
        self.redis, self.k, self.scan_limit = redis, keys, scan_limit
        self._flow_and_group = redis.register_script(_FLOW_AND_GROUP)

    async def _get(self, key: str) -> Doc | None:
        raw = await self.redis.get(key)
        return orjson.loads(raw) if raw is not None else None

    async def _many(self, keys: list[str]) -> list[Doc]:
        if not keys:
            return []
        return [orjson.loads(v) for v in await redis_clients.mget(self.redis, keys) if v is not None]

    # -- documents by id ---------------------------------------------------------------------
    async def flow_run(self, run_id: str) -> Doc | None:
        return await self._get(self.k.flow_run(run_id))

    async def flow_runs(self, run_ids: list[str]) -> list[Doc]:
        return await self._many([self.k.flow_run(i) for i in run_ids])

    async def task_run(self, task_run_id: str, flow_run_id: str | None = None) -> Doc | None:
        if flow_run_id is not None:
            return await self._get(self.k.task_run(task_run_id, flow_run_id))
        found = await self.task_runs([task_run_id])
        return found[0] if found else None

    async def task_runs(self, task_run_ids: list[str], flow_run_id: str | None = None) -> list[Doc]:
        """Task runs by id. Without their flow run's id the partition is unknown: every partition
        is probed (one round trip, ``partitions`` keys per id)."""
        if flow_run_id is not None:
            return await self._many([self.k.task_run(i, flow_run_id) for i in task_run_ids])
        probe = [self.k.task_run_in(p, i) for i in task_run_ids for p in range(self.k.partitions)]
        return await self._many(probe)

    async def task_run_artifacts(self, artifact_ids: list[str], flow_run_id: str | None = None) -> list[Doc]:
        """Task-run artifacts by id (deleted ones included, marked ``deleted``); without their flow
        run's id every partition is probed, as for task runs."""
        if flow_run_id is not None:
            return await self._many([self.k.task_run_artifact(i, flow_run_id) for i in artifact_ids])
        return await self._many([self.k.task_run_artifact_in(p, i) for i in artifact_ids for p in range(self.k.partitions)])

    # -- index walks -------------------------------------------------------------------------
    def _streams(self, plan: Plan) -> list[tuple[str, int]]:
        """The sorted sets a plan reads, with their partitions."""
        out = []
        for value in plan.values:
            if plan.index == "tr:flow_run":  # a flow run's task runs are in its partition only
                out.append((self.k.index(self.k.partition(value), plan.index, value), self.k.partition(value)))
            else:
                out += [(self.k.index(p, plan.index, value), p) for p in range(self.k.partitions)]
        return out

    def _doc_key(self, entity: str, member: str, partition: int) -> str:
        return self.k.flow_run(member) if entity == FLOW_RUN else self.k.task_run_in(partition, member)

    async def by_ids(self, plan: Plan) -> list[Doc]:
        if plan.entity == FLOW_RUN:
            return await self.flow_runs(list(plan.ids))
        return await self.task_runs(list(plan.ids))

    async def walk(
        self,
        plan: Plan,
        predicate: Callable[[Doc], bool] | None = None,
        *,
        need: int | None = None,
        scan_limit: int | None = None,
        after: tuple[float, str] | None = None,
    ) -> Walk:
        """Walk ``plan``'s index (a k-way merge over partitions and values by score, ties by id),
        keep the documents ``predicate`` accepts, stop after ``need`` of them or after examining
        ``scan_limit`` documents; ``after`` resumes strictly after a (score, id) position."""
        limit = scan_limit or self.scan_limit
        desc = plan.descending
        low = "-inf" if plan.score_min is None else repr(plan.score_min)
        high = "+inf" if plan.score_max is None else repr(plan.score_max)
        if after is not None:
            if desc:
                high = repr(after[0]) if plan.score_max is None or after[0] < plan.score_max else high
            else:
                low = repr(after[0]) if plan.score_min is None or after[0] > plan.score_min else low
        chunk = 256 if need is None else max(16, min(256, 2 * need))
        streams = self._streams(plan)
        offsets = [0] * len(streams)
        exhausted = [False] * len(streams)
        heap: list = []

        def push(i: int, entries) -> None:
            for member, score in entries:
                member = member.decode() if isinstance(member, bytes) else member
                if after is not None and ((score, member) <= after if not desc else (score, member) >= after):
                    continue
                key = (score, member)
                heapq.heappush(heap, (_Desc(key) if desc else key, i, member, score))

        def query(pipe_or_client, i: int):
            key = streams[i][0]
            if desc:
                return pipe_or_client.zrevrangebyscore(key, high, low, start=offsets[i], num=chunk, withscores=True)
            return pipe_or_client.zrangebyscore(key, low, high, start=offsets[i], num=chunk, withscores=True)

        pending = [0] * len(streams)  # entries of each stream in the heap

        def take(i: int, entries) -> None:
            offsets[i] += len(entries)
            exhausted[i] = len(entries) < chunk
            before = len(heap)
            push(i, entries)
            pending[i] += len(heap) - before

        async def refill(i: int) -> None:
            """Keep one entry of every unfinished stream in the heap (the merge needs it)."""
            while pending[i] == 0 and not exhausted[i]:
                take(i, await query(self.redis, i))

        async with self.redis.pipeline(transaction=False) as pipe:
            for i in range(len(streams)):
                query(pipe, i)
            for i, entries in enumerate(await pipe.execute()):
                take(i, entries)
        for i in range(len(streams)):
            await refill(i)
        result = Walk([], plan=plan)
        seen: set[str] = set()
        while heap and result.examined < limit and (need is None or len(result.docs) < need):
            # the next batch in merged order; a stream whose buffered entries run out is refilled
            batch: list[tuple[str, int, float]] = []
            want = min(limit - result.examined, chunk if need is None else max(need - len(result.docs), 8))
            while heap and len(batch) < want:
                _, i, member, score = heapq.heappop(heap)
                pending[i] -= 1
                await refill(i)
                if member in seen:
                    continue
                seen.add(member)
                batch.append((member, streams[i][1], score))
            raws = await redis_clients.mget(self.redis, [self._doc_key(plan.entity, m, p) for m, p, _ in batch])
            consumed = 0
            for (member, _, score), raw in zip(batch, raws):
                consumed += 1
                result.examined += 1
                result.last = (score, member)
                if raw is None:
                    continue
                doc = orjson.loads(raw)
                if predicate is None or predicate(doc):
                    result.docs.append(doc)
                    if need is not None and len(result.docs) >= need:
                        break
            if consumed < len(batch):  # stopped inside the batch: the rest is still to come
                result.exhausted = False
                return result
        more = bool(heap) or not all(exhausted)
        result.exhausted = not more
        result.truncated = more and result.examined >= limit and (need is None or len(result.docs) < need)
        return result

    async def index_size(self, plan: Plan) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, _ in self._streams(plan):
                pipe.zcard(key)
            return sum(await pipe.execute())

    # -- runs of a flow (REST /flows/{id}/flow_runs) -----------------------------------------
    async def runs_of_flow(self, flow_id: str, offset: int, limit: int) -> tuple[list[Doc], int]:
        """A flow's runs, latest scheduled start first."""
        flow_plan = planner.plan(FLOW_RUN, {"flow_id": {"_eq": flow_id}}, {"scheduled_start_time": "desc"})
        walk = await self.walk(flow_plan, None, need=offset + limit, scan_limit=offset + limit)
        return walk.docs[offset:], await self.index_size(flow_plan)

    # -- registry (one slot) -----------------------------------------------------------------
    async def project(self, project_id: str) -> Doc | None:
        return await self._get(self.k.project(project_id))

    async def project_id_by_name(self, name: str) -> str | None:
        value = await self.redis.hget(self.k.project_by_name, name)
        return value.decode() if value is not None else None

    async def project_names(self) -> dict[str, str]:
        raw = await self.redis.hgetall(self.k.project_by_name)
        return {v.decode(): k.decode() for k, v in raw.items()}

    async def projects(self) -> list[Doc]:
        ids = await self.redis.zrange(self.k.projects, 0, -1)
        return await self._many([self.k.project(i.decode()) for i in ids])

    async def flow(self, flow_id: str) -> Doc | None:
        return await self._get(self.k.flow(flow_id))

    async def flows(self, offset: int = 0, limit: int = 100) -> list[Doc]:
        ids = await self.redis.zrevrange(self.k.flows, offset, offset + limit - 1)
        return await self._many([self.k.flow(i.decode()) for i in ids])

    async def flow_count(self) -> int:
        return await self.redis.zcard(self.k.flows)

    async def flows_by_id(self, flow_ids: list[str]) -> list[Doc]:
        return await self._many([self.k.flow(i) for i in flow_ids])

    async def flows_named(self, name: str) -> list[Doc]:
        ids = await self.redis.smembers(self.k.flows_by_name(name))
        return await self._many([self.k.flow(i.decode()) for i in sorted(ids)])

    async def flow_and_group(self, flow_id: str) -> tuple[Doc | None, Doc | None]:
        # the group's key is built in the script; it is in the flow's slot (both are the registry's)
        flow, group = await self._flow_and_group(keys=[self.k.flow(flow_id)], args=[self.k.flow_group_prefix()])
        return (orjson.loads(flow) if flow else None), (orjson.loads(group) if group else None)

    async def flow_group(self, group_id: str) -> Doc | None:
        return await self._get(self.k.flow_group(group_id))

    async def ping(self) -> bool:
        return bool(await self.redis.ping())
