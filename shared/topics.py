"""Every Kafka topic, declared once: name, partition count, message key, value type and the
consumer groups that read it. Adding a topic or a consumer group is one entry here.

Commands and events are keyed by aggregate id (a flow-run id, or ``REGISTRY_AGGREGATE``). The
writer puts each event on the *same partition number* as the command that caused it, so a flow
run's commands and events always meet in one writer partition; commands and events therefore
share one partition count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from runledger.messages.commands import CommandEnvelope, Reply
from runledger.messages.dead_letter import DeadLetter
from runledger.messages.events import EventEnvelope
from runledger.messages.logs import LogChunk
from runledger.settings import Settings

REGISTRY_AGGREGATE = "registry"
MAX_RECORD_BYTES = 4 * 1024 * 1024  # the largest produce request our producers send, and what the topics that need it accept


@dataclass(frozen=True)
class ConsumerGroup:
    id: str
    service: str


TRANSITIONS = ConsumerGroup("runledger-transitions", "transitions")
PROJECTOR = ConsumerGroup("runledger-projector", "projector")
# logs + events -> the runs' watch timelines: one group, so one fetch reads both (co-partitioned,
# range assignor). A name of its own: a member cannot join a group whose members assign round-robin
# (the former runledger-logs), which would stall a rolling upgrade.
LOG_TIMELINE = ConsumerGroup("runledger-logs-timeline", "logs")
LOG_STORE = ConsumerGroup("runledger-logs", "logs")  # RUNLEDGER_LOGS_ENGINE=faust: its agent on logs
LOG_STATES = ConsumerGroup("runledger-logs-states", "logs")  # RUNLEDGER_LOGS_ENGINE=faust: events beside it
SCHEDULING = ConsumerGroup("runledger-scheduling", "scheduling")  # events -> due queues, slots, timers


KEEP_FOREVER = "forever"  # the system of record: never deleted, never compacted (checked at start-up)


@dataclass(frozen=True)
class TopicSpec:
    suffix: str  # the topic is named ``{settings.topic_prefix}.{suffix}``
    partitions: Literal["aggregate", "replies", "one"]  # which partition count it takes
    key: str  # what the record key is
    value: type[BaseModel]
    groups: tuple[ConsumerGroup, ...] = ()
    compacted: bool = False
    # Kafka refuses a record batch over the topic's ``max.message.bytes`` (1 MB by default): set
    # where a record can be bigger (a log chunk of one line of up to ~1.1 MB: Prefect's 1 MB
    # message plus its info; a dead letter carries the record it sets aside; a command or event
    # carries a request body of up to RUNLEDGER_MAX_BODY_BYTES, 1 MiB, plus its envelope, and an
    # event the broker refused would stop the writer's partition: it exits and redoes it).
    max_message_bytes: int | None = None
    # How long the broker keeps records: KEEP_FOREVER, or the name of the Settings field giving
    # hours (0 there = forever). A compacted topic keeps the newest record of each key instead.
    retention: str | None = None
    doc: str = ""

    def configs(self, settings: Settings) -> dict[str, str]:
        """The topic's configs: what it is created with, and what ``config_problems`` checks."""
        out = {"cleanup.policy": "compact" if self.compacted else "delete"}
        hours = getattr(settings, self.retention) if self.retention not in (None, KEEP_FOREVER) else None
        if self.retention == KEEP_FOREVER or hours == 0:
            out["retention.ms"] = out["retention.bytes"] = "-1"  # also overrides a broker-wide size limit
        elif hours is not None:
            out["retention.ms"] = str(round(hours * 3_600_000))
        if settings.replication_factor > 1:
            # acks=all waits for the in-sync replicas only: with one left in sync, an acknowledged
            # record would live on one broker. RF - 1 keeps writes going with one broker down.
            out["min.insync.replicas"] = str(settings.replication_factor - 1)
        if self.max_message_bytes:
            out["max.message.bytes"] = str(self.max_message_bytes)
        return out


COMMANDS = TopicSpec(
    "commands", "aggregate", "aggregate id", CommandEnvelope, (TRANSITIONS,), retention="commands_retention_hours",
    max_message_bytes=MAX_RECORD_BYTES,
    doc="requests to the single writer; partitioned by aggregate id",
)
EVENTS = TopicSpec(
    "events", "aggregate", "aggregate id", EventEnvelope, (PROJECTOR, LOG_TIMELINE, LOG_STATES, SCHEDULING),
    retention=KEEP_FOREVER, max_message_bytes=MAX_RECORD_BYTES,
    doc="the system of record; the partition number of the command that caused each event",
)
REPLIES = TopicSpec(
    "replies", "replies", "none (partition chosen by the caller's instance id)", Reply, retention="replies_retention_hours",
    doc="the writer's verdicts; each ingress reads its own partition by manual assignment",
)
DEAD_LETTERS = TopicSpec(
    "dead-letters", "one", "source topic", DeadLetter, max_message_bytes=MAX_RECORD_BYTES,
    retention="dead_letters_retention_hours",
    doc="messages a consumer could decode but not handle, with the error; set aside, never retried",
)

