"""Scheduling on REST (``/api/v1``): agents, the queue, ``why``, late runs, concurrency limits,
schedule switches and flow-group recovery settings; and ``install``, which wires scheduling into
the ingress: this router, the agent-contact middleware (``X-PREFECT-AGENT-ID`` on any request
updates that agent's last contact) and the scheduling gate in front of the command bus."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import ORJSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from runledger.messages.models import JsonInt
from runledger.services.ingress.errors import WITH_BODY, documented

from runledger.services.ingress.scheduling import SchedulingFrontend, SchedulingUnavailable
from runledger.services.runtime.scheduling_gate import SchedulingGate, current_agent_id
from runledger.services.runtime.tasks import stop_tasks
from runledger.services.runtime.scheduling_store import SchedulingStore

router = APIRouter(prefix="/api/v1", default_response_class=ORJSONResponse)
log = structlog.get_logger(component="scheduling")
AGENT_HEADER = b"x-prefect-agent-id"


def scheduling_of(request: Request) -> SchedulingFrontend:
    return request.app.state.scheduling


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterAgent(_Body):
    type: str = Field("", max_length=200)
    name: str | None = Field(None, max_length=500)
    labels: list[str] = Field(default_factory=list, max_length=1000)
    tenant_id: str | None = None
    agent_config_id: str | None = None
    core_version: str | None = None


class QueuePoll(_Body):
    before: str | None = None
    labels: list[str] = Field(default_factory=list, max_length=1000)
    tenant_id: str | None = None
    limit: JsonInt = Field(25, ge=1, le=1000)


class LimitBody(_Body):
    limit: JsonInt = Field(ge=0, le=2**31 - 1)


class GroupSettings(_Body):
    lazarus_enabled: StrictBool | None = None
    heartbeat_enabled: StrictBool | None = None


@router.post("/agents", tags=["scheduling"], responses=documented(*WITH_BODY))
async def register_agent(body: RegisterAgent, request: Request) -> Any:
    return await scheduling_of(request).register_agent(body.model_dump())


@router.get("/agents", tags=["scheduling"], responses=documented(503))
async def list_agents(request: Request) -> Any:
    return await scheduling_of(request).agents()


@router.post("/queue", tags=["scheduling"], responses=documented(*WITH_BODY))
async def runs_in_queue(body: QueuePoll, request: Request) -> Any:
    ids = await scheduling_of(request).runs_in_queue(body.labels, body.before, current_agent_id.get(), body.limit, touch=False)
    return {"flow_run_ids": ids}


@router.get("/flow_runs/{flow_run_id}/why", tags=["scheduling"], responses=documented(404, 503, s503="No scheduling service is running (or a dependency is down)"))
async def why(flow_run_id: str, request: Request) -> Any:
    try:
        return await scheduling_of(request).why(flow_run_id)
    except SchedulingUnavailable as exc:
        return ORJSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})


@router.get("/late_runs", tags=["scheduling"], responses=documented(422, 503))
async def late_runs(request: Request, threshold_seconds: float | None = Query(None, ge=0), limit: int = Query(100, ge=1, le=1000)) -> Any:
    return await scheduling_of(request).late_runs(threshold_seconds, limit)


@router.get("/concurrency_limits/flow_runs", tags=["scheduling"], responses=documented(503))
async def flow_limits(request: Request) -> Any:
    return await scheduling_of(request).limits("label")


@router.put("/concurrency_limits/flow_runs/{label}", tags=["scheduling"], responses=documented(*WITH_BODY))
async def set_flow_limit(label: str, body: LimitBody, request: Request) -> Any:
    return await scheduling_of(request).set_limit("label", label, body.limit)


@router.get("/concurrency_limits/task_runs", tags=["scheduling"], responses=documented(503))
async def task_limits(request: Request) -> Any:
    return await scheduling_of(request).limits("tag")


@router.put("/concurrency_limits/task_runs/{tag}", tags=["scheduling"], responses=documented(*WITH_BODY))
async def set_task_limit(tag: str, body: LimitBody, request: Request) -> Any:
    return await scheduling_of(request).set_limit("tag", tag, body.limit)


@router.delete("/concurrency_limits/{limit_id}", tags=["scheduling"], responses=documented(404, 503))
async def delete_limit(limit_id: str, request: Request) -> Any:
    if not await scheduling_of(request).delete_limit(limit_id):
        return ORJSONResponse({"detail": f"no concurrency limit with id {limit_id}"}, status_code=404)
    return {"success": True}


@router.post("/flows/{flow_id}/schedule/{switch}", tags=["scheduling"], responses=documented(404, 503, s404="No such flow, or a switch other than active/inactive"))
async def set_schedule(flow_id: str, switch: str, request: Request) -> Any:
    if switch not in ("active", "inactive"):
        return ORJSONResponse({"detail": "use /schedule/active or /schedule/inactive"}, status_code=404)
    await scheduling_of(request).set_schedule_active(flow_id, switch == "active")
    return {"success": True, "flow_id": flow_id, "schedule_active": switch == "active"}


@router.patch("/flow_groups/{flow_group_id}/settings", tags=["scheduling"], responses=documented(*WITH_BODY, 404))
async def set_group_settings(flow_group_id: str, body: GroupSettings, request: Request) -> Any:
    return await scheduling_of(request).set_group_settings(flow_group_id, body.model_dump(exclude_none=True))


class AgentContact:
    """Pure ASGI: note the agent of ``X-PREFECT-AGENT-ID`` (last contact, and for the gate)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        agent_id = None
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == AGENT_HEADER:
                    agent_id = value.decode("latin-1")[:200]
                    break
        if not agent_id:
            return await self.app(scope, receive, send)
        scheduling = getattr(scope["app"].state, "scheduling", None) if "app" in scope else None
        if scheduling is not None:
            try:
                await scheduling.store.touch_agent(agent_id)
            except Exception:  # last contact is best effort; never fail the request for it
                pass
        token = current_agent_id.set(agent_id)
        try:
            return await self.app(scope, receive, send)
        finally:
            current_agent_id.reset(token)


async def _import_legacy(frontend: SchedulingFrontend) -> None:
    """Move limits and agents an older version kept only in Redis into the log (once; retried
    while the writer or Redis is not there yet)."""
    for attempt in range(60):
        try:
            imported = await frontend.import_legacy()
            if any(imported.values()):
                log.warning("limits and agents kept only in Redis were moved into the event log", **imported)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if attempt % 10 == 0:
                log.warning("moving Redis-only limits and agents into the log failed; retrying", error=repr(exc)[:300])
            await asyncio.sleep(5)


def install(app: FastAPI) -> None:
    """Wire scheduling into the ingress app (called once by ``create_app``)."""
    app.include_router(router)
    app.add_middleware(AgentContact)
    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI):
        async with original(a) as state:
            application = a.state.application
            store = SchedulingStore(application.read.redis, application.settings.redis_prefix, partitions=application.settings.partitions)
            application.bus = SchedulingGate(application.bus, store, application.read, application.settings)
            a.state.scheduling = frontend = SchedulingFrontend(application, store, application.settings)
            upgrade = asyncio.create_task(_import_legacy(frontend))
            try:
                yield state
            finally:
                await stop_tasks(upgrade)

    app.router.lifespan_context = lifespan
