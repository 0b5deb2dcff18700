"""Idempotency-key rules for flow-run creation (the Redis adapter lives in the ingress).

A key is scoped to its flow. Its value is first a *claim* (``pending:<run id>``) and becomes the
run id once the writer has recorded the run. A claim left by a crashed request is never a
pointer to a run: whoever sees it next re-sends the create for that same run id (the writer
makes creating an existing run a no-op), so the key can only ever name a run that exists.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from runledger.domain.run_requests import FieldError, RequestError
from runledger.messages.models import FlowRunSpec

PENDING_PREFIX = "pending:"


def scoped_key(flow_id: str, idempotency_key: str) -> str:
    return f"{flow_id}:{idempotency_key}"


def claim_value(run_id: str) -> str:
    return PENDING_PREFIX + run_id


class Action(Enum):
    CREATE = "create"  # we hold a fresh claim: create the run
    COMPLETE = "complete"  # an earlier claim is unconfirmed: (re-)send its create, same run id
    RETURN_EXISTING = "return_existing"  # the run is recorded: answer with it


@dataclass(frozen=True)
class ClaimResult:
    action: Action
    run_id: str


def interpret_claim(previous_value: str | None, proposed_run_id: str) -> ClaimResult:
    """``previous_value`` is what the key held before our atomic claim (None: our claim won)."""
    if previous_value is None:
        return ClaimResult(Action.CREATE, proposed_run_id)
    if previous_value.startswith(PENDING_PREFIX):
        return ClaimResult(Action.COMPLETE, previous_value[len(PENDING_PREFIX) :])
    return ClaimResult(Action.RETURN_EXISTING, previous_value)


# -- repeats that ask for something else ---------------------------------------------------------
# What a repeat must ask for the same as the run its key names. Prefect's client documents that a
# repeat with other parameters or context is an error (Prefect Server silently returned the first
# run); labels, run config and start time are not compared, as in Prefect Cloud.
COMPARED_ON_REPEAT = ("parameters", "context")


def differing_fields(existing_run: Mapping[str, Any], spec: FlowRunSpec) -> list[str]:
    """The fields in which ``spec`` (the repeat, resolved as if it were new: flow defaults and
    flow-group defaults merged in) differs from the run its key already names."""
    return [name for name in COMPARED_ON_REPEAT if (existing_run.get(name) or {}) != (getattr(spec, name) or {})]


def check_repeat(idempotency_key: str, existing_run: Mapping[str, Any], spec: FlowRunSpec) -> None:
    """Refuse (422, naming the key) a repeat whose parameters or context differ from the original."""
    fields = differing_fields(existing_run, spec)
    if fields:
        asked = " and ".join(fields)
        raise RequestError(
            422,
            [
                FieldError(
                    ("body", "idempotency_key"),
                    f"idempotency key {idempotency_key!r} already names flow run {existing_run['id']}, which was created "
                    f"with different {asked}; repeat the request with the same {asked}, or use a new key",
                    "idempotency_conflict",
                )
            ],
        )


# -- restoring keys after Redis lost them --------------------------------------------------------
# The log records each run's key and creation time, not the TTL refreshes of later repeats. After
# Redis comes back empty, a key is restored (for a full TTL from the restore) when its run was
# created within the TTL plus a grace period: a key refreshed by a repeat up to ``grace`` after its
# creation survives, and we err on the side of keeping a key rather than making a second run.
KEY_GROUPS = 16  # idempotency keys are spread over this many hash slots, each with a sentinel


def key_group(scoped: str) -> int:
    """The group (hash slot tag) of a scoped key: stable across processes and versions."""
    return zlib.crc32(scoped.encode()) % KEY_GROUPS


def restore_ttl(created: datetime, now: datetime, ttl_seconds: int, grace_seconds: int) -> int | None:
    """Seconds a key of a run created at ``created`` is restored for: 0 = no expiry (keys never
    expire), None = too old to restore."""
    if ttl_seconds == 0:
        return 0
    if (now - created).total_seconds() > ttl_seconds + grace_seconds:
        return None
    return ttl_seconds
