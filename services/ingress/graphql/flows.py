"""Flows: ``flow_by_pk``, ``flow`` and the nested ``flow.project`` / ``flow.flow_runs``."""

from __future__ import annotations

from ariadne import ObjectType, QueryType

from runledger.services.ingress.graphql.coercion import json_object
from runledger.services.ingress.graphql.errors import absent, translate_errors
from runledger.readmodel.planner import Plan
from runledger.services.ingress.graphql.views import anchor, app_of, flow_run_view, flow_views, page, planned, report_scan
from runledger.services.runtime.stores import Walk

query, flow_type = QueryType(), ObjectType("flow")


@query.field("flow_by_pk")
@translate_errors
async def resolve_flow_by_pk(_, info, id):
    doc = await app_of(info).read.flow(id)
    return (await flow_views(app_of(info), [doc]))[0] if doc else await absent(info)


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
    else:  # no index: the newest flows, bounded, and said so
        limit_ = app.read.scan_limit
        docs = await app.read.flows(0, limit_)
        total = await app.read.flow_count()
        walk = Walk(docs, examined=len(docs), truncated=total > len(docs))
        report_scan(info, Plan("flow", "scan", index="flows", reason="no index fits the filter"), walk, limit_)
    views = await flow_views(app, docs)

    def related(doc, name):
        return {"id": doc["project_id"], "name": doc["_project_name"]} if name == "project" else None

    return page(views, where, order_by, limit, offset, related)


@flow_type.field("project")
async def resolve_flow_project(flow, info):
    return {"id": flow["project_id"], "name": flow.get("_project_name")} if flow.get("_project_name") else await app_of(info).read.project(flow["project_id"])


@flow_type.field("flow_runs")
async def resolve_flow_flow_runs(flow, info, order_by=None, limit=None, offset=None):
    return await planned(info, "flow_run", {"flow_id": {"_eq": flow["id"]}}, order_by, limit, offset, flow_run_view)


bindables = [query, flow_type]
