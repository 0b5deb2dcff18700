"""Choosing how to answer a Hasura-style read: by ids, through a secondary index, or — only when no
index fits — by a bounded scan. Pure: a ``where`` / ``order_by`` in, a ``Plan`` out; the runtime
store executes it (``ReadModels.walk``) and the caller applies ``plan.residual`` to what it reads.

How the index is chosen, for the filters the Prefect 1.x client and the REST list send:

1. ``id: {_eq | _in}`` — the documents themselves (no index).
2. An equality on an indexed field, in this order of expected selectivity (a flow's runs are
   fewer than a label's, which are fewer than a state's): flow runs ``flow_id``,
   ``flow_group_id`` / ``version_group_id``, ``labels: {_contains | _has_key}``, ``project_id``
   (or ``project: {id: {_eq}}``), ``state: {_eq | _in}`` (an ``_in`` is a union of indexes);
   task runs ``flow_run_id``, ``state``. Only conditions at the top level or inside ``_and``
   count: anything under ``_or`` / ``_not`` stays in the residual.
3. Otherwise a range on an index's score field (``scheduled_start_time``, ``created``) picks the
   all-runs index ordered by that field.
4. Otherwise the all-documents index (``created``, or ``scheduled_start_time`` when that is the
   requested order) walked as a *scan*: the residual filter is evaluated on at most ``scan limit``
   documents and the answer says when that limit cut it short.

A range on the chosen index's score field becomes a score range of the walk. When the first
``order_by`` clause is the index's score field (or there is no ``order_by``: newest first), the
walk is *ordered*: it stops as soon as ``offset + limit`` documents matched. Otherwise it reads
up to the scan limit and the caller sorts; reading fewer than all is reported as truncated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runledger.readmodel.indexes import BY_NAME, FLOW_RUN, TASK_RUN, SCHEDULED_STATES, score_of

RANGE_OPS = ("_gt", "_gte", "_lt", "_lte")

# (field in the where, index name, how the value is read) in order of preference
_EQUALITY = {
    FLOW_RUN: (
        ("flow_id", "fr:flow"),
        ("flow_group_id", "fr:group"),
        ("version_group_id", "fr:group"),
        ("labels", "fr:label"),
        ("project_id", "fr:project"),
        ("state", "fr:state"),
    ),
    TASK_RUN: (
        ("flow_run_id", "tr:flow_run"),
        ("state", "tr:state"),
    ),
}
_ALL = {FLOW_RUN: {"created": "fr:created", "scheduled_start_time": "fr:sst"}, TASK_RUN: {"created": "tr:created"}}
_DEFAULT_ALL = {FLOW_RUN: "fr:created", TASK_RUN: "tr:created"}


@dataclass(frozen=True)
class Plan:
    entity: str
    kind: str  # "ids" | "index" | "scan"
    ids: tuple[str, ...] = ()
    index: str | None = None
    values: tuple[str | None, ...] = (None,)  # the index values to read (a union)
    score_min: float | None = None  # inclusive bounds on the index score (None: open)
    score_max: float | None = None
    ordered: bool = False  # the walk's order is the requested order: stop after offset+limit
    descending: bool = True
    residual: dict[str, Any] | None = None  # what the documents read must still satisfy
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "index": self.index, "values": list(self.values), "ordered": self.ordered, "reason": self.reason}


def _clauses(order_by: Any) -> list[tuple[str, bool]]:
    """``[(field, descending)]`` from ``{f: asc}`` / ``[{f: desc}, ...]``."""
    out: list[tuple[str, bool]] = []
    for clause in order_by if isinstance(order_by, list) else [order_by] if order_by else []:
        if not isinstance(clause, dict):
            raise ValueError(f"order_by: expected an object, got {clause!r}")
        for name, direction in clause.items():
            out.append((name, str(direction).lower().startswith("desc")))
    return out


def conjuncts(where: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The top-level AND of a where: its keys, and the parts of ``_and`` (list, object or ``{}``)."""
    out: list[tuple[str, Any]] = []
    for key, condition in (where or {}).items():
        if key == "_and":
            for part in condition if isinstance(condition, list) else [condition]:
                if isinstance(part, dict):
                    out += conjuncts(part)
                else:
                    out.append((key, condition))
                    break
        else:
            out.append((key, condition))
    return out


def _is_ops(condition: Any) -> bool:
    return isinstance(condition, dict) and bool(condition) and all(k.startswith("_") for k in condition)


