"""Property tests through the real services: HTTP ingress -> Kafka (Tansu) -> writer -> projector -> Redis.

A random sequence of state updates (flow run and task runs; right, stale, absent or arbitrary
versions; cancels; resends of an earlier request with the same ``command_id``) is applied to a
fresh run over HTTP, and the same sequence to the pure ``FlowRun`` aggregate. Every HTTP verdict
must be the model's, and the run the API shows afterwards must be the model's, with a state history
whose versions are 1..n (no two accepted updates share a version).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from runledger.domain.decisions import Accepted
from runledger.domain.flow_run import FlowRun
from runledger.domain.states import State, StateType
from runledger.messages import commands as c
from runledger.messages.models import FlowRunSpec, PlannedTaskRun
from tests.conftest import register

STATES = [t.value for t in StateType]
LIFECYCLE = ["Scheduled", "Submitted", "Running", "Running", "Success", "Failed", "Retrying", "Cancelling"]
states = st.one_of(st.sampled_from(STATES), st.sampled_from(LIFECYCLE), st.sampled_from(LIFECYCLE))
versions = st.sampled_from(["current", "current", "current", "current", "none", "none", "stale", "ahead", 0])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("flow"), states, versions),
        st.tuples(st.just("flow"), states, versions),
        st.tuples(st.just("task"), st.integers(0, 1), states, versions),
        st.tuples(st.just("task"), st.integers(0, 1), states, versions),
        st.tuples(st.just("flow"), states, versions),
        st.tuples(st.just("flow"), states, versions),
        st.tuples(st.just("task"), st.integers(0, 1), states, versions),
        st.tuples(st.just("task"), st.integers(0, 1), states, versions),
        st.tuples(st.just("cancel")),
        st.tuples(st.just("resend"), st.integers(0, 1000)),
    ),
    min_size=8,
    max_size=24,
)

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def two_task_flow(api, project):
    return register(api, project, tasks=[{"id": "a", "slug": "a-1", "name": "a"}, {"id": "b", "slug": "b-1", "name": "b"}])


def pick_version(choice, current: int) -> int | None:
    if isinstance(choice, int):
        return choice
    return {"current": current, "stale": max(current - 1, 0), "none": None, "ahead": current + 1}[choice]


def model_of(run_doc: dict, task_docs: list[dict]) -> FlowRun:
    """The pure aggregate, created from what the API says the run was created with."""
    fields = {k: run_doc[k] for k in FlowRunSpec.model_fields if k in run_doc}
    planned = [
        PlannedTaskRun(task_run_id=t["id"], task_id=t["task_id"], task_slug=t["task_slug"], task_name=t["task_name"],
                       tags=t["tags"], map_index=t["map_index"])
        for t in task_docs
    ]  # fmt: skip
    spec = FlowRunSpec(**{**fields, "flow_run_id": run_doc["id"], "task_runs": planned})
    model = FlowRun(id=run_doc["id"])
    created = model.handle(c.CreateFlowRun(spec=spec), datetime.now(timezone.utc))
    assert isinstance(created, Accepted)
    for event in created.events:
        model.apply(event)
    return model


def expected_response(model: FlowRun, command) -> tuple[int, dict]:
    """Decide ``command`` on the model (applying it if accepted): the HTTP status and body to expect."""
    decision = model.handle(command, datetime.now(timezone.utc))
    if isinstance(decision, Accepted):
        for event in decision.events:
            model.apply(event)
        return 200, decision.outcome
    r = decision.rejection
    return {"VERSION_MISMATCH": 409, "TRANSITION_REJECTED": 409, "NOT_FOUND": 404}[r.code], {"code": r.code, "rule": r.rule, **r.details}


@SETTINGS
@given(ops=operations)
def test_http_verdicts_and_the_final_run_match_the_pure_model(api, two_task_flow, ops):
    created = api.post("/flow_runs", json={"flow_id": two_task_flow["id"]})
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    task_docs = api.get(f"/flow_runs/{run_id}/task_runs").json()
    task_docs.sort(key=lambda t: t["task_id"])
    model = model_of(api.get(f"/flow_runs/{run_id}").json(), task_docs)
    assert (model.state.type.value, model.version) == ("Scheduled", 1) and len(model.task_runs) == 2

    sent: list[tuple[str, dict, int, dict]] = []  # path, body, status, response body
    for op in ops:
        if op[0] == "resend":
            if not sent:
                continue
            path, body, status, answer = sent[op[1] % len(sent)]
            again = api.post(path, json=body)
            event(f"resend -> {again.status_code}")
            # the same command id gets the first answer back, whatever the run looks like now
            assert (again.status_code, again.json()) == (status, answer), (op, body)
            continue
        if op[0] == "cancel":
            path, body, command = f"/flow_runs/{run_id}/cancel", {}, c.CancelFlowRun()
        elif op[0] == "flow":
            version = pick_version(op[2], model.version)
            path, body = f"/flow_runs/{run_id}/state", {"state": {"type": op[1]}, "version": version}
            command = c.SetFlowRunState(state=State(type=op[1]), version=version)
        else:
            task_run_id = task_docs[op[1]]["id"]
            version = pick_version(op[3], model.task_runs[task_run_id].version)
            path, body = f"/task_runs/{task_run_id}/state", {"state": {"type": op[2]}, "version": version}
            command = c.SetTaskRunState(task_run_id=task_run_id, state=State(type=op[2]), version=version)
        if op[0] != "cancel":
            body["command_id"] = uuid.uuid4().hex
        expected_status, expected_body = expected_response(model, command)
        response = api.post(path, json=body)
        event(f"{op[0]} -> {response.status_code} {response.json().get('code', '')}")
        assert response.status_code == expected_status, (op, body, response.text)
        got = response.json()
        if expected_status == 200:
            assert got == expected_body, (op, body)
        else:
            assert {k: got.get(k) for k in expected_body} == expected_body, (op, body, got)
            assert got["detail"].startswith("State update failed")
        if op[0] != "cancel":
            sent.append((path, body, response.status_code, got))

    run = api.get(f"/flow_runs/{run_id}").json()
    event(f"final version {run['version']}")
    assert (run["state"]["type"], run["version"]) == (model.state.type.value, model.version)
    assert [s["version"] for s in run["states"]] == list(range(1, model.version + 1))
    assert run["state"] == run["states"][-1]
    tasks = {t["id"]: t for t in api.get(f"/flow_runs/{run_id}/task_runs").json()}
    assert set(tasks) == set(model.task_runs)
    for task_run_id, record in model.task_runs.items():
        doc = tasks[task_run_id]
        assert (doc["state"]["type"], doc["version"]) == (record.state.type.value, record.version), task_run_id
        assert [s["version"] for s in doc["states"]] == list(range(1, record.version + 1))
        assert api.get(f"/task_runs/{task_run_id}").json() == doc


# -- free-form JSON is kept as sent ---------------------------------------------------------------
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8"), max_size=20)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=8), inner, max_size=4),
    max_leaves=15,
)


@pytest.fixture(scope="module")
def json_run(api, two_task_flow):
    created = api.post("/flow_runs", json={"flow_id": two_task_flow["id"]})
    assert created.status_code == 201, created.text
    return created.json()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(serialized=st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=8), json_values, max_size=4),
       message=st.none() | st.text(st.characters(codec="utf-8"), max_size=40))  # fmt: skip
def test_a_states_serialized_form_and_message_come_back_unchanged(api, json_run, serialized, message):
    state = {"type": "Running", "serialized": serialized, "message": message}
    response = api.post(f"/flow_runs/{json_run['id']}/state", json={"state": state})  # no version: always accepted
    assert response.status_code == 200, response.text
    version = response.json()["version"]
    run = api.get(f"/flow_runs/{json_run['id']}").json()
    assert run["version"] == version and run["states"][-1]["version"] == version
    assert (run["state"]["serialized"], run["state"]["message"]) == (serialized, message)


UNENCODABLE = {
    # Valid JSON that the API models accept (the fields are free-form) but the orjson wire format
    # cannot carry: the ingress answers 500 instead of refusing the request.
    "state.serialized: integer over 64 bits": (
        "/flow_runs/{run}/state",
        '{"state": {"type": "Running", "serialized": {"x": 18446744073709551616}}}',
    ),
    "state.serialized: lone surrogate": (
        "/flow_runs/{run}/state",
        '{"state": {"type": "Running", "serialized": {"x": "a\\ud800"}}}',
    ),
    "flow run context: integer over 64 bits": (
        "/flow_runs",
        '{"flow_id": "{flow}", "context": {"x": -18446744073709551616}}',
    ),
    "flow parameter default: integer over 64 bits": (
        "/flows",
        '{"name": "big-default", "project_id": "{project}", "parameters": [{"name": "x", "default": 18446744073709551616}]}',
    ),
}


@pytest.mark.parametrize("case", list(UNENCODABLE))
def test_json_the_wire_format_cannot_carry_is_refused_as_a_client_error(stack, project, two_task_flow, json_run, case):
    path, body = UNENCODABLE[case]
    path = path.replace("{run}", json_run["id"])
    body = body.replace("{flow}", two_task_flow["id"]).replace("{project}", project["id"])
    with httpx.Client(base_url=stack.api_url + "/api/v1", timeout=60) as client:  # a 500 may close the connection
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, (response.status_code, response.text[:200])
