"""Flow registration as the Prefect 1.x client does it, and the flow fields it reads back.

``create_flow_from_compressed_string`` (``prefect register``; ``flow.register()``) and
``create_flow`` take a serialized flow (``runledger.prefect.flows`` turns it into a
``FlowDefinition``: task ids derived from the flow id and the slugs, the serialized flow kept
whole) and send ``RegisterFlow`` to the registry aggregate, which decides as Prefect Server does:
a new version (max + 1) in the version group of the same name in the project, older versions
archived; the same idempotency key as the group's last registration, with an unarchived version,
answers that version's id (the CLI then prints "Skipped").

``flow.register()`` / ``Client.register()`` send the flow without ``tasks`` and ``edges`` and
add them afterwards with ``register_tasks`` and ``register_edges`` (batches of 500). Such a flow
is registered *open* (``tasks_follow``): each batch is a ``RegisterTasks`` / ``RegisterEdges``
command to the registry, which appends what is new and never changes what it has (a repeat is a
no-op; another definition for a registered slug or edge is refused; see
``runledger.domain.registry``). A flow registered with its tasks accepts only what it has.

``set_schedule_active`` (input of the create mutations, default true as in Prefect Server) is the
flow group's schedule switch, set by the same event that registers the flow: ``Client.register()``
registers with false (no run is scheduled before the tasks are in) and then calls the mutation
``set_schedule_active`` (``graphql/schedules.py``), which flips the same switch; the scheduling
service (``services/scheduling/schedules.py``) creates the runs of an active schedule.

``flow { settings }`` and ``flow_group { settings }`` are the flow group's settings (changed by
``PATCH /api/v1/flow_groups/{id}/settings`` or Prefect Server's ``enable_flow_heartbeat`` /
``disable_flow_heartbeat`` / ``enable_flow_lazarus_process`` / ``disable_flow_lazarus_process``)
over Prefect Server's defaults; the scheduling service's recovery reads the same settings.
"""

from __future__ import annotations

import uuid

import orjson
from ariadne import MutationType, ObjectType, QueryType

from runledger.domain.registry import FLOW_GROUP_SETTINGS
from runledger.domain.run_requests import FieldError, RequestError
from runledger.messages import commands as c
from runledger.prefect.flows import SerializedFlowError, decompress, flow_definition, serialized_edges, serialized_tasks
from runledger.services.ingress.application import _ok, public
from runledger.services.ingress.graphql.coercion import json_object, json_size
from runledger.services.ingress.graphql.errors import error, translate_errors
from runledger.services.ingress.graphql.views import app_of, task_run_view
from runledger.topics import REGISTRY_AGGREGATE

query, mutation, flow_type, flow_group_type = QueryType(), MutationType(), ObjectType("flow"), ObjectType("flow_group")

# Client.register() sends 500 tasks or edges per call.
MAX_BATCH_ITEMS = 1000


def group_settings(group: dict | None) -> dict:
    """A flow group's settings as Prefect reads them: its own over Prefect Server's defaults."""
    return {**FLOW_GROUP_SETTINGS, **((group or {}).get("settings") or {})}


async def _register(info, serialized: dict, input: dict) -> dict:
    app = app_of(info)
    project_id = input["project_id"]
    if await app.read.project(project_id) is None:
        raise RequestError(404, [FieldError(("input", "project_id"), f"no project with id {project_id}", "not_found")])
    group_id = input.get("version_group_id")
    try:
        definition = flow_definition(
            serialized,
            flow_id=str(uuid.uuid4()),
            project_id=project_id,
            version_group_id=group_id or str(uuid.uuid4()),
            idempotency_key=input.get("idempotency_key"),
            description=input.get("description"),
        )
    except SerializedFlowError as exc:
        raise error(str(exc), "BAD_USER_INPUT", field="serialized_flow") from None
    active = input.get("set_schedule_active")
    command = c.RegisterFlow(
        flow=definition,
        explicit_version_group=group_id is not None,
        tasks_follow="tasks" not in serialized,  # Client.register() sends them with register_tasks
        schedule_active=True if active is None else bool(active),
    )
    outcome = _ok(await app.bus.send(REGISTRY_AGGREGATE, command))
    return {"id": outcome["flow_id"]}


@mutation.field("create_flow_from_compressed_string")
@translate_errors
async def resolve_create_flow_from_compressed_string(_, info, input):
    try:
        serialized = decompress(input["serialized_flow"], app_of(info).settings.max_json_field_bytes)
    except SerializedFlowError as exc:
        raise error(str(exc), "BAD_USER_INPUT", field="serialized_flow") from None
    return await _register(info, serialized, input)


@mutation.field("create_flow")
@translate_errors
async def resolve_create_flow(_, info, input):
    serialized = json_object(input["serialized_flow"], "serialized_flow")
    limit = app_of(info).settings.max_json_field_bytes
    size = json_size(serialized, "serialized_flow")
    if size > limit:
        raise error(f"serialized_flow: more than {limit} bytes of JSON", "BAD_USER_INPUT", field="serialized_flow")
    return await _register(info, serialized, input)


