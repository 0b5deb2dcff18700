"""State hierarchy, the version check and each named transition rule."""

from __future__ import annotations

import pytest

from runledger.domain import rules
from runledger.domain.rules import Transition, check_transition
from runledger.domain.states import STATES_WITH_START_TIME, StateType, is_a, is_finished, is_running, is_scheduled
from runledger.domain.versioning import check_version

S = StateType
PREFECT_1_STATES = (
    "Pending Scheduled Submitted Queued Paused Resume Retrying Running Looped Cancelling Finished Success Cached "
    "Mapped Skipped Failed TimedOut TriggerFailed ValidationFailed Cancelled ClientFailed"
).split()


def test_every_prefect_1_state_exists():
    assert sorted(t.value for t in StateType) == sorted(PREFECT_1_STATES)


@pytest.mark.parametrize(
    "state, ancestors",
    [
        (S.CACHED, {S.SUCCESS, S.FINISHED}),
        (S.MAPPED, {S.SUCCESS, S.FINISHED}),
        (S.TIMED_OUT, {S.FAILED, S.FINISHED}),
        (S.RETRYING, {S.SCHEDULED, S.PENDING}),
        (S.PAUSED, {S.SCHEDULED, S.PENDING}),
        (S.QUEUED, {S.SUBMITTED}),
        (S.CANCELLING, {S.RUNNING}),
        (S.CANCELLED, {S.FINISHED}),
    ],
)
def test_hierarchy(state, ancestors):
    for other in StateType:
        assert is_a(state, other) == (other in ancestors or other is state), other


def test_family_helpers():
    assert {t for t in StateType if is_finished(t)} == {
        S.FINISHED, S.LOOPED, S.SUCCESS, S.CACHED, S.MAPPED, S.SKIPPED, S.FAILED, S.TIMED_OUT, S.TRIGGER_FAILED,
        S.VALIDATION_FAILED, S.CANCELLED,
    }
    assert STATES_WITH_START_TIME == {S.SCHEDULED, S.PAUSED, S.RESUME, S.RETRYING} == {t for t in StateType if is_scheduled(t)}
    assert {t for t in StateType if is_running(t)} == {S.RUNNING, S.CANCELLING}


def test_version_check():
    assert check_version(None, 7, S.RUNNING, "flow run x") is None
    assert check_version(7, 7, S.RUNNING, "flow run x") is None
    rejection = check_version(6, 7, S.RUNNING, "flow run x")
    assert rejection.code == "VERSION_MISMATCH" and rejection.field == "version"
    assert rejection.details == {"current_version": 7, "current_state": "Running"}
    assert rejection.message.startswith("State update failed")


def flow(current, proposed):
    return Transition("flow run", current, proposed, current)


@pytest.mark.parametrize(
    "rule, refused, allowed",
    [
        (
            rules.finished_runs_restart_only_through_scheduled,
            [flow(S.SUCCESS, S.RUNNING), flow(S.FAILED, S.SUBMITTED), flow(S.SUCCESS, S.PENDING)],
            [flow(S.SUCCESS, S.SCHEDULED), flow(S.FAILED, S.RETRYING), flow(S.SUCCESS, S.FAILED), flow(S.RUNNING, S.SUCCESS)],
        ),
        (
            rules.cancelled_runs_move_only_by_restart,
            [flow(S.CANCELLED, S.RUNNING), flow(S.CANCELLED, S.SUCCESS), flow(S.CANCELLED, S.CANCELLED)],
            [flow(S.CANCELLED, S.SCHEDULED), flow(S.FAILED, S.SUCCESS)],
        ),
        (
            rules.cancelling_only_from_running,
            [flow(S.SCHEDULED, S.CANCELLING), flow(S.SUBMITTED, S.CANCELLING), flow(S.CANCELLING, S.CANCELLING)],
            [flow(S.RUNNING, S.CANCELLING)],
        ),
        (
            rules.cancelling_ends_in_a_finished_state,
            [flow(S.CANCELLING, S.RUNNING), flow(S.CANCELLING, S.SCHEDULED)],
            [flow(S.CANCELLING, S.CANCELLED), flow(S.CANCELLING, S.FAILED)],
        ),
        (
            rules.task_runs_do_not_run_in_finished_flow_runs,
            [Transition("task run", S.PENDING, S.RUNNING, S.SUCCESS), Transition("task run", S.PENDING, S.RUNNING, S.CANCELLED)],
            [Transition("task run", S.PENDING, S.RUNNING, S.RUNNING), Transition("task run", S.RUNNING, S.SUCCESS, S.SUCCESS)],
        ),
    ],
)
def test_each_rule(rule, refused, allowed):
    for t in refused:
        assert rule(t) is not None, t
        rejection = check_transition(t)
        assert rejection is not None and rejection.code == "TRANSITION_REJECTED"
    for t in allowed:
        assert rule(t) is None, t


def test_a_rejection_names_its_rule_and_says_why():
    rejection = check_transition(flow(S.SCHEDULED, S.CANCELLING))
    assert rejection.rule == "cancelling_only_from_running"
    assert "Cancelling is only reachable from Running" in rejection.message
    assert rejection.details == {"current_state": "Scheduled", "proposed_state": "Cancelling"}


def test_ordinary_lifecycles_pass_every_rule():
    for current, proposed in [(S.SCHEDULED, S.SUBMITTED), (S.SUBMITTED, S.RUNNING), (S.RUNNING, S.SUCCESS),
                              (S.SCHEDULED, S.RUNNING), (S.RUNNING, S.RETRYING), (S.RETRYING, S.RUNNING), (S.PENDING, S.MAPPED)]:
        assert check_transition(flow(current, proposed)) is None
