"""Ledger snapshots (pure): a ledger restored from a snapshot taken at any point and then fed the
remaining events decides every later command exactly like the ledger that never stopped (same
verdicts, same events but for their random ids), redelivered commands included; an unreadable
snapshot is refused with ``SnapshotError``, never restored half-way."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runledger.domain import snapshots
from runledger.domain.aggregate_store import encode_aggregate
from runledger.domain.ledger import Ledger
from runledger.domain.states import State
from runledger.messages import commands as c
from runledger.messages.models import PlannedTaskRun
from tests.unit.factories import at, envelope, ledger_with_run, spec
from tests.unit.test_ledger_properties import RUNS, operations, run_operations


def _commands(ops) -> list:
    """The command stream of a random history: the creates, then every command the history sent."""
    trace = run_operations(ops)
    creates = [envelope(run_id, c.CreateFlowRun(spec=spec(run_id, tasks)), f"create-{run_id}") for run_id, tasks in RUNS.items()]
    return creates + [sent.envelope for sent in trace.sent[len(RUNS):]]


def _later(commands: list) -> list:
    """What may come after a restart: every earlier command again (redeliveries), new commands of
    every kind for every run, and commands for a run that does not exist."""
    later = list(commands)
    for n, run_id in enumerate(sorted(RUNS)):
        tr = f"{run_id}-tr0"
        later += [
            envelope(run_id, c.SetFlowRunState(state=State(type="Running")), f"late-{n}-1"),
            envelope(run_id, c.SetTaskRunState(task_run_id=tr, state=State(type="Running"), version=None), f"late-{n}-2"),
            envelope(run_id, c.SetFlowRunState(state=State(type="Success"), version=1), f"late-{n}-3"),  # stale
            envelope(run_id, c.CancelFlowRun(), f"late-{n}-4"),
            envelope(run_id, c.CancelFlowRun(), f"late-{n}-5"),
            envelope(run_id, c.RenameFlowRun(name="renamed"), f"late-{n}-6"),
            envelope(run_id, c.GetOrCreateTaskRun(task_run=PlannedTaskRun(task_run_id=f"{run_id}-m", task_id="t0", task_slug="t0-1", map_index=7)), f"late-{n}-7"),
            envelope(run_id, c.SetFlowRunState(state=State(type="Scheduled"), version=None), f"late-{n}-8"),
            envelope(run_id, c.SetFlowRunState(state=State(type="Running")), f"late-{n}-1"),  # a reused id
        ]
    later.append(envelope("no-such-run", c.SetFlowRunState(state=State(type="Running")), "ghost"))
    return later + later[-12:]  # and the newest ones redelivered


def _same_answer(a, b) -> None:
    assert (a.command_id, a.outcome, a.rejection, a.duplicate) == (b.command_id, b.outcome, b.rejection, b.duplicate)
    assert [e.model_dump(exclude={"event_id"}) for e in a.events] == [e.model_dump(exclude={"event_id"}) for e in b.events]


def _decide_all(ledger: Ledger, commands: list, start: int, log: list) -> list:
    answers = []
    for i, command in enumerate(commands, start=start):
        answer = ledger.decide(command, at(i))
        log += answer.events
        answers.append(answer)
    return answers


@settings(max_examples=120, deadline=None)
@given(operations, st.data())
def test_a_restored_ledger_decides_every_later_command_like_the_one_that_never_stopped(ops, data):
    commands = _commands(ops)
    cut = data.draw(st.integers(0, len(commands)), label="snapshot after command")
    live, log = Ledger(), []
    _decide_all(live, commands[:cut], 0, log)
    snapshot = snapshots.encode(live, len(log))
    _decide_all(live, commands[cut:], cut, log)  # the writer goes on, then crashes

    restored, position = snapshots.decode(snapshot, max_hot=data.draw(st.sampled_from([None, 1, 3]), label="max_hot"))
    assert position <= len(log)
    assert all(restored.replay(env) for env in log[position:])  # the tail of the log
    assert dict(restored.aggregates.items()) == live.aggregates
    assert restored.verdicts() == live.verdicts()

    # a second generation: a snapshot of the restored (still partly encoded) ledger restores too
    again, position2 = snapshots.decode(snapshots.encode(restored, len(log)))
    assert position2 == len(log)

    later = _later(commands)
    for i, command in enumerate(later, start=10_000):
        expected = live.decide(command, at(i))
        _same_answer(restored.decide(command, at(i)), expected)
        _same_answer(again.decide(command, at(i)), expected)
    assert dict(restored.aggregates.items()) == dict(again.aggregates.items()) == live.aggregates


@settings(max_examples=40, deadline=None)
@given(operations, st.data())
def test_the_stores_incremental_encodings_give_the_snapshot_of_a_fresh_encoding(ops, data):
    """What the writer snapshots (the store's encodings, brought up to date a slice at a time
    between batches, some aggregates pushed out of the hot set on the way) restores to the same
    ledger as encoding every aggregate from scratch."""
    commands = _commands(ops)
    live, log = Ledger(max_hot=data.draw(st.sampled_from([None, 1, 2, 5]), label="max_hot")), []
    cuts = sorted(data.draw(st.lists(st.integers(0, len(commands)), min_size=1, max_size=4)))
    done = 0
    for cut in cuts:
        _decide_all(live, commands[done:cut], done, log)
        done = cut
        if data.draw(st.booleans()):
            live.aggregates.encode_changed(data.draw(st.integers(0, 3)))  # a slice of the work, between batches
        incremental = snapshots.capture(live, len(log)).to_bytes()
        assert live.aggregates.changed == set()
        objects = dict(live.aggregates.items())  # decodes what is encoded only
        fresh = snapshots.Captured(len(log), [(k, encode_aggregate(v)) for k, v in objects.items()], live.verdicts())
        a, _ = snapshots.decode(incremental)
        b, _ = snapshots.decode(fresh.to_bytes())
        assert dict(a.aggregates.items()) == dict(b.aggregates.items()) == objects
        assert a.verdicts() == b.verdicts() == live.verdicts()


def test_the_verdict_window_and_a_smaller_window_on_restore():
    ledger = ledger_with_run()
    for n in range(5):
        ledger.decide(envelope("run-1", c.RecordFlowRunHeartbeat(), f"hb-{n}"), at(n))
    restored, _ = snapshots.decode(snapshots.encode(ledger, 9), dedup_window=3)
    assert [cid for cid, _ in restored.verdicts()] == ["hb-2", "hb-3", "hb-4"]
    answer = restored.decide(envelope("run-1", c.RecordFlowRunHeartbeat(), "hb-4"), at(99))
    assert answer.duplicate and answer.outcome == {"flow_run_id": "run-1"}


def test_an_empty_ledger_round_trips():
    restored, position = snapshots.decode(snapshots.encode(Ledger(), 0))
    assert (position, len(restored.aggregates), restored.verdicts()) == (0, 0, [])


def _corruptions(raw: bytes) -> dict[str, bytes]:
    header_end = len(snapshots.MAGIC) + 4 + struct.unpack_from("<I", raw, len(snapshots.MAGIC))[0]
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x40
    future = raw.replace(b'"schema_version":1', b'"schema_version":9', 1)
    return {
        "empty": b"",
        "garbage": b"not a snapshot at all",
        "truncated": raw[: len(raw) // 2],
        "no checksum": raw[:-4],
        "flipped bit": bytes(flipped),
        "future schema": future,
        "header only": raw[:header_end],
        "json instead": b'{"schema_version": 1, "position": 3}',
    }


@pytest.mark.parametrize("kind", list(_corruptions(b"RLSNAP\x00" + b"\x00" * 64)))
def test_a_corrupt_snapshot_is_refused(kind):
    ledger = ledger_with_run()
    raw = snapshots.encode(ledger, 5)
    with pytest.raises(snapshots.SnapshotError):
        snapshots.decode(_corruptions(raw)[kind])
