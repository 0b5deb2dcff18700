"""GraphQL at ``/graphql`` (ariadne, schema-first): Prefect-style mutations in both spellings the
Prefect docs use, and Hasura-style reads. Resolvers only translate: the work is in ``Application``.

Transport details Prefect 1.x clients rely on: ``variables`` may arrive as a JSON-encoded string;
resolver errors come back with HTTP 200 and ``errors[]``; a stale version carries
``extensions.code == "VERSION_LOCKING_ERROR"`` and a message starting with "State update failed".
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import orjson
from ariadne import MutationType, ObjectType, QueryType, ScalarType, graphql, make_executable_schema
from ariadne.explorer import ExplorerGraphiQL
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, ORJSONResponse
from graphql import GraphQLError
from graphql.utilities import value_from_ast_untyped
from pydantic import ValidationError

from runledger.services.ingress.application import Application, CommandRejected, public
from runledger.services.runtime.bus import CommandTimeout
from runledger import api_models as api
from runledger.domain.run_requests import RequestError
from runledger.readmodel.filters import matches, order

SCAN_LIMIT = 1000  # reads that are not anchored on an id look at the newest this many documents

json_scalar = ScalarType("JSON")


@json_scalar.literal_parser
def _parse_json_literal(ast, variables=None):
    return value_from_ast_untyped(ast, variables)


query, mutation = QueryType(), MutationType()
flow_run_type, task_run_type, flow_type = ObjectType("flow_run"), ObjectType("task_run"), ObjectType("flow")


def app_of(info) -> Application:
    return info.context["request"].app.state.application


# -- errors ------------------------------------------------------------------------------------
def _error(message: str, code: str, **extensions: Any) -> GraphQLError:
    return GraphQLError(message, extensions={**extensions, "code": code})


def translate_errors(resolver):
    @functools.wraps(resolver)
    async def wrapper(*args, **kwargs):
        try:
            return await resolver(*args, **kwargs)
        except CommandRejected as rejected:
            r = rejected.rejection
            code = "VERSION_LOCKING_ERROR" if r.code == "VERSION_MISMATCH" else r.code
            raise _error(r.message, code, **{**r.details, "rule": r.rule, "field": r.field}) from None
        except RequestError as exc:
            raise _error(str(exc), "BAD_USER_INPUT", status=exc.status, errors=[e.as_dict() for e in exc.errors]) from None
        except ValidationError as exc:
            errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
            message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
            raise _error(message, "BAD_USER_INPUT", errors=errors) from None
        except CommandTimeout as exc:
            raise _error(str(exc), "API_ERROR") from None

    return wrapper


# -- argument conversion -------------------------------------------------------------------------
def _json_object(value: Any, field: str) -> dict | None:
    """JSON arguments may be objects or JSON-encoded strings (``parameters: "{\\"a\\":2}"``)."""
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            decoded = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise _error(f"{field}: not valid JSON ({exc})", "BAD_USER_INPUT", field=field) from None
        if isinstance(decoded, dict):
            return decoded
    raise _error(f"{field}: expected a JSON object", "BAD_USER_INPUT", field=field)


def _state_input(value: Any) -> api.StateInput:
    """A Prefect-style state dict (``{type, message, ...}``), kept whole as ``serialized``."""
    state = _json_object(value, "state")
    result = state.get("_result") if isinstance(state.get("_result"), dict) else {}
    return api.StateInput(
        type=state.get("type"),
        message=state.get("message"),
        start_time=state.get("start_time"),
        result_location=state.get("result_location") or result.get("location"),
        serialized=state,
    )


CAMEL = {
    "flowId": "flow_id", "versionGroupId": "version_group_id", "flowName": "flow_name", "projectName": "project_name",
    "runConfig": "run_config", "scheduledStartTime": "scheduled_start_time", "idempotencyKey": "idempotency_key",
    "flowRunName": "flow_run_name", "flowRunId": "flow_run_id", "flowGroupId": "flow_group_id",
}


def _snake(data: dict) -> dict:
    return {CAMEL.get(k, k): v for k, v in data.items()}


# -- document views ------------------------------------------------------------------------------
def _serialized(entry: dict | None) -> dict | None:
    if not entry:
        return None
    return entry.get("serialized") or {k: entry.get(k) for k in ("type", "message", "start_time", "result_location")}


def _with_state_fields(doc: dict) -> dict:
    state = doc.get("state") or {}
    return {
        **doc,
        "state": state.get("type"),
        "state_message": state.get("message"),
        "state_timestamp": state.get("timestamp"),
        "state_start_time": state.get("start_time") or state.get("timestamp"),
        "serialized_state": _serialized(state),
        "result_location": state.get("result_location"),
        "_state_entries": doc.get("states", []),
    }


def _state_view(entry: dict) -> dict:
    return {**entry, "state": entry["type"], "serialized_state": _serialized(entry), "created": entry.get("timestamp")}


def _task_run_view(doc: dict) -> dict:
    view = _with_state_fields(public(doc))
    view["task"] = {"id": doc["task_id"], "slug": doc["task_slug"], "name": doc.get("task_name"), "tags": doc.get("tags", [])}
    return view


def _page(docs: list[dict], where, order_by, limit, offset, related=None) -> list[dict]:
    try:
        selected = [d for d in docs if matches(d, where, related)]
    except ValueError as exc:
        raise _error(f"where: {exc}", "BAD_USER_INPUT") from None
    selected = order(selected, order_by)
    offset = offset or 0
    return selected[offset : offset + limit if limit is not None else None]


def _anchor(where: dict | None, field_name: str) -> list[str] | None:
    """Ids a filter pins ``field_name`` to (``_eq``/``_in`` at the top level or inside ``_and``)."""
    if not where:
        return None
    condition = where.get(field_name)
    if isinstance(condition, dict):
        if "_eq" in condition:
            return [condition["_eq"]]
        if "_in" in condition:
            return list(condition["_in"])
    parts = where.get("_and")
    for part in parts if isinstance(parts, list) else [parts] if isinstance(parts, dict) else []:
        found = _anchor(part, field_name)
        if found is not None:
            return found
    return None


# -- queries -------------------------------------------------------------------------------------
@query.field("hello")
async def resolve_hello(*_):
    return "hello"


@query.field("project")
@translate_errors
async def resolve_projects(_, info, where=None, order_by=None, limit=None, offset=None):
    return _page(await app_of(info).read.projects(), where, order_by, limit, offset)


async def _flow_views(app: Application, docs: list[dict]) -> list[dict]:
    names = await app.read.project_names()  # project id -> name
    return [{**public(d), "_project_name": names.get(d["project_id"])} for d in docs]


@query.field("flow_by_pk")
@translate_errors
async def resolve_flow_by_pk(_, info, id):
    doc = await app_of(info).read.flow(id)
    return (await _flow_views(app_of(info), [doc]))[0] if doc else None


@query.field("flow")
@translate_errors
async def resolve_flows(_, info, where=None, order_by=None, limit=None, offset=None):
    app = app_of(info)
    where = _json_object(where, "where")
    if (ids := _anchor(where, "id")) is not None:
        docs = await app.read.flows_by_id(ids)
    elif (names := _anchor(where, "name")) is not None:
        docs = [d for name in names for d in await app.read.flows_named(name)]
    elif (groups := _anchor(where, "flow_group_id") or _anchor(where, "version_group_id")) is not None:
        docs = []
        for group_id in groups:
            docs += await app.read.flows_by_id((await app.read.flow_group(group_id) or {}).get("flow_ids", []))
    else:
        docs = await app.read.flows(0, SCAN_LIMIT)
    views = await _flow_views(app, docs)

    def related(doc, name):
        return {"id": doc["project_id"], "name": doc["_project_name"]} if name == "project" else None

    return _page(views, where, order_by, limit, offset, related)


@query.field("flow_run_by_pk")
@translate_errors
async def resolve_flow_run_by_pk(_, info, id):
    doc = await app_of(info).read.flow_run(id)
    return _with_state_fields(public(doc)) if doc else None


@query.field("flow_run")
@translate_errors
async def resolve_flow_runs(_, info, where=None, order_by=None, limit=None, offset=None):
    app = app_of(info)
    where = _json_object(where, "where")
    if (ids := _anchor(where, "id")) is not None:
        docs = await app.read.flow_runs(ids)
    elif (flow_ids := _anchor(where, "flow_id")) is not None:
        docs = []
        for flow_id in flow_ids:
            docs += (await app.read.runs_of_flow(flow_id, 0, SCAN_LIMIT))[0]
    else:
        docs = await app.read.recent_flow_runs(0, SCAN_LIMIT)
    views = [_with_state_fields(public(d)) for d in docs]
    return _page(views, where, order_by, limit, offset, _related_of_flow_run(views))


def _related_of_flow_run(views):
    def related(doc, name):
        if name == "states":
            return [_state_view(e) for e in doc["_state_entries"]]
        raise ValueError(f"filtering flow runs on {name!r} is not supported")

    return related


@query.field("task_run_by_pk")
@translate_errors
async def resolve_task_run_by_pk(_, info, id):
    doc = await app_of(info).read.task_run(id)
    return _task_run_view(doc) if doc else None


@query.field("task_run")
@translate_errors
async def resolve_task_runs(_, info, where=None, order_by=None, limit=None, offset=None):
    app = app_of(info)
    where = _json_object(where, "where")
    if (ids := _anchor(where, "id")) is not None:
        docs = await app.read.task_runs(ids)
    elif (run_ids := _anchor(where, "flow_run_id")) is not None:
        runs = await app.read.flow_runs(run_ids)
        docs = await app.read.task_runs([tr for run in runs for tr in run["task_run_ids"]])
    else:
        raise _error("task_run queries must name an id or a flow_run_id in where", "BAD_USER_INPUT", field="where")
    views = [_task_run_view(d) for d in docs]
    return _page(views, where, order_by, limit, offset, lambda doc, name: doc["task"] if name == "task" else None)


# -- nested fields -------------------------------------------------------------------------------
@flow_type.field("project")
async def resolve_flow_project(flow, info):
    return {"id": flow["project_id"], "name": flow.get("_project_name")} if flow.get("_project_name") else await app_of(info).read.project(flow["project_id"])


@flow_type.field("flow_runs")
async def resolve_flow_flow_runs(flow, info, order_by=None, limit=None, offset=None):
    runs, _ = await app_of(info).read.runs_of_flow(flow["id"], 0, SCAN_LIMIT)
    return _page([_with_state_fields(public(r)) for r in runs], None, order_by, limit, offset)


@flow_run_type.field("flow")
async def resolve_run_flow(run, info):
    doc = await app_of(info).read.flow(run["flow_id"])
    return (await _flow_views(app_of(info), [doc]))[0] if doc else None


@flow_run_type.field("states")
@task_run_type.field("states")
async def resolve_states(run, info, where=None, order_by=None):
    views = [_state_view(e) for e in run["_state_entries"]]
    return _page(views, _json_object(where, "where"), order_by, None, None)


@flow_run_type.field("task_runs")
async def resolve_run_task_runs(run, info, where=None, order_by=None, limit=None):
    docs = await app_of(info).read.task_runs(run["task_run_ids"])
    views = [_task_run_view(d) for d in docs]
    return _page(views, _json_object(where, "where"), order_by, limit, None, lambda doc, name: doc["task"] if name == "task" else None)


@task_run_type.field("flow_run")
async def resolve_task_run_flow_run(task_run, info):
    doc = await app_of(info).read.flow_run(task_run["flow_run_id"])
    return _with_state_fields(public(doc)) if doc else None


# -- mutations -----------------------------------------------------------------------------------
@mutation.field("create_project")
@translate_errors
async def resolve_create_project(_, info, input):
    project = await app_of(info).create_project(api.CreateProjectRequest(name=input["name"], description=input.get("description")))
    return {"id": project["id"]}


@mutation.field("create_flow_run")
@mutation.field("createFlowRun")
@translate_errors
async def resolve_create_flow_run(_, info, input):
    data = _snake(input)
    # Prefect's docs also call the version group the "flow group" (seed 003); they are one id here.
    if (group_id := data.pop("flow_group_id", None)) is not None:
        if data.get("version_group_id") not in (None, group_id):
            raise _error("give flow_group_id or version_group_id, not two different ids", "BAD_USER_INPUT", field="flow_group_id")
        data["version_group_id"] = group_id
    for name in ("parameters", "context", "run_config"):
        data[name] = _json_object(data.get(name), name)
    request = api.CreateFlowRunRequest.model_validate({k: v for k, v in data.items() if v is not None})
    run, deduplicated = await app_of(info).create_flow_run(request)
    return {"id": run["id"], "deduplicated": deduplicated}


async def _set_flow_run_state(info, item: dict) -> dict:
    item = _snake(item)
    request = api.SetStateRequest(state=_state_input(item["state"]), version=item.get("version"))
    outcome = await app_of(info).set_flow_run_state(item["flow_run_id"], request, ("input", "flow_run_id"))
    return {"id": outcome["flow_run_id"], "version": outcome["version"], "state": outcome["state"], "status": "SUCCESS"}


async def _set_task_run_state(info, item: dict) -> dict:
    request = api.SetStateRequest(state=_state_input(item["state"]), version=item.get("version"))
    outcome = await app_of(info).set_task_run_state(item["task_run_id"], request, ("input", "task_run_id"))
    return {"id": outcome["task_run_id"], "version": outcome["version"], "state": outcome["state"], "status": "SUCCESS"}


@mutation.field("set_flow_run_state")
@mutation.field("setFlowRunState")
@translate_errors
async def resolve_set_flow_run_state(_, info, input):
    return await _set_flow_run_state(info, input)


@mutation.field("set_task_run_state")
@translate_errors
async def resolve_set_task_run_state(_, info, input):
    return await _set_task_run_state(info, input)


@mutation.field("set_flow_run_states")
@translate_errors
async def resolve_set_flow_run_states(_, info, input):
    # One verdict per run; a version conflict in a batch still fails the whole call, as Prefect's
    # client expects (it sends one state per call and maps the error to VersionLockMismatch).
    return {"states": [await _set_flow_run_state(info, item) for item in input["states"]]}


@mutation.field("set_task_run_states")
@translate_errors
async def resolve_set_task_run_states(_, info, input):
    return {"states": [await _set_task_run_state(info, item) for item in input["states"]]}


@mutation.field("cancel_flow_run")
@translate_errors
async def resolve_cancel_flow_run(_, info, input):
    return {"state": (await app_of(info).cancel_flow_run(input["flow_run_id"], None))["state"]}


@mutation.field("set_flow_run_name")
@translate_errors
async def resolve_set_flow_run_name(_, info, input):
    await app_of(info).rename_flow_run(input["flow_run_id"], input["name"])
    return {"success": True}


@mutation.field("set_task_run_name")
@translate_errors
async def resolve_set_task_run_name(_, info, input):
    await app_of(info).rename_task_run(input["task_run_id"], input["name"])
    return {"success": True}


@mutation.field("update_flow_run_heartbeat")
@translate_errors
async def resolve_flow_run_heartbeat(_, info, input):
    await app_of(info).flow_run_heartbeat(input["flow_run_id"])
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
    view = _task_run_view(await app_of(info).get_or_create_task_run(request))
    return {"id": view["id"], "version": view["version"], "state": view["state"], "serialized_state": view["serialized_state"]}


schema = make_executable_schema(
    (Path(__file__).parent / "schema.graphql").read_text(),
    [query, mutation, json_scalar, flow_run_type, task_run_type, flow_type],
)
_explorer = ExplorerGraphiQL(title="RunLedger GraphQL").html(None)


def mount_graphql(app: FastAPI) -> None:
    @app.get("/graphql", include_in_schema=False)
    async def explorer() -> HTMLResponse:
        return HTMLResponse(_explorer)

    @app.post("/graphql", tags=["graphql"])
    async def execute(request: Request) -> ORJSONResponse:
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return ORJSONResponse({"errors": [{"message": f"body: malformed JSON ({exc})"}]}, status_code=400)
        if not isinstance(data, dict) or not isinstance(data.get("query"), str):
            return ORJSONResponse({"errors": [{"message": "body: expected an object with a 'query' string"}]}, status_code=400)
        if isinstance(data.get("variables"), str):  # Prefect 1.x sends json.dumps(variables)
            try:
                data["variables"] = orjson.loads(data["variables"]) if data["variables"] else None
            except orjson.JSONDecodeError as exc:
                return ORJSONResponse({"errors": [{"message": f"variables: malformed JSON ({exc})"}]}, status_code=400)
        success, result = await graphql(schema, data, context_value={"request": request})
        return ORJSONResponse(result, status_code=200 if success or _field_errors_only(result) else 400)


def _field_errors_only(result: dict) -> bool:
    """Errors raised while resolving fields carry a ``path`` and are answered with 200, as Prefect's
    client requires (it only reads ``errors`` on a 2xx). Request errors (a document that does not
    parse or validate, variables that do not fit their types) have no path and are answered with
    400, like ariadne's own handler does."""
    errors = result.get("errors") or []
    return "data" in result and all(error.get("path") for error in errors)
