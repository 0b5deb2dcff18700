"""The scheduling service: follows the events topic, keeps per-run scheduling facts in memory
(rebuilt from the log on every assignment: it never commits offsets), writes what the ingress
needs to Redis (the due queue per label set, the slots held per label and tag; see ``store``),
and runs the timers: recovery (Lazarus, zombie killer, stale Cancelling) and flow schedules.

Every state change it decides goes to the single writer as a command carrying the version it
was decided on, so a run that moved on since is never changed by a stale decision.

Horizontal scale: instances share the consumer group ``runledger-scheduling``; each owns some
events partitions and reaps only the runs in them; the instance owning the registry's partition
creates scheduled runs (with deterministic run ids, so a takeover never duplicates one). Every
instance follows the registry partition itself (flows, schedules, flow-group settings).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import orjson
from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from pydantic import ValidationError

from runledger.domain.scheduling import (
    FLOW_SLOT_STATES,
    LAZARUS_STATES,
    GroupSettings,
    RecoveryPolicy,
    RunFacts,
    labelset_id,
    made_for_epoch,
    recovery_for,
)
from runledger.domain.registry import extended
from runledger.domain.states import StateType, is_finished
from runledger.messages import events as e
from runledger.messages.codec import decode_event
from runledger.messages.models import FlowDefinition
from runledger.readmodel.keys import Keys
from runledger.services.runtime import redis as redis_clients
from runledger.services.runtime.tasks import stop_tasks
from runledger.services.runtime.bus import CommandBus
from runledger.services.runtime.consumer import ConsumerService
from runledger.services.runtime.kafka import consumer as kafka_consumer
from runledger.services.runtime.process import run_until_stopped
from runledger.services.scheduling.schedules import Scheduler
from runledger.services.runtime.scheduling_store import SchedulingStore
from runledger.settings import Settings
from runledger.topics import REGISTRY_AGGREGATE, SCHEDULING

S = StateType


def registry_partition(partitions: int) -> int:
    return DefaultPartitioner()(REGISTRY_AGGREGATE.encode(), list(range(partitions)), list(range(partitions)))


def _ms(t: datetime | None) -> int | None:
    return int(t.timestamp() * 1000) if t is not None else None


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _holds(marker: bytes | None, position: int | None) -> bool:
    """Whether a ``written:<p>`` marker says Redis holds what we wrote up to ``position``."""
    try:
        return marker is not None and position is not None and int(marker) == position
    except ValueError:
        return False


WRITE_CHUNK_RUNS = 1000
# ``written:<p>`` moves from the position last written to the new one only if it still holds the
# former: a Redis that came back older (an earlier RDB or AOF, a lagging replica) or empty keeps
# the difference, and the next timer pass writes the whole partition again.
ADVANCE_WRITTEN = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) end"


class PartitionState:
    def __init__(self, partition: int, end: int, start: int = 0) -> None:
        self.partition = partition
        self.runs: dict[str, RunFacts] = {}
        self.active: set[str] = set()  # runs recovery looks at
        self.end_at_assign = end
        self.position = start  # the next offset to apply: records follow one another from the log's start
        # Runs whose facts changed and whose Redis keys are not written yet. Cleared only by a
        # write that succeeded, so a batch retried after a Redis error (its events already
        # applied) still writes them. While the partition is replayed from the start they wait
        # until it reaches ``end_at_assign``: written batch by batch, a run would show in Redis
        # as it was in the past (a finished run due again, a slot held again) until its later
        # events.
        self.unwritten: set[str] = set()
        # The position Redis holds our keys for (``written:<p>``, set with them); None until the
        # partition's runs have all been written once.
        self.written: int | None = None

    @property
    def replayed(self) -> bool:
        return self.position >= self.end_at_assign

    @property
    def caught_up(self) -> bool:
        """Replayed, and what the replay changed written to Redis (later writes in progress, or
        waiting for Redis, do not count: readiness and the timer passes must not flap with them)."""
        return self.replayed and (self.written is not None or not self.unwritten)


class Registry:
    """What every instance follows of the registry aggregate."""

    def __init__(self) -> None:
        self.flows: dict[str, FlowDefinition] = {}
        self.archived: set[str] = set()
        self.groups: dict[str, dict] = {}
        self.epochs: dict[str, int] = {}  # schedule re-activations per flow group
        self.seq = 0

    def apply(self, payload) -> list[str]:
        """Returns flow ids whose scheduled runs stop (archived, or schedule switched off)."""
        stopped: list[str] = []
        match payload:
            case e.FlowRegistered(flow=flow, archived_flow_ids=archived):
                self.flows[flow.id] = flow
                self.archived.update(archived)
                stopped += archived
                if payload.schedule_active is not None:  # the registration's set_schedule_active
                    stopped += self._group_changed(flow.version_group_id, {"schedule_active": payload.schedule_active})
            case e.FlowGroupUpdated(flow_group_id=gid, changes=changes):
                stopped += self._group_changed(gid, changes)
            case e.FlowTasksRegistered() | e.FlowEdgesRegistered():  # Client.register()'s tasks, after the flow
                flow = self.flows.get(payload.flow_id)
                if flow is not None:
                    self.flows[flow.id] = extended(flow, payload)
        return stopped

    def _group_changed(self, gid: str, changes: dict) -> list[str]:
        group = self.groups.setdefault(gid, {})
        if changes.get("schedule_active") is True and group.get("schedule_active") is False:
            self.epochs[gid] = self.epochs.get(gid, 0) + 1
        group.update(changes)
        if changes.get("schedule_active") is False:
            return [f.id for f in self.flows.values() if f.version_group_id == gid]
        return []

    def settings_of(self, group_id: str) -> GroupSettings:
        s = (self.groups.get(group_id) or {}).get("settings") or {}
        return GroupSettings(lazarus_enabled=s.get("lazarus_enabled", True) is not False, heartbeat_enabled=s.get("heartbeat_enabled", True) is not False)

    def schedule_active(self, flow_id: str) -> bool:
        flow = self.flows.get(flow_id)
        if flow is None or flow_id in self.archived or not flow.schedule:
            return False
        return (self.groups.get(flow.version_group_id) or {}).get("schedule_active", True) is not False


class SchedulingService(ConsumerService):
    group = SCHEDULING
    max_records = 5000

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.parts: dict[int, PartitionState] = {}
        self.registry = Registry()
        self.registry_position = 0
        self.registry_end = 0
        self.lock = asyncio.Lock()
        self.policy = RecoveryPolicy(
            lazarus_after=timedelta(seconds=settings.scheduling_lazarus_seconds),
            zombie_after=timedelta(seconds=settings.scheduling_zombie_seconds),
            cancelling_after=timedelta(seconds=settings.scheduling_cancelling_seconds),
            max_lazarus_attempts=settings.scheduling_lazarus_attempts,
        )
        self.decided: dict[tuple[str, str, int], float] = {}  # (run, kind, version) -> when sent
        self.recovered: dict[str, int] = {}
        self.stopped_flows: set[str] = set()
        self._tasks: list[asyncio.Task] = []
        self._commands: asyncio.Task | None = None  # recovery, stopped schedules, schedule tick

    def source(self):
        return self.topics.events

    @property
    def ready(self) -> bool:
        return (
            super().ready
            and all(p.caught_up for p in self.parts.values())
            and self.registry_position >= self.registry_end
        )

    def details(self) -> dict:
        return {
            "partitions": sorted(self.parts),
            "runs": sum(len(p.runs) for p in self.parts.values()),
            "recovered": self.recovered,
            "scheduled_created": self.scheduler.created if hasattr(self, "scheduler") else 0,
        }

    async def start_resources(self) -> None:
        self.redis = redis_clients.client(self.settings, max_connections=64)
        self.store = SchedulingStore(self.redis, self.settings.redis_prefix, partitions=self.settings.partitions)
        self.bus = CommandBus(self.settings, self.redis, Keys(self.settings.redis_prefix, self.settings.partitions))
        await self.bus.start()
        self.scheduler = Scheduler(self.settings, self.bus, self.registry, self.log)
        self.registry_tp = TopicPartition(self.topics.events.name, registry_partition(self.topics.events.partitions))
        self.registry_reader = kafka_consumer(self.settings)
        await self.registry_reader.start()
        self.registry_reader.assign([self.registry_tp])
        await self.registry_reader.seek_to_beginning(self.registry_tp)
        self.registry_end = (await self.registry_reader.end_offsets([self.registry_tp]))[self.registry_tp]
        self._tasks = [asyncio.create_task(self._follow_registry()), asyncio.create_task(self._timers())]

    async def stop_resources(self) -> None:
        await stop_tasks(*self._tasks, self._commands)
        await self.registry_reader.stop()
        await self.bus.stop()
        await self.redis.aclose()

    # -- ownership ------------------------------------------------------------------------------
    async def on_assigned(self, partitions: list[int]) -> None:
        async with self.lock:
            tps = [TopicPartition(self.topics.events.name, p) for p in partitions]
            ends = await self.consumer.end_offsets(tps) if tps else {}
            starts = await self.consumer.beginning_offsets(tps) if tps else {}
            new = [tp for tp in tps if tp.partition not in self.parts]
            if new:  # the slot gate refuses until our replay has written their holders again
                await self.redis.delete(*(self.store.k.written(tp.partition) for tp in new))
            for tp in new:  # new to us: rebuild its facts from the start
                self.parts[tp.partition] = PartitionState(tp.partition, ends[tp], starts[tp])
                self.consumer.seek(tp, starts[tp])
            if new:  # their previous owner may not have removed every run of a stopped schedule
                self.stopped_flows.update(f for f in self.registry.flows if not self.registry.schedule_active(f))
            for p in list(self.parts):
                if p not in partitions:
                    del self.parts[p]
            self.log.info("assigned", partitions=partitions)

    async def on_revoked(self, partitions: list[int]) -> None:
        async with self.lock:  # let a batch or a recovery pass finish before ownership moves
            for p in partitions:
                self.parts.pop(p, None)

    # -- events -> facts -> Redis ------------------------------------------------------------------
    async def handle(self, batch: dict) -> None:
        if not batch:
            return
        async with self.lock:
            for tp, records in batch.items():
                part = self.parts.get(tp.partition)
                if part is None:
                    continue
                for record in records:
                    if record.offset < part.position:
                        continue
                    if record.offset > part.position:
                        # A batch fetched before a rebalance gave us the partition again (its
                        # facts now start again from the log's start), retried after a Redis
                        # error: these records come again, in order, after the ones before them.
                        break
                    part.position = record.offset + 1
                    if record.key == REGISTRY_AGGREGATE.encode():
                        continue  # followed separately (every instance needs it)
                    try:
                        env = decode_event(record.value)
                    except (ValidationError, ValueError) as exc:
                        await self.dead_letter(record, "decode", exc)
                        continue
                    if env.flow_run_id is None:
                        continue  # not a run (the concurrency limits, the agents): no run facts
                    run = part.runs.get(env.aggregate_id)
                    if run is None:
                        run = part.runs[env.aggregate_id] = RunFacts(env.aggregate_id)
                    run.apply(env.payload, env.time)
                    part.unwritten.add(run.id)
            due = [part for part in self.parts.values() if part.replayed and part.unwritten]
            if due:
                # A replay's first write holds every run of its partition: the whole of it.
                await self._write([(part, part.runs[run_id]) for part in due for run_id in part.unwritten],
                                  [part for part in due if part.written is None])
                for part in due:
                    part.unwritten.clear()
            self.handled += sum(len(r) for r in batch.values())

    async def _write(self, runs: list[tuple[PartitionState, RunFacts]], whole: list[PartitionState] = ()) -> None:
        """Write the runs' scheduling keys, one Redis transaction per ``WRITE_CHUNK_RUNS`` runs
        (each run's keys in one), so a replay's or a lost Redis's rewrite of a whole partition
        does not queue one enormous transaction. The last one also records each partition's
        position in ``written:<p>``: set outright for the partitions in ``whole`` (all their runs
        were written), else moved on from the position last written (``ADVANCE_WRITTEN``)."""
        parts = {id(part): part for part, _ in runs} | {id(part): part for part in whole}
        chunks = [runs[start : start + WRITE_CHUNK_RUNS] for start in range(0, len(runs), WRITE_CHUNK_RUNS)] or [[]]
        for n, chunk in enumerate(chunks):
            await self._write_chunk(chunk, list(parts.values()) if n == len(chunks) - 1 else [], whole)
        for part in parts.values():
            part.written = part.position

    async def _write_chunk(self, runs: list[tuple[PartitionState, RunFacts]], stamp: list[PartitionState], whole) -> None:
        k = self.store.k
        emptied: set[str] = set()
        async with self.redis.pipeline(transaction=True) as pipe:
            for part, run in runs:
                if run.state in LAZARUS_STATES or run.state is S.CANCELLING:
                    part.active.add(run.id)
                else:
                    part.active.discard(run.id)
                due = run.due_at
                lsid = labelset_id(run.labels)
                doc = {
                    "id": run.id,
                    "flow_id": run.flow_id,
                    "flow_group_id": run.flow_group_id,
                    "labels": list(run.labels),
                    "state": run.state.value,
                    "version": run.version,
                    "state_message": run.state_message,
                    "state_start_time": _iso(run.state_start_time),
                    "scheduled_start_time": _iso(run.scheduled_start_time),
                    "due_ms": _ms(due),
                    "last_event": _iso(run.last_event),
                    "lazarus_attempts": run.lazarus_attempts,
                }
                pipe.set(k.run(run.id), orjson.dumps(doc))
                if due is not None:
                    pipe.hset(k.labelsets, lsid, orjson.dumps(list(run.labels)))
                    pipe.zadd(k.due(lsid), {run.id: _ms(due)})
                else:
                    pipe.zrem(k.due(lsid), run.id)
                    emptied.add(lsid)
                holds = run.state in FLOW_SLOT_STATES
                for label in run.labels:
                    if holds:
                        pipe.sadd(k.occ("label", label), run.id)
                        pipe.zrem(k.resv("label", label), run.id)
                    else:
                        pipe.srem(k.occ("label", label), run.id)
                slots = run.task_slots()
                for task in run.task_runs.values():
                    for tag in task.tags:
                        if task.id in slots:
                            pipe.sadd(k.occ("tag", tag), task.id)
                            pipe.zrem(k.resv("tag", tag), task.id)
                        else:
                            pipe.srem(k.occ("tag", tag), task.id)
                if is_finished(run.state):  # its heartbeats and its task runs' (``t:<id>``) are done
                    beats = [run.id, *(f"t:{task_run_id}" for task_run_id in run.task_runs)]
                    pipe.hdel(k.heartbeats, *beats)
                    pipe.hdel(k.heartbeats_logged, *beats)
            for part in stamp:
                if part in whole:
                    pipe.set(k.written(part.partition), part.position)
                elif part.written is not None:
                    pipe.eval(ADVANCE_WRITTEN, 1, k.written(part.partition), part.written, part.position)
            await pipe.execute()
        for lsid in emptied:
            await self.store.drop_empty(keys=[k.labelsets, k.due(lsid)], args=[lsid])

    # -- the registry ----------------------------------------------------------------------------------
    async def _follow_registry(self) -> None:
        while True:
            try:
                batch = await self.registry_reader.getmany(self.registry_tp, timeout_ms=500, max_records=2000)
            except Exception as exc:  # never let the registry go stale behind a dead task: retry
                self.log.warning("registry read failed", error=repr(exc)[:300])
                await asyncio.sleep(1)
                continue
            for record in batch.get(self.registry_tp, []):
                self.registry_position = record.offset + 1
                if record.key != REGISTRY_AGGREGATE.encode():
                    continue
                try:
                    env = decode_event(record.value)
                    if env.seq <= self.registry.seq:
                        continue
                    stopped = self.registry.apply(env.payload)
                except Exception as exc:  # undecodable (the partition's group consumer sets it aside) or unappliable
                    self.log.warning("registry event skipped", offset=record.offset, error=repr(exc)[:300])
                    continue
                self.registry.seq = env.seq
                self.stopped_flows.update(stopped)

    # -- timers ------------------------------------------------------------------------------------------
    async def _timers(self) -> None:
        while True:
            await asyncio.sleep(self.settings.scheduling_tick_seconds)
            if not self.ready:
                continue
            try:
                await self.store.mark_alive(self.settings.instance_id, int(max(10.0, 5 * self.settings.scheduling_tick_seconds) * 1000))
                await self.rewrite_what_redis_lost()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a timer pass never kills the service; the next one retries
                self.log.warning("timer pass failed", error=repr(exc)[:300])
            # What waits for the writer's answers (up to the command timeout) runs beside the
            # passes, one at a time: a slow or absent writer never holds up the Redis work above.
            if self._commands is None or self._commands.done():
                self._commands = asyncio.create_task(self._send_commands())

    async def _send_commands(self) -> None:
        try:
            if self.settings.scheduling_recovery_enabled:
                await self.recover()
            await self.stop_schedules()
            if self.registry_tp.partition in self.parts:
                await self.scheduler.tick(datetime.now(timezone.utc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next pass tries again
            self.log.warning("timer pass failed", error=repr(exc)[:300])

    async def rewrite_what_redis_lost(self) -> None:
        """Redis lost its data, or came back older (a restart without persistence or from an
        earlier RDB or AOF, a failover to a lagging replica, FLUSHALL): ``written:<p>`` is missing
        or is not the position we last wrote. Write every run of that partition again. What Redis
        holds for scheduling is derived from our facts, which come from the log, so slot holders
        and due queues are whole again and never drift."""
        async with self.lock:
            owned = sorted(p for p, part in self.parts.items() if part.caught_up)
            if not owned:
                return
            markers = await self.redis.mget([self.store.k.written(p) for p in owned])
            lost = [p for p, marker in zip(owned, markers) if not _holds(marker, self.parts[p].written)]
            for p in lost:
                part = self.parts[p]
                # Until the rewrite ends, the slot gate refuses (503) rather than grant from older holders.
                await self.redis.delete(self.store.k.written(p))
                await self._write([(part, run) for run in part.runs.values()], [part])
            if lost:
                self.log.info("scheduling keys written again", partitions=lost, runs=sum(len(self.parts[p].runs) for p in lost))

    async def recover(self) -> None:
        now = datetime.now(timezone.utc)
        clock = asyncio.get_running_loop().time()
        async with self.lock:
            candidates = [(run) for part in self.parts.values() for run in (part.runs[r] for r in part.active)]
            if not candidates:
                return
            beats = await self.store.heartbeats([r.id for r in candidates])
            decisions = []
            for run in candidates:
                beat = beats.get(run.id)
                heartbeat = datetime.fromtimestamp(beat / 1000, timezone.utc) if beat else None
                flow = self.registry.flows.get(run.flow_id)
                tasks = flow.tasks if flow else []
                for decision in recovery_for(
                    run,
                    heartbeat,
                    now,
                    self.policy,
                    self.registry.settings_of(run.flow_group_id),
                    {t.id: t.max_retries for t in tasks},
                    {t.id: t.retry_delay_seconds for t in tasks},
                ):
                    version = getattr(decision.command, "version", None) or 0
                    key = (decision.run_id + "/" + getattr(decision.command, "task_run_id", ""), decision.kind, version)
                    if clock - self.decided.get(key, -1e9) < 10:
                        continue  # sent recently; wait for its event (or its refusal) first
                    self.decided[key] = clock
                    decisions.append(decision)
        if len(self.decided) > 100_000:
            self.decided.clear()
        results = await asyncio.gather(*(self.bus.send(d.run_id, d.command) for d in decisions), return_exceptions=True)
        for decision, result in zip(decisions, results):
            if isinstance(result, Exception):
                self.log.warning("recovery command failed", run=decision.run_id, kind=decision.kind, error=repr(result)[:200])
            elif result.ok:
                self.recovered[decision.kind] = self.recovered.get(decision.kind, 0) + 1
                self.log.info("recovered", run=decision.run_id, kind=decision.kind)
            else:
                self.log.info("recovery refused (the run moved on)", run=decision.run_id, kind=decision.kind, code=result.rejection.code)

    def _made_by_schedule_now(self, run: RunFacts) -> bool:
        """Whether the flow's schedule is on and ``run`` is one it makes now (its current epoch):
        ``stopped_flows`` may name a schedule switched off and on again since (the restart's
        replay of the registry, a takeover), whose new runs must stay."""
        flow = self.registry.flows.get(run.flow_id)
        if flow is None or not self.registry.schedule_active(run.flow_id):
            return False
        return made_for_epoch(run, self.registry.epochs.get(flow.version_group_id, 0))

    async def stop_schedules(self) -> None:
        """Runs a schedule made ahead of time go when their flow version is archived or its
        schedule is switched off: each instance cancels those in its own partitions (with the
        version it saw, so a run an agent just claimed is left alone)."""
        if not self.stopped_flows:
            return
        flows, self.stopped_flows = self.stopped_flows, set()
        now = datetime.now(timezone.utc)
        from runledger.domain.states import State
        from runledger.messages import commands as c

        async with self.lock:
            victims = [
                run
                for part in self.parts.values()
                for run in part.runs.values()
                if run.flow_id in flows and run.auto_scheduled and run.state is S.SCHEDULED
                and (run.state_start_time or run.scheduled_start_time or now) > now
                and not self._made_by_schedule_now(run)
            ]
        state = State(type=S.CANCELLED, message="Removed: its flow's schedule stopped (archived or set inactive).")
        results = await asyncio.gather(
            *(self.bus.send(r.id, c.SetFlowRunState(state=state, version=r.version)) for r in victims), return_exceptions=True
        )
        # A refusal means the run moved on (an agent claimed it): done. No answer: try again next pass.
        unanswered = {run.flow_id for run, result in zip(victims, results) if isinstance(result, Exception)}
        if unanswered:
            self.log.warning("schedule stop unanswered; trying again", flows=sorted(unanswered))
            self.stopped_flows |= unanswered


def main() -> None:
    run_until_stopped(SchedulingService(Settings()))
