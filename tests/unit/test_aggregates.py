"""The flow-run and registry aggregates, and the writer's ledger, without any I/O."""

from __future__ import annotations

import uuid

from runledger.domain.ledger import Ledger
from runledger.domain.states import State
from runledger.messages import commands as c
from runledger.messages.models import FlowDefinition
from runledger.topics import REGISTRY_AGGREGATE
from tests.unit.factories import T0, at, envelope, ledger_with_run, set_state, set_task_state, spec


def decide(ledger, payload, aggregate="run-1", when=T0, command_id=None):
    return ledger.decide(envelope(aggregate, payload, command_id), when)


def test_create_precreates_task_runs_then_schedules():
    ledger = Ledger()
    answer = decide(ledger, c.CreateFlowRun(spec=spec(tasks=2)))
    assert [e.type for e in answer.events] == ["FlowRunCreated", "TaskRunCreated", "TaskRunCreated", "FlowRunStateSet"]
    assert [e.seq for e in answer.events] == [1, 2, 3, 4]
    assert answer.events[-1].payload.version == 1 and answer.events[-1].payload.state.start_time == T0
    assert answer.outcome == {"flow_run_id": "run-1", "version": 1, "state": "Scheduled", "created": True}
    run = ledger.aggregates["run-1"]
    assert {tr.state.type.value for tr in run.task_runs.values()} == {"Pending"}
    assert {tr.version for tr in run.task_runs.values()} == {0}
    # creating the same run again (idempotency completion) changes nothing
    again = decide(ledger, c.CreateFlowRun(spec=spec(tasks=2)))
    assert again.events == [] and again.outcome["created"] is False


def test_versions_rise_by_one_and_stale_versions_are_refused():
    ledger = ledger_with_run()
    assert decide(ledger, set_state("Submitted", 1)).outcome["version"] == 2
    assert decide(ledger, set_state("Running", None)).outcome["version"] == 3
    stale = decide(ledger, set_state("Success", 2))
    assert stale.rejection.code == "VERSION_MISMATCH"
    assert [e.type for e in stale.events] == ["VerdictRecorded"]  # the verdict is recorded, the run unchanged
    assert stale.rejection.details["current_version"] == 3
    assert ledger.aggregates["run-1"].version == 3


def test_commands_for_unknown_runs_leave_no_trace():
    ledger = Ledger()
    answer = decide(ledger, set_state("Running"), aggregate="nope")
    assert answer.rejection.code == "NOT_FOUND" and answer.rejection.field == "flow_run_id"
    assert ledger.aggregates == {}


def test_cancel_running_goes_through_cancelling_and_task_runs_follow():
    ledger = ledger_with_run()
    decide(ledger, set_state("Running"))
    decide(ledger, set_task_state("run-1-tr0", "Running", 0))
    decide(ledger, set_task_state("run-1-tr1", "Success"))
    answer = decide(ledger, c.CancelFlowRun())
    assert answer.outcome["state"] == "Cancelling"
    run = ledger.aggregates["run-1"]
    assert run.task_runs["run-1-tr0"].state.type.value == "Cancelling"
    assert run.task_runs["run-1-tr1"].state.type.value == "Success"  # finished: left alone
    decide(ledger, set_state("Cancelled"))
    assert run.task_runs["run-1-tr0"].state.type.value == "Cancelled"
    assert run.task_runs["run-1-tr0"].version == 3


def test_cancel_of_a_scheduled_run_cancels_it_and_of_a_finished_run_does_nothing():
    ledger = ledger_with_run()
    assert decide(ledger, c.CancelFlowRun()).outcome["state"] == "Cancelled"
    assert {tr.state.type.value for tr in ledger.aggregates["run-1"].task_runs.values()} == {"Cancelled"}
    noop = decide(ledger, c.CancelFlowRun())
    assert [e.type for e in noop.events] == ["VerdictRecorded"] and noop.outcome["state"] == "Cancelled"
    assert ledger.aggregates["run-1"].version == 2


def test_task_runs_cannot_run_in_a_finished_flow_run():
    ledger = ledger_with_run()
    decide(ledger, set_state("Success"))
    answer = decide(ledger, set_task_state("run-1-tr0", "Running"))
    assert answer.rejection.rule == "task_runs_do_not_run_in_finished_flow_runs"


