"""Projects: the ``project`` read and ``create_project``."""

from __future__ import annotations

from ariadne import MutationType, QueryType

from runledger import api_models as api
from runledger.services.ingress.graphql.errors import translate_errors
from runledger.services.ingress.graphql.views import app_of, page

query, mutation = QueryType(), MutationType()


@query.field("project")
@translate_errors
async def resolve_projects(_, info, where=None, order_by=None, limit=None, offset=None):
    return page(await app_of(info).read.projects(), where, order_by, limit, offset)


@mutation.field("create_project")
@translate_errors
async def resolve_create_project(_, info, input):
    project = await app_of(info).create_project(api.CreateProjectRequest(name=input["name"], description=input.get("description")))
    return {"id": project["id"]}


bindables = [query, mutation]
