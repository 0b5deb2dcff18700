"""Concurrency limits (Prefect Cloud): flow runs by label, task runs by tag."""

from __future__ import annotations

from ariadne import MutationType, QueryType

from runledger.services.ingress.graphql.coercion import json_object
from runledger.services.ingress.graphql.errors import error, translate_errors
from runledger.services.ingress.graphql.views import page

query, mutation = QueryType(), MutationType()


def scheduling_of(info):
    return info.context["request"].app.state.scheduling


@query.field("flow_concurrency_limit")
@translate_errors
async def resolve_flow_limits(_, info, where=None, order_by=None, limit=None, offset=None):
    return page(await scheduling_of(info).limits("label"), json_object(where, "where"), order_by, limit, offset)


@query.field("task_tag_limit")
@translate_errors
async def resolve_task_limits(_, info, where=None, order_by=None, limit=None, offset=None):
    return page(await scheduling_of(info).limits("tag"), json_object(where, "where"), order_by, limit, offset)


@mutation.field("update_flow_concurrency_limit")
@translate_errors
async def resolve_update_flow_limit(_, info, input):
    name, label = input.get("name"), input.get("label")
    if name and label and name != label:
        raise error("give name or label (the same thing), not two different values", "BAD_USER_INPUT", field="label")
    return {"id": (await scheduling_of(info).set_limit("label", name or label, input["limit"]))["id"]}


@mutation.field("update_task_tag_limit")
@translate_errors
async def resolve_update_task_limit(_, info, input):
    return {"id": (await scheduling_of(info).set_limit("tag", input["tag"], input["limit"]))["id"]}


@mutation.field("delete_flow_concurrency_limit")
@mutation.field("delete_task_tag_limit")
@translate_errors
async def resolve_delete_limit(_, info, input):
    if not await scheduling_of(info).delete_limit(input["limit_id"]):
        raise error(f"no concurrency limit with id {input['limit_id']}", "NOT_FOUND", field="limit_id")
    return {"success": True}


bindables = [query, mutation]
