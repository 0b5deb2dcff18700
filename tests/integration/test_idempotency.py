"""Idempotency keys in Redis: dedup, TTL refresh, expiry, races, and a crash after the claim."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from runledger.services.devstack import free_port
from runledger.domain.idempotency import scoped_key
from runledger.readmodel.keys import Keys
from tests.conftest import register, unique

KEYS = Keys("rl", 4)  # the session stack's partitions (idempotency keys do not depend on them)


def idem_key(flow_id: str, key: str) -> str:
    return KEYS.idempotency(scoped_key(flow_id, key))


def test_repeat_returns_the_same_run_flags_it_and_refreshes_the_ttl(api, project, redis_client):
    f = register(api, project)
    first = api.post("/flow_runs", json={"flow_id": f["id"], "idempotency_key": "k"})
    assert first.status_code == 201 and first.json()["deduplicated"] is False
    redis_client.expire(idem_key(f["id"], "k"), 100)  # pretend most of the 24 h have passed
    again = api.post("/flow_runs", json={"flow_id": f["id"], "idempotency_key": "k"})
    assert again.status_code == 200 and again.json()["deduplicated"] is True
    assert again.json()["id"] == first.json()["id"]
    assert 86400 - 5 <= redis_client.ttl(idem_key(f["id"], "k")) <= 86400
    assert redis_client.get(idem_key(f["id"], "k")).decode() == first.json()["id"]
    assert api.get(f"/flows/{f['id']}/flow_runs").json()["total"] == 1


def test_a_repeat_after_its_flow_was_archived_gets_its_run_and_a_new_key_is_refused(api, project, redis_client):
    """A client retrying its create (its first answer was lost) while a new version of the flow
    was registered gets its run, not "flow is archived"; a new key on the archived flow is refused
    and leaves no key behind."""
    name = unique("flow")
    v1 = register(api, project, name=name)
    first = api.post("/flow_runs", json={"flow_id": v1["id"], "idempotency_key": "retry", "parameters": {}})
    assert first.status_code == 201, first.text
    register(api, project, name=name)  # archives v1
    redis_client.expire(idem_key(v1["id"], "retry"), 100)
    again = api.post("/flow_runs", json={"flow_id": v1["id"], "idempotency_key": "retry", "parameters": {}})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"] and again.json()["deduplicated"] is True
    assert redis_client.ttl(idem_key(v1["id"], "retry")) > 86400 - 5  # refreshed, as by any repeat
    other = api.post("/flow_runs", json={"flow_id": v1["id"], "idempotency_key": "new"})
    assert other.status_code == 422 and other.json()["detail"][0]["type"] == "archived", other.text
    assert redis_client.get(idem_key(v1["id"], "new")) is None


def test_keys_are_scoped_to_their_flow(api, project):
    a, b = register(api, project), register(api, project)
    ra = api.post("/flow_runs", json={"flow_id": a["id"], "idempotency_key": "same"}).json()
    rb = api.post("/flow_runs", json={"flow_id": b["id"], "idempotency_key": "same"}).json()
    assert ra["id"] != rb["id"] and not rb["deduplicated"]


async def test_fifty_concurrent_creates_with_one_key_make_one_run(aapi, api, project):
    f = register(api, project)
    responses = await asyncio.gather(
        *(aapi.post("/flow_runs", json={"flow_id": f["id"], "idempotency_key": "race"}) for _ in range(50))
    )
    assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses if r.status_code >= 300]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sorted(r.status_code for r in responses) == [200] * 49 + [201]
    assert sum(not r.json()["deduplicated"] for r in responses) == 1
    listed = await aapi.get(f"/flows/{f['id']}/flow_runs")
    assert listed.json()["total"] == 1


@pytest.fixture(scope="module")
def short_ttl_api(stack):
    """A second ingress process whose idempotency keys live 2 s."""
    port = free_port()
    stack.start_service("ingress-ttl2", module="ingress", RUNLEDGER_API_PORT=str(port), RUNLEDGER_IDEMPOTENCY_TTL_SECONDS="2")
    stack.wait_ready("ingress-ttl2", url=f"http://127.0.0.1:{port}/health/ready")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=60) as client:
        yield client
    stack.kill("ingress-ttl2", 15)


def test_after_expiry_the_same_key_creates_a_new_run(short_ttl_api, api, project):
    f = register(api, project)
    first = short_ttl_api.post("/flow_runs", json={"flow_id": f["id"], "idempotency_key": "e"}).json()
    time.sleep(1.2)
    repeat = short_ttl_api.post("/flow_runs", json={"flow_id": f["id"], "idempotency_key": "e"}).json()
    assert repeat["id"] == first["id"]  # refreshed to 2 s again
    time.sleep(1.2)
    assert short_ttl_api.post("/flow_runs", json={"flow_id": f["id"], "idempotency_key": "e"}).json()["id"] == first["id"]
    time.sleep(2.3)
    later = short_ttl_api.post("/flow_runs", json={"flow_id": f["id"], "idempotency_key": "e"})
    assert later.status_code == 201 and later.json()["id"] != first["id"]


def test_ttl_zero_means_never_expire(stack, api, project, redis_client):
    port = free_port()
    stack.start_service("ingress-ttl0", module="ingress", RUNLEDGER_API_PORT=str(port), RUNLEDGER_IDEMPOTENCY_TTL_SECONDS="0")
    try:
        stack.wait_ready("ingress-ttl0", url=f"http://127.0.0.1:{port}/health/ready")
        f = register(api, project)
        httpx.post(f"http://127.0.0.1:{port}/api/v1/flow_runs", json={"flow_id": f["id"], "idempotency_key": "forever"}, timeout=60)
        assert redis_client.ttl(idem_key(f["id"], "forever")) == -1
    finally:
        stack.kill("ingress-ttl0", 15)


def test_a_crash_between_claim_and_record_never_leaves_a_dangling_key(stack, api, project, redis_client):
    """Kill the ingress right after it took the key; the key must never name a missing run."""
    f = register(api, project)
    port = free_port()
    stack.start_service(
        "ingress-crash", module="ingress", RUNLEDGER_API_PORT=str(port), RUNLEDGER_FAULT="crash_after_idempotency_claim"
    )
    stack.wait_ready("ingress-crash", url=f"http://127.0.0.1:{port}/health/ready")
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"http://127.0.0.1:{port}/api/v1/flow_runs", json={"flow_id": f["id"], "idempotency_key": "crash"}, timeout=30)
    process = stack.processes.pop("ingress-crash")
    assert process.wait(timeout=10) == 137  # it really died at the fault point
    held = redis_client.get(idem_key(f["id"], "crash")).decode()
    assert held.startswith("pending:")  # a claim, not a pointer to a run
    claimed_run = held.removeprefix("pending:")
    assert api.get(f"/flow_runs/{claimed_run}").status_code == 404
    # The next request with the key completes the claim with that same run id.
    repeat = api.post("/flow_runs", json={"flow_id": f["id"], "idempotency_key": "crash"})
    assert repeat.status_code == 201, repeat.text
    assert repeat.json()["id"] == claimed_run
    assert redis_client.get(idem_key(f["id"], "crash")).decode() == claimed_run
    assert api.get(f"/flow_runs/{claimed_run}").status_code == 200
    third = api.post("/flow_runs", json={"flow_id": f["id"], "idempotency_key": "crash"})
    assert third.status_code == 200 and third.json()["id"] == claimed_run
    assert api.get(f"/flows/{f['id']}/flow_runs").json()["total"] == 1
