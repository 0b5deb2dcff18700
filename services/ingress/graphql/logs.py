"""Logs: ``write_run_logs`` (Prefect's shape; a single object for ``logs`` works too) and the
nested ``flow_run.logs`` / ``task_run.logs`` reads with Hasura-style ``where``/``order_by``.

The write rule is the REST one (``runledger.services.ingress.rest_logs``): the valid records of a
batch are stored; invalid records and records of unknown runs are refused, and the answer is then
a ``BAD_USER_INPUT`` error naming each refused record's index and field, with ``accepted`` (how
many were stored) in its extensions.

Reads push what they can down to the store (timestamp bounds, levels, a task run: conjunctions at
the top level or inside ``_and``; ``{}`` inside ``_and`` means true) and apply the whole ``where``
to what comes back, so every filter the evaluator knows is honoured.
"""

from __future__ import annotations

from datetime import datetime

from ariadne import MutationType, ObjectType, ScalarType
from graphql.utilities import value_from_ast_untyped

from runledger.messages.logs import LEVELS, BatchTooLarge, batch_key, parse_time
from runledger.services.ingress.graphql.coercion import json_object
from runledger.services.ingress.graphql.errors import error, translate_errors
from runledger.services.ingress.graphql.views import page
from runledger.services.ingress.rest_logs import LogsUnavailable, logs_of, write_logs

mutation, flow_run_type, task_run_type = MutationType(), ObjectType("flow_run"), ObjectType("task_run")
log_record = ScalarType("log_record")  # checked by ``write_logs`` (index and field), not by GraphQL


@log_record.literal_parser
def _parse_log_record_literal(ast, variables=None):
    return value_from_ast_untyped(ast, variables)


MAX_READ = 10_000  # lines one nested read returns at most


@mutation.field("write_run_logs")
@translate_errors
async def resolve_write_run_logs(_, info, input):
    app = info.context["request"].app
    try:
        key = batch_key(input.get("idempotency_key"))
    except ValueError as exc:
        raise error(f"idempotency_key: {exc}", "BAD_USER_INPUT", field="idempotency_key") from None
    try:
        result = await write_logs(app, input["logs"], key)
    except BatchTooLarge as exc:
        raise error(str(exc), "BAD_USER_INPUT", field=exc.field, type="too_large") from None
    except LogsUnavailable as exc:
        raise error(str(exc), "API_ERROR") from None
    if result.errors:
        refused = len({e.index for e in result.errors})
        details = "; ".join(f"logs[{e.index}]{'.' + e.field if e.field else ''}: {e.msg}" for e in result.errors[:20])
        raise error(
            f"{refused} of {result.total} log records refused ({result.accepted} stored): {details}",
            "BAD_USER_INPUT",
            accepted=result.accepted,
            errors=[{"index": e.index, "field": e.field, "message": e.msg, "type": e.type} for e in result.errors],
        )
    return {"success": True}


def _conjuncts(where: dict | None):
    """The conditions every matching line must meet (top level and ``_and``, recursively)."""
    if not where:
        return
    for key, condition in where.items():
        if key == "_and":
            for part in condition if isinstance(condition, list) else [condition]:
                if isinstance(part, dict):
                    yield from _conjuncts(part)
        elif not key.startswith("_") and isinstance(condition, dict):
            yield key, condition


def _pushdown(where: dict | None) -> dict:
    """Store query arguments implied by ``where`` (the full ``where`` is applied afterwards)."""
    args: dict = {}
    lower: tuple[datetime, bool] | None = None
    upper: tuple[datetime, bool] | None = None
    levels: set[str] | None = None
    for field_name, condition in _conjuncts(where):
        for op, value in condition.items():
            if field_name == "timestamp" and op in ("_gt", "_gte", "_lt", "_lte", "_eq"):
                try:
                    t = parse_time(value)
                except ValueError as exc:
                    raise error(f"where: timestamp: {exc}", "BAD_USER_INPUT", field="where") from None
                if op in ("_gt", "_gte", "_eq"):
                    candidate = (t, op != "_gt")
                    if lower is None or candidate[0] > lower[0] or (candidate[0] == lower[0] and not candidate[1]):
                        lower = candidate
                if op in ("_lt", "_lte", "_eq"):
                    candidate = (t, op != "_lt")
                    if upper is None or candidate[0] < upper[0] or (candidate[0] == upper[0] and not candidate[1]):
                        upper = candidate
            elif field_name == "level" and op in ("_eq", "_in"):
                wanted = {str(v).upper() for v in (value if isinstance(value, list) else [value])} & set(LEVELS)
                levels = wanted if levels is None else levels & wanted
            elif field_name == "task_run_id" and op == "_eq" and isinstance(value, str):
                args["task_run_id"] = value
    if lower:
        args["after"], args["after_inclusive"] = lower
    if upper:
        args["before"], args["before_inclusive"] = upper
    if levels is not None:
        args["levels"] = sorted(levels) or ["__none__"]
    return args


def _descending(order_by) -> bool:
    clauses = order_by if isinstance(order_by, list) else [order_by] if order_by else []
    for clause in clauses:
        if isinstance(clause, dict) and "timestamp" in clause:
            return str(clause["timestamp"]).startswith("desc")
    return False


async def _read(info, run_id: str, task_run_id: str | None, where, order_by, limit, offset) -> list[dict]:
    where = json_object(where, "where")
    order_by = json_object(order_by, "order_by") if not isinstance(order_by, list) else order_by
    args = _pushdown(where)
    if task_run_id is not None:
        if args.get("task_run_id") not in (None, task_run_id):
            return []
        args["task_run_id"] = task_run_id
    if args.get("levels") == ["__none__"]:
        return []
    resorted = bool(order_by) and not _only_timestamp(order_by)
    # Ordered by another field, the page is cut after the ordering: read up to MAX_READ lines.
    wanted = MAX_READ if resorted else min(MAX_READ, (limit or MAX_READ) + (offset or 0))
    store = logs_of(info.context["request"]).store
    lines: list[dict] = []
    cursor = None
    while len(lines) < wanted:
        result = await store.query(run_id, descending=_descending(order_by), limit=min(1000, wanted), cursor=cursor, **args)
        lines += page(result.lines, where, None, None, None)
        cursor = result.next_cursor
        if cursor is None:
            break
    # The store already returns timestamp-then-arrival order; re-sort only for other orderings.
    ordered = page(lines, None, order_by, limit, offset) if resorted else lines[(offset or 0):][: limit if limit is not None else None]
    return ordered


def _only_timestamp(order_by) -> bool:
    clauses = order_by if isinstance(order_by, list) else [order_by]
    return all(isinstance(c, dict) and set(c) <= {"timestamp"} for c in clauses)


@flow_run_type.field("logs")
@translate_errors
async def resolve_flow_run_logs(run, info, where=None, order_by=None, limit=None, offset=None):
    return await _read(info, run["id"], None, where, order_by, limit, offset)


@task_run_type.field("logs")
@translate_errors
async def resolve_task_run_logs(task_run, info, where=None, order_by=None, limit=None, offset=None):
    return await _read(info, task_run["flow_run_id"], task_run["id"], where, order_by, limit, offset)


bindables = [mutation, flow_run_type, task_run_type, log_record]