def test_get_or_create_of_a_mapped_child_is_idempotent():
    from runledger.messages.models import PlannedTaskRun

    ledger = ledger_with_run()
    planned = PlannedTaskRun(task_run_id="child-3", task_id="t0", task_slug="t0-1", map_index=3)
    first = decide(ledger, c.GetOrCreateTaskRun(task_run=planned))
    second = decide(ledger, c.GetOrCreateTaskRun(task_run=planned.model_copy(update={"task_run_id": "other"})))
    assert first.outcome["created"] is True and second.outcome == {"task_run_id": "child-3", "version": 0, "state": "Pending", "created": False}


def test_a_duplicate_command_id_is_answered_from_memory():
    ledger = ledger_with_run()
    first = decide(ledger, set_state("Running"), command_id="cmd-1")
    again = decide(ledger, set_state("Running"), command_id="cmd-1")
    assert again.duplicate and again.events == [] and again.outcome == first.outcome
    assert ledger.aggregates["run-1"].version == 2


def test_replaying_the_log_rebuilds_the_same_state_and_answers():
    ledger, log = Ledger(), []
    log += decide(ledger, c.CreateFlowRun(spec=spec())).events
    log += decide(ledger, set_state("Running"), command_id="a").events
    log += decide(ledger, set_task_state("run-1-tr0", "Running", 0)).events
    log += decide(ledger, c.RenameFlowRun(name="renamed")).events
    rebuilt = Ledger()
    for env in log + log[2:4]:  # the duplicated records are skipped by seq
        rebuilt.replay(env)
    original, copy = ledger.aggregates["run-1"], rebuilt.aggregates["run-1"]
    assert (copy.version, copy.seq, copy.name, copy.state) == (original.version, original.seq, original.name, original.state)
    assert copy.task_runs == original.task_runs
    assert decide(rebuilt, set_state("Running"), command_id="a").duplicate  # the old answer is remembered


def register(ledger, name="flow", project_id="p1", **fields):
    flow = FlowDefinition(id=uuid.uuid4().hex, name=name, project_id=project_id, version=0,
                          version_group_id=uuid.uuid4().hex, **fields)
    return decide(ledger, c.RegisterFlow(flow=flow), aggregate=REGISTRY_AGGREGATE)


def test_registry_projects_are_unique_by_name():
    ledger = Ledger()
    assert decide(ledger, c.CreateProject(project_id="p1", name="demo"), REGISTRY_AGGREGATE).outcome["created"]
    duplicate = decide(ledger, c.CreateProject(project_id="p2", name="demo"), REGISTRY_AGGREGATE)
    assert duplicate.rejection.code == "CONFLICT" and "Uniqueness violation." in duplicate.rejection.message


def test_registering_again_versions_and_archives():
    ledger = Ledger()
    decide(ledger, c.CreateProject(project_id="p1", name="demo"), REGISTRY_AGGREGATE)
    first = register(ledger)
    second = register(ledger)
    other_name = register(ledger, name="other")
    assert (first.outcome["version"], second.outcome["version"], other_name.outcome["version"]) == (1, 2, 1)
    assert first.outcome["version_group_id"] == second.outcome["version_group_id"] != other_name.outcome["version_group_id"]
    assert second.events[0].payload.archived_flow_ids == [first.outcome["flow_id"]]
    assert register(ledger, project_id="missing").rejection.code == "NOT_FOUND"


def test_registry_idempotency_key_returns_the_live_flow():
    ledger = Ledger()
    decide(ledger, c.CreateProject(project_id="p1", name="demo"), REGISTRY_AGGREGATE)
    first = register(ledger, idempotency_key="sha")
    repeat = register(ledger, idempotency_key="sha")
    assert repeat.events == [] and repeat.outcome["flow_id"] == first.outcome["flow_id"]
    assert register(ledger, idempotency_key="other").outcome["version"] == 2


def test_state_timestamps_come_from_the_writer():
    ledger = ledger_with_run()
    answer = decide(ledger, set_state("Running", message="go"), when=at(5))
    state: State = answer.events[0].payload.state
    assert state.timestamp == at(5) and state.message == "go"


def test_a_rejection_survives_replay_even_if_the_run_moved_on():
    """Redelivered after a crash, a refused command must stay refused though the run changed."""
    ledger, log = Ledger(), []
    log += decide(ledger, c.CreateFlowRun(spec=spec())).events
    refused = decide(ledger, set_state("Cancelling"), command_id="too-early")
    assert refused.rejection.rule == "cancelling_only_from_running"
    log += refused.events
    log += decide(ledger, set_state("Running")).events
    rebuilt = Ledger()
    for env in log:
        rebuilt.replay(env)
    again = decide(rebuilt, set_state("Cancelling"), command_id="too-early")
    assert again.duplicate and again.events == [] and again.rejection == refused.rejection
    assert rebuilt.aggregates["run-1"].state.type.value == "Running"
