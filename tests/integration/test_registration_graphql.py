"""GraphQL, issue 9's registration surface: ``Client.register()``'s sequence (the flow without its
tasks, ``register_tasks`` in batches, ``register_edges``, ``set_schedule_active``), the schedule
switch, the flow group's real settings, and task-run artifacts."""

from __future__ import annotations

import base64
import copy
import gzip
import json

import httpx
import pytest

from tests.conftest import register, unique
from tests.unit.test_registration import SERIALIZED

CREATE_FLOW = "mutation($input: create_flow_input!) { create_flow(input: $input) { id } }"
CREATE_COMPRESSED = (
    "mutation($input: create_flow_from_compressed_string_input!) { create_flow_from_compressed_string(input: $input) { id } }"
)
REGISTER_TASKS = "mutation($input: register_tasks_input!) { register_tasks(input: $input) { success } }"
REGISTER_EDGES = "mutation($input: register_edges_input!) { register_edges(input: $input) { success } }"
SCHEDULE_ON = "mutation($input: set_schedule_active_input!) { set_schedule_active(input: $input) { success } }"
SCHEDULE_OFF = "mutation($input: set_schedule_inactive_input!) { set_schedule_inactive(input: $input) { success } }"
FLOW = "query($id: ID!) { flow_by_pk(id: $id) { id version settings tasks { slug mapped } flow_group { id schedule_active settings } } }"
SCHEDULE = {
    "type": "Schedule", "__version__": "1.4.1", "start_date": None, "end_date": None, "adjustments": [], "filters": [],
    "not_filters": [], "or_filters": [],
    "clocks": [{"type": "IntervalClock", "interval": 3_600_000_000, "start_date": {"dt": "2026-01-01T00:00:00", "tz": "UTC"},
                "end_date": None, "parameter_defaults": {}, "labels": None, "__version__": "1.4.1"}],
}


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.api_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def gql(http):
    def run(query: str, variables=None, expect_errors: bool = False):
        r = http.post("/graphql", json={"query": query, "variables": variables})
        assert r.status_code == 200, r.text
        result = r.json()
        if expect_errors:
            assert result.get("errors"), result
        else:
            assert not result.get("errors"), result["errors"]
        return result

    return run


def compress(value) -> str:
    return base64.b64encode(gzip.compress(json.dumps(value).encode())).decode()


def client_register(gql, project_id: str, name: str, schedule=None, set_schedule_active=True) -> str:
    """What prefect 1.4.1's ``Client.register()`` sends (client.py), batches of 2 instead of 500."""
    serialized = {**copy.deepcopy(SERIALIZED), "name": name, "schedule": schedule}
    tasks, edges = serialized.pop("tasks"), serialized.pop("edges")
    inputs = {"project_id": project_id, "serialized_flow": compress(serialized), "set_schedule_active": False, "version_group_id": None}
    flow_id = gql(CREATE_COMPRESSED, {"input": inputs})["data"]["create_flow_from_compressed_string"]["id"]
    for start in range(0, len(tasks) + 1, 2):  # the client's `while start <= len(...)`: an empty last batch
        batch = {"flow_id": flow_id, "serialized_tasks": tasks[start : start + 2]}
        assert gql(REGISTER_TASKS, {"input": batch})["data"]["register_tasks"] == {"success": True}
    assert gql(REGISTER_EDGES, {"input": {"flow_id": flow_id, "serialized_edges": edges}})["data"]["register_edges"]["success"]
    if set_schedule_active:
        assert gql(SCHEDULE_ON, {"input": {"flow_id": flow_id}})["data"]["set_schedule_active"]["success"]
    return flow_id


def test_client_register_then_a_run_has_a_task_run_for_every_task(gql, project):
    flow_id = client_register(gql, project["id"], unique("hello"))
    flow = gql(FLOW, {"id": flow_id})["data"]["flow_by_pk"]
    assert sorted((t["slug"], t["mapped"]) for t in flow["tasks"]) == [("say_hello-1", True), ("shout-1", False), ("who", False)]
    run_id = gql('mutation { create_flow_run(input: {flow_id: "%s"}) { id } }' % flow_id)["data"]["create_flow_run"]["id"]
    run = gql('{ flow_run_by_pk(id: "%s") { version task_runs(where: {map_index: {_eq: -1}}) { version task { slug } } } }' % run_id)
    task_runs = run["data"]["flow_run_by_pk"]["task_runs"]
    assert sorted((t["task"]["slug"], t["version"]) for t in task_runs) == [("say_hello-1", 0), ("shout-1", 0), ("who", 0)]