SNAPSHOTS = TopicSpec(
    "snapshots", "aggregate", "events partition number; a chunk: 'partition:chunk'", BaseModel, compacted=True,
    doc="the writer's ledger snapshots (runledger.domain.snapshots): partition p holds events partition p's, "
    "zstd chunks then a JSON manifest, the last record is the newest; never relies on compaction",
)

LOGS = TopicSpec(
    "logs", "aggregate", "flow-run id", LogChunk, (LOG_TIMELINE, LOG_STORE), max_message_bytes=MAX_RECORD_BYTES,
    retention="logs_topic_retention_hours",
    doc="log lines of flow runs (write_run_logs); a run's lines in one partition, in order",
)

TOPIC_SPECS: tuple[TopicSpec, ...] = (COMMANDS, EVENTS, REPLIES, DEAD_LETTERS, SNAPSHOTS, LOGS)


@dataclass(frozen=True)
class Topic:
    spec: TopicSpec
    name: str
    partitions: int


class Topics:
    """The declared topics bound to one deployment's settings (prefix and partition counts)."""

    def __init__(self, settings: Settings) -> None:
        counts = {"aggregate": settings.partitions, "replies": settings.reply_partitions, "one": 1}
        self._by_spec = {
            spec: Topic(spec, f"{settings.topic_prefix}.{spec.suffix}", counts[spec.partitions]) for spec in TOPIC_SPECS
        }
        self.commands = self._by_spec[COMMANDS]
        self.events = self._by_spec[EVENTS]
        self.replies = self._by_spec[REPLIES]
        self.dead_letters = self._by_spec[DEAD_LETTERS]

    def __getitem__(self, spec: TopicSpec) -> Topic:
        return self._by_spec[spec]

    def all(self) -> list[Topic]:
        return list(self._by_spec.values())


def topics_for(settings: Settings) -> Topics:
    return Topics(settings)


@dataclass(frozen=True)
class ConfigProblems:
    refusals: list[str]  # the topic would lose records the system needs: do not run on it
    warnings: list[str]  # it keeps less, or less safely, than declared: the operator's choice


def config_problems(spec: TopicSpec, name: str, settings: Settings, found: dict[str, str]) -> ConfigProblems:
    """Compare an existing topic's configs (``found``, as the broker describes them) with its
    declaration. The system of record must keep every record: a time or size limit, or
    compaction, on it is refused; other differences that keep less are warnings."""
    wanted = spec.configs(settings)
    refusals: list[str] = []
    warnings: list[str] = []

    def number(value: str | None) -> int | None:
        try:
            return None if value is None else int(value)
        except ValueError:
            return None

    if spec.retention == KEEP_FOREVER:
        for key in ("retention.ms", "retention.bytes"):
            if found.get(key) != "-1":
                refusals.append(f"topic {name}: {key} is {found.get(key, 'not reported')}, must be -1 "
                                "(the system of record: the writer and every read model are rebuilt from it)")
        if "compact" in found.get("cleanup.policy", ""):
            refusals.append(f"topic {name}: cleanup.policy is {found['cleanup.policy']}, must be delete "
                            "(compaction would drop all but the newest event of each run)")
    elif "retention.ms" in wanted:
        have, want = number(found.get("retention.ms")), int(wanted["retention.ms"])
        if have is not None and have != -1 and (want == -1 or have < want):
            warnings.append(f"topic {name}: retention.ms is {have}, settings ask for {want}")
    if "max.message.bytes" in wanted:
        have = number(found.get("max.message.bytes"))
        if have is not None and have < int(wanted["max.message.bytes"]):
            warnings.append(f"topic {name}: max.message.bytes is {have}, settings ask for {wanted['max.message.bytes']}: "
                            "a larger record will be refused")
    if "min.insync.replicas" in wanted:
        have = number(found.get("min.insync.replicas"))
        if have is not None and have < int(wanted["min.insync.replicas"]):
            warnings.append(f"topic {name}: min.insync.replicas is {have}, settings ask for "
                            f"{wanted['min.insync.replicas']}: an acknowledged write may live on fewer brokers")
    return ConfigProblems(refusals, warnings)
