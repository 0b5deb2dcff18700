"""Flow runs: reads, creation (both spellings), state changes, cancel, rename, heartbeat, and the
nested ``flow_run.flow`` / ``.states`` / ``.task_runs``."""

from __future__ import annotations

from ariadne import MutationType, ObjectType, QueryType

from runledger import api_models as api
from runledger.services.ingress.application import public
from runledger.services.ingress.graphql.coercion import json_object, snake, state_input
from runledger.services.ingress.graphql.errors import absent, error, translate_errors
from runledger.services.ingress.graphql.views import (
    anchor,
    app_of,
    flow_run_view,
    flow_views,
    page,
    planned,
    state_view,
    task_run_view,
    with_state_fields,
)

query, mutation, flow_run_type = QueryType(), MutationType(), ObjectType("flow_run")


# -- reads ---------------------------------------------------------------------------------------
@query.field("flow_run_by_pk")
@translate_errors
async def resolve_flow_run_by_pk(_, info, id):
    doc = await app_of(info).read.flow_run(id)
    return with_state_fields(public(doc)) if doc else await absent(info)


MAX_TASK_RUN_FILTER_RUNS = 100  # runs whose task runs one ``task_runs`` filter may load


@query.field("flow_run")
@translate_errors
async def resolve_flow_runs(_, info, where=None, order_by=None, limit=None, offset=None):
    where = json_object(where, "where")
    # The 1.4.1 agent's metadata query (R15) keeps a Running run only if one of its task runs is
    # due: ``_or: [{state: Scheduled}, {state: Running, task_runs: {state_start_time: {_lte}}}]``,
    # anchored on the ids the queue gave it. Those runs' task runs are loaded for the filter.
    task_runs: dict[str, list[dict]] = {}
    if _mentions(where, "task_runs"):
        ids = anchor(where, "id")
        if ids is None or len(ids) > MAX_TASK_RUN_FILTER_RUNS:
            raise error(
                f"where: filtering flow runs on task_runs needs the runs' ids (id: {{_eq}} or {{_in}}, at most {MAX_TASK_RUN_FILTER_RUNS})",
                "BAD_USER_INPUT",
                field="where",
            )
        read = app_of(info).read
        for doc in await read.flow_runs(ids):
            task_runs[doc["id"]] = [task_run_view(d) for d in await read.task_runs(doc["task_run_ids"], flow_run_id=doc["id"])]

    def related(doc, name):
        if name == "states":
            return [state_view(e) for e in doc["_state_entries"]]
        if name == "task_runs" and doc["id"] in task_runs:
            return task_runs[doc["id"]]
        raise ValueError(f"filtering flow runs on {name!r} is not supported")

    return await planned(info, "flow_run", where, order_by, limit, offset, flow_run_view, related)


def _mentions(where, name: str) -> bool:
    """Whether a ``where`` filters on ``name`` anywhere (inside ``_and``/``_or``/``_not`` too)."""
    if isinstance(where, list):
        return any(_mentions(part, name) for part in where)
    if isinstance(where, dict):
        return any(key == name or (key.startswith("_") and _mentions(value, name)) for key, value in where.items())
    return False


# -- nested fields -------------------------------------------------------------------------------
@flow_run_type.field("flow")
async def resolve_run_flow(run, info):
    doc = await app_of(info).read.flow(run["flow_id"])
    return (await flow_views(app_of(info), [doc]))[0] if doc else None


@flow_run_type.field("states")
async def resolve_states(run, info, where=None, order_by=None):
    views = [state_view(e) for e in run["_state_entries"]]
    return page(views, json_object(where, "where"), order_by, None, None)


@flow_run_type.field("task_runs")
async def resolve_run_task_runs(run, info, where=None, order_by=None, limit=None):
    docs = await app_of(info).read.task_runs(run["task_run_ids"], flow_run_id=run["id"])
    views = [task_run_view(d) for d in docs]
    return page(views, json_object(where, "where"), order_by, limit, None, lambda doc, name: doc["task"] if name == "task" else None)


# -- mutations -----------------------------------------------------------------------------------
@mutation.field("create_flow_run")
@mutation.field("createFlowRun")
@translate_errors
async def resolve_create_flow_run(_, info, input):
    data = snake(input)
    # Prefect's docs also call the version group the "flow group" (seed 003); they are one id here.
    if (group_id := data.pop("flow_group_id", None)) is not None:
        if data.get("version_group_id") not in (None, group_id):
            raise error("give flow_group_id or version_group_id, not two different ids", "BAD_USER_INPUT", field="flow_group_id")
        data["version_group_id"] = group_id
    for name in ("parameters", "context", "run_config"):
        data[name] = json_object(data.get(name), name)
    request = api.CreateFlowRunRequest.model_validate({k: v for k, v in data.items() if v is not None})
    run, deduplicated = await app_of(info).create_flow_run(request)
    return {"id": run["id"], "deduplicated": deduplicated}


async def _set_flow_run_state(info, item: dict) -> dict:
    item = snake(item)
    request = api.SetStateRequest(state=state_input(item["state"]), version=item.get("version"))
    outcome = await app_of(info).set_flow_run_state(item["flow_run_id"], request, ("input", "flow_run_id"))
    return {"id": outcome["flow_run_id"], "version": outcome["version"], "state": outcome["state"], "status": outcome.get("status", "SUCCESS")}


@mutation.field("set_flow_run_state")
@mutation.field("setFlowRunState")
@translate_errors
async def resolve_set_flow_run_state(_, info, input):
    return await _set_flow_run_state(info, input)


@mutation.field("set_flow_run_states")
@translate_errors
async def resolve_set_flow_run_states(_, info, input):
    # One verdict per run; a version conflict in a batch still fails the whole call, as Prefect's
    # client expects (it sends one state per call and maps the error to VersionLockMismatch).
    return {"states": [await _set_flow_run_state(info, item) for item in input["states"]]}


@mutation.field("cancel_flow_run")
@translate_errors
async def resolve_cancel_flow_run(_, info, input):
    return {"state": (await app_of(info).cancel_flow_run(input["flow_run_id"], None))["state"]}


@mutation.field("set_flow_run_name")
@translate_errors
async def resolve_set_flow_run_name(_, info, input):
    await app_of(info).rename_flow_run(input["flow_run_id"], api.RenameRequest(name=input["name"]).name)  # REST's checks
    return {"success": True}


@mutation.field("update_flow_run_heartbeat")
@translate_errors
async def resolve_flow_run_heartbeat(_, info, input):
    await app_of(info).flow_run_heartbeat(input["flow_run_id"])
    return {"success": True}


bindables = [query, mutation, flow_run_type]
