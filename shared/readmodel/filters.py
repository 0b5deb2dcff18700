"""Hasura-style ``where`` / ``order_by`` evaluation over read-model documents (pure).

Supports what Prefect 1.x clients send: ``_eq _neq _in _nin _gt _gte _lt _lte _is_null``, the
jsonb list operators ``_contains _has_key _has_keys_all _has_keys_any`` (for ``labels``),
``_and`` (a list, a single object, or ``{}`` meaning true), ``_or``, ``_not``, and nested
object-relation filters (``project: {name: {_eq: ...}}``) through a resolver for relations.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from runledger.domain.times import assume_utc

Doc = dict[str, Any]
Related = Callable[[Doc, str], "Doc | list[Doc] | None"]


def _comparable(value: Any) -> Any:
    """An ISO 8601 string as an aware datetime (no zone = UTC, as the API reads times), else as is."""
    if isinstance(value, str):
        try:
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        return assume_utc(t)
    return value


def _sort_key(value: Any) -> tuple:
    """A total order over what a field may hold: numbers, then times, then text, then the rest
    (values of different kinds are never compared with each other)."""
    value = _comparable(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    if isinstance(value, datetime):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, str(value))


def _compare(op: str, actual: Any, expected: Any) -> bool:
    if op == "_is_null":
        return (actual is None) == bool(expected)
    if op == "_eq":
        return actual == expected or (actual is not None and _comparable(actual) == _comparable(expected))
    # As in SQL (Hasura, Prefect Server): a null field is neither equal nor unequal to anything,
    # so ``_neq`` and ``_nin`` never match it either (``_is_null`` asks for it).
    if op == "_neq":
        return actual is not None and not _compare("_eq", actual, expected)
    if op == "_in":
        return any(_compare("_eq", actual, e) for e in expected)
    if op == "_nin":
        return actual is not None and not _compare("_in", actual, expected)
    if op in ("_contains", "_has_key", "_has_keys_all", "_has_keys_any"):
        # jsonb operators, for list fields (labels): every / any wanted element is present
        if not isinstance(actual, list):
            return False
        wanted = expected if isinstance(expected, list) else [expected]
        if op == "_has_keys_any":
            return any(w in actual for w in wanted)
        return all(w in actual for w in wanted)
    if actual is None:
        return False
    a, e = _comparable(actual), _comparable(expected)
    try:
        return {"_gt": a > e, "_gte": a >= e, "_lt": a < e, "_lte": a <= e}[op]
    except KeyError:
        raise ValueError(f"unsupported operator {op}") from None
    except TypeError:
        return False


def matches(doc: Doc, where: Doc | None, related: Related | None = None) -> bool:
    if not where:
        return True
    for key, condition in where.items():
        if key == "_and":
            parts = condition if isinstance(condition, list) else [condition]
            if not all(matches(doc, part, related) for part in parts):
                return False
        elif key == "_or":
            parts = condition if isinstance(condition, list) else [condition]
            if not any(matches(doc, part, related) for part in parts):
                return False
        elif key == "_not":
            if matches(doc, condition, related):
                return False
        elif isinstance(condition, dict) and condition and all(k.startswith("_") for k in condition):
            if not all(_compare(op, doc.get(key), expected) for op, expected in condition.items()):
                return False
        elif isinstance(condition, dict):
            target = related(doc, key) if related else None
            targets = target if isinstance(target, list) else [target] if target is not None else []
            if not any(matches(t, condition, related) for t in targets):
                return False
        else:
            raise ValueError(f"cannot filter on {key!r} with {condition!r}")
    return True


def order(docs: list[Doc], order_by: Doc | list[Doc] | None) -> list[Doc]:
    """Sort by ``{field: asc|desc}`` clauses (the last clause is applied first)."""
    clauses = order_by if isinstance(order_by, list) else [order_by] if order_by else []
    for clause in clauses:
        if not isinstance(clause, dict):
            raise ValueError(f"expected objects like {{field: asc}} or {{field: desc}}, got {clause!r}")
    for clause in reversed(clauses):
        for field_name, direction in reversed(list(clause.items())):
            present = [d for d in docs if d.get(field_name) is not None]
            missing = [d for d in docs if d.get(field_name) is None]
            present.sort(key=lambda d: _sort_key(d[field_name]), reverse=str(direction).startswith("desc"))
            docs = present + missing
    return docs
