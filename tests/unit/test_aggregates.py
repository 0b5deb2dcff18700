"""The FlowRun and Registry aggregates driven directly (handle, then apply), and the writer's Ledger
(envelopes, remembered verdicts, replay), without any I/O."""

from __future__ import annotations

import copy
import uuid

import pytest

from runledger.domain.decisions import Accepted, Rejected
from runledger.domain.flow_run import FlowRun
from runledger.domain.ledger import Ledger
from runledger.domain.registry import UNIQUENESS, Registry
from runledger.domain.states import State, StateType
from runledger.messages import commands as c
from runledger.messages import events as e
from runledger.messages.models import FlowDefinition, PlannedTaskRun
from runledger.topics import REGISTRY_AGGREGATE
from tests.unit.factories import T0, at, envelope, set_state, set_task_state, spec

S = StateType


# -- FlowRun ------------------------------------------------------------------------------------
def step(run: FlowRun, command, when=T0):
    """handle + apply, as the writer does; returns the decision."""
    before = copy.deepcopy(run)
    decision = run.handle(command, when)
    assert run == before, "handle must not change the aggregate"
    if isinstance(decision, Accepted):
        for event in decision.events:
            run.apply(event)
    return decision


def created_run(tasks: int = 2) -> FlowRun:
    run = FlowRun(id="run-1")
    step(run, c.CreateFlowRun(spec=spec("run-1", tasks)))
    return run


def tr_states(run: FlowRun) -> dict[str, tuple[str, int]]:
    return {tid: (r.state.type.value, r.version) for tid, r in run.task_runs.items()}


def test_create_records_the_run_its_task_runs_pending_at_0_then_scheduled_at_1():
    run = FlowRun(id="run-1")
    assert not run.exists
    decision = run.handle(c.CreateFlowRun(spec=spec("run-1", 3)), at(7))
    assert isinstance(decision, Accepted)
    assert decision.outcome == {"flow_run_id": "run-1", "version": 1, "state": "Scheduled", "created": True}
    assert [type(ev) for ev in decision.events] == [e.FlowRunCreated] + [e.TaskRunCreated] * 3 + [e.FlowRunStateSet]
    last = decision.events[-1]
    assert last.version == 1 and last.state.type is S.SCHEDULED
    assert last.state.timestamp == at(7) and last.state.start_time == T0
    for event in decision.events:
        run.apply(event)
    assert run.exists and run.name == "electric-mandrill" and run.spec == spec("run-1", 3)
    assert (run.state.type, run.version) == (S.SCHEDULED, 1)
    assert tr_states(run) == {f"run-1-tr{i}": ("Pending", 0) for i in range(3)}
    assert run.task_run_by_key == {(f"t{i}", -1): f"run-1-tr{i}" for i in range(3)}


def test_commands_before_create_are_not_found():
    run = FlowRun(id="ghost")
    for command in (set_state("Running"), c.CancelFlowRun(), c.RenameFlowRun(name="x"), c.RecordFlowRunHeartbeat()):
        decision = run.handle(command, T0)
        assert isinstance(decision, Rejected) and decision.rejection.code == "NOT_FOUND"
        assert decision.rejection.field == "flow_run_id" and "ghost" in decision.rejection.message


def test_create_again_is_a_no_op_naming_the_current_state():
    run = created_run()
    step(run, set_state("Running"))
    decision = step(run, c.CreateFlowRun(spec=spec("run-1", 2)))
    assert isinstance(decision, Accepted) and decision.events == []
    assert decision.outcome == {"flow_run_id": "run-1", "version": 2, "state": "Running", "created": False}


def test_each_accepted_state_adds_one_and_the_writer_stamps_the_time():
    run = created_run()
    client_time = at(-1000)
    for i, state in enumerate(["Submitted", "Running", "Retrying", "Running", "Success", "Scheduled"], start=2):
        proposed = State(type=state, timestamp=client_time, message=f"step {i}")
        decision = step(run, c.SetFlowRunState(state=proposed, version=i - 1), at(i))
        assert decision.outcome == {"flow_run_id": "run-1", "version": i, "state": state}
        assert (run.state.type.value, run.version, run.state.timestamp) == (state, i, at(i))
        assert run.state.message == f"step {i}"  # only the time is the writer's


