"""The writer's aggregate store: the most recently used aggregates as objects, all of them encoded."""

from __future__ import annotations

import pytest

from runledger.domain.aggregate_store import AggregateStore, decode_aggregate, encode_aggregate
from runledger.domain.flow_run import FlowRun
from runledger.domain.ledger import Ledger
from runledger.domain.limits import LIMITS_AGGREGATE
from runledger.messages import commands as c
from runledger.topics import REGISTRY_AGGREGATE
from tests.unit.factories import at, envelope, set_state, spec


def _ledger_with_runs(count: int, max_hot: int | None) -> Ledger:
    ledger = Ledger(max_hot=max_hot)
    for n in range(count):
        ledger.decide(envelope(f"run-{n}", c.CreateFlowRun(spec=spec(f"run-{n}", 1)), f"create-{n}"), at(n))
    return ledger


def test_only_the_most_recently_used_stay_objects_and_the_others_come_back_equal():
    bounded, unbounded = _ledger_with_runs(10, max_hot=3), _ledger_with_runs(10, max_hot=None)
    store = bounded.aggregates
    assert list(store.hot) == ["run-7", "run-8", "run-9"]
    assert len(store) == 10 and set(store) == {f"run-{n}" for n in range(10)} and "run-0" in store
    # Pushed out, each was encoded: its bytes decode to what the unbounded ledger holds as an object.
    assert set(store.encoded) == {f"run-{n}" for n in range(7)} and store.changed == {"run-7", "run-8", "run-9"}
    assert decode_aggregate("run-0", store.encoded["run-0"]) == unbounded.aggregates["run-0"]
    # Used again, it is decoded and becomes the most recent; the least recent goes.
    assert store["run-0"] == unbounded.aggregates["run-0"]
    assert list(store.hot) == ["run-8", "run-9", "run-0"]
    assert dict(store.items()) == dict(unbounded.aggregates.items())


def test_a_change_to_a_run_that_was_pushed_out_is_kept():
    ledger = _ledger_with_runs(5, max_hot=2)
    answer = ledger.decide(envelope("run-0", set_state("Running", version=1), "run-0-running"), at(10))
    assert answer.rejection is None and answer.events
    for n in range(1, 5):  # push run-0 out again
        ledger.aggregates[f"run-{n}"]
    assert "run-0" not in ledger.aggregates.hot
    run = ledger.aggregates["run-0"]
    assert (run.state.type.value, run.version) == ("Running", 2)


def test_the_singletons_are_never_pushed_out():
    ledger = Ledger(max_hot=2)
    ledger.decide(envelope(LIMITS_AGGREGATE, c.SetConcurrencyLimit(kind="label", name="gpu", limit=2)), at(0))
    for n in range(3):
        ledger.decide(envelope(f"run-{n}", c.CreateFlowRun(spec=spec(f"run-{n}", 0)), f"create-{n}"), at(n))
    assert LIMITS_AGGREGATE in ledger.aggregates.hot and LIMITS_AGGREGATE in ledger.aggregates.changed
    assert [k for k in ledger.aggregates.hot if k != LIMITS_AGGREGATE] == ["run-2"]
    assert REGISTRY_AGGREGATE not in ledger.aggregates  # never made, never listed


def test_encodings_bring_every_changed_aggregate_up_to_date_in_slices():
    store = AggregateStore()
    for n in range(5):
        store[f"run-{n}"] = FlowRun(id=f"run-{n}")
    assert store.encode_changed(2) == 2 and len(store.changed) == 3
    assert sorted(store.encodings()) == sorted((f"run-{n}", encode_aggregate(FlowRun(id=f"run-{n}"))) for n in range(5))
    assert store.changed == set()
    del store["run-1"]
    assert "run-1" not in store and len(store) == 4
    with pytest.raises(KeyError):
        del store["run-1"]
    with pytest.raises(ValueError):
        AggregateStore(max_hot=0)
