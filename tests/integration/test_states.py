"""State updates with optimistic locking, races, and read-your-writes."""

from __future__ import annotations

import asyncio

from tests.conftest import register


def new_run(api, project, **body):
    f = register(api, project, tasks=[{"id": "t1", "slug": "t-1", "name": "t"}])
    r = api.post("/flow_runs", json={"flow_id": f["id"], **body})
    assert r.status_code == 201, r.text
    return r.json()


def test_each_accepted_state_raises_the_version_by_one(api, project):
    run = new_run(api, project)
    for expected_version, state in enumerate(["Submitted", "Running", "Success"], start=2):
        r = api.post(f"/flow_runs/{run['id']}/state", json={"state": {"type": state}, "version": expected_version - 1})
        assert r.status_code == 200, r.text
        assert r.json() == {"flow_run_id": run["id"], "version": expected_version, "state": state}
    got = api.get(f"/flow_runs/{run['id']}").json()
    assert [(s["type"], s["version"]) for s in got["states"]] == [("Scheduled", 1), ("Submitted", 2), ("Running", 3), ("Success", 4)]
    assert got["start_time"] == got["states"][2]["timestamp"] and got["end_time"] == got["states"][3]["timestamp"]
    assert got["duration_seconds"] is not None and got["duration_seconds"] >= 0


def test_a_stale_version_is_rejected_with_the_current_one(api, project):
    run = new_run(api, project)
    assert api.post(f"/flow_runs/{run['id']}/state", json={"state": {"type": "Running"}, "version": 1}).status_code == 200
    r = api.post(f"/flow_runs/{run['id']}/state", json={"state": {"type": "Success"}, "version": 1})
    assert r.status_code == 409
    body = r.json()
    assert body["code"] == "VERSION_MISMATCH" and body["current_version"] == 2 and body["current_state"] == "Running"
    assert body["detail"].startswith("State update failed")
    assert api.get(f"/flow_runs/{run['id']}").json()["version"] == 2  # nothing changed


def test_a_null_or_absent_version_skips_the_check(api, project):
    run = new_run(api, project)
    assert api.post(f"/flow_runs/{run['id']}/state", json={"state": {"type": "Running"}, "version": None}).json()["version"] == 2
    assert api.post(f"/flow_runs/{run['id']}/state", json={"state": {"type": "Success"}}).json()["version"] == 3


def test_transition_rules_name_themselves(api, project):
    run = new_run(api, project)
    r = api.post(f"/flow_runs/{run['id']}/state", json={"state": {"type": "Cancelling"}})
    assert r.status_code == 409 and r.json()["rule"] == "cancelling_only_from_running"


async def test_twenty_concurrent_updates_with_one_version_one_wins(aapi, api, project):
    run = new_run(api, project)
    responses = await asyncio.gather(
        *(aapi.post(f"/flow_runs/{run['id']}/state", json={"state": {"type": "Running", "message": str(i)}, "version": 1}) for i in range(20))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] + [409] * 19, [r.text for r in responses]
    got = (await aapi.get(f"/flow_runs/{run['id']}")).json()
    assert got["version"] == 2 and len(got["states"]) == 2


async def test_read_your_writes_in_a_tight_loop(aapi, api, project):
    f = register(api, project)
    for i in range(40):
        created = await aapi.post("/flow_runs", json={"flow_id": f["id"]})
        assert created.status_code == 201
        run_id = created.json()["id"]
        got = await aapi.get(f"/flow_runs/{run_id}")
        assert got.status_code == 200 and got.json()["version"] == 1
        updated = await aapi.post(f"/flow_runs/{run_id}/state", json={"state": {"type": "Running"}, "version": 1})
        assert updated.status_code == 200
        got = await aapi.get(f"/flow_runs/{run_id}")
        assert got.json()["version"] == 2 and got.json()["state"]["type"] == "Running"
        listed = await aapi.get(f"/flows/{f['id']}/flow_runs", params={"limit": 1})
        assert listed.json()["flow_runs"][0]["id"] == run_id


def test_cancel_moves_task_runs_along(api, project):
    run = new_run(api, project)
    assert api.post(f"/flow_runs/{run['id']}/state", json={"state": {"type": "Running"}}).status_code == 200
    (task_run,) = api.get(f"/flow_runs/{run['id']}/task_runs").json()
    assert api.post(f"/task_runs/{task_run['id']}/state", json={"state": {"type": "Running"}, "version": 0}).status_code == 200
    assert api.post(f"/flow_runs/{run['id']}/cancel").json()["state"] == "Cancelling"
    assert api.get(f"/task_runs/{task_run['id']}").json()["state"]["type"] == "Cancelling"
    assert api.post(f"/flow_runs/{run['id']}/state", json={"state": {"type": "Cancelled"}}).status_code == 200
    assert api.get(f"/task_runs/{task_run['id']}").json()["state"]["type"] == "Cancelled"
    r = api.post(f"/flow_runs/{run['id']}/state", json={"state": {"type": "Running"}})
    assert r.status_code == 409 and r.json()["rule"] == "cancelled_runs_move_only_by_restart"
    assert api.post(f"/flow_runs/{run['id']}/state", json={"state": {"type": "Scheduled", "message": "restart"}}).status_code == 200


