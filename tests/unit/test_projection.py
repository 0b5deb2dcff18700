"""The projection from events to read-model documents."""

from __future__ import annotations

from runledger.messages import commands as c
from runledger.readmodel.keys import Keys
from runledger.readmodel.projection import Changes, Projection
from tests.unit.factories import at, envelope, set_state, set_task_state

K = Keys("rl")


def project(envelopes, docs=None):
    projection, docs, changes = Projection(K), docs if docs is not None else {}, Changes()
    applied = [projection.apply(env, docs, changes) for env in envelopes]
    return docs, changes, applied


def test_documents_follow_the_run():
    log = []
    from runledger.domain.ledger import Ledger
    from tests.unit.factories import spec

    ledger = Ledger()
    log += ledger.decide(envelope("run-1", c.CreateFlowRun(spec=spec(tasks=1))), at(0)).events
    log += ledger.decide(envelope("run-1", set_state("Running")), at(10)).events
    log += ledger.decide(envelope("run-1", set_task_state("run-1-tr0", "Success", 0)), at(12)).events
    log += ledger.decide(envelope("run-1", set_state("Success", result_location="s3://x")), at(25)).events
    docs, changes, applied = project(log)
    assert all(applied)
    run = docs[K.flow_run("run-1")]
    assert [s["type"] for s in run["states"]] == ["Scheduled", "Running", "Success"]
    assert [s["version"] for s in run["states"]] == [1, 2, 3] and run["version"] == 3
    assert run["start_time"] == at(10).isoformat() and run["end_time"] == at(25).isoformat()
    assert run["duration_seconds"] == 15.0 and run["state"]["result_location"] == "s3://x"
    assert run["task_run_ids"] == ["run-1-tr0"] and run["seq"] == len(log)
    task_run = docs[K.task_run("run-1-tr0")]
    assert task_run["state"]["type"] == "Success" and task_run["version"] == 1
    assert (K.runs_of_flow("flow-1"), at(0).timestamp() * 1000, "run-1") in changes.zadd
    # a restart through Scheduled clears the end time
    restart = ledger.decide(envelope("run-1", set_state("Scheduled")), at(30)).events
    docs, _, _ = project(restart, docs)
    assert docs[K.flow_run("run-1")]["end_time"] is None and docs[K.flow_run("run-1")]["duration_seconds"] is None


def test_duplicated_records_are_applied_once():
    from runledger.domain.ledger import Ledger
    from tests.unit.factories import spec

    ledger = Ledger()
    log = ledger.decide(envelope("run-1", c.CreateFlowRun(spec=spec(tasks=0))), at(0)).events
    log += ledger.decide(envelope("run-1", set_state("Running")), at(1)).events
    docs, _, applied = project(log + log[-1:])
    assert applied == [True, True, True, False]
    assert len(docs[K.flow_run("run-1")]["states"]) == 2


def test_projection_is_deterministic():
    from runledger.domain.ledger import Ledger
    from tests.unit.factories import spec

    ledger = Ledger()
    log = ledger.decide(envelope("run-1", c.CreateFlowRun(spec=spec(tasks=2))), at(0)).events
    log += ledger.decide(envelope("run-1", c.CancelFlowRun()), at(1)).events
    first, _, _ = project(log)
    second, _, _ = project(log)
    assert first == second
