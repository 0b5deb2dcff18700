"""The log service: flow runs' log lines (the ``logs`` topic) and state changes (``events``) into
the log store (``runledger.services.runtime.logstore``), and the end markers that close watch streams.

One consumer, ``RunTimelines`` (group ``runledger-logs-timeline``, plain aiokafka), reads both
topics, so one fetch request reads both, and applies each batch in record-timestamp order: a state
produced before a line is stored (and watched) before it, whichever topic it came by. Both topics
have the aggregate partition count and are keyed by flow-run id; the group's
``RangePartitionAssignor`` gives partition p of both to the same member, so with several instances
each still sees a run's lines and states together.

- A ``logs`` record holds lines of one run and their sort keys (``LogChunk.keys``, from the
  ingress; computed here for a record without them); a Lua script per record appends them to the
  run's timeline and index *and* records the record's offset for that run (``lo``), so a
  redelivered record is a no-op (and a chunk of a keyed batch the client re-sent is dropped by
  its name). An undecodable record goes to the dead letters.
- An ``events`` record that is a flow-run state change is appended to the run's timeline
  (deduplicated the same way, ``eo``); other events are skipped. When a run finishes, its logs get
  their expiry (finish + ``logs_retention_days``) and an end marker is scheduled
  ``logs_watch_end_grace_seconds`` later. A small loop sends due end markers to the ``logs`` topic,
  keyed by the run: they land after every line acknowledged before them, and once one is stored,
  watchers know they have seen the run's last lines.
- The batch's positions are saved after its writes, per topic and partition (``logs:cp:*``);
  Kafka offsets are not committed: on assignment the consumer seeks to the saved positions, so
  deleting the store replays both topics.

With ``RUNLEDGER_LOGS_ENGINE=faust`` a Faust agent reads ``logs`` instead and ``RunStates`` (group
``runledger-logs-states``) reads ``events`` beside it (``faust_app.py``: same store writes, dedup
and saved positions, but lines and states ordered by arrival); bench/README.md "Logs: Faust vs
aiokafka" compares the engines.
"""

from __future__ import annotations

import asyncio
import heapq
import time

import orjson
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from redis.exceptions import NoScriptError, ResponseError

from runledger.services.runtime import redis as redis_clients
from runledger.services.runtime.redis import OUTAGE_ERRORS
from runledger.services.runtime.tasks import stop_tasks
from runledger.domain.states import StateType, is_finished
from runledger.messages.logs import LogChunk, logs_expire_at_ms
from runledger.services.runtime.consumer import ConsumerService
from runledger.services.runtime.logs import configure
from runledger.services.runtime.logstore import LogStore
from runledger.services.runtime.process import run_until_stopped
from runledger.settings import Settings
from runledger.topics import EVENTS, LOG_STATES, LOG_TIMELINE, LOGS, TopicSpec

REALIGN_SECONDS = 0.5


