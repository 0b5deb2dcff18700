"""Reads through the secondary indexes, with more runs than the scan limit (1,000): the oldest
Scheduled run is found exactly, REST pages through a filter with a cursor, and a read that no
index fits says that it scanned."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from runledger.services.devstack import Stack
from tests.conftest import register, unique

RUNS = 1100
BASE = datetime(2030, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def own_stack():
    with Stack(own_redis=True, partitions=4) as s:
        yield s


@pytest.fixture(scope="module")
def world(own_stack):
    """1,100 runs of one flow, created in shuffled order with distinct scheduled start times;
    every 7th carries label gpu; the 50 earliest-scheduled are moved to Running, so the oldest
    Scheduled run is number 50 (indexes must have dropped the others from Scheduled)."""
    with httpx.Client(base_url=own_stack.api_url + "/api/v1", timeout=60) as api:
        project = api.post("/projects", json={"name": unique("proj")}).json()
        flow = register(api, project, labels=["base"])
    order = list(range(RUNS))
    random.Random(5).shuffle(order)

    async def build():
        async with httpx.AsyncClient(base_url=own_stack.api_url + "/api/v1", timeout=60, limits=httpx.Limits(max_connections=64)) as client:
            gate = asyncio.Semaphore(16)

            async def create(i: int):
                body = {
                    "flow_id": flow["id"],
                    "scheduled_start_time": (BASE + timedelta(minutes=i)).isoformat(),
                    "labels": ["gpu"] if i % 7 == 0 else ["cpu"],
                    "idempotency_key": f"run-{i}",
                }
                for _ in range(5):  # a loaded machine may time a command out (503): the key makes a retry safe
                    async with gate:
                        try:
                            r = await client.post("/flow_runs", json=body)
                        except httpx.TransportError:  # no answer at all: the same, retried
                            continue
                    if r.status_code != 503:
                        break
                assert r.status_code in (200, 201), r.text
                return i, r.json()

            created = dict(await asyncio.gather(*(create(i) for i in order)))

            async def start(i: int):
                for _ in range(5):
                    async with gate:
                        try:
                            r = await client.post(f"/flow_runs/{created[i]['id']}/state", json={"state": {"type": "Running"}, "version": 1})
                        except httpx.TransportError:
                            continue
                    if r.status_code != 503:
                        break
                assert r.status_code in (200, 409), r.text  # 409: an earlier try that timed out did apply

            await asyncio.gather(*(start(i) for i in range(50)))
            return created

    runs = asyncio.run(build())
    return {"flow": flow, "runs": runs}


def gql(stack, query: str) -> dict:
    r = httpx.post(stack.api_url + "/graphql", json={"query": query}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert "errors" not in body, body
    return body


def test_the_oldest_scheduled_run_is_found_among_more_than_a_thousand(own_stack, world):
    body = gql(own_stack, '{ flow_run(where: {state: {_eq: "Scheduled"}}, order_by: {scheduled_start_time: asc}, limit: 1) { id state scheduled_start_time } }')
    (found,) = body["data"]["flow_run"]
    assert found["id"] == world["runs"][50]["id"] and found["state"] == "Scheduled"
    assert "scan" not in body.get("extensions", {})  # an index answered
    # newest first, and the Running ones through their own index
    body = gql(own_stack, '{ flow_run(where: {state: {_eq: "Scheduled"}}, order_by: {scheduled_start_time: desc}, limit: 2) { id } }')
    assert [r["id"] for r in body["data"]["flow_run"]] == [world["runs"][RUNS - 1]["id"], world["runs"][RUNS - 2]["id"]]
    body = gql(own_stack, '{ flow_run(where: {state: {_in: ["Running"]}}, order_by: {scheduled_start_time: asc}, offset: 10, limit: 5) { id } }')
    assert [r["id"] for r in body["data"]["flow_run"]] == [world["runs"][i]["id"] for i in range(10, 15)]


def test_flow_label_and_time_range_are_indexed(own_stack, world):
    flow_id = world["flow"]["id"]
    start, end = (BASE + timedelta(minutes=100)).isoformat(), (BASE + timedelta(minutes=200)).isoformat()
    body = gql(own_stack, f'''{{ flow_run(where: {{_and: [{{flow_id: {{_eq: "{flow_id}"}}}},
        {{scheduled_start_time: {{_gte: "{start}"}}}}, {{scheduled_start_time: {{_lt: "{end}"}}}}]}},
        order_by: {{scheduled_start_time: asc}}) {{ id }} }}''')
    assert [r["id"] for r in body["data"]["flow_run"]] == [world["runs"][i]["id"] for i in range(100, 200)]
    assert "scan" not in body.get("extensions", {})
    body = gql(own_stack, '{ flow_run(where: {labels: {_contains: ["gpu"]}, state: {_eq: "Running"}}, order_by: {scheduled_start_time: asc}) { id labels } }')
    assert [r["id"] for r in body["data"]["flow_run"]] == [world["runs"][i]["id"] for i in range(0, 50, 7)]


def test_an_unindexed_read_is_a_bounded_scan_that_says_so(own_stack, world):
    body = gql(own_stack, '{ flow_run(where: {name: {_eq: "no-such-name"}}, limit: 1) { id } }')
    assert body["data"]["flow_run"] == []
    scan = body["extensions"]["scan"]
    assert scan["limit"] == 1000 and scan["truncated"] is True and scan["examined"] == 1000
    assert scan["fields"][0]["field"] == "flow_run"
    # sorting a big index by another field is bounded too, and says so
    body = gql(own_stack, '{ flow_run(where: {state: {_eq: "Scheduled"}}, order_by: {created: asc}, limit: 1) { id } }')
    assert body["extensions"]["scan"]["truncated"] is True
    log = (own_stack.workdir / "ingress.log").read_text()
    assert "read scanned" in log


def test_rest_list_pages_with_a_cursor(own_stack, world):
    with httpx.Client(base_url=own_stack.api_url + "/api/v1", timeout=60) as api:
        first = api.get("/flow_runs", params={"state": "Scheduled", "order": "asc", "limit": 1}).json()
        assert first["flow_runs"][0]["id"] == world["runs"][50]["id"] and first["next_cursor"]
        # every gpu run of the flow, 40 per page, in scheduled order
        seen, cursor, pages = [], None, 0
        while True:
            params = {"flow_id": world["flow"]["id"], "label": "gpu", "order": "asc", "limit": 40}
            page = api.get("/flow_runs", params={**params, **({"cursor": cursor} if cursor else {})})
            assert page.status_code == 200, page.text
            body = page.json()
            seen += [r["id"] for r in body["flow_runs"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == [world["runs"][i]["id"] for i in range(0, RUNS, 7)] and pages >= 4
        window = api.get("/flow_runs", params={
            "scheduled_after": (BASE + timedelta(minutes=1000)).isoformat(),
            "scheduled_before": (BASE + timedelta(minutes=1010)).isoformat(), "order": "desc",
        }).json()
        assert [r["id"] for r in window["flow_runs"]] == [world["runs"][i]["id"] for i in range(1009, 999, -1)]
        assert window["next_cursor"] is None
        # a cursor only continues the query it came from
        other = api.get("/flow_runs", params={"state": "Running", "cursor": first["next_cursor"]})
        assert other.status_code == 400 and other.json()["detail"][0]["type"] == "invalid_cursor"
        assert api.get("/flow_runs", params={"cursor": "garbage!"}).status_code == 400
        assert api.get("/flow_runs", params={"state": "Exploded"}).status_code == 422
        # the per-flow list still works and counts every run
        legacy = api.get(f"/flows/{world['flow']['id']}/flow_runs", params={"limit": 3}).json()
        assert legacy["total"] == RUNS and [r["id"] for r in legacy["flow_runs"]] == [world["runs"][i]["id"] for i in (1099, 1098, 1097)]
        spec = api.get(own_stack.api_url + "/openapi.json").json()["paths"]["/api/v1/flow_runs"]["get"]
        assert {"200", "400", "422"} <= set(spec["responses"])
