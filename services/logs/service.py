"""The log service: the ``logs`` topic and the runs' state changes into the log store
(``runledger.services.runtime.logstore``), and the end markers that close watch streams.

Two consumer loops in one process, each a ``ConsumerService`` (plain aiokafka). With
``RUNLEDGER_LOGS_ENGINE=faust`` the first is a Faust agent instead (``faust_app.py``: same store
writes, dedup and saved positions); bench/README.md "Logs: Faust vs aiokafka" compares them.

- ``LogLines`` (group ``runledger-logs``) reads the ``logs`` topic. Each record holds lines of one
  run and their sort keys (``LogChunk.keys``, from the ingress; computed here for a record without
  them); a Lua script per record appends them to the run's timeline and index *and* records the
  record's offset for that run, so a redelivered record is a no-op (and a chunk of a keyed batch
  the client re-sent is dropped by its name). The batch's position is saved
  after its lines (``logs:cp:*``); Kafka offsets are not committed: on assignment the loop seeks
  to the saved position, so deleting the store replays it from the topic.
- ``RunStates`` (group ``runledger-logs-states``) reads ``events`` and appends each flow-run state
  change to the run's timeline (deduplicated the same way). When a run finishes, its logs get
  their expiry (finish + ``logs_retention_days``) and an end marker is scheduled
  ``logs_watch_end_grace_seconds`` later. A small loop sends due end markers to the ``logs`` topic,
  keyed by the run: they land after every line acknowledged before them, and when ``LogLines``
  stores one, watchers know they have seen the run's last lines.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import orjson
from aiokafka import TopicPartition
from redis.exceptions import NoScriptError, ResponseError

from runledger.services.runtime import redis as redis_clients
from runledger.domain.states import StateType, is_finished
from runledger.messages.logs import LogChunk
from runledger.services.runtime.consumer import ConsumerService
from runledger.services.runtime.logs import configure
from runledger.services.runtime.logstore import LogStore
from runledger.services.runtime.process import run_until_stopped
from runledger.settings import Settings
from runledger.topics import LOG_STATES, LOG_STORE, LOGS

REALIGN_SECONDS = 0.5


class _StoreConsumer(ConsumerService):
    """What both loops share: the store, positions saved in Redis, replay when the store is dropped."""

    def __init__(self, settings: Settings, redis: redis_clients.AsyncRedis, store: LogStore) -> None:
        super().__init__(settings)
        self.redis, self.store = redis, store
        self._last_realign = 0.0

    @property
    def topic_name(self) -> str:
        return self.source().name

    async def start_resources(self) -> None:
        await self.store.ensure_scripts()

    async def on_assigned(self, partitions: list[int]) -> None:
        saved = await self.store.checkpoints(self.topic_name, partitions)
        for p in partitions:
            self.consumer.seek(TopicPartition(self.topic_name, p), saved[p])

    async def realign(self) -> None:
        """When idle, notice a dropped store (saved position behind ours) and replay."""
        tps = sorted(self.consumer.assignment())
        if not tps:
            return
        saved = await self.store.checkpoints(self.topic_name, [tp.partition for tp in tps])
        for tp in tps:
            if saved[tp.partition] < await self.consumer.position(tp):
                self.log.info("log store behind the consumer: replaying", topic=tp.topic, partition=tp.partition, saved=saved[tp.partition])
                self.consumer.seek(tp, saved[tp.partition])

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
        saved = await self.store.checkpoints(self.topic_name, sorted({tp.partition for tp, records in batch.items() if records}))
        kept = {}
        for tp, records in batch.items():
            if records and records[0].offset > saved[tp.partition]:
                first = (await self.consumer.beginning_offsets([tp]))[tp]
                target = max(saved[tp.partition], first)
                if records[0].offset > target:
                    self.log.info("log store behind the batch: replaying", topic=tp.topic, partition=tp.partition, saved=target)
                    self.consumer.seek(tp, target)
                    continue
            kept[tp] = records
        return kept

    async def apply(self, batch: dict) -> None:
        queued = []
        for tp, records in batch.items():
            for record in records:
                item = await self.prepare(record)
                if item is not None:
                    queued.append((record, item))
        try:
            await self._execute(batch, queued)
        except NoScriptError:  # Redis restarted (or flushed scripts): load them and redo; writes are idempotent
            await self.store.ensure_scripts()
            await self._execute(batch, queued)
        except ResponseError:  # one bad record: find it, set it aside, apply the rest
            good = []
            for record, item in queued:
                try:
                    await self._execute({}, [(record, item)])
                    good.append((record, item))
                except ResponseError as exc:
                    await self.dead_letter(record, "store", exc)
            await self._execute(batch, [])

    async def _execute(self, batch: dict, queued: list) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for record, item in queued:
                self.queue(pipe, record, item)
            for tp, records in batch.items():  # positions after the writes
                if records:
                    pipe.set(self.store.checkpoint_key(tp.topic, tp.partition), records[-1].offset + 1)
            await pipe.execute()
        self.handled += sum(self.count(item) for _, item in queued)

    async def prepare(self, record):
        raise NotImplementedError

    def queue(self, pipe, record, item) -> None:
        raise NotImplementedError

    def count(self, item) -> int:
        return 1


class LogLines(_StoreConsumer):
    group = LOG_STORE
    max_records = 2000

    def source(self):
        return self.topics[LOGS]

    async def prepare(self, record):
        try:
            return LogChunk.decode(record.value)
        except (ValueError, TypeError) as exc:
            await self.dead_letter(record, "decode", exc)
            return None

    def queue(self, pipe, record, chunk: LogChunk) -> None:
        if chunk.end is not None:
            self.store.queue_end(pipe, chunk.flow_run_id, record.offset, chunk.end)
        elif chunk.lines:
            self.store.queue_lines(pipe, chunk.flow_run_id, record.offset, chunk.lines, self.settings.logs_max_lines_per_run,
                                   chunk.batch, chunk.sent_ms, chunk.keys)

    def count(self, chunk: LogChunk) -> int:
        return len(chunk.lines)

    partner: "RunStates | None" = None  # the other loop of the process: one readiness for both
    ends_sent = 0

    @property
    def ready(self) -> bool:
        return super().ready and (self.partner is None or self.partner.ready)

    def details(self) -> dict:
        out = {"lines": self.handled, "ends_sent": self.ends_sent}
        if self.partner is not None:
            out.update(states=self.partner.handled, states_assigned=self.partner.assigned,
                       states_dependency_error=self.partner.dependency_error, states_dead_letters=self.partner.dead_letters)
        return out


class RunStates(_StoreConsumer):
    group = LOG_STATES
    max_records = 2000

    def source(self):
        return self.topics.events

    async def prepare(self, record):
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

    def queue(self, pipe, record, item) -> None:
        run_id, entry, finished = item
        expire_at = None
        if finished:
            grace = self.settings.logs_watch_end_grace_seconds
            pipe.zadd(self.store.pending_end_key, {f"{run_id}:{entry['version']}": int((time.time() + grace) * 1000)})
            days = self.settings.logs_retention_days
            if days > 0:
                finished_at = datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00"))
                expire_at = int((finished_at.timestamp() + days * 86400) * 1000)
        self.store.queue_state(pipe, run_id, record.offset, entry, finished, expire_at)

    def details(self) -> dict:
        return {"states": self.handled}


class LogService:
    """Both loops and the end-marker sender in one process, with one health endpoint."""

    END_POLL_SECONDS = 0.1

    def __init__(self, settings: Settings) -> None:
        # Lines and states reach a run's timeline through two consumers and are ordered by arrival:
        # an idle consumer's longer wait (embedded broker) could store a state after the lines
        # logged right after it. Both keep their busy wait.
        settings = settings.model_copy(update={"idle_fetch_max_wait_ms": 0})
        self.settings = settings
        self.log = configure("logs", settings.log_level, settings.log_json)
        self.redis = redis_clients.client(settings)
        self.store = LogStore(self.redis, settings.redis_prefix)
        if settings.logs_engine == "faust":
            from runledger.services.logs.faust_app import FaustLogLines

            self.lines: LogLines = FaustLogLines(settings, self.redis, self.store)
        else:
            self.lines = LogLines(settings, self.redis, self.store)
        self.states = RunStates(settings.model_copy(update={"health_port": 0}), self.redis, self.store)
        self.lines.partner = self.states
        self.stopping = self.lines.stopping

    async def run(self) -> None:
        async def follow_stop():
            await self.stopping.wait()
            self.states.stopping.set()

        tasks = [asyncio.create_task(self.lines.run()), asyncio.create_task(self.states.run()),
                 asyncio.create_task(follow_stop()), asyncio.create_task(self.send_ends())]
        try:
            done, _ = await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()
            self.stopping.set()
            await asyncio.gather(*tasks[:2])
        finally:
            for task in tasks[2:]:
                task.cancel()
            await asyncio.gather(*tasks[2:], return_exceptions=True)
            await self.redis.aclose()

    async def send_ends(self) -> None:
        """Send due end markers (durably) to the logs topic, then forget them. A crash in between
        sends one twice; the store writes an end once per run and version."""
        while not hasattr(self.lines, "producer"):
            await asyncio.sleep(0.05)
        topic = self.lines.topics[LOGS].name
        while True:
            await asyncio.sleep(self.END_POLL_SECONDS)
            try:
                due = await self.store.due_ends(int(time.time() * 1000))
                if not due:
                    continue
                futures = [
                    await self.lines.producer.send(topic, LogChunk.model_construct(flow_run_id=run, lines=[], end=v).encode(), key=run.encode())
                    for run, v in due
                ]
                await asyncio.gather(*futures)
                await self.store.remove_pending_ends(due)
                self.lines.ends_sent += len(due)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or Kafka hiccup: the next round retries
                self.log.warning("end markers not sent yet", error=repr(exc)[:300])
                await asyncio.sleep(0.5)


def main() -> None:
    run_until_stopped(LogService(Settings()))
