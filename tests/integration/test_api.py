"""Projects, flow registration and versioning, flow-run creation and reads over the REST API."""

from __future__ import annotations

from datetime import datetime, timezone

from tests.conftest import register, unique


def test_project_names_are_unique(api):
    name = unique("p")
    assert api.post("/projects", json={"name": name}).status_code == 201
    r = api.post("/projects", json={"name": name})
    assert r.status_code == 409
    assert "Uniqueness violation." in r.json()["detail"]
    assert r.json()["field"] == "name"


def test_registering_a_name_again_makes_a_new_version_and_archives_the_old(api, project):
    name = unique("flow")
    v1 = register(api, project, name=name)
    v2 = register(api, project, name=name)
    assert (v1["version"], v2["version"]) == (1, 2)
    assert v1["version_group_id"] == v2["version_group_id"] == v2["flow_group_id"]
    assert api.get(f"/flows/{v1['id']}").json()["archived"] is True
    assert api.get(f"/flows/{v2['id']}").json()["archived"] is False
    listed = api.get("/flows", params={"name": name}).json()
    assert [f["id"] for f in listed] == [v2["id"]]
    assert {f["id"] for f in api.get("/flows", params={"name": name, "include_archived": True}).json()} == {v1["id"], v2["id"]}


def test_flow_view_data(api, project, flow):
    got = api.get(f"/flows/{flow['id']}").json()
    assert got["name"] == flow["name"] and got["project_id"] == project["id"]
    assert [t["slug"] for t in got["tasks"]] == ["extract-1", "load-1"]
    assert got["labels"] == ["docker"] and got["archived"] is False
    assert got["project"] == {"id": project["id"], "name": project["name"]}
    assert got["flow_group_id"] == got["version_group_id"] and got["version"] == 1


def test_registration_keeps_tasks_edges_schedule_storage_and_core_version(api, project):
    f = register(
        api,
        project,
        description="d",
        core_version="1.4.1",
        storage={"type": "Local", "path": "/x"},
        schedule={"type": "CronSchedule", "cron": "0 * * * *"},
        run_config={"type": "LocalRun"},
        tasks=[{"id": "a", "slug": "a-1", "name": "a", "tags": ["t"], "max_retries": 2, "retry_delay_seconds": 5,
                "mapped": True, "trigger": "all_successful", "type": "prefect.tasks.core.Function"}],
    )
    got = api.get(f"/flows/{f['id']}").json()
    assert (got["description"], got["core_version"], got["storage"], got["schedule"], got["run_config"]) == (
        "d", "1.4.1", {"type": "Local", "path": "/x"}, {"type": "CronSchedule", "cron": "0 * * * *"}, {"type": "LocalRun"})
    assert got["tasks"][0] == {"id": "a", "slug": "a-1", "name": "a", "tags": ["t"], "max_retries": 2, "retry_delay_seconds": 5.0,
                               "mapped": True, "trigger": "all_successful", "type": "prefect.tasks.core.Function"}


def test_create_by_flow_id_merges_parameters_and_defaults(api, flow):
    r = api.post("/flow_runs", json={"flow_id": flow["id"], "parameters": {"who": "marvin"}})
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["parameters"] == {"x": 1, "who": "marvin"}
    assert run["labels"] == ["docker"]  # the flow's labels by default
    assert run["state"]["type"] == "Scheduled" and run["version"] == 1
    assert run["deduplicated"] is False
    adjective, animal = run["name"].split("-")
    assert adjective and animal
    got = api.get(f"/flow_runs/{run['id']}").json()
    assert got["id"] == run["id"] and got["version"] == 1


def test_create_with_every_optional_field(api, flow):
    body = {
        "flow_id": flow["id"],
        "parameters": {"who": "a", "x": 5},
        "context": {"k": "v"},
        "labels": ["b", "a"],
        "run_config": {"type": "LocalRun", "env": {"A": "1"}},
        "flow_run_name": "my-run",
        "scheduled_start_time": "2030-01-02T03:04:05",  # no zone: UTC
    }
    run = api.post("/flow_runs", json=body).json()
    assert run["name"] == "my-run" and run["context"] == {"k": "v"} and run["labels"] == ["a", "b"]
    assert run["run_config"] == {"type": "LocalRun", "env": {"A": "1"}}
    assert datetime.fromisoformat(run["scheduled_start_time"].replace("Z", "+00:00")) == datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert run["state"]["start_time"].startswith("2030-01-02T03:04:05")


