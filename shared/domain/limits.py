"""The concurrency-limits aggregate: every flow-run label limit and task-run tag limit, as one
aggregate (``LIMITS_AGGREGATE``) decided by the single writer.

Why one aggregate for all limits (not one per label): limits change rarely (an operator's
command, not a per-run event), so one writer partition is never a hot key for them; deleting by
``limit_id`` needs the id -> limit map in one place; and the read side wants every limit in one
Redis hash, so the gate reads them all in one round trip per ``Submitted``/``Running``.

A limit's id is derived from its kind and name (``limit_id_for``): stable for a label or tag,
kept by an update, and the same again if the limit is deleted and set again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from runledger.domain.decisions import Accepted, Decision, not_found
from runledger.messages import commands as c
from runledger.messages import events as e

LIMITS_AGGREGATE = "concurrency-limits"
LIMIT_NAMESPACE = uuid.UUID("a3c4e0b2-6f0b-4c11-8f53-0c6b1d2e9f70")  # as the limits had before they were logged
KINDS = ("label", "tag")


def limit_id_for(kind: str, name: str) -> str:
    return str(uuid.uuid5(LIMIT_NAMESPACE, f"{kind}\x1f{name}"))


@dataclass
class Limit:
    id: str
    kind: str
    name: str
    limit: int


@dataclass
class ConcurrencyLimits:
    seq: int = 0
    limits: dict[str, Limit] = field(default_factory=dict)  # limit id -> limit

    def by_name(self, kind: str, name: str) -> Limit | None:
        found = self.limits.get(limit_id_for(kind, name))
        return found if found is not None and (found.kind, found.name) == (kind, name) else None

    def apply(self, event: object) -> None:
        match event:
            case e.ConcurrencyLimitSet(limit_id=lid, kind=kind, name=name, limit=limit):
                self.limits[lid] = Limit(lid, kind, name, limit)
            case e.ConcurrencyLimitDeleted(limit_id=lid):
                self.limits.pop(lid, None)
            case e.VerdictRecorded():
                pass
            case _:
                raise TypeError(f"not a concurrency-limits event: {event!r}")

    def handle(self, command: object, now: datetime) -> Decision:
        match command:
            case c.SetConcurrencyLimit(kind=kind, name=name, limit=limit):
                existing = self.by_name(kind, name)
                lid = existing.id if existing is not None else limit_id_for(kind, name)
                outcome = {"limit_id": lid, "kind": kind, "name": name, "limit": limit}
                if existing is not None and existing.limit == limit:
                    # Nothing changes, but record the verdict: a redelivery of this command after a
                    # later change must not set the old value again.
                    return Accepted([], {**outcome, "changed": False}, record_verdict=True)
                event = e.ConcurrencyLimitSet(limit_id=lid, kind=kind, name=name, limit=limit)
                return Accepted([event], {**outcome, "changed": True})
            case c.DeleteConcurrencyLimit(limit_id=lid):
                existing = self.limits.get(lid)
                if existing is None:
                    return not_found("concurrency limit", lid, "limit_id")
                event = e.ConcurrencyLimitDeleted(limit_id=lid, kind=existing.kind, name=existing.name)
                return Accepted([event], {"limit_id": lid, "kind": existing.kind, "name": existing.name, "deleted": True})
        raise TypeError(f"not a concurrency-limits command: {command!r}")
