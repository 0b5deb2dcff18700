"""Request bodies of the public API (REST, GraphQL and the Python client share them)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from runledger.domain.states import MAX_STATE_MESSAGE, State, StateType
from runledger.domain.times import as_utc
from runledger.messages.models import EdgeSpec, JsonInt, JsonObject, ParameterSpec, TaskSpec, json_integer

MAX_KEY_LENGTH = 500  # of any idempotency key: a flow run's, a flow registration's, a log batch's

Name = Field(min_length=1, max_length=200)


MAX_LABELS = 100  # labels of one run, flow, flow group or run config
MAX_LABEL_LENGTH = 200
Labels = Annotated[list[Annotated[str, Field(max_length=MAX_LABEL_LENGTH)]], Field(max_length=MAX_LABELS)]


def _run_config(value: dict[str, Any]) -> dict[str, Any]:
    """A run config's ``labels`` (runs take them when they name none) are labels like any others."""
    labels = value.get("labels")
    if labels is not None:
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise ValueError("labels: expected a list of strings")
        if len(labels) > MAX_LABELS or any(len(label) > MAX_LABEL_LENGTH for label in labels):
            raise ValueError(f"labels: at most {MAX_LABELS} labels of at most {MAX_LABEL_LENGTH} characters")
    return value


RunConfig = Annotated[JsonObject, AfterValidator(_run_config)]


def _iso_only(value: Any) -> Any:
    """Times are ISO 8601 strings (or datetimes from Python callers): a number, or a string of one,
    is not taken for a Unix timestamp as pydantic's lax mode would."""
    if isinstance(value, (bool, int, float)):
        raise ValueError("expected an ISO 8601 date-time string")
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("expected an ISO 8601 date-time string")
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_only)]


def _one_of(*names: str) -> list[dict[str, Any]]:
    """JSON Schema branches "this field is given (a non-empty string)", one per name."""
    return [{"required": [n], "properties": {n: {"type": "string", "minLength": 1}}} for n in names]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateProjectRequest(_Request):
    name: str = Name
    description: str | None = Field(None, max_length=10_000)


