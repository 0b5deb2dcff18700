"""Task runs: reads, state changes, rename, heartbeat, ``get_or_create_task_run_info``, and the
nested ``task_run.flow_run`` / ``.states``."""

from __future__ import annotations

from ariadne import MutationType, ObjectType, QueryType

from runledger import api_models as api
from runledger.readmodel.planner import conjuncts
from runledger.services.ingress.application import public
from runledger.services.ingress.graphql.coercion import json_object, state_input
from runledger.services.ingress.graphql.errors import absent, translate_errors
from runledger.services.ingress.graphql.views import app_of, page, planned, state_view, task_run_view, with_state_fields

query, mutation, task_run_type = QueryType(), MutationType(), ObjectType("task_run")


# -- reads ---------------------------------------------------------------------------------------
@query.field("task_run_by_pk")
@translate_errors
async def resolve_task_run_by_pk(_, info, id):
    doc = await app_of(info).read.task_run(id)
    return task_run_view(doc) if doc else await absent(info)


@query.field("task_run")
@translate_errors
async def resolve_task_runs(_, info, where=None, order_by=None, limit=None, offset=None):
    where = json_object(where, "where")
    runs: dict[str, dict] = {}
    if where and any(key == "flow_run" for key, _ in conjuncts(where)):
        # R17 filters on the task run's flow run: load the runs the where names (by flow_run_id)
        run_ids = [v for key, c in conjuncts(where) if key == "flow_run_id" and isinstance(c, dict) for v in
                   ([c["_eq"]] if "_eq" in c else c.get("_in", []) if isinstance(c.get("_in"), list) else [])]
        runs = {d["id"]: with_state_fields(public(d)) for d in await app_of(info).read.flow_runs(run_ids)}

    def related(doc, name):
        if name == "task":
            return doc["task"]
        if name == "flow_run":
            return runs.get(doc["flow_run_id"])
        raise ValueError(f"filtering task runs on {name!r} is not supported")

    return await planned(info, "task_run", where, order_by, limit, offset, task_run_view, related)


# -- nested fields -------------------------------------------------------------------------------
@task_run_type.field("flow_run")
async def resolve_task_run_flow_run(task_run, info):
    doc = await app_of(info).read.flow_run(task_run["flow_run_id"])
    return with_state_fields(public(doc)) if doc else None


@task_run_type.field("states")
async def resolve_states(run, info, where=None, order_by=None):
    views = [state_view(e) for e in run["_state_entries"]]
    return page(views, json_object(where, "where"), order_by, None, None)


# -- mutations -----------------------------------------------------------------------------------
async def _set_task_run_state(info, item: dict) -> dict:
    request = api.SetStateRequest(state=state_input(item["state"]), version=item.get("version"))
    outcome = await app_of(info).set_task_run_state(item["task_run_id"], request, ("input", "task_run_id"))
    return {"id": outcome["task_run_id"], "version": outcome["version"], "state": outcome["state"], "status": outcome.get("status", "SUCCESS")}


@mutation.field("set_task_run_state")
@translate_errors
async def resolve_set_task_run_state(_, info, input):
    return await _set_task_run_state(info, input)


@mutation.field("set_task_run_states")
@translate_errors
async def resolve_set_task_run_states(_, info, input):
    return {"states": [await _set_task_run_state(info, item) for item in input["states"]]}


@mutation.field("set_task_run_name")
@translate_errors
async def resolve_set_task_run_name(_, info, input):
    await app_of(info).rename_task_run(input["task_run_id"], api.RenameRequest(name=input["name"]).name)  # REST's checks
    return {"success": True}


@mutation.field("update_task_run_heartbeat")
@translate_errors
async def resolve_task_run_heartbeat(_, info, input):
    await app_of(info).task_run_heartbeat(input["task_run_id"])
    return {"success": True}


@mutation.field("get_or_create_task_run_info")
@translate_errors
async def resolve_get_or_create_task_run(_, info, input):
    request = api.GetOrCreateTaskRunRequest(
        flow_run_id=input["flow_run_id"], task_id=input["task_id"], map_index=input.get("map_index") if input.get("map_index") is not None else -1
    )
    view = task_run_view(await app_of(info).get_or_create_task_run(request))
    return {"id": view["id"], "version": view["version"], "state": view["state"], "serialized_state": view["serialized_state"]}


bindables = [query, mutation, task_run_type]