def test_repeats_are_no_ops_and_changes_are_refused_naming_the_field(gql, project):
    flow_id = client_register(gql, project["id"], unique("hello"))
    tasks = copy.deepcopy(SERIALIZED["tasks"])
    gql(REGISTER_TASKS, {"input": {"flow_id": flow_id, "serialized_tasks": tasks}})  # a retried call
    gql(REGISTER_EDGES, {"input": {"flow_id": flow_id, "serialized_edges": SERIALIZED["edges"]}})
    assert len(gql(FLOW, {"id": flow_id})["data"]["flow_by_pk"]["tasks"]) == 3
    tasks[1]["max_retries"] = 7
    changed = gql(REGISTER_TASKS, {"input": {"flow_id": flow_id, "serialized_tasks": tasks}}, expect_errors=True)["errors"][0]
    assert changed["extensions"]["code"] == "CONFLICT" and changed["extensions"]["field"] == "serialized_tasks.1"
    assert "'shout-1'" in changed["message"]
    bad_edge = {"upstream_task": {"slug": "who"}, "downstream_task": {"slug": "nowhere-1"}, "key": "x", "mapped": False}
    unknown = gql(REGISTER_EDGES, {"input": {"flow_id": flow_id, "serialized_edges": [bad_edge]}}, expect_errors=True)["errors"][0]
    assert unknown["extensions"]["code"] == "BAD_USER_INPUT" and unknown["extensions"]["field"] == "serialized_edges.0.downstream_task"
    assert "'nowhere-1'" in unknown["message"]
    shape = gql(REGISTER_TASKS, {"input": {"flow_id": flow_id, "serialized_tasks": {"slug": "x"}}}, expect_errors=True)["errors"][0]
    assert shape["extensions"]["field"] == "serialized_tasks" and "expected a list" in shape["message"]
    missing = gql(REGISTER_TASKS, {"input": {"flow_id": "00000000-0000-4000-8000-00000000dead", "serialized_tasks": []}}, expect_errors=True)
    assert "no flow with id" in missing["errors"][0]["message"]


def test_a_flow_registered_with_its_tasks_takes_no_new_ones(gql, project):
    serialized = {**copy.deepcopy(SERIALIZED), "name": unique("whole")}
    flow_id = gql(CREATE_FLOW, {"input": {"project_id": project["id"], "serialized_flow": serialized}})["data"]["create_flow"]["id"]
    assert gql(REGISTER_TASKS, {"input": {"flow_id": flow_id, "serialized_tasks": SERIALIZED["tasks"]}})["data"]["register_tasks"]["success"]
    extra = [{"slug": "tidy_up-1", "name": "tidy_up"}]
    refused = gql(REGISTER_TASKS, {"input": {"flow_id": flow_id, "serialized_tasks": extra}}, expect_errors=True)["errors"][0]
    assert refused["extensions"]["code"] == "CONFLICT" and "new version" in refused["message"]


def test_the_registrations_schedule_switch_and_the_mutations_are_one_switch(gql, project):
    name = unique("scheduled")
    flow_id = client_register(gql, project["id"], name, schedule=SCHEDULE, set_schedule_active=False)
    group = gql(FLOW, {"id": flow_id})["data"]["flow_by_pk"]["flow_group"]
    assert group["schedule_active"] is False  # registered with set_schedule_active: false
    gql(SCHEDULE_ON, {"input": {"flow_id": flow_id}})
    assert gql(FLOW, {"id": flow_id})["data"]["flow_by_pk"]["flow_group"]["schedule_active"] is True
    gql(SCHEDULE_OFF, {"input": {"flow_id": flow_id}})
    assert gql(FLOW, {"id": flow_id})["data"]["flow_by_pk"]["flow_group"]["schedule_active"] is False
    # `prefect register` sends set_schedule_active: true (no --no-schedule): the next version switches it on
    serialized = {**copy.deepcopy(SERIALIZED), "name": name, "schedule": SCHEDULE, "description": "v2"}
    inputs = {"project_id": project["id"], "serialized_flow": compress(serialized), "set_schedule_active": True}
    v2 = gql(CREATE_COMPRESSED, {"input": inputs})["data"]["create_flow_from_compressed_string"]["id"]
    flow = gql(FLOW, {"id": v2})["data"]["flow_by_pk"]
    assert flow["version"] == 2 and flow["flow_group"]["id"] == group["id"] and flow["flow_group"]["schedule_active"] is True


def test_a_schedule_that_needs_parameters_is_not_switched_on(gql, project):
    serialized = {**copy.deepcopy(SERIALIZED), "name": unique("needs-who"), "schedule": SCHEDULE}
    serialized["parameters"] = [{**serialized["parameters"][0], "required": True, "default": None}]
    flow_id = gql(CREATE_FLOW, {"input": {"project_id": project["id"], "serialized_flow": serialized}})["data"]["create_flow"]["id"]
    assert gql(FLOW, {"id": flow_id})["data"]["flow_by_pk"]["flow_group"]["schedule_active"] is False  # registered, left off
    refused = gql(SCHEDULE_ON, {"input": {"flow_id": flow_id}}, expect_errors=True)["errors"][0]
    assert refused["extensions"]["code"] == "INVALID" and refused["extensions"]["field"] == "schedule_active"
    assert refused["message"].startswith("Can not schedule a flow that has required parameters") and "'who'" in refused["message"]