def test_a_rejected_update_changes_nothing_and_says_why():
    run = created_run()
    step(run, set_state("Running", 1))
    stale = step(run, set_state("Success", 1))
    assert isinstance(stale, Rejected) and stale.rejection.code == "VERSION_MISMATCH"
    assert stale.rejection.details == {"current_version": 2, "current_state": "Running"}
    ahead = step(run, set_state("Success", 3))
    assert isinstance(ahead, Rejected) and ahead.rejection.code == "VERSION_MISMATCH"
    refused = step(run, set_state("Cancelling", 2))
    assert isinstance(refused, Accepted)  # Running -> Cancelling is fine
    bad = step(run, set_state("Running", 3))
    assert isinstance(bad, Rejected) and bad.rejection.rule == "cancelling_ends_in_a_finished_state"
    assert (run.state.type, run.version) == (S.CANCELLING, 3)


def test_the_version_is_checked_before_the_rules():
    run = created_run()
    decision = step(run, set_state("Cancelling", 5))  # both a wrong version and a refused transition
    assert isinstance(decision, Rejected) and decision.rejection.code == "VERSION_MISMATCH"


def test_cancel_of_a_running_run_goes_to_cancelling_and_task_runs_follow():
    run = created_run(tasks=4)
    step(run, set_state("Running"))
    step(run, set_task_state("run-1-tr0", "Running", 0))
    step(run, set_task_state("run-1-tr1", "Success", 0))
    step(run, set_task_state("run-1-tr2", "Submitted", 0))
    decision = step(run, c.CancelFlowRun(), at(9))
    assert decision.outcome == {"flow_run_id": "run-1", "version": 3, "state": "Cancelling"}
    assert run.state.message == "Flow run cancelled by request." and run.state.timestamp == at(9)
    assert tr_states(run) == {
        "run-1-tr0": ("Cancelling", 2),  # Running follows into Cancelling
        "run-1-tr1": ("Success", 1),  # finished: left alone
        "run-1-tr2": ("Cancelled", 2),  # not running: straight to Cancelled
        "run-1-tr3": ("Cancelled", 1),
    }
    # cancelling again finishes the job
    again = step(run, c.CancelFlowRun(message="really"))
    assert again.outcome == {"flow_run_id": "run-1", "version": 4, "state": "Cancelled"}
    assert run.state.message == "really"
    assert tr_states(run)["run-1-tr0"] == ("Cancelled", 3)
    assert tr_states(run)["run-1-tr2"] == ("Cancelled", 2)  # already Cancelled: no new version


@pytest.mark.parametrize("state", ["Scheduled", "Submitted", "Queued", "Paused", "Retrying", "Pending", "ClientFailed"])
def test_cancel_of_an_unstarted_run_cancels_it(state):
    run = created_run()
    step(run, set_state(state))
    decision = step(run, c.CancelFlowRun())
    assert decision.outcome == {"flow_run_id": "run-1", "version": 3, "state": "Cancelled"}
    assert set(tr_states(run).values()) == {("Cancelled", 1)}


@pytest.mark.parametrize("state", ["Success", "Failed", "Cancelled", "Skipped", "TimedOut", "Looped"])
def test_cancel_of_a_finished_run_does_nothing(state):
    run = created_run()
    step(run, set_state(state))
    before = copy.deepcopy(run)
    decision = step(run, c.CancelFlowRun())
    assert isinstance(decision, Accepted) and decision.events == []
    assert decision.outcome == {"flow_run_id": "run-1", "version": 2, "state": state}
    assert run == before