# -- Client.register(): the tasks and edges, after the flow --------------------------------------
async def _batch(info, input: dict, field: str) -> tuple[dict, list]:
    """The flow the batch is for (from the read model) and the batch, checked for size."""
    app = app_of(info)
    flow_id = input["flow_id"]
    flow = await app.read.flow(flow_id)
    if flow is None:
        raise RequestError(404, [FieldError(("input", "flow_id"), f"no flow with id {flow_id}", "not_found")])
    batch = input.get(field)
    if isinstance(batch, str):  # JSON sent as a string
        try:
            batch = orjson.loads(batch)
        except orjson.JSONDecodeError:
            raise error(f"{field}: not JSON", "BAD_USER_INPUT", field=field) from None
    if not isinstance(batch, list):
        raise error(f"{field}: expected a list", "BAD_USER_INPUT", field=field)
    limit = app.settings.max_body_bytes
    size = json_size(batch, field)
    if len(batch) > MAX_BATCH_ITEMS or size > limit:
        raise error(f"{field}: at most {MAX_BATCH_ITEMS} items and {limit} bytes of JSON per call", "BAD_USER_INPUT", field=field)
    return flow, batch


@mutation.field("register_tasks")
@translate_errors
async def resolve_register_tasks(_, info, input):
    flow, batch = await _batch(info, input, "serialized_tasks")
    try:
        tasks = serialized_tasks(batch, flow["id"])
    except SerializedFlowError as exc:
        raise error(str(exc), "BAD_USER_INPUT", field="serialized_tasks") from None
    if tasks:  # Client.register() may send an empty last batch
        _ok(await app_of(info).bus.send(REGISTRY_AGGREGATE, c.RegisterTasks(flow_id=flow["id"], tasks=tasks)))
    return {"success": True}


@mutation.field("register_edges")
@translate_errors
async def resolve_register_edges(_, info, input):
    flow, batch = await _batch(info, input, "serialized_edges")
    try:
        edges = serialized_edges(batch, flow["id"])
    except SerializedFlowError as exc:
        raise error(str(exc), "BAD_USER_INPUT", field="serialized_edges") from None
    slugs = {t["slug"] for t in flow.get("tasks") or []}
    for i, (up, down, _) in enumerate(edges):  # the writer checks it too; here the slug can be named
        for end, slug in (("upstream_task", up), ("downstream_task", down)):
            if slug not in slugs:
                where = f"serialized_edges.{i}.{end}"
                raise error(f"{where}: flow {flow['id']} has no task {slug!r}; register its tasks first (register_tasks)",
                            "BAD_USER_INPUT", field=where)
    if edges:
        command = c.RegisterEdges(flow_id=flow["id"], edges=[spec for _, _, spec in edges])
        _ok(await app_of(info).bus.send(REGISTRY_AGGREGATE, command))
    return {"success": True}


# -- Prefect Server's per-flow switches of the flow group's settings -------------------------------
SWITCHES = {
    "enable_flow_heartbeat": ("heartbeat_enabled", True),
    "disable_flow_heartbeat": ("heartbeat_enabled", False),
    "enable_flow_lazarus_process": ("lazarus_enabled", True),
    "disable_flow_lazarus_process": ("lazarus_enabled", False),
}


def _switch(name: str, setting: str, value: bool):
    @mutation.field(name)
    @translate_errors
    async def resolve(_, info, input):
        flow = await app_of(info).read.flow(input["flow_id"])
        if flow is None:
            raise RequestError(404, [FieldError(("input", "flow_id"), f"no flow with id {input['flow_id']}", "not_found")])
        await info.context["request"].app.state.scheduling.set_group_settings(flow["flow_group_id"], {setting: value})
        return {"success": True}

    return resolve


for _name, (_setting, _value) in SWITCHES.items():
    _switch(_name, _setting, _value)


# -- flow fields the client reads ------------------------------------------------------------
@flow_type.field("settings")
async def resolve_flow_settings(flow, info):
    return group_settings(await app_of(info).read.flow_group(flow["flow_group_id"]))


@flow_type.field("flow_group")
async def resolve_flow_group(flow, info):
    return public(await app_of(info).read.flow_group(flow["flow_group_id"])) or {"id": flow["flow_group_id"]}


@flow_group_type.field("settings")
async def resolve_flow_group_settings(group, info):
    return group_settings(group)


@flow_group_type.field("schedule_active")
async def resolve_flow_group_schedule_active(group, info):
    return group.get("schedule_active") is not False  # never switched: active


# -- the one custom query the client sends outside the Hasura-style tables --------------------
@query.field("get_task_run_info")
@translate_errors
async def resolve_get_task_run_info(_, info, task_run_id):
    doc = await app_of(info).read.task_run(task_run_id)
    if doc is None:
        return None
    view = task_run_view(doc)
    return {"id": view["id"], "version": view["version"], "state": view["state"], "serialized_state": view["serialized_state"]}


bindables = [query, mutation, flow_type, flow_group_type]
