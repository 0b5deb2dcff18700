"""The versioned REST API (``/api/v1``)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import ORJSONResponse

from runledger.services.ingress.application import Application, CommandRejected
from runledger.services.ingress.errors import WITH_BODY, documented
from runledger import api_models as api
from runledger.domain.run_requests import RequestError
from runledger.domain.states import StateType

MAX_OFFSET = 2**31 - 1  # Redis ranges take 64-bit offsets; no list is that long anyway

router = APIRouter(prefix="/api/v1", default_response_class=ORJSONResponse)


def app_of(request: Request) -> Application:
    return request.app.state.application


@router.post("/projects", status_code=201, tags=["projects"], responses=documented(*WITH_BODY, 409, s409="A project with this name exists"))
async def create_project(body: api.CreateProjectRequest, request: Request) -> Any:
    return await app_of(request).create_project(body)


@router.get("/projects", tags=["projects"], responses=documented(503))
async def list_projects(request: Request) -> Any:
    return await app_of(request).read.projects()


@router.post("/flows", status_code=201, tags=["flows"], responses=documented(*WITH_BODY, 404, 409, s404="No such project", s409="Refused by the registry"))
async def register_flow(body: api.RegisterFlowRequest, request: Request) -> Any:
    return await app_of(request).register_flow(body)


@router.get("/flows", tags=["flows"], responses=documented(422, 503))
async def list_flows(
    request: Request,
    name: str | None = None,
    include_archived: bool = False,
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    limit: int = Query(100, ge=1, le=1000),
) -> Any:
    application = app_of(request)
    flows = await application.read.flows_named(name) if name else await application.read.flows(offset, limit)
    return [f for f in flows if include_archived or not f["archived"]]


@router.get("/flows/{flow_id}", tags=["flows"], responses=documented(404, 503))
async def get_flow(flow_id: str, request: Request) -> Any:
    return await app_of(request).get_flow(flow_id)


@router.get("/flows/{flow_id}/flow_runs", tags=["flow runs"], responses=documented(404, 422, 503))
async def list_flow_runs(
    flow_id: str, request: Request, offset: int = Query(0, ge=0, le=MAX_OFFSET), limit: int = Query(50, ge=1, le=1000)
) -> Any:
    """A flow's runs, latest scheduled start first (``total`` counts them all)."""
    runs, total = await app_of(request).flow_runs_of(flow_id, offset, limit)
    return {"flow_runs": runs, "total": total, "offset": offset, "limit": limit}


@router.patch("/flow_groups/{flow_group_id}", tags=["flows"], responses=documented(*WITH_BODY, 404))
async def update_flow_group(flow_group_id: str, body: api.UpdateFlowGroupRequest, request: Request) -> Any:
    return await app_of(request).update_flow_group(flow_group_id, body)


@router.get(
    "/flow_runs",
    tags=["flow runs"],
    response_model=api.FlowRunPage,
    summary="List flow runs (filtered, cursor-paged)",
    responses={
        200: {"description": "A page of runs in scheduled_start_time order; follow next_cursor until it is null"},
        **documented(
            400, 422, 503,
            s400="A cursor that this API did not give out, or one from a query with other filters",
            s422="An unknown state, a limit outside 1..1000, or a time that does not parse",
        ),
    },
)
async def list_all_flow_runs(
    request: Request,
    state: list[StateType] = Query([], description="Current state is one of these (repeat the parameter)."),
    flow_id: str | None = Query(None),
    label: list[str] = Query([], description="Carries every one of these labels (repeat the parameter)."),
    scheduled_after: api.IsoDateTime | None = Query(None, description="scheduled_start_time >= this"),
    scheduled_before: api.IsoDateTime | None = Query(None, description="scheduled_start_time < this"),
    order: str = Query("desc", pattern="^(asc|desc)$", description="By scheduled_start_time (ties by id)."),
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Query(None, description="next_cursor of the previous page (same filters)."),
) -> Any:
    """Served by a secondary index (state, flow, label, or every run by scheduled start time):
    a page examines at most ``RUNLEDGER_READ_SCAN_LIMIT`` runs, so a very selective extra filter
    can give a short page that still has a ``next_cursor``."""
    query = api.FlowRunListQuery(
        state=state, flow_id=flow_id, label=label, scheduled_after=scheduled_after,
        scheduled_before=scheduled_before, order=order, limit=limit, cursor=cursor,
    )
    return await app_of(request).list_flow_runs(query)


@router.post(
    "/flow_runs",
    status_code=201,
    tags=["flow runs"],
    responses={
        200: {"description": "Deduplicated by idempotency_key"},
        **documented(
            *WITH_BODY, 404,
            s404="No such flow (flow_id, version_group_id, or flow_name in project_name)",
            s422="Invalid request, parameters that do not fit the flow's, an ambiguous flow_name, or an idempotency key repeated with other parameters",
        ),
    },
)
async def create_flow_run(body: api.CreateFlowRunRequest, request: Request, response: Response) -> Any:
    run, deduplicated = await app_of(request).create_flow_run(body)
    if deduplicated:
        response.status_code = 200
    return {**run, "deduplicated": deduplicated}


