"""aiokafka producers, consumers and topic set-up, configured from ``Settings``.

The embedded profile (Tansu) and the production profile differ only in the numbers chosen in
``Settings.effective_*`` and in whether ``tansu_compat`` is applied; the code paths are the same.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from runledger.services.runtime.tasks import stop_tasks
from runledger.settings import Settings
from runledger.topics import MAX_RECORD_BYTES, Topics, config_problems, topics_for

log = logging.getLogger(__name__)


def prepare(settings: Settings) -> None:
    if settings.embedded_broker:
        from runledger.services.runtime import tansu_compat

        tansu_compat.apply(idle_fetch_max_wait_ms=settings.idle_fetch_max_wait_ms)


def producer(settings: Settings, *, linger_ms: int = 1, **overrides) -> AIOKafkaProducer:
    prepare(settings)
    options = dict(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        linger_ms=linger_ms,
        enable_idempotence=settings.effective_idempotent_producer,
        max_request_size=MAX_RECORD_BYTES,
        max_batch_size=256 * 1024,  # 16 KB held one ~22 KB log record: 2-2.6x fewer produce requests (bench/README.md "Broker CPU on the log path")
        request_timeout_ms=30000,
    )
    options.update(overrides)
    return AIOKafkaProducer(**options)


def consumer(settings: Settings, *topics: str, group_id: str | None = None, **overrides) -> AIOKafkaConsumer:
    prepare(settings)
    session = settings.effective_session_timeout_ms
    options = dict(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.effective_fetch_max_wait_ms,
        session_timeout_ms=session,
        heartbeat_interval_ms=max(session // 3, 100),
        rebalance_timeout_ms=max(session * 3, 10000),
        max_partition_fetch_bytes=MAX_RECORD_BYTES,
        isolation_level="read_uncommitted",
    )
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def wait_for_broker(settings: Settings, timeout: float = 30.0) -> None:
    prepare(settings)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except (KafkaConnectionError, OSError) as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"Kafka at {settings.kafka_bootstrap} did not answer: {exc}") from exc
            await asyncio.sleep(0.2)
        finally:
            await admin.close()


async def ensure_topics(settings: Settings) -> Topics:
    """Create the topics if missing, with their declared configs; refuse to run when partition
    counts disagree or the system of record would lose records (``_check_configs``)."""
    prepare(settings)
    topics = topics_for(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                t.name,
                num_partitions=t.partitions,
                replication_factor=settings.replication_factor,
                topic_configs=t.spec.configs(settings),
            )
            for t in topics.all()
            if t.name not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
        described = await admin.describe_topics([t.name for t in topics.all()])
        counts = {d["topic"]: len(d["partitions"]) for d in described}
        for t in topics.all():
            if counts.get(t.name) != t.partitions:
                raise RuntimeError(
                    f"topic {t.name} has {counts.get(t.name)} partitions, settings say {t.partitions}; "
                    "commands and events must have the same partition count"
                )
        await _check_configs(admin, topics, settings)
        return topics
    finally:
        await admin.close()


async def _check_configs(admin: AIOKafkaAdminClient, topics: Topics, settings: Settings) -> None:
    """Refuse to run on a topic that would lose records the system needs (``config_problems``);
    log what keeps less than declared. Topics made before their declaration changed, or by an
    operator, keep their own configs: this is where a difference shows."""
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t.name) for t in topics.all()])
    found: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            if resource["error_code"]:
                raise RuntimeError(f"cannot read the configs of topic {resource['resource_name']}: {resource['error_message']}")
            found[resource["resource_name"]] = {
                entry["config_names"]: entry["config_value"] for entry in resource["config_entries"]
            }
    refusals = []
    for t in topics.all():
        problems = config_problems(t.spec, t.name, settings, found.get(t.name, {}))
        refusals += problems.refusals
        for warning in problems.warnings:
            log.warning(warning)
    if refusals:
        raise RuntimeError(
            "; ".join(refusals) + ". Fix each with kafka-configs.sh --bootstrap-server HOST --alter --entity-type topics "
            "--entity-name TOPIC --add-config KEY=VALUE, then start again."
        )


async def committed_offsets(settings: Settings, group_id: str, partitions: list) -> dict:
    """``{TopicPartition: offset}`` a consumer group has committed for ``partitions`` (those
    without a commit are left out). Asked as the group's coordinator client would, without joining
    the group (no subscription)."""
    reader = consumer(settings, group_id=group_id)
    await reader.start()
    try:
        found = {tp: await reader.committed(tp) for tp in partitions}
    finally:
        await reader.stop()
    return {tp: offset for tp, offset in found.items() if offset is not None and offset >= 0}


class BrokerProbe:
    """Asks the broker for metadata every ``interval`` seconds; ``error`` says why it last did not
    answer (None while it does). Health endpoints report it, so a paused or unreachable broker
    shows as "not ready" even when no traffic would notice."""

    def __init__(self, client, interval: float = 1.0, timeout: float = 2.0) -> None:
        self.client, self.interval, self.timeout = client, interval, timeout
        self.error: str | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await stop_tasks(self._task)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.client.fetch_all_metadata(), self.timeout)
                if self.error is not None:
                    log.info("broker answers again")
                self.error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # timeouts, connection errors: all mean "not now"
                if self.error is None:
                    log.warning("broker does not answer: %r", exc)
                self.error = f"broker did not answer metadata within {self.timeout}s ({type(exc).__name__})"
            await asyncio.sleep(self.interval)
