"""Redis adapters of the ingress: read-model queries and the idempotency-key store."""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from runledger.domain.idempotency import ClaimResult, claim_value, interpret_claim, scoped_key
from runledger.readmodel.keys import Keys

Doc = dict[str, Any]

# Atomically: return the key's value and refresh its TTL to the full period, or claim it.
_CLAIM = """
local old = redis.call('GET', KEYS[1])
local ttl = tonumber(ARGV[2])
if old then
  if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) else redis.call('PERSIST', KEYS[1]) end
  return old
end
if ttl > 0 then redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl) else redis.call('SET', KEYS[1], ARGV[1]) end
return false
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


class IdempotencyStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys, ttl_seconds: int) -> None:
        self.keys, self.ttl = keys, ttl_seconds
        self._claim = redis.register_script(_CLAIM)
        self._confirm = redis.register_script(_CONFIRM)

    async def claim(self, flow_id: str, key: str, run_id: str) -> ClaimResult:
        redis_key = self.keys.idempotency(scoped_key(flow_id, key))
        previous = await self._claim(keys=[redis_key], args=[claim_value(run_id), self.ttl])
        return interpret_claim(previous.decode() if previous is not None else None, run_id)

    async def confirm(self, flow_id: str, key: str, run_id: str, pipe) -> None:
        """Queue the confirmation on ``pipe`` (sent with the read that follows it)."""
        redis_key = self.keys.idempotency(scoped_key(flow_id, key))
        await self._confirm(keys=[redis_key], args=[claim_value(run_id), run_id], client=pipe)


class ReadModels:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis, self.k = redis, keys
        self._flow_and_group = redis.register_script(_FLOW_AND_GROUP)

    async def _get(self, key: str) -> Doc | None:
        raw = await self.redis.get(key)
        return orjson.loads(raw) if raw is not None else None

    async def _many(self, keys: list[str]) -> list[Doc]:
        if not keys:
            return []
        return [orjson.loads(v) for v in await self.redis.mget(keys) if v is not None]

    async def flow_run(self, run_id: str) -> Doc | None:
        return await self._get(self.k.flow_run(run_id))

    async def flow_runs(self, run_ids: list[str]) -> list[Doc]:
        return await self._many([self.k.flow_run(i) for i in run_ids])

    async def task_run(self, task_run_id: str) -> Doc | None:
        return await self._get(self.k.task_run(task_run_id))

    async def task_runs(self, task_run_ids: list[str]) -> list[Doc]:
        return await self._many([self.k.task_run(i) for i in task_run_ids])

    async def runs_of_flow(self, flow_id: str, offset: int, limit: int) -> tuple[list[Doc], int]:
        key = self.k.runs_of_flow(flow_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrevrange(key, offset, offset + limit - 1)
            pipe.zcard(key)
            ids, total = await pipe.execute()
        return await self.flow_runs([i.decode() for i in ids]), total

    async def recent_flow_runs(self, offset: int, limit: int) -> list[Doc]:
        ids = await self.redis.zrevrange(self.k.flow_runs, offset, offset + limit - 1)
        return await self.flow_runs([i.decode() for i in ids])

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

    async def flows_by_id(self, flow_ids: list[str]) -> list[Doc]:
        return await self._many([self.k.flow(i) for i in flow_ids])

    async def flows_named(self, name: str) -> list[Doc]:
        ids = await self.redis.smembers(self.k.flows_by_name(name))
        return await self._many([self.k.flow(i.decode()) for i in sorted(ids)])

    async def flow_and_group(self, flow_id: str) -> tuple[Doc | None, Doc | None]:
        flow, group = await self._flow_and_group(keys=[self.k.flow(flow_id)], args=[self.k.flow_group("")])
        return (orjson.loads(flow) if flow else None), (orjson.loads(group) if group else None)

    async def flow_group(self, group_id: str) -> Doc | None:
        return await self._get(self.k.flow_group(group_id))

    async def ping(self) -> bool:
        return bool(await self.redis.ping())
