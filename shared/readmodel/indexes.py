"""The secondary indexes of the read models: which sorted sets a document belongs to, and with
which score. Pure: the projection keeps them (adding *and removing* entries as documents change)
and the query planner chooses among them.

Every index is a sorted set per events partition, ``rl:rm:{p<N>}:idx:<name>[:<value>]``, holding
document ids. Its *score field* is the document field whose order the score follows, so a read
ordered by that field can walk the index in order and stop early:

============================  ==============================================  =====================
index (name:value)            members                                         score
============================  ==============================================  =====================
``fr:created``                every flow run                                  ``created``
``fr:sst``                    every flow run                                  ``scheduled_start_time``
``fr:flow:<flow_id>``         runs of a flow                                  ``scheduled_start_time``
``fr:group:<flow_group_id>``  runs of a flow group (= version group)          ``scheduled_start_time``
``fr:project:<project_id>``   runs of a project                               ``scheduled_start_time``
``fr:label:<label>``          runs carrying a label                           ``scheduled_start_time``
``fr:state:<state>``          runs whose current state is ``<state>``         ``scheduled_start_time``
``fr:due``                    runs in a SCHEDULED_STATES state                due time (below)
``tr:created``                every task run                                  ``created``
``tr:flow_run:<flow_run_id>`` task runs of a flow run                         ``created``
``tr:state:<state>``          task runs whose current state is ``<state>``    ``created``
============================  ==============================================  =====================

``fr:due`` is the scheduler's queue: runs in Prefect's SCHEDULED_STATES (Scheduled, Paused,
Queued, Resume, Retrying), scored by their state's ``start_time``, else the run's
``scheduled_start_time``. It has no document field of its own; queries reach it through the
``due_before`` REST filter (``ReadModels.due_flow_runs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from runledger.domain.times import assume_utc

# Prefect 1.x server's SCHEDULED_STATES: the states a scheduler/agent picks runs up from.
SCHEDULED_STATES = frozenset({"Scheduled", "Paused", "Queued", "Resume", "Retrying"})

FLOW_RUN, TASK_RUN = "flow_run", "task_run"


@dataclass(frozen=True)
class IndexSpec:
    name: str  # "fr:state"
    entity: str  # FLOW_RUN / TASK_RUN
    field: str | None  # the document field an _eq/_in picks the index value from (None: no value)
    score_field: str | None  # the document field the score orders by (None: not a document field)
    many: bool = False  # the field is a list (labels): one entry per element


FLOW_RUN_INDEXES = (
    IndexSpec("fr:created", FLOW_RUN, None, "created"),
    IndexSpec("fr:sst", FLOW_RUN, None, "scheduled_start_time"),
    IndexSpec("fr:flow", FLOW_RUN, "flow_id", "scheduled_start_time"),
    IndexSpec("fr:group", FLOW_RUN, "flow_group_id", "scheduled_start_time"),
    IndexSpec("fr:project", FLOW_RUN, "project_id", "scheduled_start_time"),
    IndexSpec("fr:label", FLOW_RUN, "labels", "scheduled_start_time", many=True),
    IndexSpec("fr:state", FLOW_RUN, "state", "scheduled_start_time"),
    IndexSpec("fr:due", FLOW_RUN, None, None),
)
TASK_RUN_INDEXES = (
    IndexSpec("tr:created", TASK_RUN, None, "created"),
    IndexSpec("tr:flow_run", TASK_RUN, "flow_run_id", "created"),
    IndexSpec("tr:state", TASK_RUN, "state", "created"),
)
BY_NAME = {spec.name: spec for spec in (*FLOW_RUN_INDEXES, *TASK_RUN_INDEXES)}


@lru_cache(maxsize=65536)
def _ms(text: str) -> float:
    return assume_utc(datetime.fromisoformat(text.replace("Z", "+00:00"))).timestamp() * 1000.0  # not the host's zone


def score_of(value: Any) -> float | None:
    """Milliseconds since the epoch of an ISO timestamp (or a datetime); None if absent."""
    if value is None:
        return None
    if isinstance(value, str):
        return _ms(value)
    if isinstance(value, (int, float)):
        return float(value)
    return assume_utc(value).timestamp() * 1000.0


def _state_type(doc: dict[str, Any]) -> str | None:
    state = doc.get("state")
    return state.get("type") if isinstance(state, dict) else state


def due_score(doc: dict[str, Any]) -> float | None:
    """When a run in a SCHEDULED_STATES state is due: its state's start_time, else its
    scheduled_start_time; None when it is in no such state."""
    state = doc.get("state")
    if not isinstance(state, dict) or state.get("type") not in SCHEDULED_STATES:
        return None
    return score_of(state.get("start_time") or doc.get("scheduled_start_time"))


# The fields an index entry depends on that never change after creation, per entity: when an
# update leaves them as they were, only the state-dependent entries can change.
STATIC_FIELDS = {
    FLOW_RUN: ("created", "scheduled_start_time", "flow_id", "flow_group_id", "project_id", "labels"),
    TASK_RUN: ("created", "flow_run_id"),
}


def state_entries(entity: str, doc: dict[str, Any]) -> dict[tuple[str, str | None], float]:
    """The part of ``entries`` that depends on the current state."""
    out: dict[tuple[str, str | None], float] = {}
    state = _state_type(doc)
    if entity == FLOW_RUN:
        if state is not None:
            out[("fr:state", state)] = score_of(doc.get("scheduled_start_time"))
        if (due := due_score(doc)) is not None:
            out[("fr:due", None)] = due
    elif state is not None:
        out[("tr:state", state)] = score_of(doc.get("created"))
    return out


def entries(entity: str, doc: dict[str, Any] | None) -> dict[tuple[str, str | None], float]:
    """``{(index name, value): score}`` for the indexes ``doc`` is in (the member is its id)."""
    if not doc:
        return {}
    out: dict[tuple[str, str | None], float] = {}
    if entity == FLOW_RUN:
        created, sst = score_of(doc.get("created")), score_of(doc.get("scheduled_start_time"))
        out[("fr:created", None)] = created
        out[("fr:sst", None)] = sst
        out[("fr:flow", doc["flow_id"])] = sst
        out[("fr:group", doc["flow_group_id"])] = sst
        out[("fr:project", doc["project_id"])] = sst
        for label in doc.get("labels") or ():
            out[("fr:label", label)] = sst
        if (state := _state_type(doc)) is not None:
            out[("fr:state", state)] = sst
        if (due := due_score(doc)) is not None:
            out[("fr:due", None)] = due
    elif entity == TASK_RUN:
        created = score_of(doc.get("created"))
        out[("tr:created", None)] = created
        out[("tr:flow_run", doc["flow_run_id"])] = created
        if (state := _state_type(doc)) is not None:
            out[("tr:state", state)] = created
    else:
        raise ValueError(f"no indexes for {entity!r}")
    return out
