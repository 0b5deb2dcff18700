"""Recorded-history replay: an event log written by an earlier RunLedger must still read the same.

``tests/fixtures/recorded_log_v1.jsonl`` is a log the writer produced once (one JSON envelope a
line, as on the events topic), with the final state it led to recorded next to it:
``recorded_log_v1.expected.json`` (aggregates and remembered verdicts after replay) and
``recorded_log_v1.docs.json`` (the read-model documents the projection wrote). The files are
committed and never regenerated to make a test pass: if one of these tests fails, a change has
broken logs that already exist in the field (decoding, replay or projection). Either the change is
wrong, or it needs a migration and a new recorded log (``recorded_log_v2``) next to this one.
``tests/fixtures/record_history.py`` says how the files were made.

Only the documents are compared for the projection, not index operations (those may change shape
without breaking old logs: a rebuild rewrites them).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from runledger.domain.flow_run import FlowRun
from runledger.domain.ledger import Ledger
from runledger.messages import commands as c
from runledger.messages.codec import decode_event
from runledger.messages.commands import CommandEnvelope
from runledger.messages.events import EventEnvelope
from runledger.readmodel.keys import Keys
from runledger.readmodel.projection import Changes, Projection

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RECORDED = "recorded_log_v1"
KEYS = Keys("rl", 8)


# -- what the test computes from a log (record_history.py writes the same, once) ---------------
def ledger_summary(ledger: Ledger) -> dict[str, Any]:
    """Each aggregate's state and versions, as plain JSON."""
    out: dict[str, Any] = {}
    for agg_id, agg in sorted(ledger.aggregates.items()):
        if isinstance(agg, FlowRun):
            out[agg_id] = {
                "seq": agg.seq,
                "state": agg.state.type.value,
                "version": agg.version,
                "name": agg.name,
                "task_runs": {
                    tr_id: {"state": tr.state.type.value, "version": tr.version, "name": tr.name}
                    for tr_id, tr in sorted(agg.task_runs.items())
                },
            }
        else:
            out[agg_id] = {
                "seq": agg.seq,
                "project_names": dict(sorted(agg.project_names.items())),
                "archived": dict(sorted(agg.archived.items())),
            }
    return out


def projected_docs(envelopes: list[EventEnvelope]) -> dict[str, Any]:
    """The documents the projection writes for the whole log, from an empty read model."""
    projection, docs, changes = Projection(KEYS), {}, Changes()
    for env in envelopes:
        assert projection.apply(env, docs, changes), env.event_id
    return changes.docs


def remembered_verdict(ledger: Ledger, command_id: str, aggregate_id: str) -> dict[str, Any]:
    """What a redelivered command gets: answered from memory, whatever its payload now says."""
    probe = CommandEnvelope(
        command_id=command_id,
        type="RecordFlowRunHeartbeat",
        aggregate_id=aggregate_id,
        issued_at="2026-06-01T00:00:00Z",
        payload=c.RecordFlowRunHeartbeat(),
    )
    answer = ledger.decide(probe, probe.issued_at)
    assert answer.duplicate and answer.events == [], command_id
    return {
        "outcome": answer.outcome,
        "rejection": answer.rejection.model_dump(mode="json") if answer.rejection else None,
    }


# -- the tests ------------------------------------------------------------------------------------
def load(suffix: str) -> Any:
    return json.loads((FIXTURES / f"{RECORDED}{suffix}").read_text())


@pytest.fixture(scope="module")
def recorded() -> list[EventEnvelope]:
    lines = (FIXTURES / f"{RECORDED}.jsonl").read_bytes().splitlines()
    return [decode_event(line) for line in lines]


def test_every_recorded_line_decodes_to_an_event(recorded):
    expected = load(".expected.json")
    assert len(recorded) == expected["events"]
    assert [env.type for env in recorded] == [env.payload.type for env in recorded]
    assert {env.schema_version for env in recorded} == {1}
    assert sorted({env.type for env in recorded}) == expected["event_types"]


def test_replaying_the_recorded_log_ends_in_the_recorded_state(recorded):
    expected = load(".expected.json")
    ledger = Ledger()
    assert all(ledger.replay(env) for env in recorded)
    assert ledger_summary(ledger) == expected["aggregates"]
    # every recorded verdict (accepted, refused, or a no-op) is what a redelivery gets back
    for command_id, verdict in expected["verdicts"].items():
        assert remembered_verdict(ledger, command_id, verdict["aggregate_id"]) == {
            "outcome": verdict["outcome"],
            "rejection": verdict["rejection"],
        }, command_id


def test_projecting_the_recorded_log_gives_the_recorded_documents(recorded):
    # keys now carry their partition's hash tag (rl:rm:{p3}:flow_run:...); the fixture predates it
    untagged = {re.sub(r"\{p\d+\}:", "", key): doc for key, doc in projected_docs(recorded).items()}
    assert untagged == load(".docs.json")
