"""The scheduling state in Redis: what the scheduling service derives from the event log (the due
queue per label set, the slots held per label and tag, a small document per run), what the
projector keeps from the log (concurrency limits and registered agents: read models of the
``concurrency-limits`` and ``agents`` aggregates, see ``runledger.domain.limits`` / ``agents``),
and what is not in the log (when each agent was last seen, heartbeats, short-lived slot
reservations). The ingress reads and updates it through ``SchedulingStore``; it never writes a
limit or an agent itself: those are commands to the single writer (``SchedulingFrontend``).

The service's keys share the hash tag ``{sched}`` (one Redis Cluster slot), so the Lua scripts
that count and reserve slots across several labels are atomic.

Derived by the scheduling service (rebuildable: it rewrites them from the log on every start):
  run:<id>            JSON: labels, state, version, due time, ... (for ``why`` and the gate)
  labelsets           hash label-set id -> JSON list of labels
  due:<label-set id>  zset run id -> due time (ms); only runs the queue can offer
  occ:label:<label>   set of flow-run ids holding a slot (Submitted, Running, Cancelling)
  occ:tag:<tag>       set of task-run ids holding a slot (Running, Cancelling)
Projected from the log by the projector (read models, ``runledger.readmodel.keys``; in the slot of
their aggregate's events partition, dropped and replayed by ``read-models rebuild``):
  rl:rm:{pL}:limits:label / limits:tag  hash name -> JSON {id, name, limit, kind, updated_ms}
  rl:rm:{pL}:limit_ids                  hash limit id -> "label|tag" \x1f name
  rl:rm:{pA}:agents                     hash agent id -> JSON
Not derivable (liveness):
  rl:{pA}:agent_seen  hash agent id -> last contact (ms): touched by every request with
                      X-PREFECT-AGENT-ID (every poll, every 10 s per agent). Logging it would put a
                      write per poll into the system of record for a value that is stale within
                      seconds anyway; losing it costs one poll interval (the next poll sets it).
  hb / hb_logged      hash run id -> last heartbeat (ms) / last heartbeat written to the log (ms)
  resv:label:<l> / resv:tag:<t>  zset run id -> expiry (ms): a slot granted to a claim whose event
                      the service has not applied yet
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from runledger.domain.scheduling import QUEUE_PAGE, labels_match, labelset_id
from runledger.readmodel.keys import Keys
from runledger.services.runtime.stores import RestoringFromLog


def now_ms() -> int:
    return int(time.time() * 1000)


class SchedKeys:
    def __init__(self, prefix: str = "rl") -> None:
        self.base = f"{prefix}:{{sched}}"

    def run(self, run_id: str) -> str:
        return f"{self.base}:run:{run_id}"

    @property
    def labelsets(self) -> str:
        return f"{self.base}:labelsets"

    def due(self, lsid: str) -> str:
        return f"{self.base}:due:{lsid}"

    def occ(self, kind: str, name: str) -> str:
        return f"{self.base}:occ:{kind}:{name}"

    def resv(self, kind: str, name: str) -> str:
        return f"{self.base}:resv:{kind}:{name}"

    # Where limits and agents were kept before they were in the log (read once, by the upgrade
    # in ``SchedulingFrontend.import_legacy``, which sends them to the writer and drops these).
    def legacy_limits(self, kind: str) -> str:
        return f"{self.base}:limits:{kind}"

    @property
    def legacy_limit_ids(self) -> str:
        return f"{self.base}:limit_ids"

    @property
    def legacy_agents(self) -> str:
        return f"{self.base}:agents"

    @property
    def heartbeats(self) -> str:
        return f"{self.base}:hb"

    @property
    def heartbeats_logged(self) -> str:
        return f"{self.base}:hb_logged"

    def offer(self, run_id: str) -> str:
        return f"{self.base}:offer:{run_id}"

    @property
    def alive(self) -> str:
        return f"{self.base}:alive"

    def written(self, partition: int) -> str:
        """Present while Redis holds what this service derived from events partition ``partition``;
        gone with the rest when Redis loses its data, which makes the owner write it all again."""
        return f"{self.base}:written:{partition}"

    @property
    def derived_pattern(self) -> str:
        return f"{self.base}:*"


# Grant a slot on every (occ, resv, limit) triple, or name the first that is full; refuse ({-1})
# while the holders may be behind the log: a ``written:<p>`` marker is missing (Redis lost its
# data, or the partition's new owner is replaying it), or ``alive`` is (no scheduling service is
# running: a granted claim's reservation would expire before anyone adds its run to the holders).
# KEYS: occ1, resv1, occ2, resv2, ..., then written:0 .. written:P-1, alive;
# ARGV: member, now, expiry, n (the number of pairs), limit1 .. limitn
_GRANT = """
local member, now, expiry, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for j = 2 * n + 1, #KEYS do
  if redis.call('EXISTS', KEYS[j]) == 0 then return {-1, 0, 0} end
