"""GraphQL at ``/graphql`` (ariadne, schema-first): Prefect-style mutations in both spellings the
Prefect docs use, and Hasura-style reads. Resolvers only translate: the work is in ``Application``.

Layout: one module per resource with its schema beside it (``flow_runs.py`` + ``flow_runs.graphql``),
each exporting ``bindables``; ``base.graphql`` holds the ``JSON`` scalar, the ``Query``/``Mutation``
roots and shared payload types, and resource schemas ``extend type Query``/``Mutation``. A new
resource (agents, logs, concurrency limits, ...) is a new ``<resource>.py`` + ``<resource>.graphql``
pair and one entry in ``RESOURCES``. Shared pieces: ``errors`` (domain errors as GraphQL errors),
``coercion`` (argument decoding), ``views`` (documents as GraphQL objects, filter/order/page),
``transport`` (the HTTP endpoint).

A stale version carries ``extensions.code == "VERSION_LOCKING_ERROR"`` and a message starting with
"State update failed" (see ``runledger.services.ingress.errors`` for the rejection table).
"""

from __future__ import annotations

from pathlib import Path

from ariadne import QueryType, make_executable_schema
from fastapi import FastAPI

from runledger.services.ingress.graphql import flow_runs, flows, logs, projects, task_runs, transport
from runledger.services.ingress.graphql import artifacts, registration, tenants  # the Prefect 1.x client's extras
from runledger.services.ingress.graphql import agents, concurrency_limits, schedules  # scheduling
from runledger.services.ingress.graphql.coercion import json_scalar
from runledger.services.ingress.graphql.limits import DocumentLimits

RESOURCES = (projects, flows, flow_runs, task_runs, logs, tenants, registration, artifacts, agents, concurrency_limits, schedules)

base_query = QueryType()


@base_query.field("hello")
async def resolve_hello(*_):
    return "hello"


def type_defs() -> list[str]:
    """Every ``*.graphql`` file of this package, sorted by name so the schema is deterministic."""
    return [path.read_text() for path in sorted(Path(__file__).parent.glob("*.graphql"))]


schema = make_executable_schema(
    type_defs(),
    [json_scalar, base_query, *(bindable for resource in RESOURCES for bindable in resource.bindables)],
)


def mount_graphql(app: FastAPI, limits: DocumentLimits) -> None:
    transport.mount(app, schema, limits)
