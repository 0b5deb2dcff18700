"""The one table of how a domain rejection (``Rejection.code``) is answered on each transport.

REST answers with ``http_status(code)``; GraphQL answers with HTTP 200 and an error whose
``extensions.code`` is ``graphql_code(code)`` (Prefect 1.x clients look for "VERSION_LOCKING_ERROR").
tests/unit/test_rejection_table.py checks that every code has a row.
"""

from __future__ import annotations

from aiokafka.errors import KafkaError
from pydantic import BaseModel, ConfigDict

from runledger.services.runtime.redis import OUTAGE_ERRORS
from runledger.services.runtime.stores import RestoringFromLog

REJECTIONS: dict[str, tuple[int, str]] = {
    # code: (HTTP status, GraphQL extensions.code)
    "VERSION_MISMATCH": (409, "VERSION_LOCKING_ERROR"),
    "TRANSITION_REJECTED": (409, "TRANSITION_REJECTED"),
    "CONFLICT": (409, "CONFLICT"),
    "NOT_FOUND": (404, "NOT_FOUND"),
    "INVALID": (422, "INVALID"),
}


def http_status(code: str) -> int:
    return REJECTIONS[code][0]


def graphql_code(code: str) -> str:
    return REJECTIONS[code][1]


# A dependency that is down or exhausted (Redis, the broker, a full connection pool, idempotency
# keys still being restored after Redis lost them) is answered
# 503 with Retry-After on REST and with the retryable code API_ERROR on GraphQL (the Prefect
# client retries it), never a 500.
OUTAGES: tuple[type[Exception], ...] = (*OUTAGE_ERRORS, KafkaError, RestoringFromLog)
RETRY_AFTER_SECONDS = 1
OUTAGE_GRAPHQL_CODE = "API_ERROR"


def outage_message(exc: Exception) -> str:
    """What a caller is told about an outage: our own reasons as they are, a client library's
    errors by their kind only (their text may name hosts and internals)."""
    if isinstance(exc, RestoringFromLog):
        return f"{exc}; retry shortly"
    return f"a dependency is unavailable ({type(exc).__name__}); retry shortly"


# -- how the statuses above are documented in the OpenAPI document ------------------------------
# Every REST route names what it can answer with ``responses=documented(...)``; the bodies are the
# shapes the exception handlers in ``app.py`` write.
from pydantic import BaseModel, ConfigDict  # noqa: E402


class ErrorItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    loc: list[str | int]
    msg: str
    type: str


class InvalidRequest(BaseModel):
    """A request refused field by field (malformed JSON, validation, a body over a limit)."""

    model_config = ConfigDict(extra="allow")
    detail: list[ErrorItem]


class RejectedCommand(BaseModel):
    """A command the writer refused (a row of ``REJECTIONS``)."""

    model_config = ConfigDict(extra="allow")
    detail: str
    code: str
    rule: str | None = None
    field: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    detail: str


RESPONSES: dict[int, dict] = {
    400: {"model": InvalidRequest, "description": "Malformed JSON body"},
    404: {"model": InvalidRequest | RejectedCommand | Message, "description": "Not found"},
    409: {"model": RejectedCommand, "description": "Conflict: a stale version, a refused transition, or a name in use"},
    413: {"model": InvalidRequest, "description": "Request body (or a JSON field of it) over a size limit"},
    422: {"model": InvalidRequest | RejectedCommand, "description": "Invalid request"},
    503: {
        "model": Message,
        "description": "A dependency (broker, Redis) is unavailable or the command timed out: retry after Retry-After seconds",
        "headers": {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}},
    },
}

WITH_BODY = (400, 413, 422, 503)  # a route that reads a JSON body (BodyLimit answers 413 for any)


def documented(*statuses: int, **descriptions: str) -> dict[int, dict]:
    """``responses=`` for a route answering ``statuses``; ``s409="..."`` words one for this route."""
    out = {}
    for status in sorted(set(statuses)):
        out[status] = dict(RESPONSES[status])
        if f"s{status}" in descriptions:
            out[status]["description"] = descriptions[f"s{status}"]
    return out
