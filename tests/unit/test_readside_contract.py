"""Projection into read-model documents, request resolution, idempotency claims and the codec."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runledger.api_models import CreateFlowRunRequest, SetStateRequest, StateInput, as_utc
from runledger.domain.idempotency import PENDING_PREFIX, Action, claim_value, interpret_claim, scoped_key
from runledger.domain.ledger import Ledger
from runledger.domain.run_requests import RequestError, choose_flow_by_name, merge_parameters, resolve_flow_run, resolve_labels
from runledger.domain.states import State, StateType
from runledger.messages import commands as c
from runledger.messages.codec import decode_command, decode_event, decode_reply, encode
from runledger.messages.commands import Rejection, Reply
from runledger.messages.models import FlowDefinition, ParameterSpec, TaskSpec
from runledger.readmodel.keys import Keys
from runledger.readmodel.projection import Changes, Projection
from runledger.topics import REGISTRY_AGGREGATE
from tests.unit.factories import T0, at, envelope, set_state, set_task_state, spec

K = Keys("rl")


# -- projection ---------------------------------------------------------------------------------
class Run:
    """A ledger and the log it wrote, for one flow run."""

    def __init__(self, tasks: int = 1) -> None:
        self.ledger, self.log = Ledger(), []
        self.do(c.CreateFlowRun(spec=spec("run-1", tasks)), 0)

    def do(self, payload, seconds: float):
        answer = self.ledger.decide(envelope("run-1", payload), at(seconds))
        self.log += answer.events
        return answer


def project(log, docs=None):
    projection, docs, changes = Projection(K), ({} if docs is None else docs), Changes()
    applied = [projection.apply(env, docs, changes) for env in log]
    return docs, changes, applied


def test_start_time_is_the_first_running_and_end_time_the_last_finish():
    run = Run()
    run.do(set_state("Submitted"), 5)
    run.do(set_state("Running"), 10)
    run.do(set_state("Failed"), 20)
    docs, _, _ = project(run.log)
    doc = docs[K.flow_run("run-1")]
    assert (doc["start_time"], doc["end_time"], doc["duration_seconds"]) == (at(10).isoformat(), at(20).isoformat(), 10.0)
    run.do(set_state("Scheduled"), 30)  # restart
    docs, _, _ = project(run.log)
    doc = docs[K.flow_run("run-1")]
    assert (doc["start_time"], doc["end_time"], doc["duration_seconds"]) == (at(10).isoformat(), None, None)
    run.do(set_state("Running"), 40)
    run.do(set_state("Success"), 55)
    docs, _, _ = project(run.log)
    doc = docs[K.flow_run("run-1")]
    assert doc["start_time"] == at(10).isoformat()  # the first Running, not the latest
    assert (doc["end_time"], doc["duration_seconds"]) == (at(55).isoformat(), 45.0)
    assert [(s["type"], s["version"]) for s in doc["states"]] == [
        ("Scheduled", 1), ("Submitted", 2), ("Running", 3), ("Failed", 4), ("Scheduled", 5), ("Running", 6), ("Success", 7)
    ]  # fmt: skip
    assert doc["state"] == doc["states"][-1] and doc["version"] == 7 and doc["updated"] == at(55).isoformat()


def test_cancelling_is_not_a_start_and_a_cancel_without_a_start_has_no_duration():
    run = Run()
    run.do(c.CancelFlowRun(), 3)
    docs, _, _ = project(run.log)
    doc = docs[K.flow_run("run-1")]
    assert (doc["start_time"], doc["end_time"], doc["duration_seconds"]) == (None, at(3).isoformat(), None)
    assert doc["state"]["message"] == "Flow run cancelled by request."


def test_task_run_documents_follow_their_events():
    run = Run(tasks=2)
    run.do(set_state("Running"), 1)
    run.do(set_task_state("run-1-tr0", "Running", 0), 2)
    run.do(c.RenameTaskRun(task_run_id="run-1-tr0", name="renamed"), 3)
    run.do(c.RecordTaskRunHeartbeat(task_run_id="run-1-tr0"), 4)
    run.do(c.CancelFlowRun(), 5)
    docs, _, applied = project(run.log)
    assert all(applied)
    tr0, tr1 = docs[K.task_run("run-1-tr0")], docs[K.task_run("run-1-tr1")]
    assert [(s["type"], s["version"]) for s in tr0["states"]] == [("Running", 1), ("Cancelling", 2)]
    assert (tr0["name"], tr0["heartbeat"], tr0["start_time"], tr0["end_time"]) == ("renamed", at(4).isoformat(), at(2).isoformat(), None)
    assert (tr1["state"]["type"], tr1["version"], tr1["flow_run_id"]) == ("Cancelled", 1, "run-1")
    assert tr1["states"][-1]["message"] == "Flow run cancelling."
    assert docs[K.flow_run("run-1")]["task_run_ids"] == ["run-1-tr0", "run-1-tr1"]


def test_a_fresh_task_run_document_is_pending_at_version_0():
    run = Run(tasks=1)
    docs, _, _ = project(run.log)
    tr = docs[K.task_run("run-1-tr0")]
    assert (tr["state"]["type"], tr["version"], tr["states"], tr["map_index"]) == ("Pending", 0, [], -1)
    flow_run = docs[K.flow_run("run-1")]
    assert (flow_run["id"], flow_run["flow_group_id"], flow_run["name"]) == ("run-1", "group-1", "electric-mandrill")
    assert "flow_run_id" not in flow_run and "task_runs" not in flow_run


def test_duplicated_records_are_skipped_by_seq_and_verdicts_only_advance_seq():
    run = Run(tasks=1)
    run.do(set_state("Running"), 1)
    refused = run.do(set_state("Success", 1), 2)  # stale: recorded as a verdict
    assert [ev.type for ev in refused.events] == ["VerdictRecorded"]
    run.do(set_task_state("run-1-tr0", "Success"), 3)
    clean, _, _ = project(run.log)
    noisy_log = [run.log[0], run.log[0], *run.log[1:3], run.log[1], *run.log[3:], run.log[-1], run.log[2]]
    noisy, changes, applied = project(noisy_log)
    assert noisy == clean
    assert applied == [True, False, True, True, False] + [True] * (len(run.log) - 3) + [False, False]
    assert clean[K.flow_run("run-1")]["seq"] == len(run.log) and clean[K.flow_run("run-1")]["version"] == 2
    # the duplicates wrote nothing
    assert len([z for z in changes.zadd if z[0] == K.flow_runs]) == 1


def test_registry_documents():
    ledger, log = Ledger(), []

    def do(payload):
        answer = ledger.decide(envelope(REGISTRY_AGGREGATE, payload), at(len(log)))
        log.extend(answer.events)
        return answer

    do(c.CreateProject(project_id="p1", name="demo"))
    flows = [FlowDefinition(id=f"f{i}", name="etl", project_id="p1", version=0, version_group_id=f"g{i}") for i in range(3)]
    for f in flows:
        do(c.RegisterFlow(flow=f))
    do(c.UpdateFlowGroup(flow_group_id="g0", changes={"labels": ["a"], "default_parameters": {"x": 1}}))
    do(c.UpdateFlowGroup(flow_group_id="g0", changes={"labels": None}))
    docs, changes, applied = project(log)
    assert all(applied)
    assert docs[K.project("p1")]["name"] == "demo" and (K.project_by_name, "demo", "p1") in changes.hset
    assert [docs[K.flow(f"f{i}")]["archived"] for i in range(3)] == [True, True, False]
    assert [docs[K.flow(f"f{i}")]["version"] for i in range(3)] == [1, 2, 3]
    group = docs[K.flow_group("g0")]
    assert group["flow_ids"] == ["f0", "f1", "f2"] and K.flow_group("g1") not in docs
    assert (group["labels"], group["default_parameters"]) == (None, {"x": 1})
    assert {s for s in changes.sadd} == {(K.flows_by_name("etl"), f"f{i}") for i in range(3)}
    assert docs[K.registry]["seq"] == len(log)


def test_keys_needed_name_every_document_an_event_touches():
    projection = Projection(K)
    run = Run(tasks=1)
    run.do(set_task_state("run-1-tr0", "Running"), 1)
    assert projection.keys_needed(run.log[0]) == [K.flow_run("run-1")]
    assert projection.keys_needed(run.log[-1]) == [K.flow_run("run-1"), K.task_run("run-1-tr0")]
    ledger = Ledger()
    ledger.decide(envelope(REGISTRY_AGGREGATE, c.CreateProject(project_id="p1", name="d")), T0)
    first = FlowDefinition(id="f0", name="etl", project_id="p1", version=0, version_group_id="g0")
    ledger.decide(envelope(REGISTRY_AGGREGATE, c.RegisterFlow(flow=first)), T0)
    second = ledger.decide(envelope(REGISTRY_AGGREGATE, c.RegisterFlow(flow=first.model_copy(update={"id": "f1"}))), T0)
    assert projection.keys_needed(second.events[0]) == [K.registry, K.flow_group("g0"), K.flow("f0")]


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
    got = resolve_flow_run(flow(run_config={"type": "flow"}), False, {"run_config": {"type": "group"}}, req, "run-9", T0)
    assert (got.flow_run_id, got.name, got.context, got.idempotency_key) == ("run-9", "mine", {"k": 1}, "idem")
    assert got.scheduled_start_time == datetime(2031, 5, 1, 10, tzinfo=timezone.utc)
    assert got.run_config == {"type": "group"}
    assert resolve_flow_run(flow(run_config={"type": "flow"}), False, None, request(parameters={"who": "a"}), "r", T0).run_config == {"type": "flow"}
    assert [(t.task_id, t.task_slug, t.task_name, t.tags) for t in got.task_runs] == [("t1", "t1-1", "one", ["db"]), ("t2", "t2-1", "", [])]
    again = resolve_flow_run(flow(), False, None, req, "run-9", at(100))
    assert [t.task_run_id for t in again.task_runs] == [t.task_run_id for t in got.task_runs]
    other = resolve_flow_run(flow(), False, None, req, "run-10", T0)
    assert not {t.task_run_id for t in other.task_runs} & {t.task_run_id for t in got.task_runs}


def test_times_without_a_zone_are_utc():
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


# -- codec ----------------------------------------------------------------------------------------
json_leaves = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
aware_times = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(timezone.utc))
states = st.builds(
    State,
    type=st.sampled_from(list(StateType)),
    message=st.none() | st.text(max_size=50),
    timestamp=st.none() | aware_times,
    start_time=st.none() | aware_times,
    result_location=st.none() | st.text(max_size=30),
    serialized=st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=5),
)


@settings(max_examples=150, deadline=None)
@given(states, st.none() | st.integers(0, 10**6), st.none() | st.text(max_size=10), aware_times)
def test_envelopes_round_trip_through_the_codec(state, version, correlation_id, now):
    command = c.SetFlowRunState(state=state, version=version)
    env = envelope("run-1", command).model_copy(update={"correlation_id": correlation_id, "issued_at": now})
    assert decode_command(encode(env)) == env
    ledger = Ledger()
    log = ledger.decide(envelope("run-1", c.CreateFlowRun(spec=spec(tasks=1))), now).events
    log += ledger.decide(env, now).events  # accepted, or a recorded refusal
    log += ledger.decide(envelope("run-1", c.SetTaskRunState(task_run_id="run-1-tr0", state=state, version=version)), now).events
    for event in log:
        assert decode_event(encode(event)) == event
    rejection = Rejection(code="VERSION_MISMATCH", message="m", field="version", details={"current_version": 3})
    reply = Reply(command_id=str(uuid.uuid4()), ok=False, rejection=rejection, partition=1, offset=12)
    assert decode_reply(encode(reply)) == reply
