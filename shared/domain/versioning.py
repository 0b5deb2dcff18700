"""Optimistic locking: the one place where a state update's version is checked."""

from __future__ import annotations

from runledger.domain.states import StateType
from runledger.messages.commands import Rejection


def check_version(expected: int | None, current: int, current_state: StateType, subject: str) -> Rejection | None:
    """Accept when ``expected`` is None (Prefect clients rely on that) or equals ``current``."""
    if expected is None or expected == current:
        return None
    return Rejection(
        code="VERSION_MISMATCH",
        message=(
            f"State update failed: {subject} is at version {current} ({current_state.value}), "
            f"the update carried version {expected}"
        ),
        field="version",
        details={"current_version": current, "current_state": current_state.value},
    )
