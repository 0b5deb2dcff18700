"""A Prefect-style state's message over the limit is shortened on GraphQL (the Prefect client's
failure messages carry a whole exception's repr), and still refused, naming the field, on REST."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from runledger import api_models as api
from runledger.domain.states import MAX_STATE_MESSAGE
from runledger.services.ingress.graphql.coercion import state_input


def test_a_long_failure_message_is_shortened_and_says_how_long_it_was():
    message = "Error during execution of task: ValueError('" + "x" * 50_000 + "')"
    state = state_input({"type": "Failed", "message": message, "__version__": "1.4.1"})
    assert len(state.message) == MAX_STATE_MESSAGE
    assert state.message.startswith("Error during execution of task: ValueError('xxx")
    assert state.message.endswith(f"[shortened: {len(message)} characters in all]")
    assert state.serialized["message"] == message  # the state as the client sent it is kept whole


def test_a_message_within_the_limit_is_kept_as_it_is():
    message = "m" * MAX_STATE_MESSAGE
    assert state_input({"type": "Failed", "message": message}).message == message
    assert state_input({"type": "Success", "message": None}).message is None


def test_rest_refuses_an_over_long_message_naming_the_field():
    with pytest.raises(ValidationError) as raised:
        api.StateInput(type="Failed", message="m" * (MAX_STATE_MESSAGE + 1))
    assert raised.value.errors()[0]["loc"] == ("message",)
