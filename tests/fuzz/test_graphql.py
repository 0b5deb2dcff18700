"""Random GraphQL against the stack: documents from the schema (hypothesis-graphql, valid ones and
ones with a schema violation), and operations whose variables are random (of the declared shape,
or any JSON). Whatever is sent, the answer is never a 5xx, is JSON, and every error in it is a
GraphQL error with ``extensions.code``.

Bounded and reproducible like ``test_openapi.py``: ``RUNLEDGER_FUZZ_EXAMPLES`` (x 6 documents per
test), derandomized; ``RUNLEDGER_FUZZ_URL`` fuzzes a stack that is already running.
"""

from __future__ import annotations

import json
import os
from typing import Any

import graphql
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, mutations, nodes, queries

from runledger.domain.states import StateType
from runledger.services.ingress.graphql import schema as executable_schema

EXAMPLES = int(os.environ.get("RUNLEDGER_FUZZ_EXAMPLES", "6")) * 6
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
SCHEMA = executable_schema

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
# JSON arguments the resolvers read: Prefect-style states, Hasura-style filters and orders.
FIELDS = ["id", "name", "state", "flow_id", "labels", "version", "scheduled_start_time", "timestamp", "level", "project_id"]
OPERATORS = ["_eq", "_neq", "_in", "_nin", "_gt", "_gte", "_lt", "_lte", "_like", "_ilike", "_is_null", "_contains", "_has_key"]
plausible_json = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from([s.value for s in StateType]) | st.text(max_size=10)}, optional={"message": st.text(max_size=20)}),
    st.dictionaries(st.sampled_from(FIELDS), st.dictionaries(st.sampled_from(OPERATORS), json_values, max_size=2), max_size=3),
    st.dictionaries(st.sampled_from(["_and", "_or", "_not"]), st.lists(st.dictionaries(st.sampled_from(FIELDS), st.dictionaries(st.sampled_from(OPERATORS), json_values, max_size=1), max_size=2), max_size=2) | json_values, max_size=2),
    st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(["asc", "desc", "asc_nulls_first", "x"]), max_size=2),
    json_values,
)


def _node(value: Any) -> graphql.ValueNode:
    if value is None:
        return graphql.NullValueNode()
    if isinstance(value, bool):
        return graphql.BooleanValueNode(value=value)
    if isinstance(value, int):
        return nodes.Int(value)
    if isinstance(value, float):
        return nodes.Float(value)
    if isinstance(value, str):
        return nodes.String(value)
    if isinstance(value, list):
        return graphql.ListValueNode(values=[_node(v) for v in value])
    return graphql.ObjectValueNode(
        fields=[graphql.ObjectFieldNode(name=graphql.NameNode(value=k), value=_node(v)) for k, v in value.items() if k.isidentifier()]
    )


log_records = st.fixed_dictionaries(
    {"flow_run_id": st.text(max_size=10), "message": st.text(max_size=20)},
    optional={"level": st.sampled_from(["INFO", "ERROR", "warn", "LOUD"]), "timestamp": st.text(max_size=10) | st.floats(0, 2e9), "info": json_values},
) | json_values
SCALARS = {"JSON": plausible_json.map(_node), "log_record": log_records.map(_node)}


def documents(mode: Mode):
    return queries(SCHEMA, custom_scalars=SCALARS, mode=mode) | mutations(SCHEMA, custom_scalars=SCALARS, mode=mode)


def value_of(type_: graphql.GraphQLInputType) -> st.SearchStrategy:
    """A variable value of the declared shape (big Ints and odd strings included)."""
    if isinstance(type_, graphql.GraphQLNonNull):
        return value_of(type_.of_type)
    nullable = st.none() | st.nothing()
    if isinstance(type_, graphql.GraphQLList):
        return nullable | st.lists(value_of(type_.of_type), max_size=3)
    if isinstance(type_, graphql.GraphQLInputObjectType):
        required = {n: value_of(f.type) for n, f in type_.fields.items() if isinstance(f.type, graphql.GraphQLNonNull)}
        optional = {n: value_of(f.type) for n, f in type_.fields.items() if n not in required}
        return st.fixed_dictionaries(required, optional=optional)
    if isinstance(type_, graphql.GraphQLEnumType):
        return st.sampled_from(list(type_.values))
    return {
        "Int": st.integers(min_value=-(2**40), max_value=2**40),
        "Float": st.floats(allow_nan=False, allow_infinity=False),
        "Boolean": st.booleans(),
        "JSON": plausible_json,
    }.get(type_.name, st.text(max_size=20))


def operations():
    """One operation per root field that takes arguments, every argument a variable."""
    out = []
    for kind, root in (("query", SCHEMA.query_type), ("mutation", SCHEMA.mutation_type)):
        for name, field in root.fields.items():
            if not field.args:
                continue
            declared = ", ".join(f"${a}: {t.type}" for a, t in field.args.items())
            passed = ", ".join(f"{a}: ${a}" for a in field.args)
            named = graphql.get_named_type(field.type)
            selection = " { __typename }" if isinstance(named, (graphql.GraphQLObjectType, graphql.GraphQLInterfaceType, graphql.GraphQLUnionType)) else ""
            out.append((f"{kind} Fuzz({declared}) {{ {name}({passed}){selection} }}", {a: t.type for a, t in field.args.items()}))
    return out


OPERATIONS = operations()


@st.composite
def operations_with_variables(draw):
    document, arguments = draw(st.sampled_from(OPERATIONS))
    if draw(st.booleans()):
        variables = draw(st.fixed_dictionaries({}, optional={a: value_of(t) for a, t in arguments.items()}))
    else:
        variables = draw(st.dictionaries(st.sampled_from(sorted(arguments)), json_values, max_size=len(arguments)))
    as_string = draw(st.booleans())  # Prefect 1.x sends variables JSON-encoded
    return document, variables, as_string


@pytest.fixture(scope="module")
def client(request):
    url = os.environ.get("RUNLEDGER_FUZZ_URL") or request.getfixturevalue("stack").api_url
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client


def check(response: httpx.Response, sent: dict) -> None:
    assert response.status_code < 500, f"{response.status_code} for {sent}: {response.text[:500]}"
    body = response.json()
    assert isinstance(body, dict), body
    assert response.status_code in (200, 400), f"{response.status_code} for {sent}: {body}"
    assert "errors" in body or "data" in body, body
    for error in body.get("errors") or []:
        assert isinstance(error.get("message"), str), error
        assert (error.get("extensions") or {}).get("code"), f"an error without extensions.code for {sent}: {error}"


@given(document=documents(Mode.POSITIVE))
@FUZZ
def test_valid_documents(client, document):
    sent = {"query": document}
    check(client.post("/graphql", json=sent), sent)


@given(document=documents(Mode.NEGATIVE))
@FUZZ
def test_invalid_documents(client, document):
    sent = {"query": document}
    response = client.post("/graphql", json=sent)
    check(response, sent)


@given(case=operations_with_variables())
@FUZZ
def test_random_variables(client, case):
    document, variables, as_string = case
    sent = {"query": document, "variables": json.dumps(variables) if as_string else variables}
    check(client.post("/", json=sent), sent)