def test_flow_settings_are_the_groups_own_over_the_defaults(gql, http, project):
    flow_id = client_register(gql, project["id"], unique("settings"))
    defaults = {"heartbeat_enabled": True, "lazarus_enabled": True, "version_locking_enabled": False}
    flow = gql(FLOW, {"id": flow_id})["data"]["flow_by_pk"]
    assert flow["settings"] == defaults == flow["flow_group"]["settings"]
    r = http.patch(f"/api/v1/flow_groups/{flow['flow_group']['id']}/settings", json={"heartbeat_enabled": False})
    assert r.status_code == 200, r.text
    changed = {**defaults, "heartbeat_enabled": False}
    flow = gql(FLOW, {"id": flow_id})["data"]["flow_by_pk"]
    assert flow["settings"] == changed == flow["flow_group"]["settings"]
    run_id = gql('mutation { create_flow_run(input: {flow_id: "%s"}) { id } }' % flow_id)["data"]["create_flow_run"]["id"]
    heartbeat = gql('{ flow_run_by_pk(id: "%s") { flow { settings } } }' % run_id)  # R13, what the flow runner reads
    assert heartbeat["data"]["flow_run_by_pk"]["flow"]["settings"]["heartbeat_enabled"] is False
    # Prefect Server's per-flow switches change the same settings
    for name, expected in (("disable_flow_lazarus_process", {"lazarus_enabled": False}), ("enable_flow_heartbeat", {"heartbeat_enabled": True})):
        done = gql(f"mutation($input: {name}_input!) {{ {name}(input: $input) {{ success }} }}", {"input": {"flow_id": flow_id}})
        assert done["data"][name]["success"] is True
        changed = {**changed, **expected}
        assert gql(FLOW, {"id": flow_id})["data"]["flow_by_pk"]["settings"] == changed
    assert changed == {"heartbeat_enabled": True, "lazarus_enabled": False, "version_locking_enabled": False}
    missing = gql('mutation { disable_flow_heartbeat(input: {flow_id: "nope"}) { success } }', expect_errors=True)["errors"][0]
    assert "no flow with id nope" in missing["message"]


ARTIFACTS = "query($id: ID!) { task_run_by_pk(id: $id) { artifacts { id kind data task_run_id tenant_id created updated } } }"


def test_task_run_artifacts_are_created_updated_and_deleted(gql, api, project):
    flow = register(api, project, tasks=[{"id": "t1", "slug": "report-1", "name": "report"}])
    run_id = gql('mutation { create_flow_run(input: {flow_id: "%s"}) { id } }' % flow["id"])["data"]["create_flow_run"]["id"]
    task_run_id = gql('{ task_run(where: {flow_run_id: {_eq: "%s"}}) { id } }' % run_id)["data"]["task_run"][0]["id"]
    create = "mutation($input: create_task_run_artifact_input!) { create_task_run_artifact(input: $input) { id } }"
    link = gql(create, {"input": {"task_run_id": task_run_id, "kind": "link", "data": {"link": "https://example.com"}}})
    link_id = link["data"]["create_task_run_artifact"]["id"]
    md = gql(create, {"input": {"task_run_id": task_run_id, "kind": "markdown", "data": {"markdown": "# hi"}, "tenant_id": None}})
    md_id = md["data"]["create_task_run_artifact"]["id"]
    seen = gql(ARTIFACTS, {"id": task_run_id})["data"]["task_run_by_pk"]["artifacts"]
    assert [(a["id"], a["kind"], a["data"], a["task_run_id"]) for a in seen] == [
        (link_id, "link", {"link": "https://example.com"}, task_run_id),
        (md_id, "markdown", {"markdown": "# hi"}, task_run_id),
    ]
    update = "mutation($input: update_task_run_artifact_input!) { update_task_run_artifact(input: $input) { success } }"
    assert gql(update, {"input": {"task_run_artifact_id": md_id, "data": {"markdown": "# bye"}}})["data"]["update_task_run_artifact"]["success"]
    delete = "mutation($input: delete_task_run_artifact_input!) { delete_task_run_artifact(input: $input) { success } }"
    assert gql(delete, {"input": {"task_run_artifact_id": link_id}})["data"]["delete_task_run_artifact"]["success"]
    by_id = gql('{ task_run_artifact(where: {task_run_id: {_eq: "%s"}}) { id data task_run { id } } }' % task_run_id)
    assert by_id["data"]["task_run_artifact"] == [{"id": md_id, "data": {"markdown": "# bye"}, "task_run": {"id": task_run_id}}]

    gone = gql(delete, {"input": {"task_run_artifact_id": link_id}}, expect_errors=True)["errors"][0]
    assert gone["extensions"]["code"] == "BAD_USER_INPUT" and "no task run artifact with id" in gone["message"]
    orphan = gql(create, {"input": {"task_run_id": "00000000-0000-4000-8000-00000000dead", "kind": "link", "data": {}}}, expect_errors=True)
    assert "no task run with id" in orphan["errors"][0]["message"]
    tenant = gql(create, {"input": {"task_run_id": task_run_id, "kind": "link", "data": {}, "tenant_id": "t-2"}}, expect_errors=True)
    assert tenant["errors"][0]["extensions"]["field"] == "tenant_id"
