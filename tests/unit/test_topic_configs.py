"""Each topic's declared configs, and the start-up check of an existing topic's configs (pure)."""

from __future__ import annotations

from runledger.settings import Settings
from runledger.topics import (
    COMMANDS, DEAD_LETTERS, EVENTS, LOGS, MAX_RECORD_BYTES, REPLIES, SNAPSHOTS, TOPIC_SPECS, config_problems,
)

HOUR_MS = 3_600_000


def test_the_system_of_record_keeps_everything_and_the_others_keep_what_settings_say():
    settings = Settings(commands_retention_hours=2, replies_retention_hours=0.5, dead_letters_retention_hours=48,
                        logs_topic_retention_hours=100)
    assert EVENTS.configs(settings) == {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1",
                                        "max.message.bytes": str(MAX_RECORD_BYTES)}
    assert COMMANDS.configs(settings)["max.message.bytes"] == str(MAX_RECORD_BYTES)
    assert COMMANDS.configs(settings)["retention.ms"] == str(2 * HOUR_MS)
    assert REPLIES.configs(settings)["retention.ms"] == str(HOUR_MS // 2)
    assert DEAD_LETTERS.configs(settings)["retention.ms"] == str(48 * HOUR_MS)
    assert LOGS.configs(settings)["retention.ms"] == str(100 * HOUR_MS)
    assert LOGS.configs(Settings(logs_topic_retention_hours=0))["retention.ms"] == "-1"
    # Snapshots: the newest record of each key stays, whatever its age.
    assert SNAPSHOTS.configs(settings) == {"cleanup.policy": "compact"}
    assert all(spec.configs(settings)["cleanup.policy"] == "delete" for spec in TOPIC_SPECS if spec is not SNAPSHOTS)


def test_replicated_topics_ask_for_all_but_one_replica_in_sync():
    assert "min.insync.replicas" not in EVENTS.configs(Settings(replication_factor=1))
    assert EVENTS.configs(Settings(replication_factor=3))["min.insync.replicas"] == "2"
    assert SNAPSHOTS.configs(Settings(replication_factor=2))["min.insync.replicas"] == "1"


def test_a_topic_as_declared_has_no_problem():
    settings = Settings(replication_factor=3)
    for spec in TOPIC_SPECS:
        problems = config_problems(spec, spec.suffix, settings, spec.configs(settings))
        assert problems.refusals == [] and problems.warnings == [], spec.suffix


def test_an_events_topic_that_would_lose_events_is_refused_naming_the_topic_and_config():
    settings = Settings()
    week = str(168 * HOUR_MS)
    kafka_defaults = {"cleanup.policy": "delete", "retention.ms": week, "retention.bytes": "-1", "max.message.bytes": str(MAX_RECORD_BYTES)}
    problems = config_problems(EVENTS, "rl.events", settings, kafka_defaults)
    assert problems.refusals == [
        f"topic rl.events: retention.ms is {week}, must be -1 "
        "(the system of record: the writer and every read model are rebuilt from it)"
    ]
    sized = config_problems(EVENTS, "rl.events", settings, {**kafka_defaults, "retention.ms": "-1", "retention.bytes": "1073741824"})
    assert sized.warnings == []
    assert [r.split(",")[0] for r in sized.refusals] == ["topic rl.events: retention.bytes is 1073741824"]
    compacted = config_problems(EVENTS, "rl.events", settings, {**kafka_defaults, "cleanup.policy": "compact,delete", "retention.ms": "-1"})
    assert len(compacted.refusals) == 1 and "cleanup.policy is compact,delete, must be delete" in compacted.refusals[0]
    # Nothing reported (a broker that lists no configs): refused, not assumed.
    assert len(config_problems(EVENTS, "rl.events", settings, {}).refusals) == 2


def test_other_topics_that_keep_less_than_declared_are_warnings_only():
    settings = Settings(replication_factor=3)
    shorter = config_problems(LOGS, "rl.logs", settings, {**LOGS.configs(settings), "retention.ms": str(HOUR_MS)})
    assert shorter.refusals == [] and shorter.warnings == [f"topic rl.logs: retention.ms is {HOUR_MS}, settings ask for {504 * HOUR_MS}"]
    # Keeping longer than declared, or forever, is not a problem.
    for longer in (str(10_000 * HOUR_MS), "-1"):
        assert config_problems(LOGS, "rl.logs", settings, {**LOGS.configs(settings), "retention.ms": longer}).warnings == []
    # Declared forever (0 hours) but found limited: a warning.
    forever = Settings(logs_topic_retention_hours=0)
    assert config_problems(LOGS, "rl.logs", forever, {"retention.ms": str(HOUR_MS)}).warnings == [
        f"topic rl.logs: retention.ms is {HOUR_MS}, settings ask for -1"
    ]
    small = config_problems(EVENTS, "rl.events", settings, {**EVENTS.configs(settings), "max.message.bytes": "1048588"})
    assert small.refusals == [] and small.warnings == [
        f"topic rl.events: max.message.bytes is 1048588, settings ask for {MAX_RECORD_BYTES}: a larger record will be refused"
    ]
    fewer_replicas = config_problems(COMMANDS, "rl.commands", settings, {**COMMANDS.configs(settings), "min.insync.replicas": "1"})
    assert fewer_replicas.refusals == [] and len(fewer_replicas.warnings) == 1
    assert "min.insync.replicas is 1, settings ask for 2" in fewer_replicas.warnings[0]