@pytest.mark.parametrize(
    "path, tr0_version",
    [(["Running"], 2), (["Running", "Cancelling"], 3)],  # from Cancelling, tr0 went Running -> Cancelling -> Cancelled
    ids=["from-running", "from-cancelling"],
)
def test_a_client_set_cancelled_state_also_moves_task_runs(path, tr0_version):
    run = created_run()
    step(run, set_state(path[0]))
    step(run, set_task_state("run-1-tr0", "Running"))
    for state in path[1:]:
        step(run, set_state(state))
    step(run, set_state("Cancelled"))
    assert tr_states(run) == {"run-1-tr0": ("Cancelled", tr0_version), "run-1-tr1": ("Cancelled", 1)}
    step(run, set_state("Scheduled"))  # restarting the flow run does not touch task runs
    assert tr_states(run) == {"run-1-tr0": ("Cancelled", tr0_version), "run-1-tr1": ("Cancelled", 1)}


def test_task_run_updates_have_their_own_version():
    run = created_run()
    first = step(run, set_task_state("run-1-tr0", "Running", 0))
    assert first.outcome == {"task_run_id": "run-1-tr0", "flow_run_id": "run-1", "version": 1, "state": "Running"}
    stale = step(run, set_task_state("run-1-tr0", "Success", 0))
    assert isinstance(stale, Rejected) and stale.rejection.details == {"current_version": 1, "current_state": "Running"}
    assert "task run run-1-tr0" in stale.rejection.message
    assert step(run, set_task_state("run-1-tr0", "Success", 1)).outcome["version"] == 2
    assert run.version == 1  # the flow run's version did not move
    missing = step(run, set_task_state("nope", "Running"))
    assert isinstance(missing, Rejected) and (missing.rejection.code, missing.rejection.field) == ("NOT_FOUND", "task_run_id")


@pytest.mark.parametrize("flow_state", ["Success", "Failed", "Cancelled", "TimedOut"])
def test_a_task_run_cannot_run_while_its_flow_run_is_finished(flow_state):
    run = created_run()
    step(run, set_state(flow_state))
    for proposed in ("Running", "Cancelling"):
        refused = step(run, set_task_state("run-1-tr0", proposed))
        assert isinstance(refused, Rejected) and refused.rejection.rule == "task_runs_do_not_run_in_finished_flow_runs"
        assert flow_state in refused.rejection.message and proposed in refused.rejection.message
    if flow_state != "Cancelled":  # (a cancelled run's task runs are Cancelled themselves)
        assert isinstance(step(run, set_task_state("run-1-tr1", "Failed", 0)), Accepted)  # finishing is allowed
    step(run, set_state("Scheduled"))  # a restarted flow run lets its task runs run again
    assert isinstance(step(run, set_task_state("run-1-tr0", "Scheduled")), Accepted)
    assert isinstance(step(run, set_task_state("run-1-tr0", "Running")), Accepted)


def test_get_or_create_task_run_is_idempotent_by_task_and_map_index():
    run = created_run(tasks=1)
    existing = step(run, c.GetOrCreateTaskRun(task_run=PlannedTaskRun(task_run_id="other", task_id="t0", task_slug="t0-1")))
    assert isinstance(existing, Accepted) and existing.events == []
    assert existing.outcome == {"task_run_id": "run-1-tr0", "version": 0, "state": "Pending", "created": False}
    child = PlannedTaskRun(task_run_id="child-0", task_id="t0", task_slug="t0-1", task_name="t", map_index=0)
    made = step(run, c.GetOrCreateTaskRun(task_run=child))
    assert made.outcome == {"task_run_id": "child-0", "version": 0, "state": "Pending", "created": True}
    assert run.task_run_by_key[("t0", 0)] == "child-0" and run.task_runs["child-0"].name == "t"
    step(run, set_task_state("child-0", "Running", 0))
    again = step(run, c.GetOrCreateTaskRun(task_run=child.model_copy(update={"task_run_id": "child-0b"})))
    assert again.events == [] and again.outcome == {"task_run_id": "child-0", "version": 1, "state": "Running", "created": False}
    assert len(run.task_runs) == 2