end
for i = 1, n do
  local occ, resv, limit = KEYS[2*i-1], KEYS[2*i], tonumber(ARGV[4+i])
  if redis.call('SISMEMBER', occ, member) == 0 then
    redis.call('ZREMRANGEBYSCORE', resv, '-inf', now)
    local used = redis.call('SCARD', occ)
    local mine = false
    for _, m in ipairs(redis.call('ZRANGE', resv, 0, -1)) do
      if m == member then mine = true elseif redis.call('SISMEMBER', occ, m) == 0 then used = used + 1 end
    end
    if (not mine) and used >= limit then return {i, used, limit} end
  end
end
for i = 1, n do
  if redis.call('SISMEMBER', KEYS[2*i-1], member) == 0 then redis.call('ZADD', KEYS[2*i], expiry, member) end
end
return {0, 0, 0}
"""
# Release our reservation (only if it is still ours: same expiry).
_RELEASE = """
for i = 1, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[1]) == ARGV[2] then redis.call('ZREM', KEYS[i], ARGV[1]) end
end
return 1
"""
# Touch an agent only if it is registered.
_TOUCH = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) return 1 end
return 0
"""
# Record a heartbeat; answer 1 when the log should get one too (none logged for ARGV[3] ms).
_HEARTBEAT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local logged = redis.call('HGET', KEYS[2], ARGV[1])
if (not logged) or tonumber(ARGV[2]) - tonumber(logged) >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  return 1
end
return 0
"""
# Offer leases: keep the runs no other agent was offered within the lease (KEYS: offer keys).
_OFFER = """
local out = {}
local want = tonumber(ARGV[3])
for i, key in ipairs(KEYS) do
  if #out >= want then break end
  local holder = redis.call('GET', key)
  if (not holder) or holder == ARGV[1] then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    table.insert(out, i)
  end