@router.get("/flow_runs/{flow_run_id}", tags=["flow runs"], responses=documented(404, 503))
async def get_flow_run(flow_run_id: str, request: Request) -> Any:
    return await app_of(request).get_flow_run(flow_run_id)


@router.post("/flow_runs/{flow_run_id}/state", tags=["flow runs"], responses=documented(*WITH_BODY, 404, 409, s409="Version mismatch or transition rule"))
async def set_flow_run_state(flow_run_id: str, body: api.SetStateRequest, request: Request) -> Any:
    return await app_of(request).set_flow_run_state(flow_run_id, body)


async def _verdict(id_field: str, item_id: str, update) -> dict[str, Any]:
    """One run's verdict inside a batch: a failure of one never fails the others."""
    try:
        return {id_field: item_id, "status": "SUCCESS", **await update}
    except CommandRejected as rejected:
        return {id_field: item_id, "status": "REJECTED", "error": rejected.rejection.model_dump()}
    except RequestError as exc:
        return {id_field: item_id, "status": "ERROR", "error": {"message": str(exc), "detail": [e.as_dict() for e in exc.errors]}}


BATCH_CONCURRENCY = 32  # one batch must not take every Redis connection of the ingress


async def _bounded(updates) -> list[dict[str, Any]]:
    gate = asyncio.Semaphore(BATCH_CONCURRENCY)

    async def one(update):
        async with gate:
            return await update

    return await asyncio.gather(*(one(u) for u in updates))


@router.post("/flow_runs/states", tags=["flow runs"], responses=documented(*WITH_BODY))
async def set_flow_run_states(body: api.SetFlowRunStatesRequest, request: Request) -> Any:
    application = app_of(request)
    updates = (
        _verdict("flow_run_id", item.flow_run_id, application.set_flow_run_state(item.flow_run_id, item, ("body", "flow_run_id")))
        for item in body.states
    )
    return {"states": await _bounded(updates)}


@router.post("/task_runs/states", tags=["task runs"], responses=documented(*WITH_BODY))
async def set_task_run_states(body: api.SetTaskRunStatesRequest, request: Request) -> Any:
    application = app_of(request)
    updates = (
        _verdict("task_run_id", item.task_run_id, application.set_task_run_state(item.task_run_id, item, ("body", "task_run_id")))
        for item in body.states
    )
    return {"states": await _bounded(updates)}


@router.post("/flow_runs/{flow_run_id}/cancel", tags=["flow runs"], responses=documented(*WITH_BODY, 404, 409, s409="The run cannot be cancelled from its state"))
async def cancel_flow_run(flow_run_id: str, request: Request, body: api.CancelRequest | None = None) -> Any:
    return await app_of(request).cancel_flow_run(flow_run_id, body.message if body else None)


@router.post("/flow_runs/{flow_run_id}/name", tags=["flow runs"], responses=documented(*WITH_BODY, 404))
async def rename_flow_run(flow_run_id: str, body: api.RenameRequest, request: Request) -> Any:
    return await app_of(request).rename_flow_run(flow_run_id, body.name)


@router.post("/flow_runs/{flow_run_id}/heartbeat", tags=["flow runs"], responses=documented(404, 503))
async def flow_run_heartbeat(flow_run_id: str, request: Request) -> Any:
    return await app_of(request).flow_run_heartbeat(flow_run_id)


@router.get("/flow_runs/{flow_run_id}/task_runs", tags=["task runs"], responses=documented(404, 503))
async def list_task_runs(flow_run_id: str, request: Request) -> Any:
    return await app_of(request).task_runs_of(flow_run_id)


@router.post("/task_runs", tags=["task runs"], responses=documented(*WITH_BODY, 404, s404="No such flow run, or its flow has no such task"))
async def get_or_create_task_run(body: api.GetOrCreateTaskRunRequest, request: Request) -> Any:
    return await app_of(request).get_or_create_task_run(body)


@router.get("/task_runs/{task_run_id}", tags=["task runs"], responses=documented(404, 503))
async def get_task_run(task_run_id: str, request: Request) -> Any:
    return await app_of(request).get_task_run(task_run_id)


@router.post("/task_runs/{task_run_id}/state", tags=["task runs"], responses=documented(*WITH_BODY, 404, 409, s409="Version mismatch or transition rule"))
async def set_task_run_state(task_run_id: str, body: api.SetStateRequest, request: Request) -> Any:
    return await app_of(request).set_task_run_state(task_run_id, body)


@router.post("/task_runs/{task_run_id}/name", tags=["task runs"], responses=documented(*WITH_BODY, 404))
async def rename_task_run(task_run_id: str, body: api.RenameRequest, request: Request) -> Any:
    return await app_of(request).rename_task_run(task_run_id, body.name)


@router.post("/task_runs/{task_run_id}/heartbeat", tags=["task runs"], responses=documented(404, 503))
async def task_run_heartbeat(task_run_id: str, request: Request) -> Any:
    return await app_of(request).task_run_heartbeat(task_run_id)
