"""GraphQL: the seed documents' operations verbatim, both spellings, and Prefect's transport habits."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import httpx
import pytest

from tests.conftest import register, unique

# The operations of the seed documents, character for character; only the <placeholders> are
# filled in by the tests. Seed 001 (Prefect Cloud docs) spells them in camelCase, seed 002 (the
# Prefect Server docs) in snake_case.
SEED_CREATE_CAMEL = """mutation {
  createFlowRun(input: { flowId: "<flow id>" }) {
    id
  }
}"""
SEED_CREATE_IDEMPOTENT_CAMEL = """mutation {
  createFlowRun(input: { flowId: "<flow id>", idempotencyKey: "any-key" }) {
    id
  }
}"""
SEED_CREATE_SCHEDULED_CAMEL = """mutation {
  createFlowRun(
    input: { flowId: "<flow id>", scheduledStartTime: "<YYYY-MM-DD HH:MM:SS>" }
  ) {
    id
  }
}"""
SEED_SET_STATE_CAMEL = """mutation($state: JSON!) {
  setFlowRunState(input: {flowRunId: "<flow run id>", version: <version>, state: $state}) {
      id
  }
}"""
SEED_CREATE_SNAKE = """mutation {
  create_flow_run(input: { flow_id: "<flow id>" }) {
    id
  }
}"""
SEED_CREATE_PARAMETERS_SNAKE = """mutation {
  create_flow_run(input: { 
  flow_id: "<flow id>", 
  parameters: "{\\"a\\":2}" 
  }) {
    id
  }
}"""
SEED_CREATE_IDEMPOTENT_SNAKE = """mutation {
  create_flow_run(input: { flow_id: "<flow id>", idempotency_key: "any-key" }) {
    id
  }
}"""
SEED_CREATE_SCHEDULED_SNAKE = """mutation {
  create_flow_run(
    input: {
      flow_id: "<flow id>"
      scheduled_start_time: "<YYYY-MM-DD HH:MM:SS>"
    }
  ) {
    id
  }
}"""
SEED_VERSION_QUERY = """query {
  flow_run_by_pk(id: "<flow run id>") {
    version
  }
}"""
SEED_SET_STATE_SNAKE = """mutation($state: JSON!) {
  set_flow_run_state(input: {flow_run_id: "<flow run id>", version: <version>, state: $state}) {
      id
  }
}"""
SEED_STATE_VARIABLES = {"state": {"type": "Success", "message": "It worked!"}}

SET_FLOW_RUN_STATES = "mutation($input: set_flow_run_states_input!) { set_flow_run_states(input: $input) { states { id status message } } }"
SET_TASK_RUN_STATES = "mutation($input: set_task_run_states_input!) { set_task_run_states(input: $input) { states { message status id } } }"


PLACEHOLDERS = {"flow_id": "<flow id>", "flow_run_id": "<flow run id>", "version": "<version>", "when": "<YYYY-MM-DD HH:MM:SS>"}


def fill(document: str, **values) -> str:
    """A seed document with its placeholders replaced (and nothing else changed)."""
    for name, value in values.items():
        assert PLACEHOLDERS[name] in document, (name, document)
        document = document.replace(PLACEHOLDERS[name], str(value))
    assert "<" not in document, document
    return document


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.api_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def gql(http):
    def run(query: str, variables=None, raw_variables: str | None = None, expect_errors: bool = False):
        body = {"query": query, "variables": raw_variables if raw_variables is not None else variables}
        r = http.post("/graphql", json=body)
        assert r.status_code == 200, r.text
        result = r.json()
        if expect_errors:
            assert result.get("errors"), result
        else:
            assert not result.get("errors"), result["errors"]
        return result

    return run


@pytest.fixture
def gflow(api, project):
    return register(api, project, parameters=[{"name": "a", "default": 1}], tasks=[{"id": "t1", "slug": "say_hello-1", "name": "say_hello"}])


def new_run(gql, flow) -> str:
    return gql(fill(SEED_CREATE_SNAKE, flow_id=flow["id"]))["data"]["create_flow_run"]["id"]


# -- transport ---------------------------------------------------------------------------------
def test_hello_explorer_and_request_errors(gql, http):
    assert gql("query { hello }")["data"] == {"hello": "hello"}
    assert gql("query { hello }", raw_variables="null")["data"] == {"hello": "hello"}  # Prefect sends json.dumps(None)
    explorer = http.get("/graphql")
    assert explorer.status_code == 200 and "text/html" in explorer.headers["content-type"]
    # Documents that do not parse or validate, and variables that do not fit, are request errors.
    for body in (
        {"query": "query { nope"},
        {"query": "{ flow_run_by_pk(id: \"x\") { no_such_field } }"},
        {"query": fill(SEED_SET_STATE_SNAKE, flow_run_id="x", version=1)},  # $state missing
        {"query": "{ hello }", "variables": "[1"},
    ):
        r = http.post("/graphql", json=body)
        assert r.status_code == 400 and r.json()["errors"][0]["message"], (body, r.text)
        assert "data" not in r.json() or r.json()["data"] is None
    assert http.post("/graphql", content=b"not json").status_code == 400


def test_variables_as_a_json_string_and_the_plural_mutation(gql, gflow):
    run_id = new_run(gql, gflow)
    state = {"type": "Running", "message": "Running flow.", "__version__": "1.4.1", "_result": {"type": "NoResultType"}}
    raw = json.dumps({"input": {"states": [{"flow_run_id": run_id, "version": 1, "state": state}]}})
    result = gql(SET_FLOW_RUN_STATES, raw_variables=raw)
    assert result["data"]["set_flow_run_states"]["states"] == [{"id": run_id, "status": "SUCCESS", "message": None}]
    got = gql('{ flow_run(where: {id: {_eq: "%s"}}) { version state serialized_state } }' % run_id)["data"]["flow_run"][0]
    assert got == {"version": 2, "state": "Running", "serialized_state": state}  # the client's serialization comes back unchanged
    # version null skips the check (Prefect's client sends it for most states)
    done = {"type": "Success", "message": "All reference tasks succeeded."}
    raw = json.dumps({"input": {"states": [{"flow_run_id": run_id, "version": None, "state": done}]}})
    assert gql(SET_FLOW_RUN_STATES, raw_variables=raw)["data"]["set_flow_run_states"]["states"][0]["status"] == "SUCCESS"
    assert gql(fill(SEED_VERSION_QUERY, flow_run_id=run_id))["data"]["flow_run_by_pk"]["version"] == 3
    # a stale version through the plural mutation is what Prefect's client maps to VersionLockMismatch
    raw = json.dumps({"input": {"states": [{"flow_run_id": run_id, "version": 1, "state": {"type": "Failed"}}]}})
    error = gql(SET_FLOW_RUN_STATES, raw_variables=raw, expect_errors=True)["errors"][0]
    assert error["extensions"]["code"] == "VERSION_LOCKING_ERROR" and error["message"].startswith("State update failed")


# -- the seed operations -----------------------------------------------------------------------
def test_seed_camel_case_create_idempotency_and_schedule(gql, gflow, api):
    created = gql(fill(SEED_CREATE_CAMEL, flow_id=gflow["id"]))["data"]["createFlowRun"]
    run = api.get(f"/flow_runs/{created['id']}").json()
    assert run["flow_id"] == gflow["id"] and run["version"] == 1 and run["state"]["type"] == "Scheduled"
    first = gql(fill(SEED_CREATE_IDEMPOTENT_CAMEL, flow_id=gflow["id"]))["data"]["createFlowRun"]
    again = gql(fill(SEED_CREATE_IDEMPOTENT_CAMEL, flow_id=gflow["id"]).replace("id\n", "id deduplicated\n"))["data"]["createFlowRun"]
    assert first["id"] != created["id"]
    assert again == {"id": first["id"], "deduplicated": True}
    # The snake_case spelling with the same key on the same flow is the same request.
    snake = gql(fill(SEED_CREATE_IDEMPOTENT_SNAKE, flow_id=gflow["id"]))["data"]["create_flow_run"]
    assert snake["id"] == first["id"]
    scheduled = gql(fill(SEED_CREATE_SCHEDULED_CAMEL, flow_id=gflow["id"], when="2030-05-06 07:08:09"))
    run = api.get(f"/flow_runs/{scheduled['data']['createFlowRun']['id']}").json()
    assert utc(run["scheduled_start_time"]) == datetime(2030, 5, 6, 7, 8, 9, tzinfo=timezone.utc)  # no zone: UTC


def test_seed_snake_case_create_parameters_idempotency_and_schedule(gql, gflow, api):
    plain = gql(fill(SEED_CREATE_SNAKE, flow_id=gflow["id"]))["data"]["create_flow_run"]
    assert api.get(f"/flow_runs/{plain['id']}").json()["parameters"] == {"a": 1}  # the flow's default
    as_string = gql(fill(SEED_CREATE_PARAMETERS_SNAKE, flow_id=gflow["id"]))["data"]["create_flow_run"]
    assert api.get(f"/flow_runs/{as_string['id']}").json()["parameters"] == {"a": 2}
    as_object = gql('mutation { create_flow_run(input: {flow_id: "%s", parameters: {a: 3}}) { id } }' % gflow["id"])["data"]["create_flow_run"]
    assert api.get(f"/flow_runs/{as_object['id']}").json()["parameters"] == {"a": 3}
    as_variable = gql(
        "mutation($input: create_flow_run_input!) { create_flow_run(input: $input) { id } }",
        raw_variables=json.dumps({"input": {"flow_id": gflow["id"], "parameters": {"a": 4}, "idempotency_key": unique("k")}}),
    )["data"]["create_flow_run"]
    assert api.get(f"/flow_runs/{as_variable['id']}").json()["parameters"] == {"a": 4}

    first = gql(fill(SEED_CREATE_IDEMPOTENT_SNAKE, flow_id=gflow["id"]))["data"]["create_flow_run"]
    again = gql(fill(SEED_CREATE_IDEMPOTENT_SNAKE, flow_id=gflow["id"]).replace("id\n", "deduplicated id\n"))["data"]["create_flow_run"]
    assert again == {"deduplicated": True, "id": first["id"]} and first["id"] not in (plain["id"], as_string["id"], as_object["id"])
    total = api.get(f"/flows/{gflow['id']}/flow_runs").json()["total"]
    assert total == 5  # plain, as_string, as_object, as_variable, and one for "any-key"

    scheduled = gql(fill(SEED_CREATE_SCHEDULED_SNAKE, flow_id=gflow["id"], when="2031-01-02 03:04:05"))
    run = api.get(f"/flow_runs/{scheduled['data']['create_flow_run']['id']}").json()
    assert utc(run["scheduled_start_time"]) == datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert utc(run["state"]["start_time"]) == datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_create_by_version_group_or_flow_group(gql, api, project):
    name = unique("flow")
    register(api, project, name=name)
    v2 = register(api, project, name=name)
    group = v2["version_group_id"]
    documents = {
        "create_flow_run": 'mutation { create_flow_run(input: {version_group_id: "%s", scheduled_start_time: "2030-01-01T02:00:00+02:00"}) { id } }',
        "createFlowRun": 'mutation { createFlowRun(input: {flowGroupId: "%s"}) { id } }',
    }
    for field, document in documents.items():
        run_id = gql(document % group)["data"][field]["id"]
        assert api.get(f"/flow_runs/{run_id}").json()["flow_id"] == v2["id"]  # the unarchived (newest) version
    run_id = gql('mutation { create_flow_run(input: {flow_group_id: "%s"}) { id } }' % group)["data"]["create_flow_run"]["id"]
    assert api.get(f"/flow_runs/{run_id}").json()["flow_id"] == v2["id"]
    conflicting = gql('mutation { create_flow_run(input: {flow_group_id: "%s", version_group_id: "other"}) { id } }' % group, expect_errors=True)
    assert conflicting["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


@pytest.mark.parametrize("spelling", ["camel", "snake"])
def test_seed_version_query_then_state_update(gql, gflow, spelling):
    run_id = new_run(gql, gflow)
    version = gql(fill(SEED_VERSION_QUERY, flow_run_id=run_id))["data"]["flow_run_by_pk"]["version"]
    assert version == 1
    document, field = (SEED_SET_STATE_CAMEL, "setFlowRunState") if spelling == "camel" else (SEED_SET_STATE_SNAKE, "set_flow_run_state")
    assert gql(fill(document, flow_run_id=run_id, version=version), SEED_STATE_VARIABLES)["data"][field] == {"id": run_id}
    after = gql('{ flow_run_by_pk(id: "%s") { version state state_message serialized_state end_time } }' % run_id)["data"]["flow_run_by_pk"]
    assert after["end_time"]
    del after["end_time"]
    assert after == {"version": 2, "state": "Success", "state_message": "It worked!", "serialized_state": {"type": "Success", "message": "It worked!"}}
    payload = gql(fill(document.replace("      id\n", "      id version state status\n"), flow_run_id=run_id, version=2), {"state": {"type": "Success"}})
    assert payload["data"][field] == {"id": run_id, "version": 3, "state": "Success", "status": "SUCCESS"}

    stale = gql(fill(document, flow_run_id=run_id, version=version), SEED_STATE_VARIABLES, expect_errors=True)  # still HTTP 200
    assert stale["data"] == {field: None}
    (error,) = stale["errors"]
    assert error["extensions"]["code"] == "VERSION_LOCKING_ERROR"
    assert error["message"].startswith("State update failed")
    assert error["extensions"]["current_version"] == 3 and error["path"] == [field]
    assert gql(fill(SEED_VERSION_QUERY, flow_run_id=run_id))["data"]["flow_run_by_pk"]["version"] == 3  # nothing changed


def test_rule_rejections_and_bad_input_are_graphql_errors(gql, gflow):
    run_id = new_run(gql, gflow)
    doc = 'mutation($s: JSON!) { set_flow_run_state(input: {flow_run_id: "%s", state: $s}) { id } }' % run_id
    refused = gql(doc, {"s": {"type": "Cancelling"}}, expect_errors=True)["errors"][0]
    assert refused["extensions"]["code"] == "TRANSITION_REJECTED" and refused["extensions"]["rule"] == "cancelling_only_from_running"
    bad_type = gql(doc, {"s": {"type": "Exploded"}}, expect_errors=True)["errors"][0]
    assert bad_type["extensions"]["code"] == "BAD_USER_INPUT" and "type" in bad_type["message"]
    not_a_state = gql(doc, {"s": [1, 2]}, expect_errors=True)["errors"][0]
    assert not_a_state["extensions"]["code"] == "BAD_USER_INPUT" and "state" in not_a_state["message"]
    missing = gql('mutation { create_flow_run(input: {flow_id: "no-such-flow"}) { id } }', expect_errors=True)["errors"][0]
    assert missing["extensions"]["code"] == "BAD_USER_INPUT" and missing["extensions"]["status"] == 404
    assert missing["extensions"]["errors"][0]["loc"] == ["body", "flow_id"]
    no_run = gql(fill(SEED_SET_STATE_CAMEL, flow_run_id="no-such-run", version=1), SEED_STATE_VARIABLES, expect_errors=True)["errors"][0]
    assert no_run["extensions"]["code"] == "BAD_USER_INPUT" and no_run["extensions"]["errors"][0]["type"] == "not_found"
    bad_params = gql('mutation { create_flow_run(input: {flow_id: "%s", parameters: "{nope"}) { id } }' % gflow["id"], expect_errors=True)
    assert "parameters" in bad_params["errors"][0]["message"]
    unknown_param = gql('mutation { create_flow_run(input: {flow_id: "%s", parameters: {b: 1}}) { id } }' % gflow["id"], expect_errors=True)
    assert unknown_param["errors"][0]["extensions"]["errors"][0]["loc"] == ["body", "parameters", "b"]
    bad_time = gql('mutation { createFlowRun(input: {flowId: "%s", scheduledStartTime: "tomorrow"}) { id } }' % gflow["id"], expect_errors=True)
    assert bad_time["errors"][0]["extensions"]["errors"][0]["loc"] == ["scheduled_start_time"]
    bad_where = gql('{ flow_run(where: {id: "x"}) { id } }', expect_errors=True)["errors"][0]
    assert bad_where["extensions"]["code"] == "BAD_USER_INPUT" and bad_where["message"].startswith("where")


# -- reads -------------------------------------------------------------------------------------
def test_queries_for_flows_runs_states_and_task_runs(gql, gflow, project):
    run_id = gql('mutation { create_flow_run(input: {flow_id: "%s", labels: ["x"], flow_run_name: "named"}) { id } }' % gflow["id"])["data"]["create_flow_run"]["id"]
    gql('mutation($s: JSON!) { set_flow_run_state(input: {flow_run_id: "%s", version: 1, state: $s}) { id } }' % run_id, {"s": {"type": "Running"}})
    run = gql(
        """{ flow_run_by_pk(id: "%s") {
             id name flow_id labels parameters context run_config state version start_time scheduled_start_time created updated
             flow { id name version project { id name } }
             states(order_by: {version: asc}) { state type version message timestamp }
             task_runs { id name map_index version state task { id slug } }
           } }""" % run_id
    )["data"]["flow_run_by_pk"]
    assert (run["id"], run["name"], run["flow_id"], run["labels"], run["parameters"]) == (run_id, "named", gflow["id"], ["x"], {"a": 1})
    assert run["state"] == "Running" and run["version"] == 2 and run["context"] == {}
    assert utc(run["start_time"]) >= utc(run["created"]) and utc(run["updated"]) >= utc(run["created"]) and run["scheduled_start_time"]
    assert run["flow"] == {"id": gflow["id"], "name": gflow["name"], "version": 1, "project": {"id": project["id"], "name": project["name"]}}
    assert [(s["state"], s["type"], s["version"]) for s in run["states"]] == [("Scheduled", "Scheduled", 1), ("Running", "Running", 2)]
    assert run["states"][0]["message"] and all(s["timestamp"] for s in run["states"])
    (task_run,) = run["task_runs"]
    assert task_run["task"] == {"id": "t1", "slug": "say_hello-1"} and (task_run["version"], task_run["state"], task_run["map_index"]) == (0, "Pending", -1)

    # What Prefect's client asks (FlowRunView, TaskRunView, the flow runner)
    by_slug = gql(
        '{ task_run(where: {task: {slug: {_eq: "say_hello-1"}}, flow_run_id: {_eq: "%s"}, map_index: {_eq: -1}}) { id flow_run { id } } }' % run_id
    )["data"]["task_run"]
    assert by_slug == [{"id": task_run["id"], "flow_run": {"id": run_id}}]
    assert gql('{ task_run(where: {flow_run_id: {_eq: "%s"}}) { id } }' % run_id)["data"]["task_run"] == [{"id": task_run["id"]}]
    assert gql('{ task_run_by_pk(id: "%s") { id task_id flow_run_id } }' % task_run["id"])["data"]["task_run_by_pk"] == {
        "id": task_run["id"], "task_id": "t1", "flow_run_id": run_id,
    }
    assert gql('{ task_run_by_pk(id: "no-such-task-run") { id } }')["data"] == {"task_run_by_pk": None}
    assert gql('{ flow_run_by_pk(id: "no-such-run") { id } }')["data"] == {"flow_run_by_pk": None}
    info = gql('mutation { get_or_create_task_run_info(input: {flow_run_id: "%s", task_id: "t1", map_index: -1}) { id version state } }' % run_id)
    assert info["data"]["get_or_create_task_run_info"] == {"id": task_run["id"], "version": 0, "state": "Pending"}
    scheduled_only = gql('{ flow_run(where: {id: {_eq: "%s"}}) { states(where: {state: {_eq: "Scheduled"}}) { start_time } } }' % run_id)
    assert len(scheduled_only["data"]["flow_run"][0]["states"]) == 1

    # flow_run: _eq / _in on id, flow_id and name, with limit and order_by
    other = new_run(gql, gflow)
    both = gql('{ flow_run(where: {id: {_in: ["%s", "%s", "nope"]}}, order_by: {created: asc}) { id } }' % (run_id, other))["data"]["flow_run"]
    assert [r["id"] for r in both] == [run_id, other]
    newest = gql('{ flow_run(where: {flow_id: {_eq: "%s"}}, order_by: {created: desc}, limit: 1) { id } }' % gflow["id"])["data"]["flow_run"]
    assert newest == [{"id": other}]
    assert gql('{ flow_run(where: {flow_id: {_in: ["%s"]}, name: {_eq: "named"}}) { id } }' % gflow["id"])["data"]["flow_run"] == [{"id": run_id}]
    assert gql('{ flow_run(where: {name: {_in: ["named"]}, flow_id: {_eq: "%s"}}) { id } }' % gflow["id"])["data"]["flow_run"] == [{"id": run_id}]
    running = gql('{ flow_run(where: {flow_id: {_eq: "%s"}, state: {_eq: "Running"}}) { id } }' % gflow["id"])["data"]["flow_run"]
    assert running == [{"id": run_id}]

    # flows: by id, name (+ project, as the CLI asks), version group, project name
    flows = gql(
        '{ flow(where: {_and: {name: {_eq: "%s"}, project: {id: {_eq: "%s"}}}}, order_by: {version: desc}, limit: 1) { id version tasks { slug } } }'
        % (gflow["name"], project["id"])
    )["data"]["flow"]
    assert flows == [{"id": gflow["id"], "version": 1, "tasks": [{"slug": "say_hello-1"}]}]
    by_project_name = gql(
        '{ flow(where: {name: {_eq: "%s"}, archived: {_eq: false}, project: {name: {_eq: "%s"}}}) { id project { name } } }' % (gflow["name"], project["name"])
    )["data"]["flow"]
    assert by_project_name == [{"id": gflow["id"], "project": {"name": project["name"]}}]
    by_group = gql('{ flow(where: {version_group_id: {_eq: "%s"}}) { id } }' % gflow["version_group_id"])["data"]["flow"]
    assert by_group == [{"id": gflow["id"]}]
    assert gql('{ flow(where: {id: {_eq: "%s"}}) { name } }' % gflow["id"])["data"]["flow"] == [{"name": gflow["name"]}]
    by_pk = gql('{ flow_by_pk(id: "%s") { id flow_group_id project { id } flow_runs(limit: 1) { id } } }' % gflow["id"])["data"]["flow_by_pk"]
    assert by_pk == {"id": gflow["id"], "flow_group_id": gflow["version_group_id"], "project": {"id": project["id"]}, "flow_runs": [{"id": other}]}


def test_task_run_states_and_result_location(gql, gflow):
    run_id = new_run(gql, gflow)
    info = gql('mutation { get_or_create_task_run_info(input: {flow_run_id: "%s", task_id: "t1", map_index: -1}) { id version serialized_state } }' % run_id)
    task_run = info["data"]["get_or_create_task_run_info"]
    assert task_run["version"] == 0 and task_run["serialized_state"]["type"] == "Pending"
    running = {"input": {"states": [{"task_run_id": task_run["id"], "version": 0, "state": {"type": "Running"}}]}}
    assert gql(SET_TASK_RUN_STATES, running)["data"]["set_task_run_states"]["states"] == [{"message": None, "status": "SUCCESS", "id": task_run["id"]}]
    success = {"type": "Success", "message": "done", "_result": {"type": "LocalResult", "location": "/tmp/result.prefect"}}
    raw = json.dumps({"input": {"states": [{"task_run_id": task_run["id"], "version": 1, "state": success}]}})
    gql(SET_TASK_RUN_STATES, raw_variables=raw)
    got = gql('{ task_run_by_pk(id: "%s") { version state result_location serialized_state states { state version } } }' % task_run["id"])["data"]
    assert got["task_run_by_pk"] == {
        "version": 2,
        "state": "Success",
        "result_location": "/tmp/result.prefect",
        "serialized_state": success,
        "states": [{"state": "Running", "version": 1}, {"state": "Success", "version": 2}],
    }
    stale = gql(SET_TASK_RUN_STATES, running, expect_errors=True)["errors"][0]
    assert stale["extensions"]["code"] == "VERSION_LOCKING_ERROR" and stale["message"].startswith("State update failed")


def test_cancel_rename_and_heartbeats(gql, gflow, api):
    run_id = new_run(gql, gflow)
    assert gql('mutation { set_flow_run_name(input: {flow_run_id: "%s", name: "renamed"}) { success } }' % run_id)["data"]["set_flow_run_name"]["success"]
    assert gql('mutation { update_flow_run_heartbeat(input: {flow_run_id: "%s"}) { success } }' % run_id)["data"]["update_flow_run_heartbeat"]["success"]
    assert gql('mutation { cancel_flow_run(input: {flow_run_id: "%s"}) { state } }' % run_id)["data"]["cancel_flow_run"]["state"] == "Cancelled"
    got = api.get(f"/flow_runs/{run_id}").json()
    assert got["name"] == "renamed" and got["heartbeat"] and got["state"]["type"] == "Cancelled"
    (task_run,) = gql('{ task_run(where: {flow_run_id: {_eq: "%s"}}) { id } }' % run_id)["data"]["task_run"]
    task_run_id = task_run["id"]
    assert gql('mutation { set_task_run_name(input: {task_run_id: "%s", name: "tr-name"}) { success } }' % task_run_id)["data"]["set_task_run_name"]["success"]
    assert gql('mutation { update_task_run_heartbeat(input: {task_run_id: "%s"}) { success } }' % task_run_id)["data"]
    assert gql('{ task_run_by_pk(id: "%s") { name heartbeat } }' % task_run_id)["data"]["task_run_by_pk"]["name"] == "tr-name"
    for field, subject, name in (("set_flow_run_name", "flow_run_id: \"%s\"" % run_id, ""), ("set_task_run_name", "task_run_id: \"%s\"" % task_run_id, "x" * 201)):
        refused = gql('mutation { %s(input: {%s, name: "%s"}) { success } }' % (field, subject, name), expect_errors=True)["errors"][0]
        assert refused["extensions"]["code"] == "BAD_USER_INPUT" and refused["extensions"]["errors"][0]["loc"] == ["name"], refused  # as REST checks it


def test_create_project(gql):
    name = unique("gql-proj")
    created = gql('mutation { create_project(input: {name: "%s"}) { id } }' % name)["data"]["create_project"]
    assert gql('{ project(where: {name: {_eq: "%s"}}) { id name } }' % name)["data"]["project"] == [{"id": created["id"], "name": name}]
    again = gql('mutation { create_project(input: {name: "%s"}) { id } }' % name, expect_errors=True)["errors"][0]
    assert again["extensions"]["code"] == "CONFLICT" and "Uniqueness violation" in again["message"]