class RunTimelines(ConsumerService):
    """Log records and state changes into the store; positions saved in Redis; replay when the
    store is dropped. ``specs``: the topics read (a subclass may read one of them alone)."""

    group = LOG_TIMELINE
    assignors = (RangePartitionAssignor,)
    max_records = 2000
    specs: tuple[TopicSpec, ...] = (LOGS, EVENTS)

    def __init__(self, settings: Settings, redis: redis_clients.AsyncRedis, store: LogStore) -> None:
        super().__init__(settings)
        self.redis, self.store = redis, store
        self.lines_topic = self.topics[LOGS].name
        self.lines_stored = self.states_stored = self.ends_sent = 0
        self._last_realign = 0.0

    def sources(self):
        return [self.topics[spec] for spec in self.specs]

    def details(self) -> dict:
        return {"lines": self.lines_stored, "states": self.states_stored, "ends_sent": self.ends_sent}

    async def start_resources(self) -> None:
        await self.store.ensure_scripts()

    async def on_assigned(self, partitions: list[int]) -> None:
        tps = sorted(self.consumer.assignment())
        saved = await self.store.checkpoints(tps)
        for tp in tps:
            self.consumer.seek(tp, saved[tp])

    async def realign(self) -> None:
        """When idle, notice a dropped store (saved position behind ours) and replay."""
        tps = sorted(self.consumer.assignment())
        saved = await self.store.checkpoints(tps)
        for tp in tps:
            if saved[tp] < await self.consumer.position(tp):
                self.log.info("log store behind the consumer: replaying", topic=tp.topic, partition=tp.partition, saved=saved[tp])
                self.consumer.seek(tp, saved[tp])

    async def handle(self, batch: dict) -> None:
        if batch:
            batch = await self.unless_store_dropped(batch)
            if batch:
                await self.apply(batch)
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_realign > REALIGN_SECONDS:
            self._last_realign = loop.time()
            await self.realign()

    async def unless_store_dropped(self, batch: dict) -> dict:
        """The batch, less the partitions whose saved position is behind its first record: the
        store lost its data while we were busy (Redis restarted empty, a failover, keys deleted).
        Writing on would save a position past lines the store no longer holds, and ``realign``
        only looks when idle, so under steady load they would never come back: go back to the
        saved position instead (not before the first offset the topic still has)."""
        saved = await self.store.checkpoints(sorted(tp for tp, records in batch.items() if records))
        kept = {}
        for tp, records in batch.items():
            if records and records[0].offset > saved[tp]:
                first = (await self.consumer.beginning_offsets([tp]))[tp]
                target = max(saved[tp], first)
                if records[0].offset > target:
                    self.log.info("log store behind the batch: replaying", topic=tp.topic, partition=tp.partition, saved=target)
                    self.consumer.seek(tp, target)
                    continue
            kept[tp] = records
        return kept

    def in_time_order(self, batch: dict):
        """The batch's records by CreateTime (ms), each partition's still in offset order
        (``heapq.merge`` only compares the partitions' next records): a record behind its run's
        last applied offset would be dropped as a redelivery. Ties: events first. A state's time
        is stamped by the writer after the command's round trip, a line's by the ingress as it
        arrives, so a state stamped in the same millisecond as a line was requested before it."""
        return heapq.merge(*batch.values(), key=lambda record: (record.timestamp, record.topic == self.lines_topic))

    async def apply(self, batch: dict) -> None:
        queued = []
        for record in self.in_time_order(batch):
            item = await self.prepare(record)
            if item is not None:
                queued.append((record, item))
        try:
            await self._execute(batch, queued)
        except NoScriptError:  # Redis restarted (or flushed scripts): load them and redo; writes are idempotent
            await self.store.ensure_scripts()
            await self._execute(batch, queued)
        except OUTAGE_ERRORS:  # read-only, full: Redis's trouble, not a record's (ridden out by the caller)
            raise
        except ResponseError:  # one bad record: find it, set it aside, apply the rest
            for record, item in queued:
                try:
                    await self._execute({}, [(record, item)])
                except OUTAGE_ERRORS:
                    raise
                except ResponseError as exc:
                    await self.dead_letter(record, "store", exc)
            await self._execute(batch, [])

    async def _execute(self, batch: dict, queued: list) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for record, item in queued:
                if record.topic == self.lines_topic:
                    self.queue_chunk(pipe, record, item)
                else:
                    self.queue_state(pipe, record, item)
            for tp, records in batch.items():  # positions after the writes
                if records:
                    self.store.queue_checkpoint(pipe, tp.topic, tp.partition, records[-1].offset + 1)
            await pipe.execute()
        lines = sum(len(item.lines) for record, item in queued if record.topic == self.lines_topic)
        states = sum(1 for record, _ in queued if record.topic != self.lines_topic)
        self.lines_stored += lines
        self.states_stored += states
        self.handled += lines + states

    async def prepare(self, record):
        """What to store of ``record``: a ``LogChunk``, a state change, or None (nothing)."""
        if record.topic == self.lines_topic:
            try:
                return LogChunk.decode(record.value)
            except (ValueError, TypeError) as exc:
                await self.dead_letter(record, "decode", exc)
                return None
        return self.state_change(record)

    def state_change(self, record):
        """Only flow-run state changes matter here; the projector sets aside undecodable events."""
        try:
            event = orjson.loads(record.value)
            if event.get("type") != "FlowRunStateSet" or not event.get("flow_run_id"):
                return None
            state = event["payload"]["state"]
            state_type = StateType(state["type"])
            entry = {
                "type": state_type.value,
                "message": state.get("message"),
                "timestamp": state.get("timestamp") or event["time"],
                "start_time": state.get("start_time"),
                "version": event["payload"]["version"],
            }
            return event["flow_run_id"], entry, is_finished(state_type)
        except (ValueError, KeyError, TypeError) as exc:
            self.log.warning("event skipped", partition=record.partition, offset=record.offset, error=repr(exc)[:300])
            return None

    def queue_chunk(self, pipe, record, chunk: LogChunk) -> None:
        if chunk.end is not None:
            self.store.queue_end(pipe, chunk.flow_run_id, record.offset, chunk.end)
        elif chunk.lines:
            self.store.queue_lines(pipe, chunk.flow_run_id, record.offset, chunk.lines, self.settings.logs_max_lines_per_run,
                                   chunk.batch, chunk.sent_ms, chunk.keys)

    def queue_state(self, pipe, record, change) -> None:
        run_id, entry, finished = change
        expire_at = None
        if finished:
            grace = self.settings.logs_watch_end_grace_seconds
            pipe.zadd(self.store.pending_end_key, {f"{run_id}:{entry['version']}": int((time.time() + grace) * 1000)})
            expire_at = logs_expire_at_ms(entry["timestamp"], self.settings.logs_retention_days)
        self.store.queue_state(pipe, run_id, record.offset, entry, finished, expire_at)


