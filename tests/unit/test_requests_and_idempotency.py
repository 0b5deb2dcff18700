"""Request resolution (parameters, labels, flow choice, defaults, request validation), the
idempotency-claim rules and generated run names."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from runledger.api_models import CreateFlowRunRequest, SetStateRequest, StateInput, as_utc
from runledger.domain.idempotency import PENDING_PREFIX, Action, claim_value, interpret_claim, scoped_key
from runledger.domain.names import two_word_name
from runledger.domain.run_requests import (
    RequestError, choose_flow_by_name, merge_parameters, resolve_flow_run, resolve_labels, task_run_id_for,
)  # fmt: skip
from runledger.domain.states import State
from runledger.messages.models import FlowDefinition, ParameterSpec, TaskSpec
from tests.unit.factories import T0, at


# -- request resolution ---------------------------------------------------------------------------
def flow(**fields) -> FlowDefinition:
    base = dict(id="f1", name="hello", project_id="p1", version=1, version_group_id="g1",
                parameters=[ParameterSpec(name="x", default=1), ParameterSpec(name="who", required=True),
                            ParameterSpec(name="opt")],
                tasks=[TaskSpec(id="t1", slug="t1-1", name="one", tags=["db"]), TaskSpec(id="t2", slug="t2-1")])  # fmt: skip
    return FlowDefinition(**{**base, **fields})


def test_parameter_merge_layers():
    f = flow()
    assert merge_parameters(f, None, {"who": "me"}) == {"x": 1, "who": "me", "opt": None}
    assert merge_parameters(f, {"who": "group", "x": 5, "undeclared": 1}, None) == {"x": 5, "who": "group", "opt": None}
    assert merge_parameters(f, {"x": 5}, {"who": "me", "x": 7}) == {"x": 7, "who": "me", "opt": None}
    with_default = flow(parameters=[ParameterSpec(name="who", required=True, default="dflt")])
    assert merge_parameters(with_default, None, None) == {"who": "dflt"}


def test_unknown_and_missing_parameters_are_reported_together():
    with pytest.raises(RequestError) as err:
        merge_parameters(flow(), None, {"bogus": 1})
    assert err.value.status == 422
    by_loc = {e.loc: e for e in err.value.errors}
    assert set(by_loc) == {("body", "parameters", "bogus"), ("body", "parameters", "who")}
    assert by_loc[("body", "parameters", "bogus")].type == "unknown_parameter"
    assert "'hello'" in by_loc[("body", "parameters", "bogus")].msg and "['opt', 'who', 'x']" in by_loc[("body", "parameters", "bogus")].msg
    assert by_loc[("body", "parameters", "who")].type == "missing_parameter"
    assert "body.parameters.bogus" in str(err.value)
    with pytest.raises(RequestError) as none_declared:
        merge_parameters(flow(parameters=[]), None, {"a": 1})
    assert "declares none" in none_declared.value.errors[0].msg
    with pytest.raises(RequestError) as two_unknown:  # resolving a run reports them all, in the order given
        resolve_flow_run(flow(), False, None, request(parameters={"who": "a", "y": 1, "z": 2}), "r", T0)
    assert two_unknown.value.status == 422 and [e.loc for e in two_unknown.value.errors] == [
        ("body", "parameters", "y"), ("body", "parameters", "z")
    ]  # fmt: skip


def request(**fields) -> CreateFlowRunRequest:
    return CreateFlowRunRequest(flow_id="f1", **fields)


def test_labels_come_from_the_first_source_that_is_set():
    f = flow(labels=["flow"], run_config={"labels": ["flow-rc"]})
    group = {"labels": ["group"], "run_config": {"labels": ["group-rc"]}}
    assert resolve_labels(request(labels=["z", "a", "z"], run_config={"labels": ["req-rc"]}), f, group) == ["a", "z"]
    assert resolve_labels(request(labels=[]), f, group) == []  # an explicit empty list wins
    assert resolve_labels(request(run_config={"labels": ["req-rc"]}), f, group) == ["req-rc"]
    assert resolve_labels(request(run_config={"type": "LocalRun"}), f, group) == ["group"]  # run config without labels
    assert resolve_labels(request(), f, {"labels": None, "run_config": {"labels": ["group-rc"]}}) == ["group-rc"]
    assert resolve_labels(request(), f, None) == ["flow-rc"]
    assert resolve_labels(request(), flow(labels=["flow"]), {}) == ["flow"]
    assert resolve_labels(request(), flow(), None) == []


def test_a_resolved_spec():
    req = request(parameters={"who": "a"}, flow_run_name="mine", context={"k": 1}, idempotency_key="idem",
                  scheduled_start_time=datetime(2031, 5, 1, 12, tzinfo=timezone(timedelta(hours=2))))  # fmt: skip
    group = {"run_config": {"type": "group"}, "default_parameters": {"x": 2}, "labels": ["group"]}
    got = resolve_flow_run(flow(run_config={"type": "flow"}, labels=["flow"]), False, group, req, "run-9", T0)
    assert (got.flow_run_id, got.name, got.context, got.idempotency_key) == ("run-9", "mine", {"k": 1}, "idem")
    assert got.parameters == {"x": 2, "who": "a", "opt": None}  # the group's defaults, read from the group document
    assert got.labels == ["group"]
    assert got.scheduled_start_time == datetime(2031, 5, 1, 10, tzinfo=timezone.utc)
    assert got.run_config == {"type": "group"}
    assert resolve_flow_run(flow(run_config={"type": "flow"}), False, None, request(parameters={"who": "a"}), "r", T0).run_config == {"type": "flow"}
    assert [(t.task_id, t.task_slug, t.task_name, t.tags) for t in got.task_runs] == [("t1", "t1-1", "one", ["db"]), ("t2", "t2-1", "", [])]
    again = resolve_flow_run(flow(), False, None, req, "run-9", at(100))
    assert [t.task_run_id for t in again.task_runs] == [t.task_run_id for t in got.task_runs]
    other = resolve_flow_run(flow(), False, None, req, "run-10", T0)
    assert not {t.task_run_id for t in other.task_runs} & {t.task_run_id for t in got.task_runs}


def test_defaults_name_start_time_and_task_runs():
    got = resolve_flow_run(flow(), False, None, request(parameters={"who": "a"}), "run-1", at(5))
    assert got.name == two_word_name("run-1") and got.scheduled_start_time == at(5)
    assert [(t.task_id, t.map_index, t.task_run_id) for t in got.task_runs] == [
        ("t1", -1, task_run_id_for("run-1", "t1", -1)), ("t2", -1, task_run_id_for("run-1", "t2", -1))
    ]  # fmt: skip


def test_an_archived_flow_is_refused():
    with pytest.raises(RequestError) as archived:
        resolve_flow_run(flow(), True, None, request(parameters={"who": "a"}), "r", T0)
    assert archived.value.status == 422 and archived.value.errors[0].loc == ("body", "flow_id")


def test_request_validation_and_times_without_a_zone_are_utc():
    assert CreateFlowRunRequest(flow_id="f", scheduled_start_time="2030-01-01T10:00:00").scheduled_start_time == datetime(
        2030, 1, 1, 10, tzinfo=timezone.utc
    )
    assert CreateFlowRunRequest(flow_id="f", scheduled_start_time="2030-01-01T10:00:00-05:00").scheduled_start_time == datetime(
        2030, 1, 1, 15, tzinfo=timezone.utc
    )
    state = StateInput(type="Scheduled", start_time="2030-01-01T10:00:00").to_state()
    assert isinstance(state, State) and state.start_time == datetime(2030, 1, 1, 10, tzinfo=timezone.utc)
    assert as_utc(None) is None
    assert SetStateRequest.model_validate({"state": {"type": "Running"}}).version is None
    with pytest.raises(ValueError):
        SetStateRequest.model_validate({"state": {"type": "Running"}, "version": -1})
    with pytest.raises(ValidationError):  # a flow by id or by name, not both
        CreateFlowRunRequest(flow_id="f", flow_name="g")
    with pytest.raises(ValidationError):  # and not neither
        CreateFlowRunRequest()


def test_flow_choice_by_name():
    flows = [{"id": "a", "project_id": "p1", "archived": False}, {"id": "b", "project_id": "p2", "archived": False},
             {"id": "c", "project_id": "p3", "archived": True}]  # fmt: skip
    names = {"p1": "one", "p2": "two", "p3": "three"}
    with pytest.raises(RequestError) as ambiguous:
        choose_flow_by_name(flows, "etl", None, names)
    err = ambiguous.value.errors[0]
    assert ambiguous.value.status == 422 and err.type == "ambiguous" and err.loc == ("body", "project_name")
    assert "'etl' is ambiguous" in err.msg and "['one', 'two']" in err.msg and "give project_name" in err.msg
    assert choose_flow_by_name(flows, "etl", "one", names)["id"] == "a"
    assert choose_flow_by_name(flows[1:], "etl", None, names)["id"] == "b"
    with pytest.raises(RequestError) as archived_only:
        choose_flow_by_name(flows, "etl", "three", names)
    assert archived_only.value.status == 404 and "in project 'three'" in archived_only.value.errors[0].msg
    with pytest.raises(RequestError) as unknown_project:
        choose_flow_by_name(flows, "etl", "four", names)
    assert unknown_project.value.status == 404
    with pytest.raises(RequestError) as none:
        choose_flow_by_name([], "etl", None, names)
    assert none.value.errors[0].loc == ("body", "flow_name")


# -- idempotency claims ------------------------------------------------------------------------
def test_interpret_claim_cases():
    fresh, pending, done = interpret_claim(None, "new"), interpret_claim("pending:old", "new"), interpret_claim("old", "new")
    assert (fresh.action, fresh.run_id) == (Action.CREATE, "new")
    assert (pending.action, pending.run_id) == (Action.COMPLETE, "old")  # never a pointer to an unrecorded run
    assert (done.action, done.run_id) == (Action.RETURN_EXISTING, "old")
    assert scoped_key("flow-1", "k") == "flow-1:k" and scoped_key("flow-1", "k") != scoped_key("flow-2", "k")


run_ids = st.text(st.characters(codec="ascii", exclude_characters=":"), min_size=1, max_size=40)


@given(run_ids, run_ids)
def test_a_claim_always_names_one_run(existing, proposed):
    assert PENDING_PREFIX == "pending:" and claim_value(existing) == "pending:" + existing
    completed = interpret_claim(claim_value(existing), proposed)
    assert (completed.action, completed.run_id) == (Action.COMPLETE, existing)
    if not existing.startswith("pending"):
        recorded = interpret_claim(existing, proposed)
        assert (recorded.action, recorded.run_id) == (Action.RETURN_EXISTING, existing)
    fresh = interpret_claim(None, proposed)
    assert (fresh.action, fresh.run_id) == (Action.CREATE, proposed)


# -- generated run names -------------------------------------------------------------------------
def test_two_word_names_are_stable_and_varied():
    assert two_word_name("abc") == two_word_name("abc")
    names = {two_word_name(uuid.uuid4().hex) for _ in range(200)}
    assert len(names) > 150 and all(n.count("-") == 1 for n in names)
