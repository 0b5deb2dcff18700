"""The scheduling service through the real stack (own broker, Redis and processes, short timers):
agents, the queue and its label rule, claiming, concurrency limits by label and tag, ``why``,
the agent's failed deploy, recovery, and slots coming back after kill -9."""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from runledger.services.devstack import ALL_SERVICES, Stack

FAST = {
    "RUNLEDGER_SCHEDULING_TICK_SECONDS": "0.2",
    "RUNLEDGER_SCHEDULING_AGENT_HEALTHY_SECONDS": "3",
    "RUNLEDGER_SCHEDULING_LATE_SECONDS": "1",
    "RUNLEDGER_SCHEDULING_LAZARUS_SECONDS": "2",
    "RUNLEDGER_SCHEDULING_ZOMBIE_SECONDS": "2",
    "RUNLEDGER_SCHEDULING_CANCELLING_SECONDS": "2",
    "RUNLEDGER_SCHEDULING_CLAIM_TTL_SECONDS": "5",
    "RUNLEDGER_SCHEDULING_OFFER_LEASE_SECONDS": "1.5",
}


def scheduling_stack(**env: str) -> Stack:
    """A stack with every service, the scheduling service's timings shortened (``FAST``)."""
    return Stack(own_redis=True, partitions=2, services=ALL_SERVICES, extra_env={**FAST, **env})


@pytest.fixture(scope="module")
def sstack():
    with scheduling_stack() as s:
        yield s


@pytest.fixture(scope="module")
def http(sstack):
    with httpx.Client(base_url=sstack.api_url, timeout=60) as client:
        yield client


def gql(http, query, variables=None, headers=None, errors=False):
    r = http.post("/graphql", json={"query": query, "variables": variables}, headers=headers or {})
    assert r.status_code == 200, r.text
    body = r.json()
    if errors:
        assert body.get("errors"), body
    else:
        assert not body.get("errors"), body
    return body


