"""Argument coercion: the JSON scalar, JSON-encoded object arguments, Prefect-style state dicts,
and the camelCase spellings Prefect's docs also use."""

from __future__ import annotations

from typing import Any

import orjson
from ariadne import ScalarType
from graphql.utilities import value_from_ast_untyped

from runledger import api_models as api
from runledger.domain.states import MAX_STATE_MESSAGE
from runledger.services.ingress.graphql.errors import error

json_scalar = ScalarType("JSON")


@json_scalar.literal_parser
def _parse_json_literal(ast, variables=None):
    return value_from_ast_untyped(ast, variables)


def json_object(value: Any, field: str) -> dict | None:
    """JSON arguments may be objects or JSON-encoded strings (``parameters: "{\\"a\\":2}"``)."""
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            decoded = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise error(f"{field}: not valid JSON ({exc})", "BAD_USER_INPUT", field=field) from None
        if isinstance(decoded, dict):
            return decoded
    raise error(f"{field}: expected a JSON object", "BAD_USER_INPUT", field=field)


def json_size(value: Any, field: str) -> int:
    """Bytes of ``value`` as JSON; a value orjson cannot encode (ints over 64 bits, lone
    surrogates) is the client's error, naming ``field``."""
    try:
        return len(orjson.dumps(value))
    except orjson.JSONEncodeError as exc:
        raise error(f"{field}: cannot be stored as JSON ({exc})", "BAD_USER_INPUT", field=field) from None


def state_input(value: Any) -> api.StateInput:
    """A Prefect-style state dict (``{type, message, ...}``), kept whole as ``serialized``.

    A message over ``MAX_STATE_MESSAGE`` characters is shortened, not refused: the Prefect
    client's task runner writes ``Failed("Error during execution of task: <repr(exc)>")``, and
    refusing it would leave the task run Running with its failure lost (Prefect Server stores
    any length). REST refuses it (422 naming ``state.message``): its callers can shorten it."""
    state = json_object(value, "state")
    result = state.get("_result") if isinstance(state.get("_result"), dict) else {}
    return api.StateInput(
        type=state.get("type"),
        message=shortened(state.get("message")),
        start_time=state.get("start_time"),
        result_location=state.get("result_location") or result.get("location"),
        serialized=state,
    )


def shortened(message: Any) -> Any:
    """``message`` cut to ``MAX_STATE_MESSAGE`` characters, saying how long it was."""
    if not isinstance(message, str) or len(message) <= MAX_STATE_MESSAGE:
        return message
    note = f" ... [shortened: {len(message)} characters in all]"
    return message[: MAX_STATE_MESSAGE - len(note)] + note


CAMEL = {
    "flowId": "flow_id", "versionGroupId": "version_group_id", "flowName": "flow_name", "projectName": "project_name",
    "runConfig": "run_config", "scheduledStartTime": "scheduled_start_time", "idempotencyKey": "idempotency_key",
    "flowRunName": "flow_run_name", "flowRunId": "flow_run_id", "flowGroupId": "flow_group_id",
}


def snake(data: dict) -> dict:
    return {CAMEL.get(k, k): v for k, v in data.items()}
