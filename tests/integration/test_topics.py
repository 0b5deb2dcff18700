"""Topic set-up against the broker: the declared configs are what topics are created with, and a
service refuses to run on an events topic that would lose events (``kafka.ensure_topics``)."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from runledger.services.runtime import kafka
from runledger.topics import EVENTS, LOGS, topics_for
from tests.conftest import unique


async def _admin(settings) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    return admin


async def _configs(admin: AIOKafkaAdminClient, topic: str) -> dict[str, str]:
    [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    [resource] = response.to_object()["resources"]
    return {entry["config_names"]: entry["config_value"] for entry in resource["config_entries"]}


async def test_topics_are_created_with_their_declared_retention(stack):
    settings = stack.settings(topic_prefix=unique("topics"), logs_topic_retention_hours=48)
    topics = await kafka.ensure_topics(settings)
    admin = await _admin(settings)
    try:
        events = await _configs(admin, topics[EVENTS].name)
        assert {k: events.get(k) for k in ("cleanup.policy", "retention.ms", "retention.bytes")} == {
            "cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"
        }
        assert (await _configs(admin, topics[LOGS].name))["retention.ms"] == str(48 * 3_600_000)
    finally:
        await admin.close()
    await kafka.ensure_topics(settings)  # a second start finds them as declared


async def test_an_events_topic_with_a_time_limit_is_refused_with_the_fix(stack):
    settings = stack.settings(topic_prefix=unique("topics"))
    name = topics_for(settings).events.name
    admin = await _admin(settings)
    try:  # as an operator's tooling would make it with Kafka's default retention
        await admin.create_topics([NewTopic(name, settings.partitions, 1, topic_configs={"retention.ms": "604800000"})])
    finally:
        await admin.close()
    with pytest.raises(RuntimeError) as refused:
        await kafka.ensure_topics(settings)
    message = str(refused.value)
    assert f"topic {name}: retention.ms is 604800000, must be -1" in message
    assert "--add-config KEY=VALUE" in message


async def test_a_partition_count_that_disagrees_with_settings_is_refused(stack):
    settings = stack.settings(topic_prefix=unique("topics"))
    await kafka.ensure_topics(settings)
    other = settings.partitions + 1
    with pytest.raises(RuntimeError, match=rf"commands has {settings.partitions} partitions, settings say {other}"):
        await kafka.ensure_topics(settings.model_copy(update={"partitions": other}))
