"""GraphQL: the seed documents' operations verbatim, both spellings, and Prefect's transport habits."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import register


@pytest.fixture(scope="module")
def gql(stack):
    with httpx.Client(base_url=stack.api_url, timeout=60) as client:

        def run(query: str, variables=None, raw_variables: str | None = None, expect_errors: bool = False):
            body = {"query": query, "variables": raw_variables if raw_variables is not None else variables}
            r = client.post("/graphql", json=body)
            assert r.status_code == 200, r.text
            result = r.json()
            if expect_errors:
                assert result.get("errors"), result
            else:
                assert not result.get("errors"), result["errors"]
            return result

        yield run


@pytest.fixture
def gflow(api, project):
    return register(api, project, parameters=[{"name": "a", "default": 1}], tasks=[{"id": "t1", "slug": "say_hello-1", "name": "say_hello"}])


def test_hello_and_malformed_documents(gql, stack):
    assert gql("query { hello }")["data"] == {"hello": "hello"}
    r = httpx.post(stack.api_url + "/graphql", json={"query": "query { nope"})
    assert r.status_code == 400 and r.json()["errors"]


def test_seed_camel_case_create_and_idempotency(gql, gflow, api):
    created = gql(f'mutation {{ createFlowRun(input: {{ flowId: "{gflow["id"]}" }}) {{ id }} }}')["data"]["createFlowRun"]
    assert api.get(f"/flow_runs/{created['id']}").json()["version"] == 1
    first = gql(f'mutation {{ createFlowRun(input: {{ flowId: "{gflow["id"]}", idempotencyKey: "any-key" }}) {{ id }} }}')
    again = gql(f'mutation {{ createFlowRun(input: {{ flowId: "{gflow["id"]}", idempotencyKey: "any-key" }}) {{ id deduplicated }} }}')
    assert first["data"]["createFlowRun"]["id"] == again["data"]["createFlowRun"]["id"]
    assert again["data"]["createFlowRun"]["deduplicated"] is True
    scheduled = gql(
        f'mutation {{ createFlowRun(input: {{ flowId: "{gflow["id"]}", scheduledStartTime: "2030-05-06 07:08:09" }}) {{ id }} }}'
    )["data"]["createFlowRun"]
    assert api.get(f"/flow_runs/{scheduled['id']}").json()["scheduled_start_time"].startswith("2030-05-06T07:08:09")


def test_seed_snake_case_create_with_parameters_as_string_or_object(gql, gflow, api):
    run = gql(
        'mutation {\n  create_flow_run(input: { \n  flow_id: "%s", \n  parameters: "{\\"a\\":2}" \n  }) {\n    id\n  }\n}' % gflow["id"]
    )["data"]["create_flow_run"]
    assert api.get(f"/flow_runs/{run['id']}").json()["parameters"] == {"a": 2}
    run = gql('mutation { create_flow_run(input: {flow_id: "%s", parameters: {a: 3}}) { id } }' % gflow["id"])["data"]["create_flow_run"]
    assert api.get(f"/flow_runs/{run['id']}").json()["parameters"] == {"a": 3}
    by_group = gql(
        'mutation { create_flow_run(input: {version_group_id: "%s", idempotency_key: "k", scheduled_start_time: "2030-01-01T00:00:00+00:00"}) { id } }'
        % gflow["version_group_id"]
    )["data"]["create_flow_run"]
    assert api.get(f"/flow_runs/{by_group['id']}").json()["flow_id"] == gflow["id"]


@pytest.mark.parametrize("spelling", ["camel", "snake"])
def test_seed_version_query_then_state_update(gql, gflow, spelling):
    run_id = gql('mutation { create_flow_run(input: {flow_id: "%s"}) { id } }' % gflow["id"])["data"]["create_flow_run"]["id"]
    version = gql('query {\n  flow_run_by_pk(id: "%s") {\n    version\n  }\n}' % run_id)["data"]["flow_run_by_pk"]["version"]
    assert version == 1
    if spelling == "camel":
        doc = 'mutation($state: JSON!) {\n  setFlowRunState(input: {flowRunId: "%s", version: %d, state: $state}) {\n      id\n  }\n}'
        field = "setFlowRunState"
    else:
        doc = 'mutation($state: JSON!) {\n  set_flow_run_state(input: {flow_run_id: "%s", version: %d, state: $state}) {\n      id\n  }\n}'
        field = "set_flow_run_state"
    variables = {"state": {"type": "Success", "message": "It worked!"}}
    assert gql(doc % (run_id, version), variables)["data"][field]["id"] == run_id
    after = gql('{ flow_run_by_pk(id: "%s") { version state state_message serialized_state } }' % run_id)["data"]["flow_run_by_pk"]
    assert after == {"version": 2, "state": "Success", "state_message": "It worked!", "serialized_state": {"type": "Success", "message": "It worked!"}}
    stale = gql(doc % (run_id, version), variables, expect_errors=True)
    error = stale["errors"][0]
    assert error["extensions"]["code"] == "VERSION_LOCKING_ERROR"
    assert error["message"].startswith("State update failed")
    assert error["extensions"]["current_version"] == 2


def test_variables_as_a_json_string_and_the_plural_mutation(gql, gflow):
    run_id = gql('mutation { create_flow_run(input: {flow_id: "%s"}) { id } }' % gflow["id"])["data"]["create_flow_run"]["id"]
    query = "mutation($input: set_flow_run_states_input!) { set_flow_run_states(input: $input) { states { id status message } } }"
    state = {"type": "Running", "message": "Running flow.", "__version__": "1.4.1", "_result": {"type": "NoResultType"}}
    raw = json.dumps({"input": {"states": [{"flow_run_id": run_id, "version": 1, "state": state}]}})
    result = gql(query, raw_variables=raw)
    assert result["data"]["set_flow_run_states"]["states"] == [{"id": run_id, "status": "SUCCESS", "message": None}]
    got = gql('{ flow_run(where: {id: {_eq: "%s"}}) { version serialized_state } }' % run_id)["data"]["flow_run"][0]
    assert got == {"version": 2, "serialized_state": state}  # the client's serialization comes back unchanged
    assert gql("query { hello }", raw_variables="null")["data"]["hello"] == "hello"


def test_rule_rejections_and_bad_input_are_graphql_errors(gql, gflow):
    run_id = gql('mutation { create_flow_run(input: {flow_id: "%s"}) { id } }' % gflow["id"])["data"]["create_flow_run"]["id"]
    doc = 'mutation($s: JSON!) { set_flow_run_state(input: {flow_run_id: "%s", state: $s}) { id } }' % run_id
    refused = gql(doc, {"s": {"type": "Cancelling"}}, expect_errors=True)["errors"][0]
    assert refused["extensions"]["code"] == "TRANSITION_REJECTED" and refused["extensions"]["rule"] == "cancelling_only_from_running"
    bad_type = gql(doc, {"s": {"type": "Exploded"}}, expect_errors=True)["errors"][0]
    assert bad_type["extensions"]["code"] == "BAD_USER_INPUT" and "type" in bad_type["message"]
    missing = gql('mutation { create_flow_run(input: {flow_id: "no-such-flow"}) { id } }', expect_errors=True)["errors"][0]
    assert missing["extensions"]["code"] == "BAD_USER_INPUT" and missing["extensions"]["errors"][0]["loc"] == ["body", "flow_id"]
    bad_params = gql('mutation { create_flow_run(input: {flow_id: "%s", parameters: "{nope"}) { id } }' % gflow["id"], expect_errors=True)
    assert "parameters" in bad_params["errors"][0]["message"]


def test_queries_for_flows_runs_states_and_task_runs(gql, gflow, project):
    run_id = gql('mutation { create_flow_run(input: {flow_id: "%s", labels: ["x"]}) { id } }' % gflow["id"])["data"]["create_flow_run"]["id"]
    gql('mutation($s: JSON!) { set_flow_run_state(input: {flow_run_id: "%s", version: 1, state: $s}) { id } }' % run_id, {"s": {"type": "Running"}})
    run = gql(
        """{ flow_run_by_pk(id: "%s") {
             id name labels parameters state version start_time
             flow { id name version project { id name } }
             states(order_by: {version: asc}) { state version message timestamp }
             task_runs { id map_index version state task { id slug } }
           } }""" % run_id
    )["data"]["flow_run_by_pk"]
    assert run["labels"] == ["x"] and run["parameters"] == {"a": 1} and run["state"] == "Running" and run["start_time"]
    assert run["flow"] == {"id": gflow["id"], "name": gflow["name"], "version": 1, "project": {"id": project["id"], "name": project["name"]}}
    assert [(s["state"], s["version"]) for s in run["states"]] == [("Scheduled", 1), ("Running", 2)]
    (task_run,) = run["task_runs"]
    assert task_run["task"] == {"id": "t1", "slug": "say_hello-1"} and (task_run["version"], task_run["state"]) == (0, "Pending")
    by_slug = gql(
        '{ task_run(where: {task: {slug: {_eq: "say_hello-1"}}, flow_run_id: {_eq: "%s"}, map_index: {_eq: -1}}) { id flow_run { id } } }' % run_id
    )["data"]["task_run"]
    assert by_slug == [{"id": task_run["id"], "flow_run": {"id": run_id}}]
    info = gql('mutation { get_or_create_task_run_info(input: {flow_run_id: "%s", task_id: "t1", map_index: -1}) { id version state } }' % run_id)
    assert info["data"]["get_or_create_task_run_info"] == {"id": task_run["id"], "version": 0, "state": "Pending"}
    scheduled_only = gql('{ flow_run(where: {id: {_eq: "%s"}}) { states(where: {state: {_eq: "Scheduled"}}) { start_time } } }' % run_id)
    assert len(scheduled_only["data"]["flow_run"][0]["states"]) == 1
    flows = gql(
        '{ flow(where: {_and: {name: {_eq: "%s"}, project: {id: {_eq: "%s"}}}}, order_by: {version: desc}, limit: 1) { id version tasks { slug } } }'
        % (gflow["name"], project["id"])
    )["data"]["flow"]
    assert flows == [{"id": gflow["id"], "version": 1, "tasks": [{"slug": "say_hello-1"}]}]
    runs_of_flow = gql('{ flow_run(where: {flow_id: {_eq: "%s"}, state: {_eq: "Running"}}) { id } }' % gflow["id"])["data"]["flow_run"]
    assert {"id": run_id} in runs_of_flow
    assert gql('{ flow_by_pk(id: "%s") { flow_runs(limit: 1) { id } } }' % gflow["id"])["data"]["flow_by_pk"]["flow_runs"]


def test_cancel_rename_and_heartbeats(gql, gflow, api):
    run_id = gql('mutation { create_flow_run(input: {flow_id: "%s"}) { id } }' % gflow["id"])["data"]["create_flow_run"]["id"]
    assert gql('mutation { set_flow_run_name(input: {flow_run_id: "%s", name: "renamed"}) { success } }' % run_id)["data"]["set_flow_run_name"]["success"]
    assert gql('mutation { update_flow_run_heartbeat(input: {flow_run_id: "%s"}) { success } }' % run_id)["data"]
    assert gql('mutation { cancel_flow_run(input: {flow_run_id: "%s"}) { state } }' % run_id)["data"]["cancel_flow_run"]["state"] == "Cancelled"
    got = api.get(f"/flow_runs/{run_id}").json()
    assert got["name"] == "renamed" and got["heartbeat"] and got["state"]["type"] == "Cancelled"
