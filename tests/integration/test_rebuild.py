"""Every read model can be dropped and rebuilt from the log by one command."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import register


def snapshot(redis_client) -> dict:
    out = {}
    for key in redis_client.scan_iter(match="rl:rm:*", count=1000):
        kind = redis_client.type(key).decode()
        if kind == "string":
            out[key] = redis_client.get(key)
        elif kind == "zset":
            out[key] = redis_client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            out[key] = sorted(redis_client.smembers(key))
        elif kind == "hash":
            out[key] = redis_client.hgetall(key)
        else:
            raise AssertionError(f"unexpected {kind} at {key}")
    return out


def test_rebuilt_read_models_equal_the_live_ones(stack, api, project, redis_client):
    f = register(api, project, tasks=[{"id": "t", "slug": "t-1"}])
    run = api.post("/flow_runs", json={"flow_id": f["id"]}).json()
    api.post(f"/flow_runs/{run['id']}/state", json={"state": {"type": "Running"}})
    live = snapshot(redis_client)
    assert any(b":flow_run:" in k for k in live) and any(b":checkpoint:" in k for k in live)
    result = subprocess.run(
        [sys.executable, "-m", "runledger.services.cli", "read-models", "rebuild", "--timeout", "120"],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert f"dropped {len(live)} keys" in result.stdout
    rebuilt = snapshot(redis_client)
    assert rebuilt.keys() == live.keys()
    assert rebuilt == live
    assert api.get(f"/flow_runs/{run['id']}").json()["version"] == 2
    # the rebuilt model keeps serving writes
    assert api.post(f"/flow_runs/{run['id']}/state", json={"state": {"type": "Success"}, "version": 2}).json()["version"] == 3
