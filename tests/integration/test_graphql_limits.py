"""No single request starves the rest: documents over the limits are refused before execution,
every error carries a code, and plain requests keep being answered meanwhile."""

from __future__ import annotations

import asyncio

import httpx
import pytest


def gql(stack, query: str, variables=None, path: str = "/graphql") -> httpx.Response:
    return httpx.post(stack.api_url + path, json={"query": query, "variables": variables}, timeout=30)


def only_error(r: httpx.Response) -> dict:
    body = r.json()
    assert "data" not in body or body["data"] is None, body
    assert len(body["errors"]) == 1, body
    return body["errors"][0]


def test_huge_documents_are_refused_by_the_parser(stack):
    fields = " ".join(f"a{i}: flow_run(limit: 1) {{ id }}" for i in range(2000))
    error = only_error(gql(stack, "{ %s }" % fields))
    assert error["extensions"] == {"code": "QUERY_LIMIT_EXCEEDED", "limit": "max_tokens", "maximum": 5000}


def test_too_many_aliases_are_refused_naming_the_limit(stack):
    fields = " ".join(f"a{i}: flow_run(limit: 1) {{ id }}" for i in range(31))
    r = gql(stack, "{ %s }" % fields)
    assert r.status_code == 400
    error = only_error(r)
    assert error["extensions"]["code"] == "QUERY_LIMIT_EXCEEDED"
    assert error["extensions"]["limit"] == "max_aliases"
    assert "aliases" in error["message"]


@pytest.mark.parametrize("limit", [5000, "$n"])
def test_a_limit_over_the_maximum_is_refused(stack, limit):
    if limit == "$n":
        r = gql(stack, "query($n: Int) { flow_run(limit: $n) { id } }", {"n": 5000})
    else:
        r = gql(stack, "{ flow_run(limit: %s) { id } }" % limit)
    assert r.status_code == 400
    error = only_error(r)
    assert error["extensions"] == {"code": "QUERY_LIMIT_EXCEEDED", "limit": "max_limit", "field": "flow_run", "maximum": 1000}


def test_a_negative_limit_is_bad_input(stack):
    error = only_error(gql(stack, "{ flow_run(limit: -1) { id } }"))
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "limit must be an integer from 0" in error["message"]


def test_nested_lists_multiply_into_a_cost_limit(stack):
    r = gql(stack, "{ flow_run(limit: 1000) { id task_runs(limit: 1000) { id states { version } } } }")
    assert r.status_code == 400
    error = only_error(r)
    assert error["extensions"]["limit"] == "max_cost"
    assert error["extensions"]["value"] > error["extensions"]["maximum"]


def test_deep_documents_are_refused(stack):
    levels = 7  # each level is flow_run -> flow -> flow_runs: 2 + 2*7 levels > 12
    inner = "id"
    for _ in range(levels):
        inner = "flow { flow_runs(limit: 1) { %s } }" % inner
    error = only_error(gql(stack, "{ flow_run(limit: 1) { %s } }" % inner))
    assert error["extensions"]["limit"] == "max_depth"


def test_request_errors_carry_codes(stack):
    assert only_error(gql(stack, "{ flow_run(limit: 1) { id "))["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
    assert only_error(gql(stack, "{ no_such_field }"))["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    r = httpx.post(stack.api_url + "/graphql", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


def test_graphql_is_served_at_the_root_for_the_prefect_client(stack):
    r = gql(stack, "query { hello }", path="/")
    assert r.status_code == 200
    assert r.json() == {"data": {"hello": "hello"}}


async def test_plain_requests_are_answered_while_abusive_documents_are_refused(stack):
    abusive = "{ %s }" % " ".join(f"a{i}: flow_run(limit: 1000) {{ id states {{ version }} }}" for i in range(2000))
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:

        async def abuse():
            return await client.post("/graphql", json={"query": abusive})

        async def plain():
            return await client.get("/api/v1/projects")

        results = await asyncio.gather(*(abuse() for _ in range(8)), *(plain() for _ in range(20)))
    abused, plains = results[:8], results[8:]
    assert all(r.status_code == 400 and r.json()["errors"][0]["extensions"]["code"] == "QUERY_LIMIT_EXCEEDED" for r in abused)
    assert [r.status_code for r in plains] == [200] * len(plains), [r.text[:200] for r in plains if r.status_code != 200][:3]
