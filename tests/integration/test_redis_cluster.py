"""The whole stack on a local 3-node Redis Cluster (RUNLEDGER_REDIS_CLUSTER=true): a representative
journey, the indexed reads, and a rebuild that gives back every key. The rest of the suite runs
on a single Redis."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from runledger.services.devstack import Stack, snapshot
from tests.conftest import unique
from tests.integration.test_rebuild import rebuild

BASE = datetime(2031, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def cluster_stack():
    with Stack(redis_cluster=True, partitions=4) as s:
        yield s


@pytest.fixture(scope="module")
def capi(cluster_stack):
    with httpx.Client(base_url=cluster_stack.api_url + "/api/v1", timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def cluster_redis(cluster_stack):
    client = cluster_stack.redis_client()
    yield client
    client.close()


def test_the_cluster_is_a_cluster(cluster_stack, cluster_redis):
    assert len(cluster_stack.cluster_ports) == 3 and cluster_stack.env()["RUNLEDGER_REDIS_CLUSTER"] == "true"
    assert len(cluster_redis.get_primaries()) == 3


def test_a_journey_on_the_cluster(cluster_stack, capi, cluster_redis):
    project = capi.post("/projects", json={"name": unique("proj")})
    assert project.status_code == 201, project.text
    flow = capi.post("/flows", json={"name": unique("flow"), "project_id": project.json()["id"], "labels": ["gpu"],
                                     "tasks": [{"id": "t1", "slug": "t-1"}]})
    assert flow.status_code == 201, flow.text
    flow = flow.json()
    runs = []
    for i in range(12):
        body = {"flow_id": flow["id"], "idempotency_key": f"k{i}", "scheduled_start_time": (BASE + timedelta(minutes=i)).isoformat()}
        r = capi.post("/flow_runs", json=body)
        assert r.status_code == 201 and r.json()["deduplicated"] is False, r.text
        runs.append(r.json())
    # runs are spread over the partitions (so over several slots, on several nodes)
    partitions = {int(re.search(rb"\{p(\d+)\}", k).group(1)) for k in cluster_redis.scan_iter(match="rl:rm:*:flow_run:*")}
    assert len(partitions) >= 2
    slots = {cluster_redis.keyslot(f"{{p{p}}}") for p in range(4)}
    assert len({cluster_redis.nodes_manager.get_node_from_slot(s).name for s in slots}) >= 2
    repeat = capi.post("/flow_runs", json={"flow_id": flow["id"], "idempotency_key": "k3"})
    assert repeat.status_code == 200 and repeat.json()["deduplicated"] is True and repeat.json()["id"] == runs[3]["id"]
    # state changes with the version check, a stale one refused with 409
    for run in runs[:4]:
        r = capi.post(f"/flow_runs/{run['id']}/state", json={"state": {"type": "Running"}, "version": 1})
        assert r.status_code == 200 and r.json()["version"] == 2, r.text
    stale = capi.post(f"/flow_runs/{runs[0]['id']}/state", json={"state": {"type": "Success"}, "version": 1})
    assert stale.status_code == 409, stale.text
    assert capi.post(f"/flow_runs/{runs[0]['id']}/state", json={"state": {"type": "Success"}, "version": 2}).status_code == 200
    (task_run,) = capi.get(f"/flow_runs/{runs[1]['id']}/task_runs").json()
    assert capi.post(f"/task_runs/{task_run['id']}/state", json={"state": {"type": "Running"}}).status_code == 200
    assert capi.get(f"/task_runs/{task_run['id']}").json()["state"]["type"] == "Running"

    # indexed reads: GraphQL (k-way merge over the partitions) and the REST list
    q = '{ flow_run(where: {state: {_eq: "Scheduled"}}, order_by: {scheduled_start_time: asc}, limit: 1) { id } }'
    body = httpx.post(cluster_stack.api_url + "/graphql", json={"query": q}, timeout=30).json()
    assert body["data"]["flow_run"] == [{"id": runs[4]["id"]}] and "scan" not in body.get("extensions", {})
    q = '{ task_run(where: {state: {_eq: "Running"}}) { id flow_run_id } }'
    body = httpx.post(cluster_stack.api_url + "/graphql", json={"query": q}, timeout=30).json()
    assert body["data"]["task_run"] == [{"id": task_run["id"], "flow_run_id": runs[1]["id"]}]
    seen, cursor = [], None
    while True:
        params = {"state": ["Scheduled", "Running"], "order": "asc", "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = capi.get("/flow_runs", params=params).json()
        seen += [r["id"] for r in page["flow_runs"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == [r["id"] for r in runs[1:]]
    assert capi.get(f"/flows/{flow['id']}/flow_runs").json()["total"] == 12

    # rebuild gives back every key, indexes included
    live = snapshot(cluster_redis)
    assert any(b":idx:fr:state:Success" in k for k in live) and any(b":checkpoint" in k for k in live)
    result = rebuild(cluster_stack)
    assert result.returncode == 0, result.stderr
    rebuilt = snapshot(cluster_redis)
    assert sorted(rebuilt) == sorted(live)
    for key in live:
        assert rebuilt[key] == live[key], key
    # and keeps serving reads and writes
    assert capi.post(f"/flow_runs/{runs[2]['id']}/state", json={"state": {"type": "Success"}, "version": 2}).json()["version"] == 3
    for name in ("projector", "ingress", "transitions"):
        assert "CROSSSLOT" not in (cluster_stack.workdir / f"{name}.log").read_text()
