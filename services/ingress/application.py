"""The ingress application service: what REST and GraphQL both call.

It validates and resolves requests (pure helpers from ``runledger.domain``), sends commands through
the bus, and reads the read models. It never decides a state transition: that is the writer's.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import uuid
from datetime import datetime, timezone
from typing import Any

import orjson

from runledger.services.runtime import redis as redis_clients
from runledger.services.runtime.bus import CommandBus
from runledger.services.runtime.stores import Doc, IdempotencyStore, ReadModels, RestoringFromLog
from runledger import api_models as api
from runledger.domain.idempotency import Action, check_repeat
from runledger.domain.run_requests import FieldError, RequestError, choose_flow_by_name, resolve_flow_run, task_run_id_for
from runledger.messages import commands as c
from runledger.messages.commands import Rejection, Reply
from runledger.messages.models import FlowDefinition, PlannedTaskRun
from runledger.readmodel import planner
from runledger.readmodel.filters import matches
from runledger.settings import Settings
from runledger.topics import REGISTRY_AGGREGATE


class CommandRejected(Exception):
    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.message)
        self.rejection = rejection


def _ok(reply: Reply) -> dict[str, Any]:
    if not reply.ok:
        raise CommandRejected(reply.rejection)
    return reply.outcome or {}


def public(doc: Doc | None) -> Doc | None:
    """A read-model document as the API shows it (without projector bookkeeping)."""
    if doc is None:
        return None
    return {k: v for k, v in doc.items() if k != "seq"}


@functools.lru_cache(maxsize=4096)
def _parse_flow_definition(raw: bytes) -> FlowDefinition:
    doc = orjson.loads(raw)
    return FlowDefinition.model_validate({k: v for k, v in doc.items() if k in FlowDefinition.model_fields})


def _flow_definition(doc: Doc) -> FlowDefinition:
    """A registered flow never changes (a new version is a new flow), so parsing is cached by
    content; ``archived`` is not part of the definition and is read from the document."""
    definition_fields = {k: v for k, v in doc.items() if k in FlowDefinition.model_fields}
    return _parse_flow_definition(orjson.dumps(definition_fields, option=orjson.OPT_SORT_KEYS))


def _encode_cursor(position: tuple[float, str], fingerprint: str) -> str:
    raw = orjson.dumps({"s": position[0], "i": position[1], "q": fingerprint})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, fingerprint: str) -> tuple[float, str]:
    """The (score, id) a page ended at; a cursor of another query (other filters) is refused."""
    try:
        data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        position = (float(data["s"]), str(data["i"]))
        matches_query = data["q"] == fingerprint
    except (binascii.Error, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise RequestError(400, [FieldError(("query", "cursor"), "not a cursor this API gave out", "invalid_cursor")]) from None
    if not matches_query:
        raise RequestError(400, [FieldError(("query", "cursor"), "the cursor belongs to a query with other filters", "invalid_cursor")])
    return position


def state_command(request: api.SetStateRequest) -> c.SetFlowRunState:
    """The writer's command for a flow run's state request. With a client ``command_id`` it
    travels as ``client_command_id(run, this command, id)``."""
    return c.SetFlowRunState(state=request.state.to_state(), version=request.version)


class Application:
    def __init__(self, settings: Settings, bus: CommandBus, read: ReadModels, idempotency: IdempotencyStore) -> None:
        self.settings, self.bus, self.read, self.idempotency = settings, bus, read, idempotency
        # While Redis's idempotency keys are restored from the log, a create waits this long, then 503.
        self.hold_seconds = min(5.0, settings.command_timeout_seconds / 2)

    def _check_size(self, loc: tuple, value: Any) -> None:
        if value is None:
            return
        size = len(orjson.dumps(value))
        if size > self.settings.max_json_field_bytes:
            raise RequestError(
                413,
                [FieldError(loc, f"{size} bytes is over the limit of {self.settings.max_json_field_bytes} bytes", "too_large")],
            )

    # -- projects and flows -------------------------------------------------------------------
    async def create_project(self, request: api.CreateProjectRequest) -> Doc:
        project_id = str(uuid.uuid4())
        outcome = _ok(await self.bus.send(REGISTRY_AGGREGATE, c.CreateProject(project_id=project_id, name=request.name, description=request.description)))
        return public(await self.read.project(outcome["project_id"]))

    async def _project_id(self, project_id: str | None, project_name: str | None) -> str:
        if project_id:
            if await self.read.project(project_id) is None:
                raise RequestError(404, [FieldError(("body", "project_id"), f"no project with id {project_id}", "not_found")])
            return project_id
        found = await self.read.project_id_by_name(project_name)
        if found is None:
            raise RequestError(404, [FieldError(("body", "project_name"), f"no project named {project_name!r}", "not_found")])
        return found

    async def register_flow(self, request: api.RegisterFlowRequest) -> Doc:
        for name in ("run_config", "storage", "schedule"):
            self._check_size(("body", name), getattr(request, name))
        project_id = await self._project_id(request.project_id, request.project_name)
        definition = FlowDefinition(
            id=str(uuid.uuid4()),
            name=request.name,
            project_id=project_id,
            version=0,  # decided by the writer
            version_group_id=request.version_group_id or str(uuid.uuid4()),
            description=request.description,
            parameters=request.parameters,
            labels=request.labels,
            run_config=request.run_config,
            storage=request.storage,
            schedule=request.schedule,
            core_version=request.core_version,
            tasks=request.tasks,
            edges=request.edges,
            idempotency_key=request.idempotency_key,
        )
        command = c.RegisterFlow(flow=definition, explicit_version_group=request.version_group_id is not None)
        outcome = _ok(await self.bus.send(REGISTRY_AGGREGATE, command))
        return public(await self.read.flow(outcome["flow_id"]))

    async def update_flow_group(self, group_id: str, request: api.UpdateFlowGroupRequest) -> Doc:
        changes = request.model_dump(exclude_unset=True)
        for name, value in changes.items():
            self._check_size(("body", name), value)
        if await self.read.flow_group(group_id) is None:
            raise RequestError(404, [FieldError(("path", "flow_group_id"), f"no flow group with id {group_id}", "not_found")])
        _ok(await self.bus.send(REGISTRY_AGGREGATE, c.UpdateFlowGroup(flow_group_id=group_id, changes=changes)))
        return public(await self.read.flow_group(group_id))

    async def get_flow(self, flow_id: str) -> Doc:
        """FlowView data: the registered flow with its project's name."""
        flow = await self.read.flow(flow_id)
        if flow is None:
            raise RequestError(404, [FieldError(("path", "flow_id"), f"no flow with id {flow_id}", "not_found")])
        project = await self.read.project(flow["project_id"]) or {}
        return {**public(flow), "project": {"id": flow["project_id"], "name": project.get("name")}}

    # -- flow runs ----------------------------------------------------------------------------
    async def _flow_for(self, request: api.CreateFlowRunRequest) -> tuple[Doc, Doc | None]:
        """The flow a create request names, with its flow group."""
        if request.flow_id:
            flow, group = await self.read.flow_and_group(request.flow_id)
            if flow is None:
                raise RequestError(404, [FieldError(("body", "flow_id"), f"no flow with id {request.flow_id}", "not_found")])
            return flow, group
        if request.version_group_id:
            group = await self.read.flow_group(request.version_group_id)
            flows = [f for f in await self.read.flows_by_id((group or {}).get("flow_ids", [])) if not f["archived"]]
            if not flows:
                raise RequestError(
                    404,
                    [FieldError(("body", "version_group_id"), f"no unarchived flow in version group {request.version_group_id}", "not_found")],
                )
            return flows[-1], group
        candidates = await self.read.flows_named(request.flow_name)
        flow = choose_flow_by_name(candidates, request.flow_name, request.project_name, await self.read.project_names())
        return flow, await self.read.flow_group(flow["version_group_id"])

    async def _repeat_on_archived_flow(self, flow, flow_doc: Doc, group: Doc | None, request: api.CreateFlowRunRequest, now) -> Doc | None:
        """A keyed create naming a flow archived since its first attempt (a new version was
        registered in between) is a repeat: its run, as before the archiving; else None."""
        if request.idempotency_key is None or not flow_doc["archived"]:
            return None
        run_id = await self.idempotency.recorded_run(flow.id, request.idempotency_key)
        existing = await self.read.flow_run(run_id) if run_id is not None else None
        if existing is None:
            return None
        check_repeat(request.idempotency_key, existing, resolve_flow_run(flow, False, group, request, run_id, now))
        return public(existing)

    async def create_flow_run(self, request: api.CreateFlowRunRequest) -> tuple[Doc, bool]:
        """Returns the run and whether this request was deduplicated by its idempotency key."""
        for name in ("parameters", "context", "run_config"):
            self._check_size(("body", name), getattr(request, name))
        flow_doc, group = await self._flow_for(request)
        flow = _flow_definition(flow_doc)
        now = datetime.now(timezone.utc)
        run_id = str(uuid.uuid4())
        try:
            spec = resolve_flow_run(flow, flow_doc["archived"], group, request, run_id, now)  # validates before any write
        except RequestError:
            repeat = await self._repeat_on_archived_flow(flow, flow_doc, group, request, now)
            if repeat is None:
                raise
            return repeat, True
        if request.idempotency_key is None:
            outcome = _ok(await self.bus.send(run_id, c.CreateFlowRun(spec=spec)))
            return public(await self.read.flow_run(outcome["flow_run_id"])), False

        claim = await self.idempotency.claim(flow.id, request.idempotency_key, run_id, hold_seconds=self.hold_seconds)
        if self.settings.fault == "crash_after_idempotency_claim":
            os._exit(137)  # test hook: die holding a claim, before the run is recorded
        if claim.action is Action.RETURN_EXISTING:
            existing = await self.read.flow_run(claim.run_id)
            if existing is not None:
                check_repeat(request.idempotency_key, existing, spec)
                return public(existing), True
        if claim.run_id != run_id:
            spec = resolve_flow_run(flow, flow_doc["archived"], group, request, claim.run_id, now)
        outcome = _ok(await self.bus.send(claim.run_id, c.CreateFlowRun(spec=spec)))
        if redis_clients.is_cluster(self.read.redis):  # cluster pipelines carry no scripts: two trips
            await self.idempotency.confirm(flow.id, request.idempotency_key, claim.run_id)
            raw = await self.read.redis.get(self.read.k.flow_run(claim.run_id))
        else:
            async with self.read.redis.pipeline(transaction=False) as pipe:
                await self.idempotency.confirm(flow.id, request.idempotency_key, claim.run_id, pipe)
                pipe.get(self.read.k.flow_run(claim.run_id))
                _, raw = await pipe.execute()
        if raw is None:  # recorded, but Redis lost its data since: the client's retry finds the run
            raise RestoringFromLog("the run was recorded; Redis lost its data and is being restored from the event log")
        run = orjson.loads(raw)
        if not outcome["created"]:  # our claim named a run that already existed: a repeat too
            check_repeat(request.idempotency_key, run, spec)
        return public(run), not outcome["created"]

    async def get_flow_run(self, run_id: str, loc: tuple = ("path", "flow_run_id")) -> Doc:
        run = await self.read.flow_run(run_id)
        if run is None:
            raise RequestError(404, [FieldError(loc, f"no flow run with id {run_id}", "not_found")])
        return public(run)

    async def flow_runs_of(self, flow_id: str, offset: int, limit: int) -> tuple[list[Doc], int]:
        await self.get_flow(flow_id)
        runs, total = await self.read.runs_of_flow(flow_id, offset, limit)
        return [public(r) for r in runs], total

    async def list_flow_runs(self, query: api.FlowRunListQuery) -> dict[str, Any]:
        """A page of runs matching the filters, in scheduled_start_time order, through the
        planner's index (state, flow, label, or all runs by scheduled start time)."""
        where = query.where()
        plan = planner.plan("flow_run", where, {"scheduled_start_time": query.order})
        fingerprint = hashlib.sha1(orjson.dumps([where, query.order], option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]
        after = _decode_cursor(query.cursor, fingerprint) if query.cursor else None
        residual = plan.residual

        def accepts(doc: Doc) -> bool:
            return matches({**doc, "state": (doc.get("state") or {}).get("type")}, residual)

        walk = await self.read.walk(plan, accepts if residual else None, need=query.limit, after=after)
        more = not walk.exhausted and walk.last is not None
        return {
            "flow_runs": [public(d) for d in walk.docs],
            "next_cursor": _encode_cursor(walk.last, fingerprint) if more else None,
            "limit": query.limit,
            "examined": walk.examined,
        }

    async def _run_command(self, run_id: str, payload, loc: tuple, command_id: str | None = None) -> dict[str, Any]:
        await self.get_flow_run(run_id, loc)
        return await self._send(run_id, payload, command_id)

    async def _send(self, run_id: str, payload, client_command_id: str | None) -> dict[str, Any]:
        """Send a command for the run's writer; a client's command id travels scoped to this run
        and command (``commands.client_command_id``)."""
        scoped = c.client_command_id(run_id, payload, client_command_id) if client_command_id is not None else None
        return _ok(await self.bus.send(run_id, payload, command_id=scoped))

    async def set_flow_run_state(self, run_id: str, request: api.SetStateRequest, loc=("path", "flow_run_id")) -> dict[str, Any]:
        self._check_size(("body", "state", "serialized"), request.state.serialized)
        return await self._run_command(run_id, state_command(request), loc, request.command_id)

    async def cancel_flow_run(self, run_id: str, message: str | None) -> dict[str, Any]:
        return await self._run_command(run_id, c.CancelFlowRun(message=message), ("path", "flow_run_id"))

    async def rename_flow_run(self, run_id: str, name: str) -> dict[str, Any]:
        return await self._run_command(run_id, c.RenameFlowRun(name=name), ("path", "flow_run_id"))

    async def flow_run_heartbeat(self, run_id: str) -> dict[str, Any]:
        return await self._run_command(run_id, c.RecordFlowRunHeartbeat(), ("path", "flow_run_id"))

    # -- task runs ----------------------------------------------------------------------------
    async def get_task_run(self, task_run_id: str, loc: tuple = ("path", "task_run_id")) -> Doc:
        doc = await self.read.task_run(task_run_id)
        if doc is None:
            raise RequestError(404, [FieldError(loc, f"no task run with id {task_run_id}", "not_found")])
        return public(doc)

    async def task_runs_of(self, run_id: str) -> list[Doc]:
        run = await self.get_flow_run(run_id)
        return [public(d) for d in await self.read.task_runs(run["task_run_ids"], flow_run_id=run_id)]

    async def _task_run_command(self, task_run_id: str, make_payload, loc: tuple, command_id: str | None = None) -> dict[str, Any]:
        task_run = await self.get_task_run(task_run_id, loc)
        return await self._send(task_run["flow_run_id"], make_payload(task_run), command_id)

    async def set_task_run_state(self, task_run_id: str, request: api.SetStateRequest, loc=("path", "task_run_id")) -> dict[str, Any]:
        self._check_size(("body", "state", "serialized"), request.state.serialized)
        state = request.state.to_state()
        return await self._task_run_command(
            task_run_id,
            lambda tr: c.SetTaskRunState(task_run_id=tr["id"], state=state, version=request.version),
            loc,
            request.command_id,
        )

    async def rename_task_run(self, task_run_id: str, name: str) -> dict[str, Any]:
        return await self._task_run_command(task_run_id, lambda tr: c.RenameTaskRun(task_run_id=tr["id"], name=name), ("path", "task_run_id"))

    async def task_run_heartbeat(self, task_run_id: str) -> dict[str, Any]:
        return await self._task_run_command(task_run_id, lambda tr: c.RecordTaskRunHeartbeat(task_run_id=tr["id"]), ("path", "task_run_id"))

    async def get_or_create_task_run(self, request: api.GetOrCreateTaskRunRequest) -> Doc:
        run = await self.get_flow_run(request.flow_run_id, ("body", "flow_run_id"))
        flow = await self.read.flow(run["flow_id"])
        task = next((t for t in (flow or {}).get("tasks", []) if t["id"] == request.task_id), None)
        if task is None:
            raise RequestError(404, [FieldError(("body", "task_id"), f"flow {run['flow_id']} has no task {request.task_id}", "not_found")])
        planned = PlannedTaskRun(
            task_run_id=task_run_id_for(run["id"], task["id"], request.map_index),
            task_id=task["id"],
            task_slug=task["slug"],
            task_name=task["name"],
            tags=task["tags"],
            map_index=request.map_index,
        )
        outcome = _ok(await self.bus.send(run["id"], c.GetOrCreateTaskRun(task_run=planned)))
        doc = await self.read.task_run(outcome["task_run_id"], flow_run_id=run["id"])
        if doc is None:
            raise RequestError(404, [FieldError(("body", "task_id"), f"no task run with id {outcome['task_run_id']}", "not_found")])
        return public(doc)
