"""The state hierarchy, each named transition rule and the optimistic version check, checked
against an independent restatement (``tests/unit/oracle.py``: literal sets, not the production
helpers), so a change to either shows."""

from __future__ import annotations

import itertools

import pytest

from runledger.domain import rules
from runledger.domain.rules import FLOW_RUN_RULES, TASK_RUN_RULES, Transition, check_transition
from runledger.domain.states import (
    PARENT, STATES_WITH_START_TIME, State, StateType, is_a, is_finished, is_running, is_scheduled,
)  # fmt: skip
from runledger.domain.versioning import check_version
from tests.unit.oracle import FINISHED, PREFECT_1_BASES, RUNNING, SCHEDULED, violated

S = StateType


def test_the_hierarchy_is_exactly_prefect_1s():
    """Every Prefect 1.x state exists, no other does, and each has Prefect's base class."""
    assert {t.value: (p.value if p else None) for t, p in PARENT.items()} == PREFECT_1_BASES
    assert set(PARENT) == set(StateType)


def test_the_scheduled_family_is_what_carries_a_start_time():
    assert {t.value for t in STATES_WITH_START_TIME} == SCHEDULED


@pytest.mark.parametrize("state", list(StateType))
def test_is_a_follows_the_chain_of_bases(state):
    ancestors, name = set(), state.value
    while name is not None:
        ancestors.add(name)
        name = PREFECT_1_BASES[name]
    assert {t.value for t in StateType if is_a(state, t)} == ancestors
    assert is_finished(state) == (state.value in FINISHED)
    assert is_scheduled(state) == (state.value in SCHEDULED)
    assert is_running(state) == (state.value in RUNNING)


def test_is_a_is_not_symmetric():
    assert is_a(S.CACHED, S.SUCCESS) and not is_a(S.SUCCESS, S.CACHED)
    assert not is_a(S.PENDING, S.SCHEDULED) and not is_a(S.QUEUED, S.PENDING)
    assert not is_a(S.CLIENT_FAILED, S.FAILED) and not is_a(S.CLIENT_FAILED, S.FINISHED)


def test_states_are_validated_and_frozen():
    state = State(type="TimedOut", message="slow")
    assert state.type is S.TIMED_OUT and state.summary() == "TimedOut: slow"
    assert State(type="Success").summary() == "Success"
    with pytest.raises(ValueError):
        State(type="Exploded")
    with pytest.raises(ValueError):
        State(type="Success", unknown_field=1)
    with pytest.raises(ValueError):
        state.message = "changed"  # type: ignore[misc]


# -- transition policy ------------------------------------------------------------------------
# What real runs do all the time: the policy (and the oracle) must never refuse these.
ORDINARY_LIFECYCLE = {(S.SCHEDULED, S.SUBMITTED), (S.SUBMITTED, S.RUNNING), (S.RUNNING, S.SUCCESS), (S.SCHEDULED, S.RUNNING),
                      (S.RUNNING, S.RETRYING), (S.RETRYING, S.RUNNING), (S.PENDING, S.MAPPED)}  # fmt: skip


def test_every_flow_run_transition_against_the_oracle():
    refused, allowed = 0, set()
    for current, proposed in itertools.product(StateType, StateType):
        expected = violated("flow run", current.value, proposed.value, current.value)
        rejection = check_transition(Transition("flow run", current, proposed, current))
        if not expected:
            assert rejection is None, (current, proposed)
            allowed.add((current, proposed))
            continue
        refused += 1
        assert rejection is not None and rejection.code == "TRANSITION_REJECTED" and rejection.field == "state"
        assert rejection.rule in expected, (current, proposed, rejection.rule)
        assert rejection.message.startswith("State update failed: ")
        assert rejection.message.endswith(f"(rule {rejection.rule})")
        assert rejection.details == {"current_state": current.value, "proposed_state": proposed.value}
    assert 0 < refused < len(StateType) ** 2
    assert ORDINARY_LIFECYCLE <= allowed


@pytest.mark.parametrize("flow_state", list(StateType))
def test_every_task_run_transition_against_the_oracle(flow_state):
    for current, proposed in itertools.product(StateType, StateType):
        expected = violated("task run", current.value, proposed.value, flow_state.value)
        rejection = check_transition(Transition("task run", current, proposed, flow_state))
        assert (rejection is None) == (not expected), (current, proposed, flow_state)
        if rejection is not None:
            assert rejection.code == "TRANSITION_REJECTED" and rejection.rule in expected and "task run" in rejection.message


def test_flow_runs_do_not_apply_the_task_run_rule():
    assert rules.task_runs_do_not_run_in_finished_flow_runs not in FLOW_RUN_RULES
    assert set(TASK_RUN_RULES) == set(FLOW_RUN_RULES) | {rules.task_runs_do_not_run_in_finished_flow_runs}


def flow(current, proposed):
    return Transition("flow run", current, proposed, current)


def test_a_looped_task_run_runs_again_as_prefects_loop_signal_does():
    for proposed in (S.PENDING, S.RUNNING):
        assert check_transition(Transition("task run", S.LOOPED, proposed, S.RUNNING)) is None
    assert check_transition(Transition("task run", S.LOOPED, S.SUBMITTED, S.RUNNING)) is not None
    assert check_transition(flow(S.LOOPED, S.RUNNING)) is not None  # a flow run does not loop


