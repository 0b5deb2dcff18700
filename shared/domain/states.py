"""Prefect 1.x state types and their hierarchy.

A state's *type* is one of the names below; ``is_a(t, parent)`` follows the class hierarchy of
``prefect.engine.state`` so rules can say "any Finished state" or "any Scheduled state".
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StateType(str, Enum):
    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    PAUSED = "Paused"
    RESUME = "Resume"
    RETRYING = "Retrying"
    SUBMITTED = "Submitted"
    QUEUED = "Queued"
    CLIENT_FAILED = "ClientFailed"
    RUNNING = "Running"
    CANCELLING = "Cancelling"
    FINISHED = "Finished"
    LOOPED = "Looped"
    SUCCESS = "Success"
    CACHED = "Cached"
    MAPPED = "Mapped"
    SKIPPED = "Skipped"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"
    TRIGGER_FAILED = "TriggerFailed"
    VALIDATION_FAILED = "ValidationFailed"
    CANCELLED = "Cancelled"


S = StateType
PARENT: dict[StateType, StateType | None] = {
    S.PENDING: None,
    S.SCHEDULED: S.PENDING,
    S.PAUSED: S.SCHEDULED,
    S.RESUME: S.SCHEDULED,
    S.RETRYING: S.SCHEDULED,
    S.SUBMITTED: None,
    S.QUEUED: S.SUBMITTED,
    S.CLIENT_FAILED: None,
    S.RUNNING: None,
    S.CANCELLING: S.RUNNING,
    S.FINISHED: None,
    S.LOOPED: S.FINISHED,
    S.SUCCESS: S.FINISHED,
    S.CACHED: S.SUCCESS,
    S.MAPPED: S.SUCCESS,
    S.SKIPPED: S.SUCCESS,
    S.FAILED: S.FINISHED,
    S.TIMED_OUT: S.FAILED,
    S.TRIGGER_FAILED: S.FAILED,
    S.VALIDATION_FAILED: S.FAILED,
    S.CANCELLED: S.FINISHED,
}

# States that carry a start_time (the Scheduled family).
STATES_WITH_START_TIME = frozenset(t for t in StateType if t is S.SCHEDULED or PARENT[t] is S.SCHEDULED)


def is_a(state_type: StateType, ancestor: StateType) -> bool:
    current: StateType | None = state_type
    while current is not None:
        if current is ancestor:
            return True
        current = PARENT[current]
    return False


def is_finished(t: StateType) -> bool:
    return is_a(t, S.FINISHED)


def is_finished_name(name: str | None) -> bool:
    """``is_finished`` for a state type as the wire names it (False for None or an unknown name)."""
    try:
        return name is not None and is_finished(StateType(name))
    except ValueError:
        return False


def is_scheduled(t: StateType) -> bool:
    return is_a(t, S.SCHEDULED)


def is_running(t: StateType) -> bool:
    return is_a(t, S.RUNNING)


MAX_STATE_MESSAGE = 10_000  # characters of a state's message


class State(BaseModel):
    """A state as recorded: what the caller sent, with the server's timestamp.

    ``serialized`` is the client's own serialization (Prefect's ``State.serialize()``), kept
    opaque and returned unchanged.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: StateType
    message: str | None = Field(None, max_length=MAX_STATE_MESSAGE)
    timestamp: datetime | None = None
    start_time: datetime | None = None
    result_location: str | None = Field(None, max_length=4096)
    serialized: dict[str, Any] | None = None

    def summary(self) -> str:
        return f"{self.type.value}" + (f": {self.message}" if self.message else "")
