"""Request resolution (parameters, labels, flow choice), idempotency rules, names, codec."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from runledger.api_models import CreateFlowRunRequest
from runledger.domain.idempotency import Action, claim_value, interpret_claim
from runledger.domain.names import two_word_name
from runledger.domain.run_requests import RequestError, choose_flow_by_name, resolve_flow_run, task_run_id_for
from runledger.messages.codec import decode_command, decode_event, encode
from runledger.messages.models import FlowDefinition, ParameterSpec, TaskSpec
from tests.unit.factories import T0, envelope, ledger_with_run, set_state


def flow(**fields) -> FlowDefinition:
    base = dict(id="f1", name="hello", project_id="p1", version=1, version_group_id="g1",
                parameters=[ParameterSpec(name="x", default=1), ParameterSpec(name="who", required=True)],
                tasks=[TaskSpec(id="t1", slug="t1-1")])
    return FlowDefinition(**{**base, **fields})


def request(**fields) -> CreateFlowRunRequest:
    return CreateFlowRunRequest(flow_id="f1", **fields)


def resolve(f=None, group=None, **fields):
    return resolve_flow_run(f or flow(), False, group, request(**fields), "run-1", T0)


def test_parameters_merge_defaults_group_defaults_and_the_request():
    assert resolve(parameters={"who": "a"}).parameters == {"x": 1, "who": "a"}
    assert resolve(group={"default_parameters": {"x": 2, "who": "g"}}).parameters == {"x": 2, "who": "g"}
    assert resolve(group={"default_parameters": {"x": 2}}, parameters={"who": "a", "x": 3}).parameters == {"x": 3, "who": "a"}


def test_parameter_errors_name_each_parameter():
    with pytest.raises(RequestError) as missing:
        resolve()
    assert missing.value.status == 422 and [e.loc for e in missing.value.errors] == [("body", "parameters", "who")]
    with pytest.raises(RequestError) as unknown:
        resolve(parameters={"who": "a", "y": 1, "z": 2})
    assert [e.loc[-1] for e in unknown.value.errors] == ["y", "z"]


def test_label_precedence():
    f = flow(labels=["flow"], run_config={"labels": ["flow-rc"]})
    assert resolve(f, parameters={"who": "a"}).labels == ["flow-rc"]
    assert resolve(f, {"run_config": {"labels": ["group-rc"]}}, parameters={"who": "a"}).labels == ["group-rc"]
    assert resolve(f, {"labels": ["group"], "run_config": {"labels": ["group-rc"]}}, parameters={"who": "a"}).labels == ["group"]
    assert resolve(f, {"labels": ["group"]}, parameters={"who": "a"}, run_config={"labels": ["req-rc"]}).labels == ["req-rc"]
    assert resolve(f, {"labels": ["group"]}, parameters={"who": "a"}, labels=["b", "a", "a"]).labels == ["a", "b"]
    assert resolve(flow(labels=["only"]), parameters={"who": "a"}).labels == ["only"]


def test_defaults_name_start_time_and_task_runs():
    spec = resolve(parameters={"who": "a"})
    assert spec.name == two_word_name("run-1") and spec.scheduled_start_time == T0
    assert [(t.task_id, t.map_index, t.task_run_id) for t in spec.task_runs] == [("t1", -1, task_run_id_for("run-1", "t1", -1))]


def test_archived_flows_are_refused():
    with pytest.raises(RequestError) as archived:
        resolve_flow_run(flow(), True, None, request(parameters={"who": "a"}), "r", T0)
    assert archived.value.errors[0].loc == ("body", "flow_id")


def test_request_validation():
    naive = CreateFlowRunRequest(flow_id="f", scheduled_start_time="2030-01-01 10:00:00")
    assert naive.scheduled_start_time == datetime(2030, 1, 1, 10, tzinfo=timezone.utc)
    with pytest.raises(ValidationError):
        CreateFlowRunRequest(flow_id="f", flow_name="g")
    with pytest.raises(ValidationError):
        CreateFlowRunRequest()


def test_choose_flow_by_name():
    flows = [{"id": "a", "project_id": "p1", "archived": False}, {"id": "b", "project_id": "p2", "archived": False},
             {"id": "c", "project_id": "p1", "archived": True}]
    names = {"p1": "one", "p2": "two"}
    assert choose_flow_by_name(flows, "hello", "two", names)["id"] == "b"
    with pytest.raises(RequestError) as ambiguous:
        choose_flow_by_name(flows, "hello", None, names)
    assert ambiguous.value.errors[0].loc == ("body", "project_name") and "['one', 'two']" in ambiguous.value.errors[0].msg
    with pytest.raises(RequestError) as missing:
        choose_flow_by_name(flows, "hello", "three", names)
    assert missing.value.status == 404


def test_idempotency_claims():
    assert interpret_claim(None, "new") .action is Action.CREATE
    pending = interpret_claim(claim_value("old"), "new")
    assert (pending.action, pending.run_id) == (Action.COMPLETE, "old")
    done = interpret_claim("old", "new")
    assert (done.action, done.run_id) == (Action.RETURN_EXISTING, "old")


def test_two_word_names_are_stable_and_varied():
    assert two_word_name("abc") == two_word_name("abc")
    names = {two_word_name(uuid.uuid4().hex) for _ in range(200)}
    assert len(names) > 150 and all(n.count("-") == 1 for n in names)


def test_envelopes_round_trip_through_orjson():
    ledger = ledger_with_run()
    command = envelope("run-1", set_state("Running", 1, serialized={"type": "Running", "_result": {"x": [1, 2]}}))
    assert decode_command(encode(command)) == command
    for env in ledger.decide(command, T0).events:
        assert decode_event(encode(env)) == env