# For each rule: transitions that *only* this rule refuses (so check_transition must name it),
# and transitions it allows.
ONLY_THIS_RULE = {
    rules.finished_runs_restart_only_through_scheduled: (
        [flow(S.SUCCESS, S.RUNNING), flow(S.FAILED, S.SUBMITTED), flow(S.SUCCESS, S.PENDING), flow(S.TIMED_OUT, S.QUEUED),
         flow(S.SKIPPED, S.CLIENT_FAILED)],
        [flow(S.SUCCESS, S.SCHEDULED), flow(S.FAILED, S.RETRYING), flow(S.SUCCESS, S.FAILED), flow(S.RUNNING, S.PENDING),
         flow(S.RUNNING, S.SUCCESS)],
    ),
    rules.cancelled_runs_move_only_by_restart: (
        [flow(S.CANCELLED, S.SUCCESS), flow(S.CANCELLED, S.CANCELLED), flow(S.CANCELLED, S.FAILED)],
        [flow(S.CANCELLED, S.SCHEDULED), flow(S.CANCELLED, S.PAUSED), flow(S.CANCELLED, S.RETRYING), flow(S.FAILED, S.SUCCESS)],
    ),
    rules.cancelling_only_from_running: (
        [flow(S.SCHEDULED, S.CANCELLING), flow(S.SUBMITTED, S.CANCELLING), flow(S.PENDING, S.CANCELLING)],
        [flow(S.RUNNING, S.CANCELLING), flow(S.SCHEDULED, S.CANCELLED)],
    ),
    rules.cancelling_ends_in_a_finished_state: (
        [flow(S.CANCELLING, S.RUNNING), flow(S.CANCELLING, S.SCHEDULED), flow(S.CANCELLING, S.SUBMITTED)],
        [flow(S.CANCELLING, S.CANCELLED), flow(S.CANCELLING, S.FAILED), flow(S.CANCELLING, S.SUCCESS)],
    ),
    rules.task_runs_do_not_run_in_finished_flow_runs: (
        [Transition("task run", S.PENDING, S.RUNNING, S.SUCCESS), Transition("task run", S.RETRYING, S.RUNNING, S.CANCELLED),
         Transition("task run", S.PENDING, S.RUNNING, S.CANCELLED)],
        [Transition("task run", S.PENDING, S.RUNNING, S.RUNNING), Transition("task run", S.PENDING, S.RUNNING, S.CANCELLING),
         Transition("task run", S.RUNNING, S.SUCCESS, S.SUCCESS), Transition("task run", S.PENDING, S.SCHEDULED, S.FAILED)],
    ),
}  # fmt: skip


@pytest.mark.parametrize("rule", list(ONLY_THIS_RULE), ids=lambda r: r.__name__)
def test_each_rule_refuses_and_names_itself(rule):
    refused, allowed = ONLY_THIS_RULE[rule]
    for t in refused:
        reason = rule(t)
        assert isinstance(reason, str) and t.proposed.value in reason, t
        rejection = check_transition(t)
        assert rejection is not None and rejection.rule == rule.__name__, t
        assert reason in rejection.message and f"(rule {rule.__name__})" in rejection.message
    for t in allowed:
        assert rule(t) is None, t


# Transitions two rules refuse: each must refuse on its own (so neither relies on the other), and
# the rejection names one of them.
@pytest.mark.parametrize(
    "t, refusing",
    [
        (flow(S.CANCELLED, S.RUNNING), {rules.cancelled_runs_move_only_by_restart, rules.finished_runs_restart_only_through_scheduled}),
        (flow(S.CANCELLING, S.CANCELLING), {rules.cancelling_only_from_running, rules.cancelling_ends_in_a_finished_state}),
    ],
    ids=["Cancelled->Running", "Cancelling->Cancelling"],
)
def test_a_transition_two_rules_refuse(t, refusing):
    assert {rule for rule in TASK_RUN_RULES if rule(t) is not None} == refusing
    assert check_transition(t).rule in {rule.__name__ for rule in refusing}


def test_a_rejection_says_why_in_words():
    rejection = check_transition(flow(S.SCHEDULED, S.CANCELLING))
    assert "Cancelling is only reachable from Running" in rejection.message


# -- optimistic version check -----------------------------------------------------------------
@pytest.mark.parametrize("current", [0, 1, 7])
def test_none_or_the_current_version_passes(current):
    assert check_version(None, current, S.RUNNING, "flow run r") is None
    assert check_version(current, current, S.RUNNING, "flow run r") is None


@pytest.mark.parametrize("expected, current", [(0, 1), (6, 7), (8, 7), (100, 3)])
def test_any_other_version_is_a_mismatch_naming_the_current_one(expected, current):
    rejection = check_version(expected, current, S.SUBMITTED, "task run t-9")
    assert rejection is not None
    assert (rejection.code, rejection.field, rejection.rule) == ("VERSION_MISMATCH", "version", None)
    assert rejection.details == {"current_version": current, "current_state": "Submitted"}
    assert rejection.message.startswith("State update failed: ")
    assert f"task run t-9 is at version {current} (Submitted)" in rejection.message
    assert f"carried version {expected}" in rejection.message