def _equality_values(field_name: str, condition: Any) -> tuple[tuple[str, ...], bool] | None:
    """Index values an equality condition pins the field to, and whether it is fully captured."""
    if not _is_ops(condition):
        return None
    if field_name == "labels":
        for op in ("_contains", "_has_key", "_has_keys_all"):
            if op in condition:
                wanted = condition[op] if isinstance(condition[op], list) else [condition[op]]
                wanted = [w for w in wanted if isinstance(w, str)]
                if wanted:
                    return (wanted[0],), False  # one label's index; the residual checks the rest
        return None
    exact = len(condition) == 1
    if "_eq" in condition and isinstance(condition["_eq"], str):
        return (condition["_eq"],), exact
    if "_in" in condition and isinstance(condition["_in"], list) and all(isinstance(v, str) for v in condition["_in"]):
        return tuple(dict.fromkeys(condition["_in"])), exact
    return None


def _range(condition: Any) -> tuple[float | None, float | None] | None:
    if not _is_ops(condition) or not any(op in condition for op in RANGE_OPS):
        return None
    low = high = None
    try:
        for op in RANGE_OPS:
            if op in condition and condition[op] is not None:
                score = score_of(condition[op])
                if op in ("_gt", "_gte"):
                    low = score if low is None else max(low, score)
                else:
                    high = score if high is None else min(high, score)
    except (TypeError, ValueError):
        return None  # not a timestamp: leave it to the residual filter
    return low, high


def _without(where_parts: list[tuple[str, Any]], drop: set[int]) -> dict[str, Any] | None:
    kept = [part for i, part in enumerate(where_parts) if i not in drop]
    if not kept:
        return None
    return {"_and": [{key: condition} for key, condition in kept]}


def plan(entity: str, where: dict[str, Any] | None, order_by: Any = None) -> Plan:
    """How to read ``entity`` documents matching ``where`` in ``order_by`` order."""
    if entity not in _EQUALITY:
        raise ValueError(f"no planner for {entity!r}")
    parts = conjuncts(where)
    clauses = _clauses(order_by)

    # 1. ids
    for i, (key, condition) in enumerate(parts):
        if key == "id" and (found := _equality_values("id", condition)) is not None:
            values, exact = found
            residual = _without(parts, {i} if exact else set())
            return Plan(entity, "ids", ids=values, residual=residual, reason="id")

    # 2. an equality index
    choice = None
    for field_name, index in _EQUALITY[entity]:
        for i, (key, condition) in enumerate(parts):
            if key == field_name and (found := _equality_values(field_name, condition)) is not None:
                choice = (i, index, found)
                break
            if entity == FLOW_RUN and field_name == "project_id" and key == "project" and isinstance(condition, dict):
                inner = condition.get("id")
                if len(condition) == 1 and (found := _equality_values("id", inner)) is not None:
                    choice = (i, index, found)
                    break
        if choice:
            break

    # the score ranges the where puts on fields an index is ordered by
    ranges: dict[str, tuple[float | None, float | None]] = {}
    for key, condition in parts:
        if (r := _range(condition)) is not None:
            low, high = r
            old_low, old_high = ranges.get(key, (None, None))
            low = old_low if low is None else low if old_low is None else max(low, old_low)
            high = old_high if high is None else high if old_high is None else min(high, old_high)
            ranges[key] = (low, high)

    first_order = clauses[0] if clauses else None
    if choice is not None:
        i, index, (values, exact) = choice
        residual = _without(parts, {i} if exact else set())
        kind, reason = "index", f"{BY_NAME[index].field} equality"
    else:
        candidates = _ALL[entity]
        # 3. a range on a field some all-documents index is ordered by (the requested order first)
        ranged = [f for f in candidates if f in ranges]
        if first_order and first_order[0] in ranged:
            ranged = [first_order[0]]
        if ranged:
            index, kind, reason = candidates[ranged[0]], "index", f"{ranged[0]} range"
        elif first_order and first_order[0] in candidates:
            index = candidates[first_order[0]]
            kind, reason = ("index", "order only") if not parts else ("scan", "no index fits the filter")
        else:
            index = _DEFAULT_ALL[entity]
            kind, reason = ("index", "all") if not parts else ("scan", "no index fits the filter")
        values, residual = (None,), _without(parts, set())

    score_field = BY_NAME[index].score_field
    low, high = ranges.get(score_field, (None, None)) if score_field else (None, None)
    if first_order is None:
        ordered, descending = True, True  # no order requested: the index's newest first
    elif first_order[0] == score_field:
        ordered, descending = True, first_order[1]
    else:
        ordered, descending = False, True
    return Plan(
        entity, kind, index=index, values=values, score_min=low, score_max=high,
        ordered=ordered, descending=descending, residual=residual, reason=reason,
    )


def due_plan(before: float | None = None, after: float | None = None) -> Plan:
    """The scheduler's queue: runs in SCHEDULED_STATES due in ``[after, before]``, soonest first."""
    return Plan(FLOW_RUN, "index", index="fr:due", score_min=after, score_max=before, ordered=True, descending=False, reason="due")


__all__ = ["Plan", "plan", "due_plan", "conjuncts", "SCHEDULED_STATES"]
