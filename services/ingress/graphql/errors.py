"""Domain and request errors as GraphQL errors (``extensions.code``); see ``ingress/errors.py``
for the rejection table shared with REST."""

from __future__ import annotations

import functools
from typing import Any

from graphql import GraphQLError
from pydantic import ValidationError

from runledger.domain.run_requests import RequestError
from runledger.services.ingress.application import CommandRejected
from runledger.services.ingress.errors import OUTAGE_GRAPHQL_CODE, OUTAGES, graphql_code, outage_message
from runledger.services.runtime.bus import CommandTimeout


def error(message: str, code: str, **extensions: Any) -> GraphQLError:
    return GraphQLError(message, extensions={**extensions, "code": code})


def translated(exc: BaseException) -> GraphQLError | None:
    """The GraphQL error a domain, request or outage exception is answered with (None for any
    other exception: a bug, left as it is)."""
    if isinstance(exc, CommandRejected):
        r = exc.rejection
        return error(r.message, graphql_code(r.code), **{**r.details, "rule": r.rule, "field": r.field})
    if isinstance(exc, RequestError):
        return error(str(exc), "BAD_USER_INPUT", status=exc.status, errors=[e.as_dict() for e in exc.errors])
    if isinstance(exc, ValidationError):
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return error(message, "BAD_USER_INPUT", errors=errors)
    if isinstance(exc, CommandTimeout):
        return error(str(exc), OUTAGE_GRAPHQL_CODE)
    if isinstance(exc, OUTAGES):
        return error(outage_message(exc), OUTAGE_GRAPHQL_CODE)
    return None


REBUILDING = "the read models are being rebuilt from the event log after Redis lost its data; retry shortly"


def translate_errors(resolver):
    """A root resolver's exceptions as GraphQL errors. A "not found" while the read models are
    rebuilt after Redis lost its data may be untrue: it is answered with the retryable
    ``API_ERROR`` (REST: 503), as is a ``*_by_pk`` that finds nothing then (``absent``).
    Nested fields' exceptions are translated the same way by ``format_error``."""

    @functools.wraps(resolver)
    async def wrapper(*args, **kwargs):
        try:
            return await resolver(*args, **kwargs)
        except Exception as exc:
            if isinstance(exc, RequestError) and exc.status == 404 and await _rebuilding(args[1]):
                raise error(REBUILDING, OUTAGE_GRAPHQL_CODE) from None
            graphql_error = translated(exc)
            if graphql_error is None:
                raise
            raise graphql_error from None

    return wrapper


async def _rebuilding(info) -> bool:
    """Whether the read models are being rebuilt (Redis lost its data): "not found" may be untrue."""
    return not await info.context["request"].app.state.application.idempotency.restored()


async def absent(info) -> None:
    """What a ``*_by_pk`` resolver answers for an id it did not find: null, unless the read
    models are being rebuilt (then the run may well exist: ``API_ERROR``, retried by clients)."""
    if await _rebuilding(info):
        raise error(REBUILDING, OUTAGE_GRAPHQL_CODE)
    return None


def format_error(graphql_error: GraphQLError, debug: bool = False) -> dict:
    """ariadne's error formatter: an exception raised by a nested field's resolver (which
    ``translate_errors`` does not wrap: ``flow_run.task_runs``, ``flow.project``, ...) is
    answered like a root one's, so a Redis outage mid-query is the retryable ``API_ERROR``."""
    formatted = dict(graphql_error.formatted)
    original = graphql_error.original_error
    if original is not None and not (graphql_error.extensions or {}).get("code"):
        replacement = translated(original)
        if replacement is not None:
            formatted["message"], formatted["extensions"] = replacement.message, replacement.extensions
    return formatted
