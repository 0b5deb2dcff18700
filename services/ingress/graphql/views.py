"""Read-model documents as GraphQL objects, and how a ``where``/``order_by`` read is answered.

Flow-run and task-run reads go through the query planner (``runledger.readmodel.planner``): by
ids, or by walking a secondary index in Redis with the rest of the filter checked in memory. Only
when no index fits (or an order needs an in-memory sort of a big index) is it a scan, bounded by
``RUNLEDGER_READ_SCAN_LIMIT``; then the response says so in ``extensions.scan``
(``{"limit": N, "truncated": bool, "examined": n, "fields": [...]}``) and the ingress logs it.
"""

from __future__ import annotations

import structlog

from runledger.readmodel import planner
from runledger.readmodel.filters import matches, order
from runledger.services.ingress.application import Application, public
from runledger.services.ingress.graphql.errors import error


log = structlog.get_logger(component="graphql")


def app_of(info) -> Application:
    return info.context["request"].app.state.application


def _serialized(entry: dict | None) -> dict | None:
    if not entry:
        return None
    return entry.get("serialized") or {k: entry.get(k) for k in ("type", "message", "start_time", "result_location")}


def with_state_fields(doc: dict) -> dict:
    state = doc.get("state") or {}
    return {
        **doc,
        "state": state.get("type"),
        "state_message": state.get("message"),
        "state_timestamp": state.get("timestamp"),
        # Prefect Server's column: the state's own start time (Scheduled, Retrying, Queued, ...),
        # null for states without one. The 1.4.1 agent relies on it: a Running run is deployed
        # again only if a task run's start time passed 3 s ago, which a finished task run's
        # timestamp must not fake (else every Running run with a finished task is redeployed).
        "state_start_time": state.get("start_time"),
        "serialized_state": _serialized(state),
        "result_location": state.get("result_location"),
        "_state_entries": doc.get("states", []),
    }


def state_view(entry: dict) -> dict:
    return {**entry, "state": entry["type"], "serialized_state": _serialized(entry), "created": entry.get("timestamp")}


def task_run_view(doc: dict) -> dict:
    view = with_state_fields(public(doc))
    view["task"] = {"id": doc["task_id"], "slug": doc["task_slug"], "name": doc.get("task_name"), "tags": doc.get("tags", [])}
    return view


async def flow_views(app: Application, docs: list[dict]) -> list[dict]:
    names = await app.read.project_names()  # project id -> name
    return [{**public(d), "_project_name": names.get(d["project_id"])} for d in docs]


def page(docs: list[dict], where, order_by, limit, offset, related=None) -> list[dict]:
    try:
        selected = [d for d in docs if matches(d, where, related)]
    except ValueError as exc:
        raise error(f"where: {exc}", "BAD_USER_INPUT", field="where") from None
    selected = ordered(selected, order_by)
    offset = offset or 0
    return selected[offset : offset + limit if limit is not None else None]


def ordered(docs: list[dict], order_by) -> list[dict]:
    try:
        return order(docs, order_by)
    except ValueError as exc:
        raise error(f"order_by: {exc}", "BAD_USER_INPUT", field="order_by") from None


def anchor(where: dict | None, field_name: str) -> list[str] | None:
    """Ids a filter pins ``field_name`` to (``_eq``/``_in`` at the top level or inside ``_and``)."""
    if not where:
        return None
    condition = where.get(field_name)
    if isinstance(condition, dict):
        if "_eq" in condition:
            return [condition["_eq"]]
        if "_in" in condition:
            if not isinstance(condition["_in"], list):
                raise error(f"where: {field_name}._in expects a list, got {condition['_in']!r}", "BAD_USER_INPUT", field="where")
            return list(condition["_in"])
    parts = where.get("_and")
    for part in parts if isinstance(parts, list) else [parts] if isinstance(parts, dict) else []:
        found = anchor(part, field_name)
        if found is not None:
            return found
    return None


def report_scan(info, plan: planner.Plan, walk, limit: int) -> None:
    """Say in the response (``extensions.scan``) and in the log that a read scanned, and whether
    the scan limit cut it short."""
    path = ".".join(str(p) for p in info.path.as_list())
    extensions = info.context.setdefault("extensions", {})
    scan = extensions.setdefault("scan", {"limit": limit, "truncated": False, "examined": 0, "fields": []})
    scan["truncated"] = scan["truncated"] or walk.truncated
    scan["examined"] += walk.examined
    scan["fields"].append({"field": path, "index": plan.index, "reason": plan.reason, "truncated": walk.truncated})
    log.warning(
        "read scanned", field=path, index=plan.index, reason=plan.reason, examined=walk.examined,
        limit=limit, truncated=walk.truncated,
    )


async def planned(info, entity: str, where, order_by, limit, offset, view, related=None) -> list[dict]:
    """Answer a flow-run / task-run read through the planner: the page of views it asks for."""
    app = app_of(info)
    try:
        plan = planner.plan(entity, where, order_by)
    except ValueError as exc:
        raise error(f"{exc}", "BAD_USER_INPUT") from None
    if plan.kind == "ids":
        return page([view(d) for d in await app.read.by_ids(plan)], where, order_by, limit, offset, related)

    def accepts(doc: dict) -> bool:
        return matches(view(doc), plan.residual, related)

    offset = offset or 0
    need = offset + limit if plan.ordered and limit is not None else None
    scan_limit = app.read.scan_limit
    try:
        walk = await app.read.walk(plan, accepts if plan.residual else None, need=need, scan_limit=scan_limit)
    except ValueError as exc:
        raise error(f"where: {exc}", "BAD_USER_INPUT") from None
    if plan.kind == "scan" or walk.truncated:
        report_scan(info, plan, walk, scan_limit)
    views = [view(d) for d in walk.docs]
    if not plan.ordered:
        views = ordered(views, order_by)
    return views[offset : offset + limit if limit is not None else None]


def flow_run_view(doc: dict) -> dict:
    return with_state_fields(public(doc))
