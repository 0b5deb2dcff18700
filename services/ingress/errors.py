"""The one table of how a domain rejection (``Rejection.code``) is answered on each transport.

REST answers with ``http_status(code)``; GraphQL answers with HTTP 200 and an error whose
``extensions.code`` is ``graphql_code(code)`` (Prefect 1.x clients look for "VERSION_LOCKING_ERROR").
tests/unit/test_rejection_table.py checks that every code has a row.
"""

from __future__ import annotations

from aiokafka.errors import KafkaError

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