def test_zone_offsets_are_normalised_to_utc(api, flow):
    run = api.post(
        "/flow_runs", json={"flow_id": flow["id"], "parameters": {"who": "a"}, "scheduled_start_time": "2030-01-02T05:04:05+02:00"}
    ).json()
    assert datetime.fromisoformat(run["scheduled_start_time"].replace("Z", "+00:00")) == datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_create_by_version_group_uses_the_unarchived_flow(api, project):
    name = unique("flow")
    register(api, project, name=name)
    v2 = register(api, project, name=name)
    run = api.post("/flow_runs", json={"version_group_id": v2["version_group_id"]}).json()
    assert run["flow_id"] == v2["id"] and run["flow_version"] == 2


def test_create_by_name_needs_the_project_when_ambiguous(api, project):
    other = api.post("/projects", json={"name": unique("other")}).json()
    name = unique("flow")
    mine = register(api, project, name=name)
    register(api, other, name=name)
    r = api.post("/flow_runs", json={"flow_name": name})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "project_name"] and "ambiguous" in r.json()["detail"][0]["msg"]
    run = api.post("/flow_runs", json={"flow_name": name, "project_name": project["name"]}).json()
    assert run["flow_id"] == mine["id"]
    unique_name = unique("flow")
    only = register(api, project, name=unique_name)
    assert api.post("/flow_runs", json={"flow_name": unique_name}).json()["flow_id"] == only["id"]


def test_parameter_errors_name_the_parameter(api, flow):
    r = api.post("/flow_runs", json={"flow_id": flow["id"]})
    assert r.status_code == 422
    assert r.json()["detail"] == [{"loc": ["body", "parameters", "who"], "msg": "required parameter is missing", "type": "missing_parameter"}]
    r = api.post("/flow_runs", json={"flow_id": flow["id"], "parameters": {"who": "a", "nope": 1}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "parameters", "nope"]
    assert "unknown parameter" in r.json()["detail"][0]["msg"]


def test_flow_runs_are_listed_newest_first_and_paged(api, project):
    f = register(api, project)
    ids = [api.post("/flow_runs", json={"flow_id": f["id"]}).json()["id"] for _ in range(5)]
    page1 = api.get(f"/flows/{f['id']}/flow_runs", params={"limit": 3}).json()
    page2 = api.get(f"/flows/{f['id']}/flow_runs", params={"limit": 3, "offset": 3}).json()
    assert page1["total"] == 5
    assert [r["id"] for r in page1["flow_runs"] + page2["flow_runs"]] == list(reversed(ids))


def test_flow_group_labels_and_run_config_take_precedence(api, project):
    f = register(api, project, labels=["flow-label"], run_config={"type": "LocalRun", "labels": ["rc-label"]})
    assert api.post("/flow_runs", json={"flow_id": f["id"]}).json()["labels"] == ["rc-label"]
    r = api.patch(f"/flow_groups/{f['flow_group_id']}", json={"labels": ["group-label"]})
    assert r.status_code == 200, r.text
    assert api.post("/flow_runs", json={"flow_id": f["id"]}).json()["labels"] == ["group-label"]
    assert api.post("/flow_runs", json={"flow_id": f["id"], "labels": ["mine"]}).json()["labels"] == ["mine"]


def test_task_runs_are_precreated_pending_at_version_zero(api, flow):
    run = api.post("/flow_runs", json={"flow_id": flow["id"], "parameters": {"who": "a"}}).json()
    task_runs = api.get(f"/flow_runs/{run['id']}/task_runs").json()
    assert sorted(t["task_slug"] for t in task_runs) == ["extract-1", "load-1"]
    assert all(t["map_index"] == -1 and t["version"] == 0 and t["state"]["type"] == "Pending" for t in task_runs)


def test_health_endpoints(stack, api):
    import httpx

    assert httpx.get(stack.api_url + "/health/live").status_code == 200
    assert httpx.get(stack.api_url + "/health/ready").json() == {"ready": True}
    for name in ("transitions", "projector"):
        r = httpx.get(f"http://127.0.0.1:{stack.health_ports[name]}/readyz")
        assert r.status_code == 200 and r.json()["ready"] is True
    assert httpx.get(stack.api_url + "/openapi.json").json()["info"]["title"] == "RunLedger"
