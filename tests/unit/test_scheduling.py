"""Scheduling, pure: the label rule, agent ids, what a run's events mean for the queue and slots,
the recovery decisions, ``why``, and the writer's rule against a second Submitted."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from runledger.domain.scheduling import (
    GroupSettings,
    RecoveryPolicy,
    RunFacts,
    agent_id_for,
    explain,
    labels_match,
    labelset_id,
    missing_labels,
    recovery_for,
    scheduled_run_id,
)
from runledger.domain.states import State, StateType
from runledger.messages import events as e
from tests.unit.factories import T0, at, envelope, ledger_with_run, set_state, spec

S = StateType


@pytest.mark.parametrize(
    "run, agent, ok",
    [
        ([], [], True),
        ([], ["a"], False),  # an unlabeled run goes only to an unlabeled agent
        (["a"], [], False),
        (["a"], ["a", "b"], True),
        (["a", "b"], ["a"], False),
        (["b", "a"], ["a", "b"], True),
    ],
)
def test_the_label_rule(run, agent, ok):
    assert labels_match(run, agent) is ok


def test_missing_labels_and_stable_ids():
    assert missing_labels(["a", "b", "c"], ["b"]) == ["a", "c"]
    assert agent_id_for("LocalAgent", "x", ["b", "a"]) == agent_id_for("LocalAgent", "x", ["a", "b", "a"])
    assert agent_id_for("LocalAgent", "x", ["a"]) != agent_id_for("DockerAgent", "x", ["a"])
    assert labelset_id(["b", "a"]) == labelset_id(["a", "b"]) != labelset_id(["a"])
    assert scheduled_run_id("f", T0) == scheduled_run_id("f", T0) != scheduled_run_id("f", at(60))


def facts(*payloads, run_id="run-1") -> RunFacts:
    run = RunFacts(run_id)
    for i, payload in enumerate(payloads):
        run.apply(payload, at(i))
    return run


def created(labels=(), tags=((), ())):
    s = spec(tasks=len(tags)).model_copy(update={"labels": list(labels)})
    out = [e.FlowRunCreated(spec=s)]
    for planned, t in zip(s.task_runs, tags):
        out.append(e.TaskRunCreated(**{**planned.model_dump(), "tags": list(t)}))
    return out


def flow_state(t, version, **fields):
    return e.FlowRunStateSet(state=State(type=t, **fields), version=version)


def task_state(i, t, version, **fields):
    return e.TaskRunStateSet(task_run_id=f"run-1-tr{i}", state=State(type=t, **fields), version=version)


def test_due_time_and_slots_follow_the_run():
    run = facts(*created(["x"], tags=(["db"], [])), flow_state(S.SCHEDULED, 1, start_time=at(100)))
    assert run.due_at == at(100) and not run.holds_slot and run.labels == ("x",)
    run.apply(flow_state(S.SUBMITTED, 2), at(5))
    assert run.due_at is None and run.holds_slot
    run.apply(flow_state(S.RUNNING, 3), at(6))
    run.apply(task_state(0, S.RUNNING, 1), at(7))
    assert run.task_slots() == {"run-1-tr0": ("db",)}
    run.apply(task_state(0, S.RETRYING, 2, start_time=at(50)), at(8))
    assert run.task_slots() == {} and run.due_at == at(50)  # a Running run with a due retry is offered
    run.apply(flow_state(S.SUCCESS, 4), at(9))
    assert run.due_at is None and not run.holds_slot


def test_a_finished_flow_run_holds_no_task_slot_whatever_its_task_runs_say():
    run = facts(*created(["x"], tags=(["db"], [])), flow_state(S.RUNNING, 1), task_state(0, S.RUNNING, 1))
    assert run.task_slots() == {"run-1-tr0": ("db",)}
    run.apply(flow_state(S.FAILED, 2, message="marked failed: its agent died"), at(9))  # the task run stays Running
    assert run.task_runs["run-1-tr0"].state is S.RUNNING and run.task_slots() == {}


POLICY = RecoveryPolicy(timedelta(seconds=10), timedelta(seconds=10), timedelta(seconds=10), 3)


def test_lazarus_reschedules_with_the_seen_version_then_fails_after_three():
    run = facts(*created(), flow_state(S.SCHEDULED, 1), flow_state(S.SUBMITTED, 2))
    assert recovery_for(run, None, at(5), POLICY, GroupSettings()) == []
    (decision,) = recovery_for(run, None, at(30), POLICY, GroupSettings())
    assert decision.kind == "lazarus" and decision.command.version == 2
    assert decision.command.state.type is S.SCHEDULED and "attempt 1" in decision.command.state.message
    assert recovery_for(run, at(25), at(30), POLICY, GroupSettings()) == []  # a fresh heartbeat
    assert recovery_for(run, None, at(30), POLICY, GroupSettings(lazarus_enabled=False)) == []
    for i in range(3):
        run.apply(flow_state(S.SCHEDULED, run.version + 1, message=f"Rescheduled by a Lazarus process. This is attempt {i+1}."), at(10))
        run.apply(flow_state(S.SUBMITTED, run.version + 1), at(10))
    (final,) = recovery_for(run, None, at(60), POLICY, GroupSettings())
    assert final.kind == "lazarus_failed" and final.command.state.type is S.FAILED


def test_zombie_killer_retries_with_retries_left_else_fails_and_cancelling_ends():
    run = facts(*created(tags=([], [])), flow_state(S.SCHEDULED, 1), flow_state(S.RUNNING, 2),
                task_state(0, S.RUNNING, 1), task_state(1, S.RUNNING, 1))
    decisions = recovery_for(run, None, at(60), POLICY, GroupSettings(), {"t0": 1, "t1": 0}, {"t0": 5})
    kinds = {d.command.task_run_id: (d.kind, d.command.state.type, d.command.version) for d in decisions}
    assert kinds == {"run-1-tr0": ("zombie_retry", S.RETRYING, 1), "run-1-tr1": ("zombie_failed", S.FAILED, 1)}
    assert recovery_for(run, None, at(60), POLICY, GroupSettings(heartbeat_enabled=False), {"t0": 1}) == []
    cancelling = facts(*created(), flow_state(S.SCHEDULED, 1), flow_state(S.RUNNING, 2), flow_state(S.CANCELLING, 3))
    (d,) = recovery_for(cancelling, None, at(60), POLICY, GroupSettings())
    assert d.kind == "cancelling" and d.command.state.type is S.CANCELLED and d.command.version == 3


def test_why_answers():
    run = {"id": "r", "state": {"type": "Scheduled", "start_time": T0.isoformat()}, "labels": ["gpu"]}
    now = at(60)
    none = explain(run, [], {}, {}, now, timedelta(seconds=30))
    assert [r["code"] for r in none["reasons"]] == ["no_matching_agent"] and none["stuck"]
    stale = explain(run, [{"id": "a", "labels": ["gpu"], "last_queried": at(0)}], {}, {}, now, timedelta(seconds=30))
    assert [r["code"] for r in stale["reasons"]] == ["no_healthy_agent"]
    limited = explain(run, [{"id": "a", "labels": ["gpu"], "last_queried": at(59)}], {"gpu": 2}, {"gpu": 2}, now, timedelta(seconds=30))
    assert [(r["code"], r.get("used"), r.get("limit")) for r in limited["reasons"]] == [("concurrency_limit", 2, 2)]
    early = explain(run, [{"id": "a", "labels": ["gpu"], "last_queried": at(0)}], {}, {}, at(-10), timedelta(seconds=30))
    assert early["reasons"][0]["code"] == "not_due" and not early["stuck"]
    running = explain({**run, "state": {"type": "Running"}}, [], {}, {}, now, timedelta(seconds=30))
    assert running["reasons"][0]["code"] == "not_waiting"


def test_the_writer_refuses_a_second_submitted_whatever_the_version():
    ledger = ledger_with_run()
    assert ledger.decide(envelope("run-1", set_state("Submitted", 1)), T0).rejection is None
    answer = ledger.decide(envelope("run-1", set_state("Submitted", 2)), T0)
    assert answer.rejection.rule == "runs_are_submitted_once" and answer.rejection.message.startswith("State update failed")
    assert ledger.decide(envelope("run-1", set_state("Submitted")), T0).rejection.rule == "runs_are_submitted_once"
    assert ledger.decide(envelope("run-1", set_state("Running", 2)), T0).rejection is None


def test_a_run_is_made_for_the_epoch_its_id_was_derived_with():
    from runledger.domain.scheduling import RunFacts, made_for_epoch, scheduled_idempotency_key, scheduled_run_id
    from runledger.messages import events as e
    from tests.unit.factories import spec

    start = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)

    def created(run_id: str, key: str | None) -> RunFacts:
        run = RunFacts(run_id)
        base = spec(run_id, 0)
        run.apply(e.FlowRunCreated(spec=base.model_copy(update={"idempotency_key": key, "scheduled_start_time": start})), start)
        return run

    flow_id = spec("x", 0).flow_id
    second_epoch = created(scheduled_run_id(flow_id, start, 1, epoch=2), scheduled_idempotency_key(flow_id, start, 1))
    assert second_epoch.schedule_clock == 1
    assert made_for_epoch(second_epoch, 2) and not made_for_epoch(second_epoch, 1)
    assert not made_for_epoch(created("by-hand", "my-key"), 0)
    assert not made_for_epoch(created("by-hand", None), 0)
