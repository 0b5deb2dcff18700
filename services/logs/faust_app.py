"""The log-line consumer on Faust (``RUNLEDGER_LOGS_ENGINE=faust``): the work ``RunTimelines``
(``service.py``) does on the ``logs`` topic — the same ``LogStore`` scripts, the same per-run
dedup, positions saved in Redis after the lines — driven by a Faust agent instead of an aiokafka
``getmany`` loop.

- One agent over the ``logs`` topic (raw bytes): ``stream.take_events(max_records, within=...)``
  batches; each batch goes through ``RunTimelines.apply`` (one Redis pipeline: a Lua script per
  record, then the batch's position per partition). Faust acks a batch's events when the agent asks for the
  next batch, i.e. after the store write, and commits acked offsets every ``COMMIT_INTERVAL``.
- **Resume from the store's saved positions, not Faust's commits.** The consumer's
  ``seek_to_committed`` (what Faust calls after every rebalance) seeks each ``logs`` partition to
  the position saved with the lines and reports that position as the committed one. Faust's own
  commits are then only a hint: a commit that ran ahead of the store (``take`` acks the events
  of a batch whose write was cancelled by a shutdown, see bench/README.md "Logs: Faust vs
  aiokafka") cannot skip a record, and deleting the store replays the topic as with the other
  engine. ``RUNLEDGER_LOGS_FAUST_RESUME_FROM=kafka`` (a diagnostic for the restart bench only)
  resumes from Faust's commits instead.
- The state changes come through a consumer of their own beside the agent (``RunStates``, group
  ``runledger-logs-states``, the same code as the default engine's for ``events``): a run's
  timeline orders its lines and states **by arrival**, not by record time as ``RunTimelines``
  does, so a state set right before a line is posted can be stored after it.
- Embedded broker: ``tansu_compat.apply()`` first, a short session, and the worker consumer's
  fetch wait (hard-coded 1500 ms in Faust) set to ``effective_fetch_max_wait_ms`` (Tansu answers
  a long poll up to W/2 late; ../shared/research/tansu.md #5).

The Faust app runs inside the service's own event loop (``App.start()``/``stop()``, no Faust
worker): health, dead letters and end markers stay the service's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections import defaultdict

from runledger.services.logs.service import RunStates, RunTimelines
from runledger.services.runtime import kafka
from runledger.services.runtime.health import HealthServer
from runledger.settings import Settings
from runledger.topics import LOG_STORE, LOGS

TAKE_WITHIN_SECONDS = 0.01  # a lone record waits at most this long in the take buffer
COMMIT_INTERVAL = 1.0
REALIGN_SECONDS = 0.5


def _patch_fetch_wait(fetch_wait_ms: int) -> None:
    from faust.transport.drivers import aiokafka as faust_aiokafka

    cls = faust_aiokafka.AIOKafkaConsumerThread
    if getattr(cls, "_runledger_fetch_wait", None) is None:
        original = cls._create_worker_consumer

        def _create_worker_consumer(self, transport):
            consumer = original(self, transport)
            consumer._fetch_max_wait_ms = cls._runledger_fetch_wait  # AIOKafkaConsumer hands it to its Fetcher in start()
            return consumer

        cls._create_worker_consumer = _create_worker_consumer
    cls._runledger_fetch_wait = fetch_wait_ms


def build_app(settings: Settings, lines: "FaustLogLines"):
    """The Faust app of ``lines``: its agent, and a consumer that resumes from the store."""
    kafka.prepare(settings)  # tansu_compat before any client exists
    try:
        import faust
        from faust.transport.drivers import aiokafka as faust_aiokafka
    except ImportError as exc:  # the runtime image (requirements.lock) has no Faust
        raise RuntimeError("RUNLEDGER_LOGS_ENGINE=faust needs faust-streaming: pip install 'runledger[bench]'") from exc

    _patch_fetch_wait(settings.effective_fetch_max_wait_ms)
    for name in ("faust", "mode"):
        logging.getLogger(name).setLevel(logging.WARNING)
    session = settings.effective_session_timeout_ms / 1000
    app = faust.App(
        lines.group.id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        processing_guarantee="at_least_once",
        broker_session_timeout=session,
        broker_heartbeat_interval=max(session / 3, 0.1),
        broker_rebalance_timeout=max(session * 3, 10.0),
        broker_request_timeout=max(30.0, session),
        broker_commit_interval=COMMIT_INTERVAL,
        broker_max_poll_records=lines.max_records,
        consumer_max_fetch_size=4 * 1024 * 1024,
        consumer_auto_offset_reset="earliest",
        stream_recovery_delay=0.0,
        table_standby_replicas=0,
        topic_disable_leader=True,
        topic_allow_declare=False,
        web_enabled=False,
        autodiscover=False,
        datadir=os.path.join(tempfile.gettempdir(), f"runledger-faust-{os.getpid()}"),
    )
    topic_name = lines.lines_topic
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    resume_from_store = os.environ.get("RUNLEDGER_LOGS_FAUST_RESUME_FROM", "store") != "kafka"

    class StoreSeekingConsumer(faust_aiokafka.Consumer):
        async def seek_to_committed(self):
            committed = dict(await super().seek_to_committed())
            if resume_from_store:
                mine = [tp for tp in self.assignment() if tp.topic == topic_name]
                saved = await lines.store.checkpoints(mine)
                for tp in mine:
                    await self._seek(tp, saved[tp])
                    committed[tp] = saved[tp]
                    lines.stored_upto[tp.partition] = saved[tp]
            lines.assigned = True
            return committed

    app.transport.Consumer = StoreSeekingConsumer

    @app.on_partitions_revoked.connect
    async def _revoked(app, revoked, **kwargs) -> None:
        lines.assigned = False
        for tp in revoked:
            lines.stored_upto.pop(tp.partition, None)

    @app.on_partitions_assigned.connect
    async def _assigned(app, assigned, **kwargs) -> None:
        if not assigned:  # no perform_seek follows an empty assignment
            lines.assigned = True

    @app.agent(topic)
    async def store_lines(stream):
        try:
            async for events in stream.take_events(lines.max_records, within=TAKE_WITHIN_SECONDS):
                batch: dict = defaultdict(list)
                for event in events:
                    batch[event.message.tp].append(event.message)
                await lines._handle_riding_out_outages(batch)
                lines.last_batch_at = time.monotonic()
        except Exception as exc:
            # Not Faust's agent restart: ``take`` acks a batch's events when its generator closes,
            # written or not, and the restarted agent would go on after them. The process exits
            # instead and its successor resumes from the store's saved position (as RunTimelines does).
            lines.failure = exc
            lines.stopping.set()
            raise

    @app.timer(REALIGN_SECONDS)
    async def realign() -> None:
        if time.monotonic() - lines.last_batch_at > REALIGN_SECONDS:
            try:
                await lines.realign()
            except Exception as exc:  # a Redis hiccup: the next tick retries
                lines.log.warning("realign failed", error=repr(exc)[:300])

    return app


class FaustLogLines(RunTimelines):
    """``RunTimelines`` on ``logs`` alone, whose records come from a Faust agent, and ``RunStates``
    beside it; health, producer (dead letters, end markers) and probe as in ``ConsumerService.run``."""

    group = LOG_STORE
    specs = (LOGS,)

    def __init__(self, settings: Settings, redis, store) -> None:
        super().__init__(settings, redis, store)
        self.states_consumer = RunStates(settings.model_copy(update={"health_port": 0}), redis, store)
        self.stored_upto: dict[int, int] = {}  # partition -> next offset this process stored
        self.last_batch_at = 0.0

    @property
    def ready(self) -> bool:
        return super().ready and self.states_consumer.ready

    def details(self) -> dict:
        states = self.states_consumer
        return {**super().details(), "states": states.states_stored, "states_assigned": states.assigned,
                "states_dependency_error": states.dependency_error, "states_dead_letters": states.dead_letters}

    async def apply(self, batch: dict) -> None:
        await super().apply(batch)
        for tp, records in batch.items():
            if records:
                self.stored_upto[tp.partition] = records[-1].offset + 1

    async def realign(self) -> None:
        """When idle, notice a dropped store (saved position behind ours) and replay from it."""
        parts = sorted(self.stored_upto)
        if not parts or self.app is None:
            return
        from faust.types import TP

        tps = [TP(self.lines_topic, p) for p in parts]
        saved = await self.store.checkpoints(tps)
        for tp in tps:
            if saved[tp] < self.stored_upto.get(tp.partition, 0):
                self.log.info("log store behind the consumer: replaying", topic=tp.topic, partition=tp.partition, saved=saved[tp])
                await self.app.consumer.seek(tp, saved[tp])
                self.stored_upto[tp.partition] = saved[tp]

    app = None
    failure: BaseException | None = None

    async def run(self) -> None:
        states = asyncio.create_task(self.states_consumer.run())
        try:
            await self._run_app(states)
        finally:
            self.states_consumer.stopping.set()
            await states

    async def _run_app(self, states: asyncio.Task) -> None:
        await kafka.wait_for_broker(self.settings)
        await kafka.ensure_topics(self.settings)
        self.producer = kafka.producer(self.settings, linger_ms=0)
        health = HealthServer(self.settings.health_port, lambda: self.ready, self._details)
        await asyncio.gather(self.producer.start(), health.start())
        self.probe = kafka.BrokerProbe(self.producer.client)
        await self.probe.start()
        await self.start_resources()
        self.app = build_app(self.settings, self)
        await self.app.start()
        self.log.info("started", engine="faust", bootstrap=self.settings.kafka_bootstrap, topic=self.lines_topic, group=self.group.id)
        try:
            while not self.stopping.is_set():
                if self.app.should_stop or self.app.state == "crashed":
                    raise RuntimeError(f"the Faust app stopped: {self.app._crash_reason!r}")
                if states.done():
                    raise RuntimeError("the states consumer stopped") from states.exception()
                try:
                    await asyncio.wait_for(self.stopping.wait(), 0.2)
                except asyncio.TimeoutError:
                    pass
            if self.failure is not None:
                raise RuntimeError("the log agent failed") from self.failure
        finally:
            self.assigned = False
            await self.app.stop()
            await self.probe.stop()
            await self.stop_resources()
            await asyncio.gather(self.producer.stop(), health.stop())
            self.log.info("stopped", handled=self.handled, dead_letters=self.dead_letters)
