"""kill -9 under load: no accepted transition is lost or applied twice; versions continue."""

from __future__ import annotations

import asyncio
import collections
import signal

import httpx
import pytest

from tests.conftest import register
from tests.integration.helpers import all_events

pytestmark = pytest.mark.slow

RUNS, REQUESTS, CONCURRENCY = 6, 240, 24


async def _load(stack, run_ids, kill_after: int, victim: str):
    results: list[tuple[str, str, httpx.Response]] = []
    sem = asyncio.Semaphore(CONCURRENCY)
    killed = asyncio.Event()

    # keep-alive shorter than uvicorn's 5 s: reusing a connection the server is closing is a ReadError
    limits = httpx.Limits(max_connections=64, keepalive_expiry=2)
    async with httpx.AsyncClient(base_url=stack.api_url + "/api/v1", timeout=90, limits=limits) as client:

        async def one(n: int):
            run_id = run_ids[n % len(run_ids)]
            state = "Running" if n % 2 else "Pending"  # (a second Submitted in a row is refused)
            async with sem:
                r = await client.post(f"/flow_runs/{run_id}/state", json={"state": {"type": state, "message": f"req-{n}"}})
            results.append((run_id, f"req-{n}", r))
            if len(results) == kill_after and not killed.is_set():
                killed.set()
                stack.kill(victim, signal.SIGKILL)
                stack.start_service(victim)
                await asyncio.to_thread(stack.wait_ready, victim, 90)

        await asyncio.gather(*(one(n) for n in range(REQUESTS)))
    assert killed.is_set()
    return results


def _check(api, stack, run_ids, results):
    assert [r.status_code for _, _, r in results if r.status_code != 200] == [], [r.text for _, _, r in results if r.status_code != 200][:3]
    by_run = collections.defaultdict(list)
    for run_id, message, response in results:
        by_run[run_id].append((message, response.json()["version"]))
    for run_id in run_ids:
        run = api.get(f"/flow_runs/{run_id}").json()
        history = run["states"]
        # versions 1..n, each exactly once; one history entry per accepted request, none twice
        assert [s["version"] for s in history] == list(range(1, len(history) + 1))
        messages = [s["message"] for s in history[1:]]
        assert len(messages) == len(set(messages)) == len(by_run[run_id])
        assert {(s["message"], s["version"]) for s in history[1:]} == set(by_run[run_id])
        assert run["version"] == len(history)
    # In the log itself: no (aggregate, seq) was written by two different events.
    seen: dict[tuple[str, int], str] = {}
    for env in all_events(stack):
        key = (env.aggregate_id, env.seq)
        assert seen.setdefault(key, str(env.event_id)) == str(env.event_id), f"{key} written twice"


@pytest.mark.parametrize("victim", ["transitions", "projector"])
async def test_kill_9_under_load(stack, api, project, victim):
    f = register(api, project)
    run_ids = [api.post("/flow_runs", json={"flow_id": f["id"]}).json()["id"] for _ in range(RUNS)]
    results = await _load(stack, run_ids, kill_after=REQUESTS // 3, victim=victim)
    await asyncio.to_thread(_check, api, stack, run_ids, results)
    # versions continue after the restart
    before = api.get(f"/flow_runs/{run_ids[0]}").json()["version"]
    r = api.post(f"/flow_runs/{run_ids[0]}/state", json={"state": {"type": "Success"}, "version": before})
    assert r.status_code == 200 and r.json()["version"] == before + 1
