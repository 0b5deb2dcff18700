"""Agents: ``register_agent``, the ``agent`` read (R8) and ``get_runs_in_queue`` (each poll)."""

from __future__ import annotations

from ariadne import MutationType, QueryType

from runledger.services.ingress.graphql.coercion import json_object
from runledger.services.ingress.graphql.errors import translate_errors
from runledger.services.ingress.graphql.views import page
from runledger.services.runtime.scheduling_gate import current_agent_id

query, mutation = QueryType(), MutationType()


def scheduling_of(info):
    return info.context["request"].app.state.scheduling


@query.field("agent")
@translate_errors
async def resolve_agents(_, info, where=None, order_by=None, limit=None, offset=None):
    return page(await scheduling_of(info).agents(), json_object(where, "where"), order_by, limit, offset)


@query.field("agent_by_pk")
@translate_errors
async def resolve_agent_by_pk(_, info, id):
    return next((a for a in await scheduling_of(info).agents() if a["id"] == id), None)


@mutation.field("register_agent")
@translate_errors
async def resolve_register_agent(_, info, input):
    return await scheduling_of(info).register_agent(input)


@mutation.field("get_runs_in_queue")
@translate_errors
async def resolve_get_runs_in_queue(_, info, input):
    # The agent's last contact is noted by the X-PREFECT-AGENT-ID middleware, on any request; its id
    # also takes offer leases (runs it was just offered are skipped for other agents for a moment).
    agent_id = current_agent_id.get()
    return {"flow_run_ids": await scheduling_of(info).runs_in_queue(input.get("labels"), input.get("before"), agent_id, touch=False)}


bindables = [query, mutation]