def test_renames_and_heartbeats():
    run = created_run(tasks=1)
    assert step(run, c.RenameFlowRun(name="new")).outcome == {"flow_run_id": "run-1", "name": "new"}
    assert run.name == "new" and run.spec.name == "electric-mandrill"
    assert step(run, c.RenameTaskRun(task_run_id="run-1-tr0", name="tn")).outcome == {"task_run_id": "run-1-tr0", "name": "tn"}
    assert run.task_runs["run-1-tr0"].name == "tn"
    assert step(run, c.RenameTaskRun(task_run_id="nope", name="x")).rejection.code == "NOT_FOUND"
    beat = step(run, c.RecordFlowRunHeartbeat())
    assert [type(ev) for ev in beat.events] == [e.FlowRunHeartbeatRecorded]
    assert step(run, c.RecordTaskRunHeartbeat(task_run_id="run-1-tr0")).events == [e.TaskRunHeartbeatRecorded(task_run_id="run-1-tr0")]
    assert step(run, c.RecordTaskRunHeartbeat(task_run_id="nope")).rejection.code == "NOT_FOUND"
    assert run.version == 1  # none of these is a state change


def test_foreign_commands_and_events_are_type_errors():
    run = created_run()
    with pytest.raises(TypeError):
        run.handle(c.CreateProject(project_id="p", name="n"), T0)
    with pytest.raises(TypeError):
        run.apply(e.ProjectCreated(project_id="p", name="n"))
    with pytest.raises(TypeError):
        Registry().apply(e.FlowRunRenamed(name="x"))


# -- Registry -----------------------------------------------------------------------------------
def reg_step(registry: Registry, command):
    decision = registry.handle(command, T0)
    if isinstance(decision, Accepted):
        for event in decision.events:
            registry.apply(event)
    return decision


def flow_def(name="etl", project_id="p1", **fields) -> FlowDefinition:
    return FlowDefinition(id=uuid.uuid4().hex, name=name, project_id=project_id, version=99,
                          version_group_id=uuid.uuid4().hex, **fields)  # fmt: skip


def registry_with_projects(*names: str) -> Registry:
    registry = Registry()
    for i, name in enumerate(names, start=1):
        reg_step(registry, c.CreateProject(project_id=f"p{i}", name=name))
    return registry


def test_project_names_are_unique():
    registry = registry_with_projects("demo")
    duplicate = reg_step(registry, c.CreateProject(project_id="p2", name="demo"))
    assert isinstance(duplicate, Rejected) and duplicate.rejection.code == "CONFLICT"
    assert UNIQUENESS == "Uniqueness violation." and "Uniqueness violation." in duplicate.rejection.message
    assert duplicate.rejection.details == {"project_id": "p1"} and duplicate.rejection.field == "name"
    retried = reg_step(registry, c.CreateProject(project_id="p1", name="demo"))
    assert isinstance(retried, Accepted) and retried.events == [] and retried.outcome == {"project_id": "p1", "created": False}
    assert registry.project_names == {"p1": "demo"}


def test_registering_a_name_again_makes_the_next_version_and_archives_the_others():
    registry = registry_with_projects("one", "two")
    first = reg_step(registry, c.RegisterFlow(flow=flow_def()))
    second = reg_step(registry, c.RegisterFlow(flow=flow_def()))
    third = reg_step(registry, c.RegisterFlow(flow=flow_def()))
    group = first.outcome["version_group_id"]
    assert [d.outcome["version"] for d in (first, second, third)] == [1, 2, 3]
    assert {d.outcome["version_group_id"] for d in (first, second, third)} == {group}
    assert second.events[0].archived_flow_ids == [first.outcome["flow_id"]]
    assert third.events[0].archived_flow_ids == [second.outcome["flow_id"]]  # the first is already archived
    assert third.events[0].flow.version == 3 and third.events[0].flow.version_group_id == group
    assert registry.archived == {first.outcome["flow_id"]: True, second.outcome["flow_id"]: True, third.outcome["flow_id"]: False}
    elsewhere = reg_step(registry, c.RegisterFlow(flow=flow_def(project_id="p2")))
    assert elsewhere.outcome["version"] == 1 and elsewhere.outcome["version_group_id"] != group
    assert registry.archived[third.outcome["flow_id"]] is False  # another project's flow archives nothing here
    other_name = reg_step(registry, c.RegisterFlow(flow=flow_def(name="other")))
    assert other_name.outcome["version"] == 1  # another name in the same project: a group of its own
    assert other_name.outcome["version_group_id"] not in (group, elsewhere.outcome["version_group_id"])
    assert other_name.events[0].archived_flow_ids == [] and registry.archived[third.outcome["flow_id"]] is False


