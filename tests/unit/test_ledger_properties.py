"""Property tests of the writer's decision procedure (pure): versions and replay."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.ledger import Ledger
from shared.domain.states import StateType
from shared.messages import commands as c
from shared.messages.events import FlowRunStateSet
from tests.unit.factories import at, envelope, ledger_with_run, set_state, set_task_state, spec

STATES = [t.value for t in StateType]
versions = st.sampled_from(["current", "stale", "none", "ahead"])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("flow"), st.sampled_from(STATES), versions),
        st.tuples(st.just("task"), st.integers(0, 1), st.sampled_from(STATES), versions),
        st.tuples(st.just("cancel")),
        st.tuples(st.just("rename"), st.text(min_size=1, max_size=5)),
        st.tuples(st.just("repeat")),
    ),
    max_size=40,
)


def pick_version(choice: str, current: int) -> int | None:
    return {"current": current, "stale": current - 1, "none": None, "ahead": current + 1}[choice]


def run_operations(ops):
    ledger = ledger_with_run(tasks=2)
    run = ledger.aggregates["run-1"]
    log = []
    last = None
    for i, op in enumerate(ops):
        kind = op[0]
        if kind == "flow":
            payload = set_state(op[1], pick_version(op[2], run.version))
        elif kind == "task":
            record = run.task_runs[f"run-1-tr{op[1]}"]
            payload = set_task_state(record.id, op[2], pick_version(op[3], record.version))
        elif kind == "cancel":
            payload = c.CancelFlowRun()
        elif kind == "rename":
            payload = c.RenameFlowRun(name=op[1])
        else:
            if last is None:
                continue
            command, first_answer = last
            again = ledger.decide(command, at(i))  # a redelivery: same id, same payload
            assert again.events == []
            assert again.duplicate or not first_answer.events  # only existence-based no-ops are re-decided
            assert (again.outcome, again.rejection) == (first_answer.outcome, first_answer.rejection)
            continue
        command = envelope("run-1", payload, f"cmd-{i}")
        answer = ledger.decide(command, at(i))
        last = (command, answer)
        log += answer.events
    return ledger, log


@settings(max_examples=150, deadline=None)
@given(operations)
def test_accepted_flow_run_states_take_consecutive_versions(ops):
    ledger, log = run_operations(ops)
    state_versions = [1] + [e.payload.version for e in log if isinstance(e.payload, FlowRunStateSet)]
    assert state_versions == list(range(1, len(state_versions) + 1))
    assert ledger.aggregates["run-1"].version == state_versions[-1]
    for task_run_id in ("run-1-tr0", "run-1-tr1"):
        task_versions = [e.payload.version for e in log if getattr(e.payload, "task_run_id", None) == task_run_id and e.type == "TaskRunStateSet"]
        assert task_versions == list(range(1, len(task_versions) + 1))


@settings(max_examples=150, deadline=None)
@given(operations, st.randoms(use_true_random=False))
def test_replaying_the_log_with_duplicates_rebuilds_the_same_run(ops, rnd: random.Random):
    ledger, log = run_operations(ops)
    fresh = Ledger()
    full_log = fresh.decide(envelope("run-1", c.CreateFlowRun(spec=spec("run-1", 2))), at(0)).events + log
    noisy = []
    for env in full_log:
        noisy.append(env)
        if rnd.random() < 0.2:
            noisy.append(env)  # a producer retry wrote it twice
    rebuilt = Ledger()
    for env in noisy:
        rebuilt.replay(env)
    original, copy = ledger.aggregates["run-1"], rebuilt.aggregates["run-1"]
    assert (copy.state.type, copy.version, copy.seq, copy.name) == (original.state.type, original.version, original.seq, original.name)
    assert {k: (v.state.type, v.version) for k, v in copy.task_runs.items()} == {
        k: (v.state.type, v.version) for k, v in original.task_runs.items()
    }
