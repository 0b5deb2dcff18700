"""Events: the facts in the log. Only the state-transitions service produces them.

Every event is wrapped in an ``EventEnvelope``; ``seq`` is the aggregate's sequence number
(1, 2, 3, ... per aggregate), which makes duplicates in the log harmless: a reader applies an
event only if its ``seq`` is the next one for that aggregate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Union
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from runledger.domain.states import State
from runledger.messages.commands import Rejection
from runledger.messages.models import EdgeSpec, FlowDefinition, FlowRunSpec, TaskSpec, WireJson

SCHEMA_VERSION = 1


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- flow-run aggregate -------------------------------------------------------------------
class FlowRunCreated(_Event):
    type: Literal["FlowRunCreated"] = "FlowRunCreated"
    spec: FlowRunSpec


class TaskRunCreated(_Event):
    type: Literal["TaskRunCreated"] = "TaskRunCreated"
    task_run_id: str
    task_id: str
    task_slug: str
    task_name: str = ""
    tags: list[str] = Field(default_factory=list)
    map_index: int = -1


class FlowRunStateSet(_Event):
    type: Literal["FlowRunStateSet"] = "FlowRunStateSet"
    state: State
    version: int


class TaskRunStateSet(_Event):
    type: Literal["TaskRunStateSet"] = "TaskRunStateSet"
    task_run_id: str
    state: State
    version: int


class FlowRunRenamed(_Event):
    type: Literal["FlowRunRenamed"] = "FlowRunRenamed"
    name: str


class TaskRunRenamed(_Event):
    type: Literal["TaskRunRenamed"] = "TaskRunRenamed"
    task_run_id: str
    name: str


class FlowRunHeartbeatRecorded(_Event):
    type: Literal["FlowRunHeartbeatRecorded"] = "FlowRunHeartbeatRecorded"


class TaskRunHeartbeatRecorded(_Event):
    type: Literal["TaskRunHeartbeatRecorded"] = "TaskRunHeartbeatRecorded"
    task_run_id: str


# --- Client.register()'s tasks and edges; task-run artifacts (issue 9) -----------------------------
class FlowTasksRegistered(_Event):
    """Registry: tasks added to a flow registered open (only the new ones; never changed after)."""

    type: Literal["FlowTasksRegistered"] = "FlowTasksRegistered"
    flow_id: str
    tasks: list[TaskSpec]


class FlowEdgesRegistered(_Event):
    type: Literal["FlowEdgesRegistered"] = "FlowEdgesRegistered"
    flow_id: str
    edges: list[EdgeSpec]


class TaskRunArtifactCreated(_Event):
    """Flow run: an artifact of one of its task runs (Prefect's ``create_task_run_artifact``)."""

    type: Literal["TaskRunArtifactCreated"] = "TaskRunArtifactCreated"
    artifact_id: str
    task_run_id: str
    kind: str
    data: WireJson = None


class TaskRunArtifactUpdated(_Event):
    type: Literal["TaskRunArtifactUpdated"] = "TaskRunArtifactUpdated"
    artifact_id: str
    task_run_id: str
    data: WireJson = None


class TaskRunArtifactDeleted(_Event):
    type: Literal["TaskRunArtifactDeleted"] = "TaskRunArtifactDeleted"
    artifact_id: str
    task_run_id: str


# --- registry aggregate ----------------------------------------------------------------------
class ProjectCreated(_Event):
    type: Literal["ProjectCreated"] = "ProjectCreated"
    project_id: str
    name: str
    description: str | None = None


class FlowRegistered(_Event):
    type: Literal["FlowRegistered"] = "FlowRegistered"
    flow: FlowDefinition
    archived_flow_ids: list[str] = Field(default_factory=list)
    # Registered without its tasks (``Client.register()``): open to FlowTasksRegistered /
    # FlowEdgesRegistered. And the flow group's schedule switch as of this registration (None:
    # unchanged), in this same event so no reader ever sees the flow with the switch it replaced.
    tasks_follow: bool = False
    schedule_active: bool | None = None


class FlowGroupUpdated(_Event):
    type: Literal["FlowGroupUpdated"] = "FlowGroupUpdated"
    flow_group_id: str
    # Only the fields present in ``changes`` are updated; a null value clears the setting.
    changes: dict[str, Any]


# --- concurrency limits aggregate and agents aggregate ----------------------------------------
class ConcurrencyLimitSet(_Event):
    type: Literal["ConcurrencyLimitSet"] = "ConcurrencyLimitSet"
    limit_id: str
    kind: Literal["label", "tag"]
    name: str
    limit: int


class ConcurrencyLimitDeleted(_Event):
    type: Literal["ConcurrencyLimitDeleted"] = "ConcurrencyLimitDeleted"
    limit_id: str
    kind: Literal["label", "tag"]
    name: str


class AgentRegistered(_Event):
    """A new agent, or a known one registering again with other details (``created`` stays the
    first registration's time)."""

    type: Literal["AgentRegistered"] = "AgentRegistered"
    agent_id: str
    agent_type: str = ""
    name: str | None = None
    labels: list[str] = Field(default_factory=list)
    tenant_id: str | None = None
    agent_config_id: str | None = None
    core_version: str | None = None
    created: datetime


# --- any aggregate --------------------------------------------------------------------------
class VerdictRecorded(_Event):
    """A verdict that changed nothing (a refusal, or a no-op such as cancelling a finished run),
    recorded so it survives a writer restart: a redelivered command must get the answer its
    caller already has, not a new decision on a state that has moved on since."""

    type: Literal["VerdictRecorded"] = "VerdictRecorded"
    command_type: str
    outcome: dict[str, Any] | None = None
    rejection: Rejection | None = None


EventPayload = Annotated[
    Union[
        VerdictRecorded,
        FlowRunCreated,
        TaskRunCreated,
        FlowRunStateSet,
        TaskRunStateSet,
        FlowRunRenamed,
        TaskRunRenamed,
        FlowRunHeartbeatRecorded,
        TaskRunHeartbeatRecorded,
        FlowTasksRegistered,
        FlowEdgesRegistered,
        TaskRunArtifactCreated,
        TaskRunArtifactUpdated,
        TaskRunArtifactDeleted,
        ProjectCreated,
        FlowRegistered,
        FlowGroupUpdated,
        ConcurrencyLimitSet,
        ConcurrencyLimitDeleted,
        AgentRegistered,
    ],
    Field(discriminator="type"),
]


class EventEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: UUID
    type: str
    schema_version: int = SCHEMA_VERSION
    aggregate_id: str
    flow_run_id: str | None
    seq: int = Field(ge=1)
    time: datetime
    correlation_id: str | None = None
    causation_id: str
    # Set on the last event a command produced: the verdict returned to the caller, so that a
    # redelivered command gets the same answer after a writer restart.
    outcome: dict[str, Any] | None = None
    payload: EventPayload