end
return out
"""
# Drop a label set whose due list became empty (atomic with any add, which is a MULTI).
_DROP_EMPTY = """
if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('HDEL', KEYS[1], ARGV[1]) return 1 end
return 0
"""


@dataclass(frozen=True)
class Denied:
    kind: str  # "label" | "tag"
    name: str
    used: int
    limit: int


class SchedulingStore:
    def __init__(self, redis: aioredis.Redis, prefix: str = "rl", *, partitions: int) -> None:
        # ``partitions`` must be the deployment's (settings.partitions): limits and agents live in
        # their aggregates' partition slots, and a grant checks every partition's holders marker.
        self.redis = redis
        self.k = SchedKeys(prefix)
        self.rm = Keys(prefix, partitions)  # limits and agents: the projector's read models
        self._grant = redis.register_script(_GRANT)
        self._release = redis.register_script(_RELEASE)
        self._touch = redis.register_script(_TOUCH)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self.drop_empty = redis.register_script(_DROP_EMPTY)
        self._offer = redis.register_script(_OFFER)

    # -- agents (registered through the writer; read here) ---------------------------------------
    async def touch_agent(self, agent_id: str) -> bool:
        return bool(await self._touch(keys=[self.rm.agents, self.rm.agent_seen], args=[agent_id, now_ms()]))

    async def agents(self) -> list[dict[str, Any]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.rm.agents)
            pipe.hgetall(self.rm.agent_seen)
            agents, seen = await pipe.execute()
        out = []
        for agent_id, raw in agents.items():
            doc = orjson.loads(raw)
            last = seen.get(agent_id)
            doc["last_queried_ms"] = int(last) if last is not None else None
            out.append(doc)
        return sorted(out, key=lambda a: (a.get("created") or "", a["id"]))

    # -- limits (set and deleted through the writer; read here) -----------------------------------
    async def limits(self, kind: str) -> dict[str, dict[str, Any]]:
        raw = await self.redis.hgetall(self.rm.limits(kind))
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    async def enforced_limits(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every limit of ``kind``, read to enforce them: one round trip (the gate's one read per
        Submitted/Running), together with the limits partition's ``whole`` marker. Without it the
        projector is replaying the limits after Redis lost them (or a rebuild): some may be missing,
        so ``RestoringFromLog`` (503, retried) rather than a slot granted under a missing limit."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.rm.limits(kind))
            pipe.exists(self.rm.whole(self.rm.limits_partition))
            raw, whole = await pipe.execute()
        if not whole:
            raise RestoringFromLog("concurrency limits are being restored from the event log")
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    async def has_limits(self, kind: str) -> bool:
        """Whether any limit of ``kind`` exists (one round trip; ``RestoringFromLog`` as above)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(self.rm.limits(kind))
            pipe.exists(self.rm.whole(self.rm.limits_partition))
            exists, whole = await pipe.execute()
        if not whole:
            raise RestoringFromLog("concurrency limits are being restored from the event log")
        return bool(exists)

    async def usage(self, kind: str, names: list[str]) -> dict[str, int]:
        """Slots in use per name: holders plus live reservations of runs not yet holding."""
        if not names:
            return {}
        now = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.smembers(self.k.occ(kind, name))
                pipe.zrangebyscore(self.k.resv(kind, name), now, "+inf")
            results = await pipe.execute()
        out = {}
        for i, name in enumerate(names):
            holders, reserved = results[2 * i], results[2 * i + 1]
            out[name] = len(holders | set(reserved))
        return out

    async def holders(self, kind: str, name: str) -> list[str]:
        return sorted(m.decode() for m in await self.redis.smembers(self.k.occ(kind, name)))

    async def grant(self, kind: str, names_limits: list[tuple[str, int]], member: str, ttl_ms: int) -> tuple[Denied | None, int]:
        """Reserve a slot under every limited name for ``member``; returns (denial, expiry).
        ``RestoringFromLog`` while the holders may be behind the log (see ``_GRANT``)."""
        if not names_limits:
            return None, 0
        now = now_ms()
        expiry = now + ttl_ms
        keys = []
        for name, _ in names_limits:
            keys += [self.k.occ(kind, name), self.k.resv(kind, name)]
        keys += [*(self.k.written(p) for p in range(self.rm.partitions)), self.k.alive]
        result = await self._grant(keys=keys, args=[member, now, expiry, len(names_limits), *(limit for _, limit in names_limits)])
        index, used, limit = (int(x) for x in result)
        if index == 0:
            return None, expiry
        if index < 0:
            raise RestoringFromLog(
                "concurrency slots cannot be granted now: no scheduling service is running, or it is rebuilding the slot holders from the log"
            )
        return Denied(kind, names_limits[index - 1][0], used, limit), expiry

    async def release(self, kind: str, names: list[str], member: str, expiry: int) -> None:
        if names and expiry:
            await self._release(keys=[self.k.resv(kind, n) for n in names], args=[member, expiry])

    # -- the service's own liveness ---------------------------------------------------------------
    async def mark_alive(self, instance_id: str, ttl_ms: int) -> None:
        await self.redis.set(self.k.alive, instance_id, px=ttl_ms)

    async def service_alive(self) -> bool:
        return bool(await self.redis.exists(self.k.alive))

    # -- heartbeats ------------------------------------------------------------------------------
    async def heartbeat(self, subject_id: str, log_every_ms: int) -> bool:
        """Record a heartbeat; True when one should also go to the log (coarsened)."""
        return bool(
            await self._heartbeat(keys=[self.k.heartbeats, self.k.heartbeats_logged], args=[subject_id, now_ms(), log_every_ms])
        )

    async def beat(self, run_id: str) -> None:
        await self.redis.hset(self.k.heartbeats, run_id, now_ms())

    async def heartbeats(self, run_ids: list[str]) -> dict[str, int]:
        if not run_ids:
            return {}
        values = await self.redis.hmget(self.k.heartbeats, run_ids)
        return {r: int(v) for r, v in zip(run_ids, values) if v is not None}

    # -- the queue ---------------------------------------------------------------------------------
    async def run(self, run_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.k.run(run_id))
        return orjson.loads(raw) if raw else None

    async def runs(self, run_ids: list[str]) -> list[dict[str, Any]]:
        if not run_ids:
            return []
        return [orjson.loads(v) for v in await self.redis.mget([self.k.run(r) for r in run_ids]) if v]

    async def labelsets(self) -> dict[str, list[str]]:
        raw = await self.redis.hgetall(self.k.labelsets)
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    async def runs_in_queue(
        self, agent_labels: list[str], before_ms: int, limit: int = QUEUE_PAGE, agent_id: str | None = None, offer_ttl_ms: int = 0
    ) -> list[str]:
        """Due runs an agent with ``agent_labels`` may take, oldest due first, each at most once,
        skipping runs whose limited labels have no free slot (and offering no more than the free
        slots). With an agent id and ``offer_ttl_ms``, a run just offered to another agent is
        skipped for that long (an offer lease), so agents with the same labels do not all race
        for the same runs; an unclaimed run comes back to everyone when its lease ends."""
        sets = {lsid: labels for lsid, labels in (await self.labelsets()).items() if labels_match(labels, agent_labels)}
        if not sets:
            return []
        try:
            label_limits = await self.enforced_limits("label")
        except RestoringFromLog:
            return []  # limits not whole yet: offer nothing rather than runs no agent could claim
        leasing = bool(agent_id and offer_ttl_ms)
        fetch = limit * 4 if (label_limits or leasing) else limit
        async with self.redis.pipeline(transaction=False) as pipe:
            for lsid in sets:
                pipe.zrangebyscore(self.k.due(lsid), "-inf", before_ms, start=0, num=fetch, withscores=True)
            results = await pipe.execute()
        candidates, seen = [], set()
        for _, run_id, lsid in sorted((score, member.decode(), lsid) for lsid, rows in zip(sets, results) for member, score in rows):
            if run_id not in seen:
                seen.add(run_id)
                candidates.append((run_id, lsid))
        limited = sorted({label for _, lsid in candidates for label in sets[lsid] if label in label_limits})
        free: dict[str, int] = {}
        holds: set[tuple[str, str]] = set()  # (label, run): the run already holds a slot of it
        if limited:
            used = await self.usage("label", limited)
            free = {label: label_limits[label]["limit"] - used[label] for label in limited}
            # A Running run is due again when a task run of it is (a retry): it holds its slots
            # already, so it needs no free one (else, at its own limit, it would never be offered).
            run_ids = [run_id for run_id, _ in candidates]
            async with self.redis.pipeline(transaction=False) as pipe:
                for label in limited:
                    pipe.smismember(self.k.occ("label", label), run_ids)
                for label, flags in zip(limited, await pipe.execute()):
                    holds.update((label, run_id) for run_id, flag in zip(run_ids, flags) if flag)
        eligible = []
        for run_id, lsid in candidates:
            needed = [label for label in sets[lsid] if label in free and (label, run_id) not in holds]
            if any(free[label] <= 0 for label in needed):
                continue
            for label in needed:
                free[label] -= 1
            eligible.append(run_id)
            if len(eligible) >= (limit * 2 if leasing else limit):
                break
        if not leasing or not eligible:
            return eligible[:limit]
        kept = await self._offer(keys=[self.k.offer(r) for r in eligible], args=[agent_id, offer_ttl_ms, limit])
        return [eligible[int(i) - 1] for i in kept]

    async def late_runs(self, cutoff_ms: int, limit: int = 100) -> tuple[list[dict[str, Any]], int]:
        sets = await self.labelsets()
        async with self.redis.pipeline(transaction=False) as pipe:
            for lsid in sets:
                pipe.zcount(self.k.due(lsid), "-inf", cutoff_ms)
                pipe.zrangebyscore(self.k.due(lsid), "-inf", cutoff_ms, start=0, num=limit, withscores=True)
            results = await pipe.execute()
        total = sum(results[0::2])
        rows = sorted((score, member.decode()) for batch in results[1::2] for member, score in batch)[:limit]
        docs = {d["id"]: d for d in await self.runs([r for _, r in rows])}
        return [docs[r] for _, r in rows if r in docs], total
