"""Read-model documents as GraphQL objects, and the in-memory filter/order/page of a read.

Reads that are not anchored on an id (``anchor``) scan the newest ``SCAN_LIMIT`` documents.
"""

from __future__ import annotations

from runledger.readmodel.filters import matches, order
from runledger.services.ingress.application import Application, public
from runledger.services.ingress.graphql.errors import error

SCAN_LIMIT = 1000  # reads that are not anchored on an id look at the newest this many documents


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
        "state_start_time": state.get("start_time") or state.get("timestamp"),
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
        raise error(f"where: {exc}", "BAD_USER_INPUT") from None
    selected = order(selected, order_by)
    offset = offset or 0
    return selected[offset : offset + limit if limit is not None else None]


def anchor(where: dict | None, field_name: str) -> list[str] | None:
    """Ids a filter pins ``field_name`` to (``_eq``/``_in`` at the top level or inside ``_and``)."""
    if not where:
        return None
    condition = where.get(field_name)
    if isinstance(condition, dict):
        if "_eq" in condition:
            return [condition["_eq"]]
        if "_in" in condition:
            return list(condition["_in"])
    parts = where.get("_and")
    for part in parts if isinstance(parts, list) else [parts] if isinstance(parts, dict) else []:
        found = anchor(part, field_name)
        if found is not None:
            return found
    return None