def test_an_explicit_version_group_is_used_as_given():
    registry = registry_with_projects("one")
    first = reg_step(registry, c.RegisterFlow(flow=flow_def(name="a")))
    group = first.outcome["version_group_id"]
    other = flow_def(name="b").model_copy(update={"version_group_id": group})
    joined = reg_step(registry, c.RegisterFlow(flow=other, explicit_version_group=True))
    assert joined.outcome["version_group_id"] == group and joined.outcome["version"] == 2
    assert joined.events[0].archived_flow_ids == [first.outcome["flow_id"]]


def test_an_idempotency_key_repeat_returns_the_live_flow():
    registry = registry_with_projects("one")
    first = reg_step(registry, c.RegisterFlow(flow=flow_def(idempotency_key="sha1")))
    repeat = reg_step(registry, c.RegisterFlow(flow=flow_def(idempotency_key="sha1")))
    assert isinstance(repeat, Accepted) and repeat.events == []
    assert repeat.outcome == {"flow_id": first.outcome["flow_id"], "created": False, "version_group_id": first.outcome["version_group_id"]}
    changed = reg_step(registry, c.RegisterFlow(flow=flow_def(idempotency_key="sha2")))
    assert changed.outcome["version"] == 2 and changed.outcome["created"] is True
    back = reg_step(registry, c.RegisterFlow(flow=flow_def(idempotency_key="sha1")))
    assert back.outcome["version"] == 3  # only the last key counts


def test_a_retried_registration_and_unknown_references():
    registry = registry_with_projects("one")
    definition = flow_def()
    assert reg_step(registry, c.RegisterFlow(flow=definition)).outcome["created"] is True
    retried = reg_step(registry, c.RegisterFlow(flow=definition))
    assert retried.events == [] and retried.outcome == {"flow_id": definition.id, "created": False}
    missing = reg_step(registry, c.RegisterFlow(flow=flow_def(project_id="nope")))
    assert isinstance(missing, Rejected) and (missing.rejection.code, missing.rejection.field) == ("NOT_FOUND", "project_id")
    group = next(iter(registry.groups))
    assert reg_step(registry, c.UpdateFlowGroup(flow_group_id=group, changes={"labels": ["x"]})).outcome == {"flow_group_id": group}
    assert reg_step(registry, c.UpdateFlowGroup(flow_group_id="nope", changes={})).rejection.code == "NOT_FOUND"


# -- Ledger ---------------------------------------------------------------------------------------
def counter_ids():
    n = iter(range(1, 10**9))
    return lambda: uuid.UUID(int=next(n))


def test_ledger_envelopes_carry_seq_causation_and_the_outcome_on_the_last_event():
    ledger = Ledger(new_id=counter_ids())
    created = ledger.decide(envelope("run-1", c.CreateFlowRun(spec=spec(tasks=1)), "create"), at(1))
    assert [env.seq for env in created.events] == [1, 2, 3]
    assert {env.causation_id for env in created.events} == {"create"}
    assert {env.flow_run_id for env in created.events} == {"run-1"} and {env.time for env in created.events} == {at(1)}
    assert [env.outcome for env in created.events] == [None, None, created.outcome]
    assert [env.event_id for env in created.events] == [uuid.UUID(int=i) for i in (1, 2, 3)]
    registry = ledger.decide(envelope(REGISTRY_AGGREGATE, c.CreateProject(project_id="p", name="n")), at(2))
    assert registry.events[0].flow_run_id is None and registry.events[0].seq == 1


