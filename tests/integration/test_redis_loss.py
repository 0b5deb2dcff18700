"""Redis loses its data (FLUSHALL, a restart without persistence, a failover to an empty replica)
under concurrent creates with repeated idempotency keys: the keys are restored from the event log,
creates are held (then 503 + Retry-After) until they are, and the log ends with exactly one run
per key. Own stack: the flush must not disturb the other tests."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid

import httpx
import pytest
import redis as redis_sync

from runledger.services.devstack import Stack
from tests.integration.helpers import all_events

pytestmark = pytest.mark.slow

KEYS = [f"key-{i}" for i in range(30)]


@pytest.fixture(scope="module")
def own_stack():
    with Stack(own_redis=True, partitions=4) as s:
        yield s


async def _hammer(stack, flow_id: str, seconds: float, flush_after: float) -> collections.Counter:
    statuses: collections.Counter = collections.Counter()
    flushed = False
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=stack.api_url + "/api/v1", timeout=60) as client:

        async def worker(n: int) -> None:
            nonlocal flushed
            i = n
            while time.monotonic() < deadline:
                key = KEYS[i % len(KEYS)]
                i += 7
                r = await client.post("/flow_runs", json={"flow_id": flow_id, "idempotency_key": key})
                statuses[r.status_code] += 1
                if r.status_code == 503:
                    assert r.headers["retry-after"], r.text
                    await asyncio.sleep(0.2)
                else:
                    assert r.status_code in (200, 201), r.text
                if not flushed and time.monotonic() - started > flush_after:
                    flushed = True
                    redis_sync.Redis.from_url(stack.redis_url).flushall()

        await asyncio.gather(*(worker(n) for n in range(12)))
    assert flushed
    return statuses


def test_keys_survive_redis_losing_its_data(own_stack):
    with httpx.Client(base_url=own_stack.api_url + "/api/v1", timeout=60) as client:
        project = client.post("/projects", json={"name": f"p-{uuid.uuid4().hex[:8]}"}).json()
        flow = client.post("/flows", json={"name": "f", "project_id": project["id"]}).json()
        first = client.post("/flow_runs", json={"flow_id": flow["id"], "idempotency_key": KEYS[0]})
        assert first.status_code == 201

        statuses = asyncio.run(_hammer(own_stack, flow["id"], seconds=12, flush_after=3))
        assert statuses[200] > 0 and statuses[201] > 0, statuses

        deadline = time.monotonic() + 60
        while httpx.get(own_stack.api_url + "/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "the ingress never became ready again"
            time.sleep(0.2)
        # After the loss, the key made before it still names the same run.
        again = client.post("/flow_runs", json={"flow_id": flow["id"], "idempotency_key": KEYS[0]})
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"], again.text
        assert client.get(f"/flow_runs/{first.json()['id']}").status_code == 200  # read model rebuilt too

    created = [e for e in all_events(own_stack) if e.type == "FlowRunCreated"]
    per_key = collections.Counter(e.payload.spec.idempotency_key for e in created if e.payload.spec.flow_id == flow["id"])
    assert set(per_key) <= set(KEYS)
    assert [k for k, n in per_key.items() if n != 1] == [], per_key
