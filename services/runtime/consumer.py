"""The lifecycle every consumer service shares: connect, subscribe as its consumer group, loop
over batches, report health, set aside what it cannot handle, ride out a Redis outage, stop
cleanly. A service supplies its ``source()`` topic (or ``sources()``), ``handle(batch)`` and, if it
keeps state per partition, the ``on_assigned`` / ``on_revoked`` hooks.

Dead letters: a record that cannot be decoded, decided or projected is published to the
``dead-letters`` topic with the error, logged once, counted in the health details, and the
consumer goes on; redelivering it would fail the same way forever.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from aiokafka import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from runledger.messages.codec import encode
from runledger.messages.dead_letter import DeadLetter
from runledger.services.runtime import kafka
from runledger.services.runtime.health import HealthServer
from runledger.services.runtime.logs import configure
from runledger.services.runtime.redis import OUTAGE_ERRORS
from runledger.settings import Settings
from runledger.topics import ConsumerGroup, Topic, Topics, topics_for

DEPENDENCY_ERRORS = (*OUTAGE_ERRORS, ConnectionError, OSError)


class ConsumerService:
    group: ConsumerGroup
    max_records: int = 1000
    # aiokafka's default. A service reading co-partitioned topics together takes
    # RangePartitionAssignor: partition p of each of them goes to the same member.
    assignors: tuple = (RoundRobinPartitionAssignor,)
    # Whether a batch whose handling met a dependency outage is handled again in this process
    # (``_handle_riding_out_outages``). Only for a ``handle`` that can run twice on one batch.
    retries_batches: bool = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = configure(self.group.service, settings.log_level, settings.log_json)
        self.topics: Topics = topics_for(settings)
        self.stopping = asyncio.Event()
        self.assigned = False  # owns its partitions and has rebuilt what it keeps for them
        self.dependency_error: str | None = None
        self.dead_letters = 0
        self.handled = 0

    # -- what a service supplies ----------------------------------------------------------------
    def source(self) -> Topic:
        raise NotImplementedError

    def sources(self) -> list[Topic]:
        """The topics the group subscribes to; a service reading one supplies ``source()``."""
        return [self.source()]

    async def start_resources(self) -> None:
        """Open the service's own clients (called once the broker answers and topics exist)."""

    async def stop_resources(self) -> None:
        pass

    async def handle(self, batch: dict) -> None:
        raise NotImplementedError

    async def on_assigned(self, partitions: list[int]) -> None:
        """``partitions``: the partition numbers this member now owns (of every source: a service
        with several co-partitions them, see ``assignors``)."""

    async def on_revoked(self, partitions: list[int]) -> None:
        pass

    def details(self) -> dict:
        return {}

    # -- the shared lifecycle -----------------------------------------------------------------
    probe: kafka.BrokerProbe | None = None

    @property
    def ready(self) -> bool:
        return self.assigned and self.dependency_error is None and self.probe is not None and self.probe.error is None

    async def run(self) -> None:
        await kafka.wait_for_broker(self.settings)
        await kafka.ensure_topics(self.settings)
        self.producer = kafka.producer(self.settings, linger_ms=0)
        self.consumer = kafka.consumer(self.settings, group_id=self.group.id, max_poll_records=self.max_records,
                                       partition_assignment_strategy=self.assignors)
        health = HealthServer(self.settings.health_port, lambda: self.ready, self._details)
        await asyncio.gather(self.producer.start(), health.start())
        self.probe = kafka.BrokerProbe(self.producer.client)
        await self.probe.start()
        await self.start_resources()
        topics = [topic.name for topic in self.sources()]
        self.consumer.subscribe(topics, listener=_Rebalance(self))
        await self.consumer.start()
        self.log.info("started", bootstrap=self.settings.kafka_bootstrap, topics=topics, group=self.group.id)
        try:
            while not self.stopping.is_set():
                batch = await self.consumer.getmany(timeout_ms=200, max_records=self.max_records)
                await self._handle_riding_out_outages(batch)
        finally:
            self.assigned = False
            await self.probe.stop()
            await self.consumer.stop()
            await self.stop_resources()
            await asyncio.gather(self.producer.stop(), health.stop())
            self.log.info("stopped", handled=self.handled, dead_letters=self.dead_letters)

    async def _handle_riding_out_outages(self, batch: dict) -> None:
        """Nothing is committed until ``handle`` returns, so retrying the same batch is safe."""
        if not self.retries_batches:
            return await self.handle(batch)  # a failure ends the process; the batch is redelivered
        delay = 0.1
        while True:
            try:
                await self.handle(batch)
                if self.dependency_error is not None:
                    self.log.info("dependency back", was=self.dependency_error)
                    self.dependency_error = None
                return
            except DEPENDENCY_ERRORS as exc:
                if self.dependency_error is None:
                    self.log.warning("dependency unavailable; pausing", error=repr(exc))
                self.dependency_error = repr(exc)[:300]
                if self.stopping.is_set():
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _details(self) -> dict:
        return {
            "service": self.group.service,
            "assigned": self.assigned,
            "dependency_error": self.dependency_error,
            "broker_error": self.probe.error if self.probe is not None else None,
            "handled": self.handled,
            "dead_letters": self.dead_letters,
            **self.details(),
        }

    async def dead_letter(self, record, stage: str, error: BaseException) -> None:
        """Set ``record`` aside on the dead-letter topic (durably) and count it."""
        letter = DeadLetter(
            consumer=self.group.id,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key.decode("utf-8", "replace") if record.key is not None else None,
            value=(record.value or b"").decode("utf-8", "replace"),
            error=f"{type(error).__name__}: {error}"[:2000],
            stage=stage,
            time=datetime.now(timezone.utc),
        )
        await self.producer.send_and_wait(self.topics.dead_letters.name, encode(letter), key=record.topic.encode())
        self.dead_letters += 1
        self.log.error(
            "message set aside on the dead-letter topic",
            stage=stage,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=letter.error[:500],
        )


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: ConsumerService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked) -> None:
        self.service.assigned = False
        await self.service.on_revoked(sorted({tp.partition for tp in revoked}))

    async def on_partitions_assigned(self, assigned) -> None:
        """Takes over the partitions, waiting out a dependency outage: aiokafka only logs what a
        listener raises, so a failed ``on_assigned`` (Redis down during a rebalance) would leave
        the service not ready, its seeks undone, until the next rebalance."""
        service, delay, waited = self.service, 0.1, False
        while True:
            try:
                await service.on_assigned(sorted({tp.partition for tp in assigned}))
                break
            except DEPENDENCY_ERRORS as exc:
                if not waited:
                    service.log.warning("dependency unavailable while taking over partitions; waiting", error=repr(exc))
                service.dependency_error, waited = repr(exc)[:300], True
                if service.stopping.is_set():
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        if waited:
            service.log.info("dependency back", was=service.dependency_error)
            service.dependency_error = None
        service.assigned = True