def test_batch_state_updates_give_a_verdict_per_run(api, project):
    a, b = new_run(api, project), new_run(api, project)
    r = api.post(
        "/flow_runs/states",
        json={"states": [
            {"flow_run_id": a["id"], "state": {"type": "Running"}, "version": 1},
            {"flow_run_id": b["id"], "state": {"type": "Running"}, "version": 7},
            {"flow_run_id": "00000000-0000-0000-0000-000000000000", "state": {"type": "Running"}},
        ]},
    )
    assert r.status_code == 200
    verdicts = r.json()["states"]
    assert [v["status"] for v in verdicts] == ["SUCCESS", "REJECTED", "ERROR"]
    assert verdicts[0]["version"] == 2 and verdicts[1]["error"]["code"] == "VERSION_MISMATCH"


def test_task_run_versions_rename_heartbeat_and_mapped_children(api, project):
    run = new_run(api, project)
    (task_run,) = api.get(f"/flow_runs/{run['id']}/task_runs").json()
    r = api.post(f"/task_runs/{task_run['id']}/state", json={"state": {"type": "Running"}, "version": 3})
    assert r.status_code == 409 and r.json()["current_version"] == 0
    assert api.post(f"/flow_runs/{run['id']}/state", json={"state": {"type": "Running"}}).status_code == 200
    r = api.post(f"/task_runs/{task_run['id']}/state", json={"state": {"type": "Mapped", "result_location": "/tmp/r"}, "version": 0})
    assert r.json()["version"] == 1
    assert api.get(f"/task_runs/{task_run['id']}").json()["state"]["result_location"] == "/tmp/r"
    assert api.post(f"/task_runs/{task_run['id']}/name", json={"name": "renamed"}).status_code == 200
    assert api.get(f"/task_runs/{task_run['id']}").json()["name"] == "renamed"
    assert api.post(f"/flow_runs/{run['id']}/name", json={"name": "new-name"}).status_code == 200
    assert api.get(f"/flow_runs/{run['id']}").json()["name"] == "new-name"
    assert api.post(f"/flow_runs/{run['id']}/heartbeat").status_code == 200
    assert api.get(f"/flow_runs/{run['id']}").json()["heartbeat"] is not None
    child = api.post("/task_runs", json={"flow_run_id": run["id"], "task_id": "t1", "map_index": 3}).json()
    again = api.post("/task_runs", json={"flow_run_id": run["id"], "task_id": "t1", "map_index": 3}).json()
    assert child["id"] == again["id"] and child["map_index"] == 3 and child["version"] == 0
    assert len(api.get(f"/flow_runs/{run['id']}/task_runs").json()) == 2


async def test_concurrent_get_or_create_of_a_mapped_child_makes_one(aapi, api, project):
    run = new_run(api, project)
    responses = await asyncio.gather(
        *(aapi.post("/task_runs", json={"flow_run_id": run["id"], "task_id": "t1", "map_index": 0}) for _ in range(15))
    )
    assert len({r.json()["id"] for r in responses}) == 1
    assert len((await aapi.get(f"/flow_runs/{run['id']}/task_runs")).json()) == 2


def test_batch_task_run_state_updates(api, project):
    run = new_run(api, project)
    api.post(f"/flow_runs/{run['id']}/state", json={"state": {"type": "Running"}})
    (task_run,) = api.get(f"/flow_runs/{run['id']}/task_runs").json()
    r = api.post("/task_runs/states", json={"states": [
        {"task_run_id": task_run["id"], "state": {"type": "Running"}, "version": 0},
        {"task_run_id": task_run["id"], "state": {"type": "Success"}, "version": 0},
    ]})
    statuses = sorted(v["status"] for v in r.json()["states"])
    assert statuses == ["REJECTED", "SUCCESS"]
    assert api.get(f"/task_runs/{task_run['id']}").json()["version"] == 1


async def test_a_command_id_names_one_command_of_one_run(aapi, api, project):
    """A client's command_id makes a retry of the same command safe, and nothing more: reused for
    another run or another command it is a command of its own (it used to get the first
    command's answer and change nothing); two identical requests in flight both get the answer."""
    f = register(api, project)
    a, b = (api.post("/flow_runs", json={"flow_id": f["id"]}).json()["id"] for _ in range(2))

    def post(run_id, state):
        return api.post(f"/flow_runs/{run_id}/state", json={"state": {"type": state}, "version": None, "command_id": "c1"})

    assert post(a, "Running").status_code == 200
    assert post(b, "Running").status_code == 200
    assert api.get(f"/flow_runs/{b}").json()["state"]["type"] == "Running"
    done = post(a, "Success")
    assert done.status_code == 200 and api.get(f"/flow_runs/{a}").json()["state"]["type"] == "Success"
    again = post(a, "Success")  # a retry: the first answer, no second state
    assert again.json()["version"] == done.json()["version"] == api.get(f"/flow_runs/{a}").json()["version"]
    body = {"state": {"type": "Success"}, "version": None, "command_id": "twice"}
    both = await asyncio.wait_for(asyncio.gather(*(aapi.post(f"/flow_runs/{b}/state", json=body) for _ in range(2))), 20)
    assert [r.status_code for r in both] == [200, 200] and both[0].json()["version"] == both[1].json()["version"]
