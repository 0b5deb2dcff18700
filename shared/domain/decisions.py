"""What handling a command decides: events to record, or a rejection."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runledger.messages.commands import Rejection


@dataclass(frozen=True)
class Accepted:
    events: list[Any]  # event payloads, in order
    outcome: dict[str, Any] = field(default_factory=dict)
    # For a no-op whose answer depends on state that can change later (not on mere existence):
    # the verdict must be recorded so a redelivery gets the same answer.
    record_verdict: bool = False


@dataclass(frozen=True)
class Rejected:
    rejection: Rejection


Decision = Accepted | Rejected


def not_found(what: str, ident: str, field_name: str) -> Rejected:
    return Rejected(Rejection(code="NOT_FOUND", message=f"no {what} with id {ident}", field=field_name))
