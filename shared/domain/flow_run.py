"""The flow-run aggregate: its state rebuilt from events, and its command handlers.

A flow run owns its task runs; both carry a state version with the same optimistic check.
``handle`` is pure: the current aggregate, a command and the time in; a decision out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from runledger.domain.decisions import Accepted, Decision, Rejected, not_found
from runledger.domain.rules import Transition, check_transition
from runledger.domain.states import State, StateType, is_finished, is_running
from runledger.domain.versioning import check_version
from runledger.messages import commands as c
from runledger.messages import events as e
from runledger.messages.models import FlowRunSpec, PlannedTaskRun

S = StateType


@dataclass
class TaskRunRecord:
    id: str
    task_id: str
    map_index: int
    state: State
    version: int = 0
    name: str = ""


@dataclass
class FlowRun:
    id: str
    seq: int = 0
    spec: FlowRunSpec | None = None
    state: State | None = None
    version: int = 0
    name: str = ""
    task_runs: dict[str, TaskRunRecord] = field(default_factory=dict)
    task_run_by_key: dict[tuple[str, int], str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # live artifact id -> its task run id

    @property
    def exists(self) -> bool:
        return self.spec is not None

    # -- evolve -------------------------------------------------------------------------------
    def apply(self, event: object) -> None:
        match event:
            case e.FlowRunCreated(spec=spec):
                self.spec, self.name = spec, spec.name
            case e.TaskRunCreated():
                self.task_runs[event.task_run_id] = TaskRunRecord(
                    id=event.task_run_id,
                    task_id=event.task_id,
                    map_index=event.map_index,
                    state=State(type=S.PENDING),
                    name=event.task_name,
                )
                self.task_run_by_key[(event.task_id, event.map_index)] = event.task_run_id
            case e.FlowRunStateSet(state=state, version=version):
                self.state, self.version = state, version
            case e.TaskRunStateSet(task_run_id=tr_id, state=state, version=version):
                record = self.task_runs[tr_id]
                record.state, record.version = state, version
            case e.FlowRunRenamed(name=name):
                self.name = name
            case e.TaskRunRenamed(task_run_id=tr_id, name=name):
                self.task_runs[tr_id].name = name
            case e.TaskRunArtifactCreated(artifact_id=aid, task_run_id=tr_id):
                self.artifacts[aid] = tr_id
            case e.TaskRunArtifactDeleted(artifact_id=aid):
                self.artifacts.pop(aid, None)
            case e.FlowRunHeartbeatRecorded() | e.TaskRunHeartbeatRecorded() | e.VerdictRecorded() | e.TaskRunArtifactUpdated():
                pass
            case _:
                raise TypeError(f"not a flow-run event: {event!r}")

    # -- decide -------------------------------------------------------------------------------
    def handle(self, command: object, now: datetime) -> Decision:
        if isinstance(command, c.CreateFlowRun):
            return self._create(command, now)
        if not self.exists:
            return not_found("flow run", self.id, "flow_run_id")
        match command:
            case c.SetFlowRunState():
                return self._set_state(command.state, command.version, now)
            case c.SetTaskRunState():
                return self._set_task_run_state(command, now)
            case c.CancelFlowRun():
                return self._cancel(command.message, now)
            case c.RenameFlowRun(name=name):
                return Accepted([e.FlowRunRenamed(name=name)], {"flow_run_id": self.id, "name": name})
            case c.RenameTaskRun(task_run_id=tr_id, name=name):
                if tr_id not in self.task_runs:
                    return not_found("task run", tr_id, "task_run_id")
                return Accepted([e.TaskRunRenamed(task_run_id=tr_id, name=name)], {"task_run_id": tr_id, "name": name})
            case c.GetOrCreateTaskRun(task_run=planned):
                return self._get_or_create_task_run(planned)
            case c.RecordFlowRunHeartbeat():
                return Accepted([e.FlowRunHeartbeatRecorded()], {"flow_run_id": self.id})
            case c.RecordTaskRunHeartbeat(task_run_id=tr_id):
                if tr_id not in self.task_runs:
                    return not_found("task run", tr_id, "task_run_id")
                return Accepted([e.TaskRunHeartbeatRecorded(task_run_id=tr_id)], {"task_run_id": tr_id})
            case c.CreateTaskRunArtifact() | c.UpdateTaskRunArtifact() | c.DeleteTaskRunArtifact():
                return self._artifact(command)
        raise TypeError(f"not a flow-run command: {command!r}")

    def summary(self) -> dict:
        assert self.state is not None
        return {"flow_run_id": self.id, "version": self.version, "state": self.state.type.value}

    def _create(self, command: c.CreateFlowRun, now: datetime) -> Decision:
        if self.exists:  # a repeat (idempotency completion, redelivery): same run, nothing new
            return Accepted([], {**self.summary(), "created": False})
        spec = command.spec
        events: list[object] = [e.FlowRunCreated(spec=spec)]
        events += [_task_run_created(planned) for planned in spec.task_runs]
        scheduled = State(
            type=S.SCHEDULED, message="Flow run scheduled.", timestamp=now, start_time=spec.scheduled_start_time
        )
        events.append(e.FlowRunStateSet(state=scheduled, version=1))
        return Accepted(events, {"flow_run_id": self.id, "version": 1, "state": "Scheduled", "created": True})

    def _set_state(self, proposed: State, version: int | None, now: datetime) -> Decision:
        assert self.state is not None
        rejection = check_version(version, self.version, self.state.type, f"flow run {self.id}") or check_transition(
            Transition("flow run", self.state.type, proposed.type, self.state.type)
        )
        if rejection:
            return Rejected(rejection)
        new_version = self.version + 1
        events: list[object] = [e.FlowRunStateSet(state=_stamped(proposed, now), version=new_version)]
        if proposed.type in (S.CANCELLED, S.CANCELLING):
            events += self._task_runs_follow(proposed.type, now)
        return Accepted(events, {"flow_run_id": self.id, "version": new_version, "state": proposed.type.value})

    def _set_task_run_state(self, command: c.SetTaskRunState, now: datetime) -> Decision:
        assert self.state is not None
        record = self.task_runs.get(command.task_run_id)
        if record is None:
            return not_found("task run", command.task_run_id, "task_run_id")
        rejection = check_version(
            command.version, record.version, record.state.type, f"task run {record.id}"
        ) or check_transition(Transition("task run", record.state.type, command.state.type, self.state.type))
        if rejection:
            return Rejected(rejection)
        new_version = record.version + 1
        event = e.TaskRunStateSet(task_run_id=record.id, state=_stamped(command.state, now), version=new_version)
        return Accepted(
            [event],
            {"task_run_id": record.id, "flow_run_id": self.id, "version": new_version, "state": command.state.type.value},
        )

    def _cancel(self, message: str | None, now: datetime) -> Decision:
        assert self.state is not None
        if is_finished(self.state.type):  # as in Prefect: cancelling a finished run does nothing
            return Accepted([], self.summary(), record_verdict=True)
        target = S.CANCELLING if self.state.type is S.RUNNING else S.CANCELLED
        return self._set_state(State(type=target, message=message or "Flow run cancelled by request."), None, now)

    def _task_runs_follow(self, flow_target: StateType, now: datetime) -> list[object]:
        """Unfinished task runs follow a cancelled flow run (Running ones into Cancelling first)."""
        followers = []
        for record in self.task_runs.values():
            if is_finished(record.state.type):
                continue
            target = S.CANCELLING if flow_target is S.CANCELLING and is_running(record.state.type) else S.CANCELLED
            if record.state.type is target:  # already Cancelling: it stays so
                continue
            state = State(type=target, message=f"Flow run {flow_target.value.lower()}.", timestamp=now)
            followers.append(e.TaskRunStateSet(task_run_id=record.id, state=state, version=record.version + 1))
        return followers

    def _get_or_create_task_run(self, planned) -> Decision:
        existing = self.task_run_by_key.get((planned.task_id, planned.map_index))
        if existing is not None:
            record = self.task_runs[existing]
            return Accepted(
                [], {"task_run_id": existing, "version": record.version, "state": record.state.type.value, "created": False}
            )
        return Accepted([_task_run_created(planned)], {"task_run_id": planned.task_run_id, "version": 0, "state": "Pending", "created": True})

    def _artifact(self, command) -> Decision:
        """Artifacts are facts about a task run, kept in its flow run's log: created once (a repeat
        of the same id is a no-op), updated (data replaced) or deleted while they exist."""
        aid = command.artifact_id
        if isinstance(command, c.CreateTaskRunArtifact):
            if command.task_run_id not in self.task_runs:
                return not_found("task run", command.task_run_id, "task_run_id")
            outcome = {"artifact_id": aid, "task_run_id": command.task_run_id, "flow_run_id": self.id}
            if aid in self.artifacts:
                return Accepted([], {**outcome, "created": False})
            event = e.TaskRunArtifactCreated(artifact_id=aid, task_run_id=command.task_run_id, kind=command.kind, data=command.data)
            return Accepted([event], {**outcome, "created": True})
        task_run_id = self.artifacts.get(aid)
        if task_run_id is None:
            return not_found("task run artifact", aid, "task_run_artifact_id")
        outcome = {"artifact_id": aid, "task_run_id": task_run_id, "flow_run_id": self.id}
        if isinstance(command, c.UpdateTaskRunArtifact):
            return Accepted([e.TaskRunArtifactUpdated(artifact_id=aid, task_run_id=task_run_id, data=command.data)], outcome)
        return Accepted([e.TaskRunArtifactDeleted(artifact_id=aid, task_run_id=task_run_id)], outcome)


def _task_run_created(planned: PlannedTaskRun) -> e.TaskRunCreated:
    return e.TaskRunCreated(**planned.model_dump())


def _stamped(state: State, now: datetime) -> State:
    return state.model_copy(update={"timestamp": now})