def u(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def project(http):
    r = http.post("/api/v1/projects", json={"name": u("proj")})
    assert r.status_code == 201, r.text
    return r.json()


def flow(http, project, **extra):
    r = http.post("/api/v1/flows", json={"name": u("flow"), "project_id": project["id"], **extra})
    assert r.status_code == 201, r.text
    return r.json()


def run(http, flow_doc, labels=None, start=None):
    body = {"flow_id": flow_doc["id"]}
    if labels is not None:
        body["labels"] = labels
    if start is not None:
        body["scheduled_start_time"] = start.isoformat()
    r = http.post("/api/v1/flow_runs", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def set_state(http, run_id, state, version=None, headers=None, **fields):
    return http.post(f"/api/v1/flow_runs/{run_id}/state", json={"state": {"type": state, **fields}, "version": version}, headers=headers or {})


def get(http, run_id):
    return http.get(f"/api/v1/flow_runs/{run_id}").json()


def poll(http, labels, before=None, agent=None):
    q = "mutation($input: get_runs_in_queue_input!) { get_runs_in_queue(input: $input) { flow_run_ids } }"
    inp = {"labels": labels}
    if before is not None:
        inp["before"] = before.isoformat()
    headers = {"X-PREFECT-AGENT-ID": agent} if agent else None
    return gql(http, q, {"input": inp}, headers=headers)["data"]["get_runs_in_queue"]["flow_run_ids"]


def eventually(check, timeout=15.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {check}")
        time.sleep(interval)


def register_agent(http, labels, name=None, agent_type="LocalAgent"):
    q = "mutation($input: register_agent_input!) { register_agent(input: $input) { id } }"
    return gql(http, q, {"input": {"type": agent_type, "name": name or u("agent"), "labels": labels}})["data"]["register_agent"]["id"]


# -- agents ----------------------------------------------------------------------------------------
def test_register_agent_is_stable_and_each_request_updates_last_contact(http):
    name = u("agent")
    first = register_agent(http, ["b", "a"], name)
    assert register_agent(http, ["a", "b", "a"], name) == first
    assert register_agent(http, ["a"], name) != first
    seen = lambda: {a["id"]: a for a in gql(http, "{ agent { id name labels last_queried } }")["data"]["agent"]}[first]
    before = seen()
    assert before["labels"] == ["a", "b"] and before["name"] == name and before["last_queried"]
    time.sleep(0.05)
    gql(http, "{ hello }", headers={"X-PREFECT-AGENT-ID": first})
    assert seen()["last_queried"] > before["last_queried"]


# -- the queue -------------------------------------------------------------------------------------
def test_the_queue_offers_due_runs_oldest_first_by_the_label_rule(http, project):
    f = flow(http, project)
    now = datetime.now(timezone.utc)
    x, y = u("x"), u("y")
    r_x = run(http, f, [x], now - timedelta(seconds=30))
    r_xy = run(http, f, [x, y], now - timedelta(seconds=20))
    r_none = run(http, f, [], now - timedelta(seconds=10))
    r_later = run(http, f, [x], now + timedelta(seconds=3600))
    eventually(lambda: poll(http, [x, y]) == [r_x["id"], r_xy["id"]])
    assert poll(http, [x]) == [r_x["id"]]
    assert r_none["id"] in poll(http, []) and r_x["id"] not in poll(http, [])  # unlabeled only to unlabeled
    assert r_none["id"] not in poll(http, [x, y])
    assert poll(http, [x], now + timedelta(seconds=7200)) == [r_x["id"], r_later["id"]]
    # Claimed runs leave the queue.
    assert set_state(http, r_x["id"], "Submitted", 1).status_code == 200
    eventually(lambda: poll(http, [x, y]) == [r_xy["id"]])


def test_offer_leases_spread_due_runs_over_agents_with_the_same_labels(http, project):
    f = flow(http, project)
    label = u("lease")
    past = datetime.now(timezone.utc) - timedelta(seconds=60)
    runs = [run(http, f, [label], past + timedelta(seconds=i))["id"] for i in range(30)]
    eventually(lambda: len(poll(http, [label])) == 25)
    a, b = register_agent(http, [label]), register_agent(http, [label])
    first = poll(http, [label], agent=a)
    assert first == runs[:25]
    assert poll(http, [label], agent=b) == runs[25:]  # not what a was just offered
    assert poll(http, [label], agent=a) == runs[:25]  # a's own lease is renewed
    time.sleep(1.6)  # a did not claim them: after the lease everyone may take them
    assert poll(http, [label], agent=b) == runs[:25]


def test_racing_agents_exactly_one_claims_and_a_second_submitted_is_refused(http, project):
    f = flow(http, project)
    r = run(http, f, [u("race")])
    q = "mutation($input: set_flow_run_states_input!) { set_flow_run_states(input: $input) { states { id status } } }"

    def claim(_):
        return http.post("/graphql", json={"query": q, "variables": {"input": {"states": [
            {"flow_run_id": r["id"], "version": 1, "state": {"type": "Submitted"}}]}}}).json()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(claim, range(8)))
    winners = [a for a in answers if not a.get("errors")]
    losers = [a for a in answers if a.get("errors")]
    assert len(winners) == 1 and len(losers) == 7
    assert all(a["errors"][0]["message"].startswith("State update failed") for a in losers)
    again = set_state(http, r["id"], "Submitted", 2)
    assert again.status_code == 409 and again.json()["rule"] == "runs_are_submitted_once", again.text
    assert "already been submitted" in again.json()["detail"]
    assert get(http, r["id"])["version"] == 2


# -- why -------------------------------------------------------------------------------------------
def test_why_names_missing_labels_unhealthy_agents_limits_and_not_due(http, project):
    f = flow(http, project)
    lonely = u("lonely")
    r = run(http, f, [lonely])
    why = http.get(f"/api/v1/flow_runs/{r['id']}/why").json()
    codes = {x["code"]: x for x in why["reasons"]}
    assert "no_matching_agent" in codes and codes["no_matching_agent"]["required_labels"] == [lonely]
    # A matching agent that stops polling: unhealthy after the threshold (3 s here).
    agent = register_agent(http, [lonely, "extra"])
    why = http.get(f"/api/v1/flow_runs/{r['id']}/why").json()
    assert [x["code"] for x in why["reasons"]] == ["waiting_for_poll"], why
    time.sleep(3.2)
    why = http.get(f"/api/v1/flow_runs/{r['id']}/why").json()
    (reason,) = [x for x in why["reasons"] if x["code"] == "no_healthy_agent"]
    assert reason["agents"][0]["id"] == agent and reason["agents"][0]["seconds_ago"] >= 3
    # A concurrency limit at capacity.
    assert http.put(f"/api/v1/concurrency_limits/flow_runs/{lonely}", json={"limit": 0}).status_code == 200
    why = http.get(f"/api/v1/flow_runs/{r['id']}/why").json()
    (limit,) = [x for x in why["reasons"] if x["code"] == "concurrency_limit"]
    assert (limit["label"], limit["used"], limit["limit"]) == (lonely, 0, 0)
    later = run(http, f, [lonely], datetime.now(timezone.utc) + timedelta(hours=1))
    assert "not_due" in {x["code"] for x in http.get(f"/api/v1/flow_runs/{later['id']}/why").json()["reasons"]}
    late = http.get("/api/v1/late_runs", params={"threshold_seconds": 1}).json()
    assert late["count"] >= 1 and r["id"] in {x["id"] for x in late["runs"]}


# -- concurrency limits -------------------------------------------------------------------------------
def test_label_limit_crud_graphql_both_spellings(http):
    label = u("lim")
    q = "mutation($input: update_flow_concurrency_limit_input!) { update_flow_concurrency_limit(input: $input) { id } }"
    first = gql(http, q, {"input": {"name": label, "limit": 2}})["data"]["update_flow_concurrency_limit"]["id"]
    assert gql(http, q, {"input": {"label": label, "limit": 3}})["data"]["update_flow_concurrency_limit"]["id"] == first
    rows = gql(http, '{ flow_concurrency_limit(where: {name: {_eq: "%s"}}) { id name limit used } }' % label)["data"]["flow_concurrency_limit"]
    assert rows == [{"id": first, "name": label, "limit": 3, "used": 0}]
    d = "mutation($input: delete_flow_concurrency_limit_input!) { delete_flow_concurrency_limit(input: $input) { success } }"
    assert gql(http, d, {"input": {"limit_id": first}})["data"]["delete_flow_concurrency_limit"]["success"]
    assert gql(http, d, {"input": {"limit_id": first}}, errors=True)["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    tq = "mutation($input: update_task_tag_limit_input!) { update_task_tag_limit(input: $input) { id } }"
    tid = gql(http, tq, {"input": {"tag": label, "limit": 4}})["data"]["update_task_tag_limit"]["id"]
    got = gql(http, '{ task_tag_limit(where: {tag: {_eq: "%s"}}) { limit } }' % label)["data"]["task_tag_limit"]
    assert got == [{"limit": 4}]
    td = "mutation($input: delete_task_tag_limit_input!) { delete_task_tag_limit(input: $input) { success } }"
    assert gql(http, td, {"input": {"limit_id": tid}})["data"]["delete_task_tag_limit"]["success"]


def test_a_label_at_its_limit_is_neither_offered_nor_claimable_and_agentless_runs_queue(http, project):
    f = flow(http, project)
    a, b = u("a"), u("b")
    assert http.put(f"/api/v1/concurrency_limits/flow_runs/{a}", json={"limit": 1}).status_code == 200
    past = datetime.now(timezone.utc) - timedelta(seconds=5)
    r1, r2, r3 = (run(http, f, labels, past + timedelta(seconds=i)) for i, labels in enumerate(([a], [a, b], [b])))
    eventually(lambda: poll(http, [a, b]) == [r1["id"], r3["id"]])  # one free slot on a: only the oldest
    assert set_state(http, r1["id"], "Submitted", 1).status_code == 200
    refused = set_state(http, r2["id"], "Submitted", 1)
    assert refused.status_code == 409 and refused.json()["detail"].startswith("State update failed"), refused.text
    assert refused.json()["rule"] == "flow_run_concurrency_limit" and refused.json()["used"] == 1
    eventually(lambda: poll(http, [a, b]) == [r3["id"]])
    # An agentless run asking for Running at the limit is told QUEUED and stored Queued.
    q = "mutation($input: set_flow_run_states_input!) { set_flow_run_states(input: $input) { states { id status } } }"
    got = gql(http, q, {"input": {"states": [{"flow_run_id": r2["id"], "version": 1, "state": {"type": "Running"}}]}})
    assert got["data"]["set_flow_run_states"]["states"][0]["status"] == "QUEUED"
    doc = get(http, r2["id"])
    assert doc["state"]["type"] == "Queued" and "concurrency limit" in doc["state"]["message"] and doc["version"] == 2
    # The slot frees when the holder finishes: now r2 may run.
    assert set_state(http, r1["id"], "Running", 2).status_code == 200
    assert set_state(http, r1["id"], "Success").status_code == 200
    eventually(lambda: set_state(http, r2["id"], "Running", get(http, r2["id"])["version"]).json().get("state") == "Running")


def test_a_running_run_at_its_own_label_limit_is_offered_again_for_a_task_retry(http, project):
    """It holds the label's only slot itself: its due task retry needs no free one (it was never
    offered again, and nothing else would move it: stuck for ever, holding the slot)."""
    f = flow(http, project, tasks=[{"id": "t1", "slug": "t1-1", "name": "t1"}])
    label = u("gpu")
    assert http.put(f"/api/v1/concurrency_limits/flow_runs/{label}", json={"limit": 1}).status_code == 200
    r = run(http, f, [label], datetime.now(timezone.utc) - timedelta(seconds=5))
    assert set_state(http, r["id"], "Submitted", 1).status_code == 200
    assert set_state(http, r["id"], "Running", 2).status_code == 200
    (task_run,) = http.get(f"/api/v1/flow_runs/{r['id']}/task_runs").json()
    retry_at = (datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat()
    assert http.post(f"/api/v1/task_runs/{task_run['id']}/state", json={"state": {"type": "Running"}}).status_code == 200
    assert http.post(f"/api/v1/task_runs/{task_run['id']}/state", json={"state": {"type": "Retrying", "start_time": retry_at}}).status_code == 200
    eventually(lambda: poll(http, [label]) == [r["id"]])


def test_task_tag_limit_answers_queued_and_a_slot_frees(http, project):
    tag = u("db")
    f = flow(http, project, tasks=[{"id": "t1", "slug": "t1-1", "name": "t1", "tags": [tag]}])
    assert http.put(f"/api/v1/concurrency_limits/task_runs/{tag}", json={"limit": 1}).status_code == 200
    runs = [run(http, f, []) for _ in range(2)]
    task_runs = []
    for r in runs:
        assert set_state(http, r["id"], "Running", 1).status_code == 200
        task_runs.append(http.get(f"/api/v1/flow_runs/{r['id']}/task_runs").json()[0])
    q = "mutation($input: set_task_run_states_input!) { set_task_run_states(input: $input) { states { id status } } }"

    def start(tr):
        body = gql(http, q, {"input": {"states": [{"task_run_id": tr["id"], "version": None, "state": {"type": "Running"}}]}})
        return body["data"]["set_task_run_states"]["states"][0]["status"]

    assert start(task_runs[0]) == "SUCCESS"
    eventually(lambda: start(task_runs[1]) == "QUEUED")
    assert http.get(f"/api/v1/task_runs/{task_runs[1]['id']}").json()["state"]["type"] == "Queued"
    r = http.post(f"/api/v1/task_runs/{task_runs[0]['id']}/state", json={"state": {"type": "Success"}})
    assert r.status_code == 200
    eventually(lambda: start(task_runs[1]) == "SUCCESS")


# -- the agent's failed deploy (scenario h) -------------------------------------------------------------
def test_an_agents_failed_deploy_with_the_pre_submitted_version_ends_failed(http, project):
    f = flow(http, project)
    r = run(http, f, [])
    agent = register_agent(http, [])
    assert set_state(http, r["id"], "Submitted", 1, headers={"X-PREFECT-AGENT-ID": agent}).status_code == 200
    # Without an agent the stale version is refused as always.
    strict = set_state(http, r["id"], "Failed", 1, message="nope")
    assert strict.status_code == 409 and strict.json()["code"] == "VERSION_MISMATCH"
    failed = set_state(http, r["id"], "Failed", 1, headers={"X-PREFECT-AGENT-ID": agent}, message="Failed to deploy: no docker")
    assert failed.status_code == 200, failed.text
    doc = get(http, r["id"])
    assert doc["state"]["type"] == "Failed" and doc["state"]["message"] == "Failed to deploy: no docker"
    # Not when the run moved on (it is Running): optimistic locking stands.
    r2 = run(http, f, [])
    assert set_state(http, r2["id"], "Submitted", 1, headers={"X-PREFECT-AGENT-ID": agent}).status_code == 200
    assert set_state(http, r2["id"], "Running", 2).status_code == 200
    late = set_state(http, r2["id"], "Failed", 1, headers={"X-PREFECT-AGENT-ID": agent})
    assert late.status_code == 409 and get(http, r2["id"])["state"]["type"] == "Running"


# -- recovery -----------------------------------------------------------------------------------------
def test_lazarus_reschedules_a_silent_run_three_times_then_fails_it(http, project):
    f = flow(http, project)
    r = run(http, f, [])
    for attempt in (1, 2, 3):
        version = get(http, r["id"])["version"]
        assert set_state(http, r["id"], "Submitted", version).status_code == 200
        doc = eventually(lambda: (d := get(http, r["id"]))["state"]["type"] == "Scheduled" and d, timeout=20)
        assert doc["state"]["message"].startswith(f"Rescheduled by a Lazarus process. This is attempt {attempt}")
    assert set_state(http, r["id"], "Submitted", get(http, r["id"])["version"]).status_code == 200
    doc = eventually(lambda: (d := get(http, r["id"]))["state"]["type"] == "Failed" and d, timeout=20)
    assert "3 times" in doc["state"]["message"]


def test_heartbeats_keep_a_run_alive_and_stay_out_of_the_log(http, project, sstack):
    from tests.integration.helpers import events_in_log

    f = flow(http, project)
    r = run(http, f, [])
    assert set_state(http, r["id"], "Running", 1).status_code == 200
    assert http.post(f"/api/v1/flow_runs/{r['id']}/heartbeat").status_code == 200
    assert get(http, r["id"])["heartbeat"] is not None  # the first one is logged
    before = events_in_log(sstack)
    for _ in range(12):  # 3 s of heartbeats, past the 2 s Lazarus timeout
        assert http.post(f"/api/v1/flow_runs/{r['id']}/heartbeat").status_code == 200
        time.sleep(0.25)
    assert get(http, r["id"])["state"]["type"] == "Running"
    assert events_in_log(sstack) == before  # heartbeats went to Redis, not the event log
    eventually(lambda: get(http, r["id"])["state"]["type"] == "Scheduled", timeout=20)


def test_a_finished_runs_heartbeats_and_its_task_runs_are_dropped_from_redis(http, project, sstack):
    f = flow(http, project, tasks=[{"id": "t1", "slug": "t1-1", "name": "t1"}])
    r = run(http, f, [])
    assert set_state(http, r["id"], "Running", 1).status_code == 200
    (task_run,) = http.get(f"/api/v1/flow_runs/{r['id']}/task_runs").json()
    assert http.post(f"/api/v1/flow_runs/{r['id']}/heartbeat").status_code == 200
    assert http.post(f"/api/v1/task_runs/{task_run['id']}/heartbeat").status_code == 200
    redis = sstack.redis_client()
    beats = {r["id"].encode(), f"t:{task_run['id']}".encode()}
    assert beats <= set(redis.hkeys("rl:{sched}:hb"))
    assert set_state(http, r["id"], "Success").status_code == 200
    eventually(lambda: not beats & (set(redis.hkeys("rl:{sched}:hb")) | set(redis.hkeys("rl:{sched}:hb_logged"))))


def test_zombie_killer_retries_or_fails_running_task_runs_and_stale_cancelling_ends(http, project):
    f = flow(http, project, tasks=[{"id": "t1", "slug": "t1-1", "name": "t1", "max_retries": 1}, {"id": "t2", "slug": "t2-1", "name": "t2"}])
    r = run(http, f, [])
    assert set_state(http, r["id"], "Running", 1).status_code == 200
    trs = {t["task_id"]: t for t in http.get(f"/api/v1/flow_runs/{r['id']}/task_runs").json()}
    for t in trs.values():
        assert http.post(f"/api/v1/task_runs/{t['id']}/state", json={"state": {"type": "Running"}}).status_code == 200
    state_of = lambda tid: http.get(f"/api/v1/task_runs/{trs[tid]['id']}").json()["state"]["type"]
    eventually(lambda: state_of("t1") == "Retrying" and state_of("t2") == "Failed", timeout=20)
    # A Running run with a due retry is offered to agents again (not reaped by Lazarus).
    eventually(lambda: r["id"] in poll(http, [], datetime.now(timezone.utc) + timedelta(seconds=5)))
    c = run(http, f, [])
    assert set_state(http, c["id"], "Running", 1).status_code == 200
    assert http.post(f"/api/v1/flow_runs/{c['id']}/cancel").json()["state"] == "Cancelling"
    eventually(lambda: get(http, c["id"])["state"]["type"] == "Cancelled", timeout=20)


def test_group_settings_switch_lazarus_off(http, project):
    f = flow(http, project)
    r = http.patch(f"/api/v1/flow_groups/{f['version_group_id']}/settings", json={"lazarus_enabled": False})
    assert r.status_code == 200 and r.json() == {"lazarus_enabled": False}, r.text
    doc = run(http, f, [])
    assert set_state(http, doc["id"], "Submitted", 1).status_code == 200
    time.sleep(4)
    assert get(http, doc["id"])["state"]["type"] == "Submitted"


# -- no leaked slot --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_no_slot_is_granted_while_no_scheduling_service_runs(http, project, sstack):
    """Nobody would add the claimed run to the label's holders: its reservation would expire (the
    claim TTL) and a second claim get the same slot. The gate answers 503 until the service is back."""
    f = flow(http, project)
    assert http.patch(f"/api/v1/flow_groups/{f['version_group_id']}/settings", json={"lazarus_enabled": False}).status_code == 200
    label = u("down")
    assert http.put(f"/api/v1/concurrency_limits/flow_runs/{label}", json={"limit": 1}).status_code == 200
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    first, second = (run(http, f, [label], past) for _ in range(2))
    sstack.kill("scheduling")
    try:
        redis = sstack.redis_client()
        eventually(lambda: not redis.keys("*:{sched}:alive"), timeout=20)  # its liveness has expired
        refused = set_state(http, first["id"], "Submitted", 1)
        assert refused.status_code == 503 and "no scheduling service is running" in refused.text, refused.text
    finally:
        sstack.restart("scheduling")
        sstack.wait_ready("scheduling", 60)
    eventually(lambda: set_state(http, first["id"], "Submitted", 1).status_code == 200, timeout=20)
    time.sleep(6)  # past the claim TTL (5 s here): the holder is the run itself now, not a reservation
    assert set_state(http, second["id"], "Submitted", 1).status_code == 409


@pytest.mark.slow
def test_slots_come_back_after_kill_9_of_the_scheduling_service_and_an_agent(http, project, sstack):
    f = flow(http, project)
    label = u("k9")
    assert http.put(f"/api/v1/concurrency_limits/flow_runs/{label}", json={"limit": 2}).status_code == 200
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    runs = [run(http, f, [label], past) for _ in range(3)]
    assert set_state(http, runs[0]["id"], "Submitted", 1).status_code == 200
    assert set_state(http, runs[1]["id"], "Submitted", 1).status_code == 200
    assert set_state(http, runs[2]["id"], "Submitted", 1).status_code == 409
    sstack.kill("scheduling")  # kill -9 mid-run
    assert set_state(http, runs[0]["id"], "Running", 2).status_code == 200
    assert set_state(http, runs[0]["id"], "Success").status_code == 200
    sstack.start_service("scheduling")
    sstack.wait_ready("scheduling")
    # Rebuilt from the log: one slot held (runs[1]); runs[1]'s agent "dies" (no heartbeat): Lazarus
    # puts it back to Scheduled and its slot frees too.
    limits = lambda: {x["name"]: x for x in http.get("/api/v1/concurrency_limits/flow_runs").json()}[label]["used"]
    # runs[0]'s slot is back (runs[1] may hold its own still, or Lazarus may already have freed it).
    eventually(lambda: limits() <= 1)
    assert set_state(http, runs[2]["id"], "Submitted", 1).status_code == 200
    eventually(lambda: get(http, runs[1]["id"])["state"]["type"] == "Scheduled" and get(http, runs[2]["id"])["state"]["type"] == "Scheduled", timeout=20)
    eventually(lambda: limits() == 0)


def test_cli_why_and_late_runs(http, project, sstack):
    import typer
    from typer.testing import CliRunner

    from runledger.services.cli_scheduling import register

    cli = typer.Typer()
    cli.callback()(lambda: None)
    register(cli)
    label = u("cli")
    r = run(http, flow(http, project), [label], datetime.now(timezone.utc) - timedelta(seconds=5))
    out = CliRunner().invoke(cli, ["why", r["id"], "--url", sstack.api_url])
    assert out.exit_code == 0, out.output
    assert f"no registered agent has labels ['{label}']" in out.output
    out = CliRunner().invoke(cli, ["late-runs", "--threshold", "1", "--url", sstack.api_url])
    assert out.exit_code == 0 and "late run(s)" in out.output, out.output


# -- flow schedules -----------------------------------------------------------------------------------------
def _runs_of(http, flow_id):
    return http.get(f"/api/v1/flows/{flow_id}/flow_runs", params={"limit": 100}).json()["flow_runs"]


def test_a_schedule_creates_the_next_runs_once_even_across_a_kill_9_and_stops_when_told(http, project, sstack):
    from runledger.domain.scheduling import scheduled_run_id
    from runledger.domain.scheduling_clocks import parse_datetime

    name = u("scheduled")
    schedule = {
        "type": "Schedule", "__version__": "1.4.1", "filters": [], "or_filters": [], "not_filters": [], "adjustments": [],
        "clocks": [{"type": "IntervalClock", "__version__": "1.4.1", "interval": 60_000_000,
                    "start_date": {"dt": "2026-01-01T00:00:00", "tz": "UTC"}, "end_date": None,
                    "parameter_defaults": {"who": "clock"}, "labels": ["sched-label"]}],
    }
    f = flow(http, project, name=name, schedule=schedule, parameters=[{"name": "who", "default": "flow"}])
    runs = eventually(lambda: (rs := _runs_of(http, f["id"])) and len(rs) >= 10 and rs, timeout=30)
    time.sleep(1.0)
    runs = _runs_of(http, f["id"])
    assert len(runs) == 10
    for r in runs:
        start = parse_datetime(r["scheduled_start_time"])
        assert r["id"] == scheduled_run_id(f["id"], start, 0, 0) and start.second == 0
        assert r["labels"] == ["sched-label"] and r["parameters"] == {"who": "clock"}
        assert r["idempotency_key"].startswith("auto-scheduled:0:")
    sstack.kill("scheduling")
    sstack.start_service("scheduling")
    sstack.wait_ready("scheduling")
    time.sleep(1.5)
    again = _runs_of(http, f["id"])
    assert len({r["id"] for r in again}) == len(again) and len(again) <= 11  # at most the window slid by one
    # Inactive: the future runs go (Cancelled, the log keeps them) and no new ones come.
    q = "mutation($input: set_schedule_inactive_input!) { set_schedule_inactive(input: $input) { success } }"
    assert gql(http, q, {"input": {"flow_id": f["id"]}})["data"]["set_schedule_inactive"]["success"]
    eventually(lambda: all(r["state"]["type"] == "Cancelled" for r in _runs_of(http, f["id"])
                           if parse_datetime(r["scheduled_start_time"]) > datetime.now(timezone.utc) + timedelta(seconds=5)), timeout=20)
    count = len(_runs_of(http, f["id"]))
    time.sleep(1.0)
    assert len(_runs_of(http, f["id"])) == count
    # Active again: a fresh set of runs (a new activation epoch).
    q = "mutation($input: set_schedule_active_input!) { set_schedule_active(input: $input) { success } }"
    assert gql(http, q, {"input": {"flow_id": f["id"]}})["data"]["set_schedule_active"]["success"]
    eventually(lambda: sum(r["state"]["type"] == "Scheduled" for r in _runs_of(http, f["id"])) >= 10, timeout=30)
    # A restart replays the registry, the switch-off included: the new activation's runs stay.
    sstack.kill("scheduling")
    sstack.start_service("scheduling")
    sstack.wait_ready("scheduling")
    time.sleep(1.5)  # several timer passes
    assert sum(r["state"]["type"] == "Scheduled" for r in _runs_of(http, f["id"])) >= 10
    # A new version archives this one: its future runs go, the new version's schedule takes over.
    v2 = flow(http, project, name=name, schedule=schedule, parameters=[{"name": "who", "default": "flow"}])
    assert v2["version"] == 2
    eventually(lambda: all(r["state"]["type"] == "Cancelled" for r in _runs_of(http, f["id"])
                           if parse_datetime(r["scheduled_start_time"]) > datetime.now(timezone.utc) + timedelta(seconds=5)), timeout=20)
    eventually(lambda: len(_runs_of(http, v2["id"])) >= 10, timeout=30)


# -- horizontal scale ------------------------------------------------------------------------------------------
def _health(sstack, name):
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{sstack.health_ports[name]}/healthz", timeout=2) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_two_instances_split_the_partitions_and_one_dying_under_load_loses_or_doubles_nothing(http, project, sstack):
    sstack.start_service("scheduling-2", module="scheduling")
    sstack.wait_ready("scheduling-2")
    eventually(lambda: _health(sstack, "scheduling")["partitions"] and _health(sstack, "scheduling-2")["partitions"], timeout=30)
    f = flow(http, project)
    label = u("scale")
    runs = [run(http, f, [label], datetime.now(timezone.utc) - timedelta(seconds=1)) for _ in range(24)]
    # Every poll offers each due run at most once, whichever instance wrote it.
    offered = eventually(lambda: (ids := poll(http, [label])) and len(ids) == 24 and ids)
    assert len(set(offered)) == 24
    for r in runs:  # claimed, and then the "agents" go silent: Lazarus must reschedule each once
        assert set_state(http, r["id"], "Submitted", 1).status_code == 200
    sstack.kill("scheduling")  # kill -9 one instance under that load
    done = lambda: all(get(http, r["id"])["state"]["type"] == "Scheduled" for r in runs)
    eventually(done, timeout=40)
    for r in runs:
        states = get(http, r["id"])["states"]
        lazarus = [s for s in states if (s.get("message") or "").startswith("Rescheduled by a Lazarus process")]
        assert len(lazarus) == 1 and lazarus[0]["version"] == 3, states
    assert set(_health(sstack, "scheduling-2")["partitions"]) == set(range(sstack.partitions))
    sstack.start_service("scheduling")
    sstack.wait_ready("scheduling")
