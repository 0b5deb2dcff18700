"""Concurrency limits and agents are in the event log: Redis losing its data (FLUSHALL) loses
none of them -- the projector replays them, with the same ids, and they are enforced again (never
a slot granted while they are being restored) -- and the writer restarting from a snapshot plus
the tail of the log still knows them. Own stack (own Redis: the flush must not disturb the other
tests), with the scheduling service and frequent writer snapshots."""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import redis as redis_sync

from runledger.domain.limits import LIMITS_AGGREGATE, limit_id_for
from runledger.domain.scheduling import agent_id_for
from runledger.partitioning import partition_for
from tests.integration.helpers import all_events
from tests.integration.test_scheduling import eventually, flow, gql, poll, register_agent, run, scheduling_stack, set_state, u

pytestmark = pytest.mark.slow

UPDATE_LABEL = "mutation($input: update_flow_concurrency_limit_input!) { update_flow_concurrency_limit(input: $input) { id } }"
TASK_STATES = "mutation($input: set_task_run_states_input!) { set_task_run_states(input: $input) { states { id status } } }"


@pytest.fixture(scope="module")
def lstack():
    # no recovery here: a claimed run must keep its slot for the whole test (no heartbeats are sent)
    with scheduling_stack(RUNLEDGER_SNAPSHOT_EVERY_EVENTS="5", RUNLEDGER_SNAPSHOT_EVERY_SECONDS="1",
                          RUNLEDGER_SCHEDULING_LAZARUS_SECONDS="600", RUNLEDGER_SCHEDULING_ZOMBIE_SECONDS="600") as s:
        yield s


@pytest.fixture(scope="module")
def http(lstack):
    with httpx.Client(base_url=lstack.api_url, timeout=60) as client:
        yield client


def limits(http, kind: str) -> dict[str, dict] | None:
    r = http.get(f"/api/v1/concurrency_limits/{kind}")
    return {x["name"]: x for x in r.json()} if r.status_code == 200 else None


def agents(http) -> set[str]:
    body = http.post("/graphql", json={"query": "{ agent { id } }"}).json()
    return {a["id"] for a in (body.get("data") or {}).get("agent") or []}


def claim_refused_at_limit(http, run_id: str) -> bool:
    """Submitted is refused at the limit (409), or held while Redis is restored (503): never granted."""
    r = set_state(http, run_id, "Submitted", 1)
    assert r.status_code in (409, 503), r.text
    if r.status_code == 503:
        assert r.headers.get("retry-after"), r.text
        return False
    assert r.json()["rule"] == "flow_run_concurrency_limit", r.text
    return True


def start_task(http, task_run_id: str) -> str:
    body = gql(http, TASK_STATES, {"input": {"states": [{"task_run_id": task_run_id, "version": None, "state": {"type": "Running"}}]}})
    return body["data"]["set_task_run_states"]["states"][0]["status"]


