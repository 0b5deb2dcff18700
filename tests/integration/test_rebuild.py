"""Every read model can be dropped and rebuilt from the log by one command, indexes included."""

from __future__ import annotations

import subprocess
import sys

from runledger.services.devstack import snapshot
from tests.conftest import register, unique


def make_history(api, project) -> list[dict]:
    """Runs that moved between states (so indexes had entries removed), with labels and task runs."""
    f = register(api, project, labels=["gpu", "eu"], tasks=[{"id": "t", "slug": "t-1"}, {"id": "u", "slug": "u-1"}])
    runs = [api.post("/flow_runs", json={"flow_id": f["id"], "labels": labels}).json() for labels in (["gpu"], ["eu", "gpu"], [])]
    for run, states in zip(runs, (["Running"], ["Running", "Success"], ["Paused"])):
        for state in states:
            assert api.post(f"/flow_runs/{run['id']}/state", json={"state": {"type": state}}).status_code == 200
    (task_run, *_) = api.get(f"/flow_runs/{runs[0]['id']}/task_runs").json()
    assert api.post(f"/task_runs/{task_run['id']}/state", json={"state": {"type": "Running"}}).status_code == 200
    # concurrency limits (one set, updated, one deleted) and an agent: read models of the log too
    label, tag = unique("rebuild-label"), unique("rebuild-tag")
    assert api.put(f"/concurrency_limits/flow_runs/{label}", json={"limit": 3}).status_code == 200
    assert api.put(f"/concurrency_limits/flow_runs/{label}", json={"limit": 4}).status_code == 200
    tag_limit = api.put(f"/concurrency_limits/task_runs/{tag}", json={"limit": 1}).json()
    assert api.delete(f"/concurrency_limits/{tag_limit['id']}").status_code == 200
    assert api.put(f"/concurrency_limits/task_runs/{tag}-kept", json={"limit": 2}).status_code == 200
    assert api.post("/agents", json={"type": "LocalAgent", "name": unique("agent"), "labels": [label]}).status_code == 200
    return runs


def rebuild(stack) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runledger.services.cli", "read-models", "rebuild", "--timeout", "120"],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=180,
    )


def assert_indexes_present(live: dict) -> None:
    names = [k.decode() for k in live]
    for part in (":checkpoint", ":whole", ":limits:label", ":limits:tag", ":limit_ids", ":agents", ":flow_run:", ":task_run:", ":idx:fr:state:Running", ":idx:fr:state:Success",
                 ":idx:fr:due", ":idx:fr:label:gpu", ":idx:fr:flow:", ":idx:tr:flow_run:", ":idx:tr:state:Running"):
        assert any(part in n for n in names), part
    assert {kind for kind, _ in live.values()} >= {"string", "zset", "set", "hash"}


def test_rebuilt_read_models_equal_the_live_ones(stack, api, project, redis_client):
    runs = make_history(api, project)
    live = snapshot(redis_client)
    assert_indexes_present(live)
    result = rebuild(stack)
    assert result.returncode == 0, result.stderr
    assert f"dropped {len(live)} keys" in result.stdout
    rebuilt = snapshot(redis_client)
    assert sorted(rebuilt) == sorted(live)
    for key in live:
        assert rebuilt[key] == live[key], key
    run = runs[0]
    assert api.get(f"/flow_runs/{run['id']}").json()["version"] == 2
    # the rebuilt model keeps serving writes, and its indexes follow them
    assert api.post(f"/flow_runs/{run['id']}/state", json={"state": {"type": "Success"}, "version": 2}).json()["version"] == 3
    listed = api.get("/flow_runs", params={"state": "Success", "flow_id": run["flow_id"]}).json()["flow_runs"]
    assert sorted(r["id"] for r in listed) == sorted([runs[0]["id"], runs[1]["id"]])
