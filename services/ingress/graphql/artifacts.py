"""Task-run artifacts: ``create_task_run_artifact`` / ``update_task_run_artifact`` /
``delete_task_run_artifact`` (Prefect 1.x's ``prefect.backend.artifacts``; ``StartFlowRun`` links
the child run with one), ``task_run { artifacts }`` and the ``task_run_artifact`` read.

An artifact is part of its task run's flow run's event log: each mutation is a command to that
flow run's aggregate (the writer decides: the task run must exist, an update or delete needs a
live artifact), and the projector keeps a document per artifact in the run's partition. Shapes as
Prefect Server's (``create`` answers ``{id}``, the others ``{success}``); an unknown artifact or
task run is a NOT_FOUND error naming the field rather than ``success: false``.
"""

from __future__ import annotations

import uuid

from ariadne import MutationType, ObjectType, QueryType

from runledger.domain.registry import DEFAULT_TENANT
from runledger.domain.run_requests import FieldError, RequestError
from runledger.messages import commands as c
from runledger.services.ingress.application import _ok, public
from runledger.services.ingress.graphql.coercion import json_object, json_size
from runledger.services.ingress.graphql.errors import error, translate_errors
from runledger.services.ingress.graphql.views import anchor, app_of, page, task_run_view

query, mutation = QueryType(), MutationType()
artifact_type, task_run_type = ObjectType("task_run_artifact"), ObjectType("task_run")

MAX_DATA_BYTES = 1_000_000  # Prefect Server's limit on an artifact's data


def _view(doc: dict) -> dict:
    return {**public(doc), "tenant_id": DEFAULT_TENANT["id"]}


def _data(value) -> object:
    size = json_size(value, "data")
    if size > MAX_DATA_BYTES:
        raise error(f"data: {size} bytes of JSON is over the limit of {MAX_DATA_BYTES}", "BAD_USER_INPUT", field="data")
    return value


async def _live(app, artifact_id: str) -> dict:
    found = [d for d in await app.read.task_run_artifacts([artifact_id]) if not d.get("deleted")]
    if not found:
        raise RequestError(404, [FieldError(("input", "task_run_artifact_id"), f"no task run artifact with id {artifact_id}", "not_found")])
    return found[0]


@mutation.field("create_task_run_artifact")
@translate_errors
async def resolve_create_task_run_artifact(_, info, input):
    app = app_of(info)
    tenant_id = input.get("tenant_id")
    if tenant_id and tenant_id != DEFAULT_TENANT["id"]:
        raise error(f"tenant_id: RunLedger serves one tenant ({DEFAULT_TENANT['id']}); {tenant_id} is not it", "BAD_USER_INPUT", field="tenant_id")
    task_run = await app.read.task_run(input["task_run_id"])
    if task_run is None:
        raise RequestError(404, [FieldError(("input", "task_run_id"), f"no task run with id {input['task_run_id']}", "not_found")])
    if not input.get("kind"):
        raise error("kind: an artifact needs a kind (link, markdown, ...)", "BAD_USER_INPUT", field="kind")
    command = c.CreateTaskRunArtifact(
        artifact_id=str(uuid.uuid4()), task_run_id=task_run["id"], kind=input["kind"], data=_data(input.get("data"))
    )
    outcome = _ok(await app.bus.send(task_run["flow_run_id"], command))
    return {"id": outcome["artifact_id"]}


@mutation.field("update_task_run_artifact")
@translate_errors
async def resolve_update_task_run_artifact(_, info, input):
    app = app_of(info)
    artifact = await _live(app, input["task_run_artifact_id"])
    command = c.UpdateTaskRunArtifact(artifact_id=artifact["id"], data=_data(input.get("data")))
    _ok(await app.bus.send(artifact["flow_run_id"], command))
    return {"success": True}


@mutation.field("delete_task_run_artifact")
@translate_errors
async def resolve_delete_task_run_artifact(_, info, input):
    app = app_of(info)
    artifact = await _live(app, input["task_run_artifact_id"])
    _ok(await app.bus.send(artifact["flow_run_id"], c.DeleteTaskRunArtifact(artifact_id=artifact["id"])))
    return {"success": True}


@query.field("task_run_artifact")
@translate_errors
async def resolve_task_run_artifacts(_, info, where=None, order_by=None, limit=None, offset=None):
    app = app_of(info)
    where = json_object(where, "where")
    if (ids := anchor(where, "id")) is not None:
        docs = await app.read.task_run_artifacts(ids)
    elif (task_run_ids := anchor(where, "task_run_id")) is not None:
        ids = [a for tr in await app.read.task_runs(task_run_ids) for a in tr.get("artifact_ids", [])]
        docs = await app.read.task_run_artifacts(ids)
    else:
        raise error("task_run_artifact: where must name id or task_run_id (_eq or _in)", "BAD_USER_INPUT", field="where")
    return page([_view(d) for d in docs if not d.get("deleted")], where, order_by, limit, offset)


@task_run_type.field("artifacts")
async def resolve_task_run_artifacts_field(task_run, info, where=None, order_by=None, limit=None, offset=None):
    ids = task_run.get("artifact_ids") or []
    docs = await app_of(info).read.task_run_artifacts(ids, flow_run_id=task_run["flow_run_id"]) if ids else []
    views = [_view(d) for d in docs if not d.get("deleted")]
    return page(views, json_object(where, "where"), order_by or {"created": "asc"}, limit, offset)


@artifact_type.field("task_run")
async def resolve_artifact_task_run(artifact, info):
    doc = await app_of(info).read.task_run(artifact["task_run_id"], flow_run_id=artifact["flow_run_id"])
    return task_run_view(doc) if doc else None


bindables = [query, mutation, artifact_type, task_run_type]