def test_ledger_answers_a_duplicate_command_id_from_memory_without_deciding():
    ledger = Ledger()
    ledger.decide(envelope("run-1", c.CreateFlowRun(spec=spec(tasks=0))), T0)
    first = ledger.decide(envelope("run-1", set_state("Running", 1), "cmd-1"), T0)
    # the same id with a payload that would now be stale: still the first answer
    again = ledger.decide(envelope("run-1", set_state("Running", 1), "cmd-1"), T0)
    assert again.duplicate and again.events == [] and again.rejection is None and again.outcome == first.outcome
    assert ledger.aggregates["run-1"].version == 2


def test_ledger_replay_rebuilds_state_and_remembers_answers():
    ledger, log = Ledger(), []
    log += ledger.decide(envelope(REGISTRY_AGGREGATE, c.CreateProject(project_id="p1", name="one"), "proj"), T0).events
    log += ledger.decide(envelope(REGISTRY_AGGREGATE, c.RegisterFlow(flow=flow_def()), "reg-1"), T0).events
    log += ledger.decide(envelope(REGISTRY_AGGREGATE, c.RegisterFlow(flow=flow_def()), "reg-2"), T0).events
    conflict = ledger.decide(envelope(REGISTRY_AGGREGATE, c.CreateProject(project_id="p2", name="one"), "proj-2"), T0)
    log += conflict.events
    log += ledger.decide(envelope("run-1", c.CreateFlowRun(spec=spec(tasks=2)), "create"), T0).events
    too_early = ledger.decide(envelope("run-1", set_state("Cancelling"), "too-early"), T0)
    assert too_early.rejection.rule == "cancelling_only_from_running"
    log += too_early.events
    log += ledger.decide(envelope("run-1", set_state("Running"), "run"), at(1)).events
    log += ledger.decide(envelope("run-1", set_task_state("run-1-tr0", "Running"), "task"), at(2)).events
    log += ledger.decide(envelope("run-1", c.RenameFlowRun(name="renamed"), "rename"), at(2)).events
    cancel = ledger.decide(envelope("run-1", c.CancelFlowRun(), "cancel"), at(3))
    log += cancel.events
    rebuilt = Ledger()
    assert all([rebuilt.replay(env) for env in log])
    assert rebuilt.aggregates == ledger.aggregates
    assert rebuilt.aggregates["run-1"].name == "renamed"
    # every verdict is remembered: accepted, refused
    dup = rebuilt.decide(envelope("run-1", c.CancelFlowRun(), "cancel"), at(9))
    assert dup.duplicate and dup.events == [] and dup.outcome == cancel.outcome and dup.outcome["state"] == "Cancelling"
    dup = rebuilt.decide(envelope(REGISTRY_AGGREGATE, c.CreateProject(project_id="p2", name="one"), "proj-2"), at(9))
    assert dup.duplicate and dup.rejection == conflict.rejection and "Uniqueness violation." in dup.rejection.message
    # a refusal stays the refusal it was, though the run has moved on (it was Scheduled then)
    dup = rebuilt.decide(envelope("run-1", set_state("Cancelling"), "too-early"), at(9))
    assert dup.duplicate and dup.events == [] and dup.rejection == too_early.rejection
    # duplicates in the log are skipped by seq, wherever they appear
    assert [rebuilt.replay(env) for env in (log[0], log[4], log[-1])] == [False, False, False]
    assert rebuilt.aggregates == ledger.aggregates
    # and new decisions continue the sequence
    more = rebuilt.decide(envelope("run-1", set_state("Cancelled"), "finish"), at(4))
    assert more.events[0].seq == ledger.aggregates["run-1"].seq + 1


