"""The wire format: every envelope survives ``encode`` then ``decode_*`` unchanged.

That logs written earlier still decode is ``test_recorded_history.py``'s job.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from runledger.domain.ledger import Ledger
from runledger.domain.states import State, StateType
from runledger.messages import commands as c
from runledger.messages.codec import decode_command, decode_event, decode_reply, encode
from runledger.messages.commands import Rejection, Reply
from tests.unit.factories import envelope, spec

json_leaves = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
aware_times = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(timezone.utc))
states = st.builds(
    State,
    type=st.sampled_from(list(StateType)),
    message=st.none() | st.text(max_size=50),
    timestamp=st.none() | aware_times,
    start_time=st.none() | aware_times,
    result_location=st.none() | st.text(max_size=30),
    serialized=st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=5),
)


@settings(max_examples=150, deadline=None)
@given(states, st.none() | st.integers(0, 10**6), st.none() | st.text(max_size=10), aware_times)
def test_envelopes_round_trip_through_the_codec(state, version, correlation_id, now):
    command = c.SetFlowRunState(state=state, version=version)
    env = envelope("run-1", command).model_copy(update={"correlation_id": correlation_id, "issued_at": now})
    assert decode_command(encode(env)) == env
    ledger = Ledger()
    log = ledger.decide(envelope("run-1", c.CreateFlowRun(spec=spec(tasks=1))), now).events
    log += ledger.decide(env, now).events  # accepted, or a recorded refusal
    log += ledger.decide(envelope("run-1", c.SetTaskRunState(task_run_id="run-1-tr0", state=state, version=version)), now).events
    for event in log:
        assert decode_event(encode(event)) == event
    rejection = Rejection(code="VERSION_MISMATCH", message="m", field="version", details={"current_version": 3})
    reply = Reply(command_id=str(uuid.uuid4()), ok=False, rejection=rejection, partition=1, offset=12)
    assert decode_reply(encode(reply)) == reply
