"""How resolver exceptions become GraphQL errors: the same table for root and nested fields, and
"not found" while the read models are rebuilt is the retryable API_ERROR (REST: 503)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import redis.exceptions
from graphql import GraphQLError

from runledger.domain.run_requests import FieldError, RequestError
from runledger.services.ingress.graphql.errors import absent, error, format_error, translate_errors


def info_with(restored: bool):
    """A resolver's ``info`` as the transport builds it: the request, whose app holds the application."""

    async def is_restored() -> bool:
        return restored

    application = SimpleNamespace(idempotency=SimpleNamespace(restored=is_restored))
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(application=application)))
    return SimpleNamespace(context={"request": request})


def nested_error(exc: Exception) -> GraphQLError:
    """What graphql-core makes of an exception raised by a nested field's resolver."""
    return GraphQLError(str(exc), path=["flow_run_by_pk", "task_runs"], original_error=exc)


def test_an_outage_in_a_nested_field_is_the_retryable_api_error():
    formatted = format_error(nested_error(redis.exceptions.ConnectionError("Error 111 connecting to redis")))
    assert formatted["extensions"]["code"] == "API_ERROR"
    assert formatted["path"] == ["flow_run_by_pk", "task_runs"]
    assert "dependency is unavailable (ConnectionError)" in formatted["message"]


def test_a_request_error_in_a_nested_field_names_its_field():
    exc = RequestError(422, [FieldError(("where", "state"), "not a state")])
    formatted = format_error(nested_error(exc))
    assert formatted["extensions"]["code"] == "BAD_USER_INPUT"
    assert formatted["extensions"]["errors"][0]["loc"] == ["where", "state"]


def test_errors_that_have_a_code_or_are_bugs_are_left_as_they_are():
    coded = error("stale version", "VERSION_LOCKING_ERROR")
    assert format_error(coded)["extensions"] == {"code": "VERSION_LOCKING_ERROR"}
    bug = format_error(nested_error(KeyError("x")))
    assert "code" not in (bug.get("extensions") or {})  # the transport labels it INTERNAL_SERVER_ERROR


@pytest.mark.parametrize("restored, code", [(True, "BAD_USER_INPUT"), (False, "API_ERROR")])
def test_not_found_is_retryable_only_while_the_read_models_are_rebuilt(restored, code):
    @translate_errors
    async def resolver(_, info, id):
        raise RequestError(404, [FieldError(("id",), f"no flow run with id {id}", "not_found")])

    with pytest.raises(GraphQLError) as raised:
        asyncio.run(resolver(None, info_with(restored), id="r1"))
    assert raised.value.extensions["code"] == code


def test_a_by_pk_miss_is_null_unless_the_read_models_are_rebuilt():
    assert asyncio.run(absent(info_with(True))) is None
    with pytest.raises(GraphQLError) as raised:
        asyncio.run(absent(info_with(False)))
    assert raised.value.extensions["code"] == "API_ERROR"