def test_ledger_replay_refuses_a_gap():
    ledger, log = Ledger(), []
    log += ledger.decide(envelope("run-1", c.CreateFlowRun(spec=spec(tasks=1))), T0).events
    rebuilt = Ledger()
    rebuilt.replay(log[0])
    with pytest.raises(ValueError, match="gap in run-1"):
        rebuilt.replay(log[2])


def test_ledger_dedup_window_is_bounded():
    ledger = Ledger(dedup_window=2)
    ledger.decide(envelope("run-1", c.CreateFlowRun(spec=spec(tasks=0)), "c0"), T0)
    for i, name in enumerate("abc", start=1):
        ledger.decide(envelope("run-1", c.RenameFlowRun(name=name), f"c{i}"), T0)
    assert ledger.decide(envelope("run-1", c.RenameFlowRun(name="c"), "c3"), T0).duplicate
    forgotten = ledger.decide(envelope("run-1", c.RenameFlowRun(name="a"), "c1"), T0)
    assert not forgotten.duplicate and [ev.type for ev in forgotten.events] == ["FlowRunRenamed"]
    assert ledger.aggregates["run-1"].name == "a"


@pytest.mark.parametrize(
    "bad, code, rule",
    [
        (set_state("Cancelling"), "TRANSITION_REJECTED", "cancelling_only_from_running"),
        (set_state("Running", 2), "VERSION_MISMATCH", None),  # at version 1 now; at 2 (Running) it would pass
    ],
    ids=["refused-by-a-rule", "stale-version"],
)
def test_ledger_records_a_refusal_of_an_existing_run_without_changing_it(bad, code, rule):
    ledger = Ledger()
    ledger.decide(envelope("run-1", c.CreateFlowRun(spec=spec(tasks=0))), T0)
    run = ledger.aggregates["run-1"]
    before = (run.state, run.version, run.seq)
    answer = ledger.decide(envelope("run-1", bad, "bad"), T0)
    assert (answer.rejection.code, answer.rejection.rule) == (code, rule) and not answer.duplicate
    assert [ev.type for ev in answer.events] == ["VerdictRecorded"]
    assert answer.events[0].payload.rejection == answer.rejection and answer.events[0].outcome is None
    assert (run.state, run.version, run.seq) == (before[0], before[1], before[2] + 1)
    # the same command id later gets the same answer, though it would now be accepted
    ledger.decide(envelope("run-1", set_state("Running")), T0)
    again = ledger.decide(envelope("run-1", bad, "bad"), T0)
    assert again.duplicate and again.rejection == answer.rejection and run.state.type is S.RUNNING


def test_ledger_records_an_accepted_no_op_only_when_it_is_a_verdict_to_remember():
    ledger = Ledger()
    ledger.decide(envelope("run-1", c.CreateFlowRun(spec=spec(tasks=1))), T0)
    repeat = ledger.decide(envelope("run-1", c.CreateFlowRun(spec=spec(tasks=1)), "create-again"), T0)
    assert repeat.events == [] and not repeat.duplicate  # a repeat create: nothing to record
    ledger.decide(envelope("run-1", set_state("Success")), T0)
    seq = ledger.aggregates["run-1"].seq
    noop = ledger.decide(envelope("run-1", c.CancelFlowRun(), "cancel-finished"), T0)
    assert [ev.type for ev in noop.events] == ["VerdictRecorded"] and noop.events[0].seq == seq + 1
    assert noop.events[0].payload.outcome == noop.outcome and noop.events[0].outcome is None
    assert ledger.aggregates["run-1"].version == 2


def test_ledger_leaves_no_trace_of_commands_for_unknown_aggregates():
    ledger = Ledger()
    answer = ledger.decide(envelope("ghost", set_state("Running"), "x"), T0)
    assert answer.rejection.code == "NOT_FOUND" and answer.events == []
    assert ledger.aggregates == {}
    assert not ledger.decide(envelope("ghost", set_state("Running"), "x"), T0).duplicate
