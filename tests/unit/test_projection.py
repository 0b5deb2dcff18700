"""The projection from events to read-model documents (and the index entries it adds).

That the same log always projects to the same documents is pinned by
``test_recorded_history.py``, which compares a recorded log's projection with a stored snapshot.
"""

from __future__ import annotations

from runledger.domain.ledger import Ledger
from runledger.messages import commands as c
from runledger.messages.models import FlowDefinition
from runledger.readmodel.keys import Keys
from runledger.readmodel.projection import Changes, Projection
from runledger.topics import REGISTRY_AGGREGATE
from tests.unit.factories import T0, at, envelope, set_state, set_task_state, spec

K = Keys("rl", 8)


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
    run.do(set_state("Success", result_location="s3://x"), 55)
    docs, _, _ = project(run.log)
    doc = docs[K.flow_run("run-1")]
    assert doc["start_time"] == at(10).isoformat()  # the first Running, not the latest
    assert doc["state"]["result_location"] == "s3://x"
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
    tr0, tr1 = docs[K.task_run("run-1-tr0", "run-1")], docs[K.task_run("run-1-tr1", "run-1")]
    assert [(s["type"], s["version"]) for s in tr0["states"]] == [("Running", 1), ("Cancelling", 2)]
    assert (tr0["name"], tr0["heartbeat"], tr0["start_time"], tr0["end_time"]) == ("renamed", at(4).isoformat(), at(2).isoformat(), None)
    assert (tr1["state"]["type"], tr1["version"], tr1["flow_run_id"]) == ("Cancelled", 1, "run-1")
    assert tr1["states"][-1]["message"] == "Flow run cancelling."
    assert docs[K.flow_run("run-1")]["task_run_ids"] == ["run-1-tr0", "run-1-tr1"]


def test_a_fresh_task_run_document_is_pending_at_version_0():
    run = Run(tasks=1)
    docs, _, _ = project(run.log)
    tr = docs[K.task_run("run-1-tr0", "run-1")]
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
    assert len([z for z in changes.zadd if z[0] == K.index(K.partition("run-1"), "fr:created")]) == 1


def test_a_new_run_is_indexed_under_its_flow_by_creation_time():
    run = Run(tasks=0)
    _, changes, _ = project(run.log)
    assert (K.index(K.partition("run-1"), "fr:created"), at(0).timestamp() * 1000, "run-1") in changes.zadd
    assert (K.index(K.partition("run-1"), "fr:flow", "flow-1"), T0.timestamp() * 1000, "run-1") in changes.zadd


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
    assert projection.keys_needed(run.log[-1]) == [K.flow_run("run-1"), K.task_run("run-1-tr0", "run-1")]
    ledger = Ledger()
    ledger.decide(envelope(REGISTRY_AGGREGATE, c.CreateProject(project_id="p1", name="d")), T0)
    first = FlowDefinition(id="f0", name="etl", project_id="p1", version=0, version_group_id="g0")
    ledger.decide(envelope(REGISTRY_AGGREGATE, c.RegisterFlow(flow=first)), T0)
    second = ledger.decide(envelope(REGISTRY_AGGREGATE, c.RegisterFlow(flow=first.model_copy(update={"id": "f1"}))), T0)
    assert projection.keys_needed(second.events[0]) == [K.registry, K.flow_group("g0"), K.flow("f0")]
