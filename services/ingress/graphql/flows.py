"""Flows: ``flow_by_pk``, ``flow`` and the nested ``flow.project`` / ``flow.flow_runs``."""

from __future__ import annotations

from ariadne import ObjectType, QueryType

from runledger.services.ingress.application import public
from runledger.services.ingress.graphql.coercion import json_object
from runledger.services.ingress.graphql.errors import translate_errors
from runledger.services.ingress.graphql.views import SCAN_LIMIT, anchor, app_of, flow_views, page, with_state_fields

query, flow_type = QueryType(), ObjectType("flow")


@query.field("flow_by_pk")
@translate_errors
async def resolve_flow_by_pk(_, info, id):
    doc = await app_of(info).read.flow(id)
    return (await flow_views(app_of(info), [doc]))[0] if doc else None


@query.field("flow")
@translate_errors
async def resolve_flows(_, info, where=None, order_by=None, limit=None, offset=None):
    app = app_of(info)
    where = json_object(where, "where")
    if (ids := anchor(where, "id")) is not None:
        docs = await app.read.flows_by_id(ids)
    elif (names := anchor(where, "name")) is not None:
        docs = [d for name in names for d in await app.read.flows_named(name)]
    elif (groups := anchor(where, "flow_group_id") or anchor(where, "version_group_id")) is not None:
        docs = []
        for group_id in groups:
            docs += await app.read.flows_by_id((await app.read.flow_group(group_id) or {}).get("flow_ids", []))
    else:
        docs = await app.read.flows(0, SCAN_LIMIT)
    views = await flow_views(app, docs)

    def related(doc, name):
        return {"id": doc["project_id"], "name": doc["_project_name"]} if name == "project" else None

    return page(views, where, order_by, limit, offset, related)


@flow_type.field("project")
async def resolve_flow_project(flow, info):
    return {"id": flow["project_id"], "name": flow.get("_project_name")} if flow.get("_project_name") else await app_of(info).read.project(flow["project_id"])


@flow_type.field("flow_runs")
async def resolve_flow_flow_runs(flow, info, order_by=None, limit=None, offset=None):
    runs, _ = await app_of(info).read.runs_of_flow(flow["id"], 0, SCAN_LIMIT)
    return page([with_state_fields(public(r)) for r in runs], None, order_by, limit, offset)


bindables = [query, flow_type]
