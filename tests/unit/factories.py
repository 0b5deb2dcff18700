"""Builders for pure-domain tests."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from runledger.domain.ledger import Ledger
from runledger.domain.states import State
from runledger.messages import commands as c
from runledger.messages.commands import CommandEnvelope
from runledger.messages.models import FlowRunSpec, PlannedTaskRun

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def spec(run_id: str = "run-1", tasks: int = 2) -> FlowRunSpec:
    return FlowRunSpec(
        flow_run_id=run_id,
        flow_id="flow-1",
        flow_name="hello",
        flow_version=1,
        version_group_id="group-1",
        project_id="project-1",
        name="electric-mandrill",
        scheduled_start_time=T0,
        task_runs=[PlannedTaskRun(task_run_id=f"{run_id}-tr{i}", task_id=f"t{i}", task_slug=f"t{i}-1") for i in range(tasks)],
    )


def envelope(aggregate_id: str, payload, command_id: str | None = None) -> CommandEnvelope:
    return CommandEnvelope(
        command_id=command_id or uuid.uuid4().hex, type=payload.type, aggregate_id=aggregate_id, issued_at=T0, payload=payload
    )


def set_state(state: str, version: int | None = None, **fields) -> c.SetFlowRunState:
    return c.SetFlowRunState(state=State(type=state, **fields), version=version)


def set_task_state(task_run_id: str, state: str, version: int | None = None) -> c.SetTaskRunState:
    return c.SetTaskRunState(task_run_id=task_run_id, state=State(type=state), version=version)


def ledger_with_run(run_id: str = "run-1", tasks: int = 2) -> Ledger:
    ledger = Ledger(new_id=lambda: uuid.uuid4())
    answer = ledger.decide(envelope(run_id, c.CreateFlowRun(spec=spec(run_id, tasks))), T0)
    assert answer.rejection is None
    return ledger
