"""Flow registration as the Prefect 1.x client does it, and the flow fields it reads back.

``create_flow_from_compressed_string`` (``prefect register``; ``flow.register()``) and
``create_flow`` take a serialized flow (``runledger.prefect.flows`` turns it into a
``FlowDefinition``: task ids assigned here from the slugs, the serialized flow kept whole) and send
``RegisterFlow`` to the registry aggregate, which decides as Prefect Server does: a new version
(max + 1) in the version group of the same name in the project, older versions archived; the same
idempotency key as the group's last registration, with an unarchived version, answers that
version's id (the CLI then prints "Skipped"). ``set_schedule_active`` is accepted; RunLedger has
no scheduler for flow schedules yet. A serialized flow without ``tasks`` (``Client.register()``
sends them afterwards with ``register_tasks``) is refused: a registered flow never changes here.

``flow { settings serialized_flow environment flow_group { ... } }`` extend the ``flow`` type.
"""

from __future__ import annotations

import uuid

import orjson
from ariadne import MutationType, ObjectType, QueryType

from runledger.domain.registry import FLOW_GROUP_SETTINGS
from runledger.domain.run_requests import FieldError, RequestError
from runledger.messages import commands as c
from runledger.prefect.flows import SerializedFlowError, decompress, flow_definition
from runledger.services.ingress.application import _ok, public
from runledger.services.ingress.graphql.coercion import json_object
from runledger.services.ingress.graphql.errors import error, translate_errors
from runledger.services.ingress.graphql.views import app_of, task_run_view
from runledger.topics import REGISTRY_AGGREGATE

query, mutation, flow_type = QueryType(), MutationType(), ObjectType("flow")

NO_TASKS = (
    "serialized_flow has no tasks: RunLedger registers a flow with its tasks and edges inside, as `prefect register` "
    "sends them; flow.register() / Client.register() send them in later calls (register_tasks, register_edges), "
    "which RunLedger does not support yet. Use `prefect register -p <file> --project <name>`."
)


async def _register(info, serialized: dict, input: dict) -> dict:
    app = app_of(info)
    project_id = input["project_id"]
    if await app.read.project(project_id) is None:
        raise RequestError(404, [FieldError(("input", "project_id"), f"no project with id {project_id}", "not_found")])
    if "tasks" not in serialized:  # Client.register() takes them out to send them with register_tasks
        raise error(NO_TASKS, "BAD_USER_INPUT", field="serialized_flow")
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
    command = c.RegisterFlow(flow=definition, explicit_version_group=group_id is not None)
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
    if len(orjson.dumps(serialized)) > limit:
        raise error(f"serialized_flow: more than {limit} bytes of JSON", "BAD_USER_INPUT", field="serialized_flow")
    return await _register(info, serialized, input)


# -- flow fields the client reads ------------------------------------------------------------
@flow_type.field("settings")
async def resolve_flow_settings(flow, info):
    return dict(FLOW_GROUP_SETTINGS)


@flow_type.field("flow_group")
async def resolve_flow_group(flow, info):
    group = await app_of(info).read.flow_group(flow["flow_group_id"]) or {"id": flow["flow_group_id"]}
    return {**public(group), "settings": dict(FLOW_GROUP_SETTINGS)}


# -- the one custom query the client sends outside the Hasura-style tables --------------------
@query.field("get_task_run_info")
@translate_errors
async def resolve_get_task_run_info(_, info, task_run_id):
    doc = await app_of(info).read.task_run(task_run_id)
    if doc is None:
        return None
    view = task_run_view(doc)
    return {"id": view["id"], "version": view["version"], "state": view["state"], "serialized_state": view["serialized_state"]}


bindables = [query, mutation, flow_type]
