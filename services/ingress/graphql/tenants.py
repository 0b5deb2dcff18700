"""Tenants: the ``tenant`` read and ``create_tenant`` for the Prefect 1.x client.

RunLedger serves a single tenant that always exists (``DEFAULT_TENANT``, slug ``default``), as a
Prefect Server with one tenant row. ``create_tenant`` for that slug answers its id (so the Server
set-up step ``prefect server create-tenant --name default --slug default`` works and can be
repeated); another slug is refused with a message that says why, rather than pretending to create
a tenant that no read would show.
"""

from __future__ import annotations

import re

from ariadne import MutationType, QueryType

from runledger.domain.registry import DEFAULT_TENANT
from runledger.services.ingress.graphql.coercion import json_object
from runledger.services.ingress.graphql.errors import error, translate_errors
from runledger.services.ingress.graphql.views import page

query, mutation = QueryType(), MutationType()


def slugify(name: str) -> str:
    """Close to python-slugify, which the client uses when no slug is given."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@query.field("tenant")
@translate_errors
async def resolve_tenants(_, info, where=None, order_by=None, limit=None, offset=None):
    return page([dict(DEFAULT_TENANT)], json_object(where, "where"), order_by, limit, offset)


@mutation.field("create_tenant")
@translate_errors
async def resolve_create_tenant(_, info, input):
    slug = input.get("slug") or slugify(input["name"])
    if slug == DEFAULT_TENANT["slug"]:
        return {"id": DEFAULT_TENANT["id"]}
    raise error(
        f"RunLedger serves a single tenant, slug {DEFAULT_TENANT['slug']!r} (id {DEFAULT_TENANT['id']}), which always "
        f"exists; it cannot create tenant {slug!r}. Skip this step, or create the tenant with --slug {DEFAULT_TENANT['slug']}.",
        "BAD_USER_INPUT",
        field="slug",
    )


bindables = [query, mutation]
