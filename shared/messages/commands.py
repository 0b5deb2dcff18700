"""Commands: requests to the state-transitions service, keyed by aggregate id."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from runledger.domain.states import State
from runledger.messages.models import EdgeSpec, FlowDefinition, FlowRunSpec, PlannedTaskRun, TaskSpec, WireJson

SCHEMA_VERSION = 1


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CreateProject(_Command):
    type: Literal["CreateProject"] = "CreateProject"
    project_id: str
    name: str
    description: str | None = None


class RegisterFlow(_Command):
    type: Literal["RegisterFlow"] = "RegisterFlow"
    # ``flow.version`` and ``flow.version_group_id`` are proposals; the writer decides them.
    flow: FlowDefinition
    explicit_version_group: bool = False
    # ``Client.register()`` sends the flow without its tasks and adds them with ``RegisterTasks``
    # and ``RegisterEdges``; such a flow is registered open to those additions.
    tasks_follow: bool = False
    # The flow group's schedule switch this registration asks for (Prefect's
    # ``set_schedule_active``); None leaves it as it is.
    schedule_active: bool | None = None


class UpdateFlowGroup(_Command):
    type: Literal["UpdateFlowGroup"] = "UpdateFlowGroup"
    flow_group_id: str
    changes: dict[str, Any]


# --- Client.register()'s tasks and edges; task-run artifacts (issue 9) -----------------------------
class RegisterTasks(_Command):
    """Tasks added to a flow registered open (``register_tasks``); ids derived from the slugs."""

    type: Literal["RegisterTasks"] = "RegisterTasks"
    flow_id: str
    tasks: list[TaskSpec]


class RegisterEdges(_Command):
    """Edges added to a flow registered open (``register_edges``), between its registered tasks."""

    type: Literal["RegisterEdges"] = "RegisterEdges"
    flow_id: str
    edges: list[EdgeSpec]


class CreateTaskRunArtifact(_Command):
    type: Literal["CreateTaskRunArtifact"] = "CreateTaskRunArtifact"
    artifact_id: str
    task_run_id: str
    kind: str
    data: WireJson = None


class UpdateTaskRunArtifact(_Command):
    type: Literal["UpdateTaskRunArtifact"] = "UpdateTaskRunArtifact"
    artifact_id: str
    data: WireJson = None


class DeleteTaskRunArtifact(_Command):
    type: Literal["DeleteTaskRunArtifact"] = "DeleteTaskRunArtifact"
    artifact_id: str


class CreateFlowRun(_Command):
    type: Literal["CreateFlowRun"] = "CreateFlowRun"
    spec: FlowRunSpec


class SetFlowRunState(_Command):
    type: Literal["SetFlowRunState"] = "SetFlowRunState"
    state: State
    version: int | None = None


class SetTaskRunState(_Command):
    type: Literal["SetTaskRunState"] = "SetTaskRunState"
    task_run_id: str
    state: State
    version: int | None = None


class CancelFlowRun(_Command):
    type: Literal["CancelFlowRun"] = "CancelFlowRun"
    message: str | None = None


class RenameFlowRun(_Command):
    type: Literal["RenameFlowRun"] = "RenameFlowRun"
    name: str


class RenameTaskRun(_Command):
    type: Literal["RenameTaskRun"] = "RenameTaskRun"
    task_run_id: str
    name: str


class GetOrCreateTaskRun(_Command):
    type: Literal["GetOrCreateTaskRun"] = "GetOrCreateTaskRun"
    task_run: PlannedTaskRun


class RecordFlowRunHeartbeat(_Command):
    type: Literal["RecordFlowRunHeartbeat"] = "RecordFlowRunHeartbeat"


class RecordTaskRunHeartbeat(_Command):
    type: Literal["RecordTaskRunHeartbeat"] = "RecordTaskRunHeartbeat"
    task_run_id: str


# --- concurrency limits and agents (runledger.domain.limits, runledger.domain.agents) -------------
class SetConcurrencyLimit(_Command):
    """Set the limit of a flow-run label (``kind="label"``) or a task-run tag (``kind="tag"``);
    the limit keeps its id when it is updated."""

    type: Literal["SetConcurrencyLimit"] = "SetConcurrencyLimit"
    kind: Literal["label", "tag"]
    name: str = Field(min_length=1)
    limit: int = Field(ge=0)


class DeleteConcurrencyLimit(_Command):
    type: Literal["DeleteConcurrencyLimit"] = "DeleteConcurrencyLimit"
    limit_id: str


class RegisterAgent(_Command):
    """The writer derives the agent's id (the same type, name, sorted labels and tenant give the
    same id)."""

    type: Literal["RegisterAgent"] = "RegisterAgent"
    agent_type: str = ""
    name: str | None = None
    labels: list[str] = Field(default_factory=list)
    tenant_id: str | None = None
    agent_config_id: str | None = None
    core_version: str | None = None


CommandPayload = Annotated[
    Union[
        CreateProject,
        RegisterFlow,
        UpdateFlowGroup,
        RegisterTasks,
        RegisterEdges,
        CreateTaskRunArtifact,
        UpdateTaskRunArtifact,
        DeleteTaskRunArtifact,
        CreateFlowRun,
        SetFlowRunState,
        SetTaskRunState,
        CancelFlowRun,
        RenameFlowRun,
        RenameTaskRun,
        GetOrCreateTaskRun,
        RecordFlowRunHeartbeat,
        RecordTaskRunHeartbeat,
        SetConcurrencyLimit,
        DeleteConcurrencyLimit,
        RegisterAgent,
    ],
    Field(discriminator="type"),
]


class ReplyTo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    topic: str
    partition: int


def client_command_id(aggregate_id: str, payload: BaseModel, client_id: str) -> str:
    """A client's ``command_id`` as the writer's verdict window keys it. The window answers a
    command id it has seen with its first verdict, so a client id alone would let a reuse for
    another run, or for another command on the same run, get an earlier command's answer and
    change nothing. Scoped to the run and the command itself, only a true repeat (same run,
    same command, same id: a retry) gets the first answer; any other use is a command of its own."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (aggregate_id, payload.model_dump_json(), client_id):
        raw = part.encode("utf-8", "surrogatepass")
        digest.update(b"%d:" % len(raw) + raw)
    return "client-" + digest.hexdigest()


class CommandEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    command_id: str = Field(min_length=1, max_length=200)
    type: str
    schema_version: int = SCHEMA_VERSION
    aggregate_id: str
    issued_at: datetime
    correlation_id: str | None = None
    reply_to: ReplyTo | None = None
    payload: CommandPayload


class Rejection(BaseModel):
    """Why a command was refused. ``rule`` names the transition rule when one applied."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: Literal["VERSION_MISMATCH", "TRANSITION_REJECTED", "NOT_FOUND", "CONFLICT", "INVALID"]
    message: str
    rule: str | None = None
    field: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class Reply(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    command_id: str
    ok: bool
    outcome: dict[str, Any] | None = None
    rejection: Rejection | None = None
    # Where the command's last event landed; readers wait for the projection to pass it.
    partition: int | None = None
    offset: int | None = None