def test_limits_and_agents_survive_redis_losing_its_data_and_a_writer_restart(lstack, http):
    project = http.post("/api/v1/projects", json={"name": u("proj")}).json()
    label, tag = u("gpu"), u("db")
    f = flow(http, project, tasks=[{"id": "t1", "slug": "t1-1", "name": "t1", "tags": [tag]}])

    label_id = gql(http, UPDATE_LABEL, {"input": {"label": label, "limit": 1}})["data"]["update_flow_concurrency_limit"]["id"]
    put = http.put(f"/api/v1/concurrency_limits/task_runs/{tag}", json={"limit": 1})
    assert put.status_code == 200, put.text
    tag_id = put.json()["id"]
    agent_name = u("agent")
    agent = register_agent(http, [label], agent_name)
    # read-your-writes: each answered call is visible to the next read
    assert limits(http, "flow_runs")[label]["id"] == label_id and limits(http, "task_runs")[tag]["limit"] == 1
    assert agent in agents(http)

    past = datetime.now(timezone.utc) - timedelta(seconds=5)
    r1, r2 = run(http, f, [label], past), run(http, f, [label], past + timedelta(seconds=1))
    eventually(lambda: poll(http, [label]) == [r1["id"]])  # one slot: only the oldest is offered
    assert set_state(http, r1["id"], "Submitted", 1).status_code == 200
    assert claim_refused_at_limit(http, r2["id"])
    # a task run holding the tag's only slot
    holder = run(http, f, [])
    assert set_state(http, holder["id"], "Running", 1).status_code == 200
    other = run(http, f, [])
    assert set_state(http, other["id"], "Running", 1).status_code == 200
    (holder_tr,) = http.get(f"/api/v1/flow_runs/{holder['id']}/task_runs").json()
    (other_tr,) = http.get(f"/api/v1/flow_runs/{other['id']}/task_runs").json()
    assert start_task(http, holder_tr["id"]) == "SUCCESS"
    assert start_task(http, other_tr["id"]) == "QUEUED"

    # the log has them (the writer decided them; nobody wrote Redis directly)
    types = {e.type for e in all_events(lstack)}
    assert {"ConcurrencyLimitSet", "AgentRegistered"} <= types

    redis_sync.Redis.from_url(lstack.redis_url).flushall()

    # Never granted while restoring; refused at the limit once restored.
    eventually(lambda: claim_refused_at_limit(http, r2["id"]), timeout=60, interval=0.2)
    assert limits(http, "flow_runs")[label]["id"] == label_id  # the same id
    assert limits(http, "task_runs")[tag]["id"] == tag_id
    eventually(lambda: agent in agents(http), timeout=30)
    assert poll(http, [label], agent=agent) == []  # the label is at its limit: nothing offered
    assert eventually(lambda: start_task(http, other_tr["id"]) == "QUEUED", timeout=30)

    # The writer restarts (kill -9) from its snapshot and the tail: it still knows every limit.
    time.sleep(1.5)  # a snapshot is due every second (with new events)
    lstack.kill("transitions")
    lstack.start_service("transitions")
    lstack.wait_ready("transitions")
    with urllib.request.urlopen(f"http://127.0.0.1:{lstack.health_ports['transitions']}/healthz", timeout=2) as r:
        books = json.loads(r.read())["books"]
    limits_partition = partition_for(LIMITS_AGGREGATE, lstack.partitions)
    assert books[str(limits_partition)]["restored_position"], books  # from a snapshot, then the tail
    again = gql(http, UPDATE_LABEL, {"input": {"name": label, "limit": 2}})["data"]["update_flow_concurrency_limit"]["id"]
    assert again == label_id  # an update keeps the id
    assert register_agent(http, [label], agent_name) == agent and len(agents(http)) == 1
    assert limits(http, "flow_runs")[label]["used"] == 1  # r1 still holds its slot
    eventually(lambda: poll(http, [label]) == [r2["id"]])  # the second slot: r2 is offered now
    assert set_state(http, r2["id"], "Submitted", 1).status_code == 200

    delete = "mutation($input: delete_task_tag_limit_input!) { delete_task_tag_limit(input: $input) { success } }"
    assert gql(http, delete, {"input": {"limit_id": tag_id}})["data"]["delete_task_tag_limit"]["success"]
    assert tag not in limits(http, "task_runs")
    assert start_task(http, other_tr["id"]) == "SUCCESS"  # no limit any more
    again_gone = gql(http, delete, {"input": {"limit_id": tag_id}}, errors=True)
    assert again_gone["errors"][0]["extensions"]["code"] == "NOT_FOUND"


def test_limits_and_agents_an_older_version_kept_only_in_redis_are_moved_into_the_log(lstack, http):
    label, agent_name = u("old"), u("old-agent")
    rc = redis_sync.Redis.from_url(lstack.redis_url)
    old_limit = {"id": "whatever", "name": label, "limit": 7, "kind": "label", "updated_ms": 1}
    old_agent = {"id": "x", "type": "LocalAgent", "name": agent_name, "labels": [label], "tenant_id": None,
                 "agent_config_id": None, "core_version": "1.4.1", "created": "2026-01-01T00:00:00+00:00"}
    rc.hset("rl:{sched}:limits:label", label, json.dumps(old_limit))
    rc.hset("rl:{sched}:limit_ids", "whatever", f"label\x1f{label}")
    rc.hset("rl:{sched}:agents", "x", json.dumps(old_agent))
    lstack.kill("ingress")
    lstack.start_service("ingress")
    lstack.wait_ready("ingress")
    # the import ends by dropping the old keys
    eventually(lambda: not rc.exists("rl:{sched}:limits:label", "rl:{sched}:limit_ids", "rl:{sched}:agents"), timeout=30)
    assert limits(http, "flow_runs")[label]["limit"] == 7
    assert limits(http, "flow_runs")[label]["id"] == limit_id_for("label", label)  # the id the log gives
    listed = {a["name"]: a for a in http.get("/api/v1/agents").json()}
    assert listed[agent_name]["id"] == agent_id_for("LocalAgent", agent_name, [label]) and listed[agent_name]["core_version"] == "1.4.1"
    events = all_events(lstack)
    assert any(e.type == "ConcurrencyLimitSet" and e.payload.name == label for e in events)
    assert any(e.type == "AgentRegistered" and e.payload.name == agent_name for e in events)