class RunStates(RunTimelines):
    """The state changes alone, beside the Faust engine's agent on ``logs`` (``faust_app.py``)."""

    group = LOG_STATES
    specs = (EVENTS,)


class LogService:
    """The consumer and the end-marker sender in one process, with one health endpoint."""

    END_POLL_SECONDS = 0.1

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = configure("logs", settings.log_level, settings.log_json)
        self.redis = redis_clients.client(settings)
        self.store = LogStore(self.redis, settings.redis_prefix)
        if settings.logs_engine == "faust":
            from runledger.services.logs.faust_app import FaustLogLines

            self.timelines: RunTimelines = FaustLogLines(settings, self.redis, self.store)
        else:
            self.timelines = RunTimelines(settings, self.redis, self.store)
        self.stopping = self.timelines.stopping

    async def run(self) -> None:
        ends = asyncio.create_task(self.send_ends())
        try:
            await self.timelines.run()
        finally:
            await stop_tasks(ends)
            await self.redis.aclose()

    async def send_ends(self) -> None:
        """Send due end markers (durably) to the logs topic, then forget them. A crash in between
        sends one twice; the store writes an end once per run and version."""
        while not hasattr(self.timelines, "producer"):
            await asyncio.sleep(0.05)
        topic = self.timelines.lines_topic
        while True:
            await asyncio.sleep(self.END_POLL_SECONDS)
            try:
                due = await self.store.due_ends(int(time.time() * 1000))
                if not due:
                    continue
                futures = [
                    await self.timelines.producer.send(topic, LogChunk.model_construct(flow_run_id=run, lines=[], end=v).encode(), key=run.encode())
                    for run, v in due
                ]
                await asyncio.gather(*futures)
                await self.store.remove_pending_ends(due)
                self.timelines.ends_sent += len(due)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or Kafka hiccup: the next round retries
                self.log.warning("end markers not sent yet", error=repr(exc)[:300])
                await asyncio.sleep(0.5)


def main() -> None:
    run_until_stopped(LogService(Settings()))
