"""Value objects carried inside commands and events (flow definitions, run specs)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import orjson
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SerializerFunctionWrapHandler, StrictBool, StrictFloat, model_serializer
from typing_extensions import Annotated


def _encodable(value: Any) -> Any:
    """Free-form JSON must survive our wire format (orjson): no integers beyond 64 bits, no lone
    surrogates, no NaN or Infinity (a lenient JSON parser takes them; orjson would store null,
    and a keyed retry of the same request would then differ from what was stored). Refused
    here, a bad value is a 422 naming its field rather than a 500 or a silent change later."""
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"cannot be stored as JSON: {exc}") from None
    if not _finite(value):
        raise ValueError("cannot be stored as JSON: NaN and Infinity are not JSON numbers")
    return value


def _finite(value: Any) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if type(item) is float:
            if not math.isfinite(item):
                return False
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return True


def json_integer(value: Any) -> Any:
    """A JSON integer: ``3`` or ``3.0`` (JSON Schema's integer), never ``true`` or ``"3"``."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError("expected an integer")
    return value


JsonInt = Annotated[int, BeforeValidator(json_integer)]  # in a union, put Field constraints before the validator
WireJson = Annotated[Any, AfterValidator(_encodable)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_encodable)]


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParameterSpec(Frozen):
    name: str = Field(min_length=1, max_length=200)
    default: WireJson = None
    required: StrictBool = False


class TaskSpec(Frozen):
    id: str = Field(min_length=1, max_length=100)
    slug: str = Field(min_length=1, max_length=500)
    name: str = Field("", max_length=500)
    tags: list[str] = Field(default_factory=list)
    max_retries: JsonInt = Field(0, ge=0)
    retry_delay_seconds: StrictFloat | None = Field(None, ge=0)
    mapped: StrictBool = False
    trigger: str | None = None
    type: str | None = None


class EdgeSpec(Frozen):
    upstream_task_id: str
    downstream_task_id: str
    key: str | None = None
    mapped: StrictBool = False


_OPTIONAL_ADDITIONS = ("serialized_flow", "environment")


class FlowDefinition(Frozen):
    """A registered flow version, as recorded in ``FlowRegistered``."""

    id: str
    name: str
    project_id: str
    version: int
    version_group_id: str
    description: str | None = None
    parameters: list[ParameterSpec] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    run_config: dict[str, Any] | None = None
    storage: dict[str, Any] | None = None
    schedule: dict[str, Any] | None = None
    core_version: str | None = None
    tasks: list[TaskSpec] = Field(default_factory=list)
    edges: list[EdgeSpec] = Field(default_factory=list)
    idempotency_key: str | None = None
    # Added for the Prefect 1.x client (FlowView, the agent): what it registered, kept whole. Left
    # out of the serialized form while unset, so flows recorded before these fields existed still
    # project to the same documents.
    serialized_flow: JsonObject | None = None
    environment: JsonObject | None = None

    @model_serializer(mode="wrap")
    def _without_unset_additions(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name in _OPTIONAL_ADDITIONS:
            if data.get(name, ...) is None:
                del data[name]
        return data

    @property
    def flow_group_id(self) -> str:
        # As in Prefect Server, a version group and its flow group are the same thing.
        return self.version_group_id


class PlannedTaskRun(Frozen):
    task_run_id: str
    task_id: str
    task_slug: str
    task_name: str = ""
    tags: list[str] = Field(default_factory=list)
    map_index: int = -1


class FlowRunSpec(Frozen):
    """Everything a new flow run is created with, already resolved and validated."""

    flow_run_id: str
    flow_id: str
    flow_name: str
    flow_version: int
    version_group_id: str
    project_id: str
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=list)
    run_config: dict[str, Any] | None = None
    scheduled_start_time: datetime
    idempotency_key: str | None = None
    task_runs: list[PlannedTaskRun] = Field(default_factory=list)