class RegisterFlowRequest(_Request):
    """``project_id`` or ``project_name`` names the project (at least one, non-empty). Parameter
    names, task ids and task slugs are unique; edges join tasks of this request."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": _one_of("project_id", "project_name")})

    name: str = Name
    project_id: str | None = None
    project_name: str | None = None
    description: str | None = Field(None, max_length=10_000)
    parameters: list[ParameterSpec] = Field(default_factory=list)
    labels: Labels = Field(default_factory=list)
    run_config: RunConfig | None = None
    storage: JsonObject | None = None
    schedule: JsonObject | None = None
    core_version: str | None = Field(None, max_length=100)
    tasks: list[TaskSpec] = Field(default_factory=list)
    edges: list[EdgeSpec] = Field(default_factory=list)
    version_group_id: str | None = Field(None, max_length=200)
    idempotency_key: str | None = Field(None, max_length=MAX_KEY_LENGTH)

    @model_validator(mode="after")
    def _check(self) -> "RegisterFlowRequest":
        if not (self.project_id or self.project_name):
            raise ValueError("give project_id or project_name")
        names = [p.name for p in self.parameters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"parameters: duplicate names {dupes}")
        ids = [t.id for t in self.tasks]
        if len(set(ids)) != len(ids):
            raise ValueError("tasks: duplicate task ids")
        slugs = [t.slug for t in self.tasks]
        if len(set(slugs)) != len(slugs):
            raise ValueError("tasks: duplicate task slugs")
        known = set(ids)
        for edge in self.edges:
            for end in (edge.upstream_task_id, edge.downstream_task_id):
                if end not in known:
                    raise ValueError(f"edges: unknown task id {end!r}")
        return self


class UpdateFlowGroupRequest(_Request):
    labels: Labels | None = None
    run_config: RunConfig | None = None
    default_parameters: JsonObject | None = None


class CreateFlowRunRequest(_Request):
    """Exactly one of ``flow_id``, ``version_group_id`` or ``flow_name`` (non-empty) names the flow;
    ``project_name`` narrows ``flow_name``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": _one_of("flow_id", "version_group_id", "flow_name")})

    flow_id: str | None = None
    version_group_id: str | None = None
    flow_name: str | None = None
    project_name: str | None = None
    parameters: JsonObject | None = None
    context: JsonObject | None = None
    labels: Labels | None = None
    run_config: RunConfig | None = None
    flow_run_name: str | None = Field(None, min_length=1, max_length=200)
    scheduled_start_time: IsoDateTime | None = None
    idempotency_key: str | None = Field(None, min_length=1, max_length=MAX_KEY_LENGTH)

    @field_validator("scheduled_start_time")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return as_utc(v)

    @model_validator(mode="after")
    def _one_flow_reference(self) -> "CreateFlowRunRequest":
        given = [n for n in ("flow_id", "version_group_id", "flow_name") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of flow_id, version_group_id or flow_name" + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class StateInput(_Request):
    type: StateType
    message: str | None = Field(None, max_length=MAX_STATE_MESSAGE)
    start_time: IsoDateTime | None = None
    result_location: str | None = Field(None, max_length=4096)
    serialized: JsonObject | None = None

    @field_validator("start_time")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return as_utc(v)

    def to_state(self) -> State:
        return State(**self.model_dump())


class SetStateRequest(_Request):
    state: StateInput
    version: Annotated[int, Field(ge=0), BeforeValidator(json_integer)] | None = None
    command_id: str | None = Field(None, min_length=1, max_length=200)


class FlowRunStateItem(SetStateRequest):
    flow_run_id: str


class SetFlowRunStatesRequest(_Request):
    states: list[FlowRunStateItem] = Field(min_length=1, max_length=1000)


class TaskRunStateItem(SetStateRequest):
    task_run_id: str


class SetTaskRunStatesRequest(_Request):
    states: list[TaskRunStateItem] = Field(min_length=1, max_length=1000)


class RenameRequest(_Request):
    name: str = Name


class CancelRequest(_Request):
    message: str | None = Field(None, max_length=10_000)


class GetOrCreateTaskRunRequest(_Request):
    flow_run_id: str
    task_id: str
    map_index: JsonInt = Field(-1, ge=-1)


# -- the flow-run list (GET /api/v1/flow_runs) --------------------------------------------------
class FlowRunListQuery(BaseModel):
    """Filters of ``GET /api/v1/flow_runs`` (all optional, combined with AND)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: list[StateType] = Field(default_factory=list, description="Current state is one of these.")
    flow_id: str | None = None
    label: list[str] = Field(default_factory=list, description="Carries every one of these labels.")
    scheduled_after: IsoDateTime | None = Field(None, description="scheduled_start_time >= this (inclusive).")
    scheduled_before: IsoDateTime | None = Field(None, description="scheduled_start_time < this (exclusive).")
    order: str = Field("desc", pattern="^(asc|desc)$", description="By scheduled_start_time.")
    limit: int = Field(100, ge=1, le=1000)
    cursor: str | None = None

    @field_validator("scheduled_after", "scheduled_before")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return as_utc(value) if value is not None else None

    def where(self) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        if self.state:
            parts.append({"state": {"_in": [s.value for s in self.state]}})
        if self.flow_id is not None:
            parts.append({"flow_id": {"_eq": self.flow_id}})
        if self.label:
            parts.append({"labels": {"_contains": sorted(set(self.label))}})
        window: dict[str, str] = {}
        if self.scheduled_after is not None:
            window["_gte"] = self.scheduled_after.isoformat()
        if self.scheduled_before is not None:
            window["_lt"] = self.scheduled_before.isoformat()
        if window:
            parts.append({"scheduled_start_time": window})
        return {"_and": parts}


class FlowRunPage(BaseModel):
    """One page of runs, in scheduled_start_time order (ties by id). ``next_cursor`` is null on
    the last page; a page may hold fewer than ``limit`` runs and still have a next one (the
    read examined its bound of runs without filling the page: keep following the cursor)."""

    flow_runs: list[dict[str, Any]]
    next_cursor: str | None
    limit: int
    examined: int = Field(description="Runs the read looked at for this page.")
