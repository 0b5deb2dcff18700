"""The projector: maintains the Redis read models from the event log.

Its position in each partition is a checkpoint stored in Redis *in the same Lua script* as the
documents and index entries it wrote (one script per batch, every key in the partition's hash
slot, so it runs unchanged on Redis Cluster), so a crash can never apply a batch twice or skip one. If the read
models are dropped (``runledger read-models rebuild``), the checkpoints go with them and the
projector replays that partition from offset 0. After each batch it publishes its progress so
the ingress can answer a write only once the write is readable.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import orjson
from aiokafka import TopicPartition
from pydantic import ValidationError

from runledger.domain.idempotency import restore_ttl, scoped_key
from runledger.messages.codec import decode_event
from runledger.readmodel.keys import Keys
from runledger.readmodel.projection import Changes, Projection
from runledger.services.projector.restore import KeyRestorer
from runledger.services.runtime import redis as redis_clients
from runledger.services.runtime.redis import OUTAGE_ERRORS
from runledger.services.runtime.consumer import ConsumerService
from runledger.services.runtime.process import run_until_stopped
from runledger.settings import Settings
from runledger.topics import PROJECTOR

# One batch of one partition, atomically: refuse if a rebuild fences the partition or if the
# checkpoint is no longer the one the documents were read at (another projector, or a rebuild,
# wrote in between: the caller re-reads and retries); else apply the net changes, move the
# checkpoint and publish the progress. Every key is in the partition's slot (Redis Cluster safe).
# KEYS: checkpoint, fence, then the keys the groups name by index. ARGV: expected checkpoint (''
# for none), new checkpoint, progress channel, progress message, then groups — one command per
# key with all its members (variadic ZADD/ZREM/SADD/SREM/HSET/HDEL, documents in one MSET):
#   'S' n (keyidx value)*n | 'Z' keyidx n (score member)*n | 'z'/'A'/'a'/'h' keyidx n item*n |
#   'H' keyidx n (field value)*n
_APPLY_BATCH = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return -2 end
local CHUNK = 4000
local function variadic(cmd, key, first, last)
  for s = first, last, CHUNK do
    local e = math.min(s + CHUNK - 1, last)
    redis.call(cmd, key, unpack(ARGV, s, e))
  end
end
local commands = {Z = 'ZADD', z = 'ZREM', A = 'SADD', a = 'SREM', H = 'HSET', h = 'HDEL'}
local width = {Z = 2, z = 1, A = 1, a = 1, H = 2, h = 1}
local i, n = 5, #ARGV
while i <= n do
  local op = ARGV[i]
  if op == 'S' then
    local count = tonumber(ARGV[i + 1])
    local j = i + 2
    for _ = 1, count do
      redis.call('SET', KEYS[tonumber(ARGV[j])], ARGV[j + 1])
      j = j + 2
    end
    i = j
  else
    local cmd = commands[op]
    if not cmd then return redis.error_reply('unknown op ' .. tostring(op)) end
    local key, count = KEYS[tonumber(ARGV[i + 1])], tonumber(ARGV[i + 2])
    local first, last = i + 3, i + 2 + count * width[op]
    variadic(cmd, key, first, last)
    i = last + 1
  end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# The partition's read model is whole again: write its marker unless a rebuild fences it or the
# checkpoint has not reached the target yet. KEYS: marker, fence, checkpoint; ARGV: target offset.
_MARK_WHOLE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if tonumber(redis.call('GET', KEYS[3]) or '0') < tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], '1')
return 1
"""


