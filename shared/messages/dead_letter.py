"""A message a consumer could not handle, set aside with the reason (``dead-letters`` topic)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class DeadLetter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    consumer: str  # the consumer group (or service) that gave up on it
    topic: str
    partition: int
    offset: int
    key: str | None
    value: str  # the record's bytes, decoded as UTF-8 with replacement (our wire format is JSON)
    error: str
    stage: str  # "decode", "handle" or "project"
    time: datetime
