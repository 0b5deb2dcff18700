"""Turning a create-flow-run request into a fully resolved ``FlowRunSpec``.

Parameter merge and label precedence follow Prefect Server: flow defaults < flow-group
defaults < the request; labels from the first source that is set among the request, the
request's run config, the flow group, the flow group's run config, the flow's run config and
the flow's own labels.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from runledger.api_models import CreateFlowRunRequest
from runledger.domain.names import two_word_name
from runledger.messages.models import FlowDefinition, FlowRunSpec, PlannedTaskRun

TASK_RUN_NAMESPACE = uuid.UUID("5b1f2c1e-8d0c-4a5e-9a59-7c1e3c2f0a11")


@dataclass(frozen=True)
class FieldError:
    loc: tuple[str | int, ...]
    msg: str
    type: str = "value_error"

    def as_dict(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}


@dataclass
class RequestError(Exception):
    """A request that cannot be carried out; ``status`` is the HTTP status to answer with."""

    status: int
    errors: list[FieldError] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in self.errors)


def task_run_id_for(flow_run_id: str, task_id: str, map_index: int) -> str:
    """Deterministic, so a concurrent get-or-create of the same (run, task, index) agrees on the id."""
    return str(uuid.uuid5(TASK_RUN_NAMESPACE, f"{flow_run_id}/{task_id}/{map_index}"))


def choose_flow_by_name(
    candidates: list[dict[str, Any]], flow_name: str, project_name: str | None, project_names: dict[str, str]
) -> dict[str, Any]:
    """Pick the unarchived flow called ``flow_name`` (in ``project_name`` when given)."""
    live = [f for f in candidates if not f.get("archived")]
    if project_name is not None:
        live = [f for f in live if project_names.get(f["project_id"]) == project_name]
    if not live:
        where = f" in project {project_name!r}" if project_name else ""
        raise RequestError(404, [FieldError(("body", "flow_name"), f"no active flow named {flow_name!r}{where}", "not_found")])
    if len(live) > 1:
        projects = sorted(project_names.get(f["project_id"], f["project_id"]) for f in live)
        raise RequestError(
            422,
            [
                FieldError(
                    ("body", "project_name"),
                    f"flow name {flow_name!r} is ambiguous: it exists in projects {projects}; give project_name",
                    "ambiguous",
                )
            ],
        )
    return live[0]


def merge_parameters(flow: FlowDefinition, group_defaults: dict[str, Any] | None, given: dict[str, Any] | None) -> dict[str, Any]:
    declared = {p.name: p for p in flow.parameters}
    errors = [
        FieldError(("body", "parameters", name), f"unknown parameter; flow {flow.name!r} declares {sorted(declared) or 'none'}", "unknown_parameter")
        for name in (given or {})
        if name not in declared
    ]
    merged = {p.name: p.default for p in flow.parameters if not p.required or p.default is not None}
    merged.update({k: v for k, v in (group_defaults or {}).items() if k in declared})
    merged.update(given or {})
    errors += [
        FieldError(("body", "parameters", p.name), "required parameter is missing", "missing_parameter")
        for p in flow.parameters
        if p.required and p.name not in merged
    ]
    if errors:
        raise RequestError(422, errors)
    return merged


def resolve_labels(request: CreateFlowRunRequest, flow: FlowDefinition, group: dict[str, Any] | None) -> list[str]:
    group = group or {}
    sources = (
        request.labels,
        (request.run_config or {}).get("labels"),
        group.get("labels"),
        (group.get("run_config") or {}).get("labels"),
        (flow.run_config or {}).get("labels"),
        flow.labels,
    )
    for labels in sources:
        if labels is not None:
            return sorted(set(map(str, labels)))
    return []


def resolve_flow_run(
    flow: FlowDefinition,
    archived: bool,
    group: dict[str, Any] | None,
    request: CreateFlowRunRequest,
    flow_run_id: str,
    now: datetime,
) -> FlowRunSpec:
    if archived:
        raise RequestError(
            422, [FieldError(("body", "flow_id"), f"flow {flow.id} is archived; run its newest version instead", "archived")]
        )
    parameters = merge_parameters(flow, (group or {}).get("default_parameters"), request.parameters)
    run_config = request.run_config or (group or {}).get("run_config") or flow.run_config
    return FlowRunSpec(
        flow_run_id=flow_run_id,
        flow_id=flow.id,
        flow_name=flow.name,
        flow_version=flow.version,
        version_group_id=flow.version_group_id,
        project_id=flow.project_id,
        name=request.flow_run_name or two_word_name(flow_run_id),
        parameters=parameters,
        context=request.context or {},
        labels=resolve_labels(request, flow, group),
        run_config=run_config,
        scheduled_start_time=request.scheduled_start_time or now,
        idempotency_key=request.idempotency_key,
        task_runs=[
            PlannedTaskRun(
                task_run_id=task_run_id_for(flow_run_id, t.id, -1),
                task_id=t.id,
                task_slug=t.slug,
                task_name=t.name,
                tags=t.tags,
            )
            for t in flow.tasks
        ],
    )