def batch_arguments(checkpoint_key: str, fence_key: str, expected: bytes | None, end: int, channel: str, message: str, changes: Changes):
    """KEYS and ARGV of ``_APPLY_BATCH`` for ``changes``: one variadic command per key and kind."""
    keys = [checkpoint_key, fence_key]
    index: dict[str, int] = {}

    def at(key: str) -> int:
        found = index.get(key)
        if found is None:
            keys.append(key)
            found = index[key] = len(keys)
        return found

    args: list = [expected or b"", end, channel, message]
    if changes.docs:
        args += ("S", len(changes.docs))
        for key, doc in changes.docs.items():
            args += (at(key), orjson.dumps(doc))
    groups: dict[tuple[str, str], list] = {}
    for (key, member), score in changes.zsets.items():
        if score is not None:
            groups.setdefault(("Z", key), []).extend((score, member))
        else:
            groups.setdefault(("z", key), []).append(member)
    for (key, member), present in changes.sets.items():
        groups.setdefault(("A" if present else "a", key), []).append(member)
    for (key, name), value in changes.hashes.items():
        if value is not None:
            groups.setdefault(("H", key), []).extend((name, value))
        else:
            groups.setdefault(("h", key), []).append(name)
    for (code, key), items in groups.items():
        args += (code, at(key), len(items) // 2 if code in ("Z", "H") else len(items), *items)
    return keys, args


class ProjectorService(ConsumerService):
    group = PROJECTOR
    max_records = 2000
    REALIGN_SECONDS = 0.5
    RESTORE_CHECK_SECONDS = 0.5  # are the idempotency keys whole? (see restore.py)
    WHOLE_CHECK_SECONDS = 0.25  # is each partition's read model whole? (see ``mark_whole``)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.keys = Keys(settings.redis_prefix, settings.partitions)
        self.projection = Projection(self.keys)
        self.redis = redis_clients.client(settings)
        self._apply_batch = self.redis.register_script(_APPLY_BATCH)
        self._last_realign = 0.0
        self.restorer = KeyRestorer(self)
        self._last_restore_check = 0.0
        self._mark_whole = self.redis.register_script(_MARK_WHOLE)
        self.whole_targets: dict[int, int] = {}  # partition -> events end to reach before it is whole
        self._last_whole_check = 0.0

    def source(self):
        return self.topics.events

    async def stop_resources(self) -> None:
        await self.redis.aclose()

    def details(self) -> dict:
        return {
            "applied": self.handled,
            "restoring_idempotency_keys": self.restorer.restoring,
            "replaying_partitions": sorted(self.whole_targets),
        }

    async def handle(self, batch: dict) -> None:
        for tp, records in batch.items():
            await self.apply(tp, records)
        loop = asyncio.get_running_loop()
        # Busy partitions notice a dropped read model by their next records (``apply``); a quiet
        # one only here, which must run under load on other partitions too.
        if loop.time() - self._last_realign > self.REALIGN_SECONDS:
            await self.realign()
            self._last_realign = loop.time()
        if loop.time() - self._last_restore_check > self.RESTORE_CHECK_SECONDS:
            self._last_restore_check = loop.time()
            try:
                await self.restorer.check()
            except OUTAGE_ERRORS:
                raise  # Redis is down: the consumer base pauses and retries
            except Exception as exc:  # the broker did not answer a question: ask again next time
                self.log.warning("idempotency-key restore check failed; retrying", error=repr(exc)[:300])
        if loop.time() - self._last_whole_check > self.WHOLE_CHECK_SECONDS:
            self._last_whole_check = loop.time()
            try:
                await self.mark_whole()
            except OUTAGE_ERRORS:
                raise
            except Exception as exc:
                self.log.warning("read-model completeness check failed; retrying", error=repr(exc)[:300])

    async def on_assigned(self, partitions: list[int]) -> None:
        await self.seek_to_checkpoints([TopicPartition(self.topics.events.name, p) for p in partitions])
        self.whole_targets = {p: t for p, t in self.whole_targets.items() if p in partitions}
        try:
            await self.mark_whole()  # a fresh start: whole at once (nothing to replay)
        except Exception as exc:  # the periodic check does it later
            self.log.warning("read-model completeness check failed; retrying", error=repr(exc)[:300])

    async def mark_whole(self) -> None:
        """Write each owned partition's ``whole`` marker once its read model holds every event the
        log had when the marker was found missing (the read model was dropped: Redis lost its data,
        or a rebuild). The target is the events end at that moment; a drop noticed later (the
        checkpoint went backwards) takes a new one. Readers that must not act on a half-replayed
        model check the marker: the scheduling gate refuses to grant a slot under limits it cannot
        see whole (503, retried), rather than grant slots under limits that are not back yet."""
        tps = sorted(self.consumer.assignment())
        if not tps:
            return
        present = await redis_clients.mget(self.redis, [self.keys.whole(tp.partition) for tp in tps])
        missing = [tp for tp, value in zip(tps, present) if value is None]
        for tp, value in zip(tps, present):
            if value is not None:
                self.whole_targets.pop(tp.partition, None)
        untargeted = [tp for tp in missing if tp.partition not in self.whole_targets]
        if untargeted:
            ends = await self.consumer.end_offsets(untargeted)
            for tp in untargeted:
                self.whole_targets[tp.partition] = ends[tp]
        for tp in missing:
            p = tp.partition
            target = self.whole_targets.get(p)
            if target is None:
                continue
            keys = [self.keys.whole(p), self.keys.rebuild_fence(p), self.keys.checkpoint(p)]
            if await self._mark_whole(keys=keys, args=[target]) == 1:
                self.whole_targets.pop(p, None)
                self.log.info("read model whole", partition=p, events=target)

    async def realign(self) -> None:
        """When idle, notice dropped read models (checkpoint behind our position) and replay."""
        tps = sorted(self.consumer.assignment())
        if not tps:
            return
        values = await redis_clients.mget(
            self.redis, [k for tp in tps for k in (self.keys.checkpoint(tp.partition), self.keys.rebuild_fence(tp.partition))]
        )
        for tp, checkpoint, fence in zip(tps, values[0::2], values[1::2]):
            if fence is not None:
                continue  # a rebuild is dropping this partition's read model: look again later
            checkpoint = int(checkpoint or 0)
            if checkpoint < await self.consumer.position(tp):
                self.log.info("read model behind the consumer: replaying", partition=tp.partition, checkpoint=checkpoint)
                self.whole_targets.pop(tp.partition, None)  # dropped (again): a new target
                self.consumer.seek(tp, checkpoint)

    async def seek_to_checkpoints(self, tps) -> None:
        values = await redis_clients.mget(self.redis, [self.keys.checkpoint(tp.partition) for tp in tps])
        for tp, value in zip(tps, values):
            self.consumer.seek(tp, int(value or 0))

    async def apply(self, tp: TopicPartition, records) -> None:
        partition = tp.partition
        checkpoint_key, fence_key = self.keys.checkpoint(partition), self.keys.rebuild_fence(partition)
        decoded = self._decode(records)
        needed: dict[str, None] = {}
        for record, env in decoded:
            if not isinstance(env, Exception):
                try:
                    needed.update(dict.fromkeys(self.projection.keys_needed(env)))
                except Exception:
                    pass  # set aside in _project
        keys = list(needed)
        while True:
            # checkpoint, fence and documents in one read: all in the partition's slot
            values = await self.redis.mget([checkpoint_key, fence_key, *keys])
            checkpoint, fence, loaded = values[0], values[1], values[2:]
            if fence is not None:  # a rebuild is dropping the read models: wait for it
                await asyncio.sleep(0.05)
                continue
            position = int(checkpoint or 0)
            fresh = [(r, env) for r, env in decoded if r.offset >= position]
            if not fresh:
                return
            if fresh[0][0].offset > position:  # read models were dropped: replay from there
                self.whole_targets.pop(partition, None)  # dropped (again): a new target
                self.consumer.seek(tp, position)
                return
            docs = {k: (orjson.loads(v) if v is not None else None) for k, v in zip(keys, loaded)}
            changes = await self._project(fresh, docs)
            await self._keep_idempotency_keys(fresh)  # before the checkpoint passes their runs
            end = fresh[-1][0].offset + 1
            script_keys, args = batch_arguments(
                checkpoint_key, fence_key, checkpoint, end, self.keys.progress_channel, f"{partition}:{end}", changes
            )
            if await self._apply_batch(keys=script_keys, args=args) == 1:
                self.handled += len(fresh)
                return
            # fenced, or the checkpoint moved under us: read again

    async def _keep_idempotency_keys(self, fresh) -> None:
        """Write each created run's idempotency key unless Redis has it (``SET NX``): a no-op while
        Redis keeps its data, the restore after it lost it (see restore.py)."""
        now = datetime.now(timezone.utc)
        keep = []
        for _, env in fresh:
            if isinstance(env, Exception) or env.type != "FlowRunCreated" or env.payload.spec.idempotency_key is None:
                continue
            spec = env.payload.spec
            ttl = restore_ttl(env.time, now, self.settings.idempotency_ttl_seconds, self.settings.idempotency_restore_grace_seconds)
            if ttl is not None:
                keep.append((self.keys.idempotency(scoped_key(spec.flow_id, spec.idempotency_key)), spec.flow_run_id, ttl))
        if not keep:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, run_id, ttl in keep:
                pipe.set(key, run_id, nx=True, ex=ttl or None)
            await pipe.execute()

    def _decode(self, records) -> list:
        """``(record, envelope or the decoding error)`` for each record."""
        out = []
        for record in records:
            try:
                out.append((record, decode_event(record.value)))
            except (ValidationError, ValueError) as exc:
                out.append((record, exc))
        return out

    async def _project(self, fresh, loaded: dict) -> Changes:
        """The changes the ``fresh`` records make to the ``loaded`` documents. A record that cannot
        be decoded or projected goes to the dead-letter topic (before the checkpoint passes it)
        and contributes nothing; the rest of the batch is applied."""
        envelopes = []
        for record, env in fresh:
            if isinstance(env, Exception):
                await self.dead_letter(record, "decode", env)
                continue
            try:
                self.projection.keys_needed(env)
            except Exception as exc:
                await self.dead_letter(record, "project", exc)
                continue
            envelopes.append((record, env))
        docs, changes = dict(loaded), Changes()
        try:
            for _, env in envelopes:
                self.projection.apply(env, docs, changes)
            return changes
        except Exception:
            pass  # rare: redo one event at a time, so only the bad one is set aside
        docs, changes = dict(loaded), Changes()
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
