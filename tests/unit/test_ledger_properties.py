"""Property tests of the writer's decision procedure (pure): random command sequences.

Random sequences of commands (state updates with right, stale, absent or wild versions, task-run
updates, cancels, renames, mapped task runs, heartbeats, repeated and reused command ids, commands
for runs that do not exist) go through ``Ledger.decide``. A small reference model, written here
from the documented policy and independent of ``runledger.domain``'s helpers, predicts every verdict
and the resulting state. Then the log the ledger wrote is replayed, with duplicated records, into
a fresh ledger and through the projection: both must end where the ledger did.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from runledger.domain.ledger import Answer, Ledger
from runledger.domain.states import State, StateType
from runledger.messages import commands as c
from runledger.messages.events import FlowRunStateSet, TaskRunStateSet
from runledger.messages.models import PlannedTaskRun
from runledger.readmodel.keys import Keys
from runledger.readmodel.projection import Changes, Projection
from tests.unit.factories import at, envelope, spec
from tests.unit.oracle import FINISHED, RUNNING, violated

STATES = [t.value for t in StateType]
LIFECYCLE = ["Scheduled", "Submitted", "Running", "Running", "Success", "Failed", "Retrying", "Cancelling"]
# any state, but most of the time one a real run goes through, so that runs get somewhere
states = st.one_of(st.sampled_from(STATES), st.sampled_from(LIFECYCLE), st.sampled_from(LIFECYCLE))
RUNS = {"run-1": 2, "run-2": 1}  # run id -> planned task runs
K = Keys("rl", 8)


# -- the reference model ---------------------------------------------------------------------
@dataclass
class ModelRun:
    state: str = "Scheduled"
    version: int = 1
    name: str = "electric-mandrill"
    tasks: dict[str, list] = field(default_factory=dict)  # id -> [state, version]
    task_keys: dict[tuple[str, int], str] = field(default_factory=dict)


@dataclass(frozen=True)
class Expect:
    accepted: bool
    code: str | None = None
    rules: frozenset[str] = frozenset()
    outcome: dict | None = None  # for accepted state changes: the verdict's version and state
    recorded: bool = True  # does a repeat of the command id get this answer back


class Model:
    def __init__(self) -> None:
        self.runs: dict[str, ModelRun] = {}
        for run_id, tasks in RUNS.items():
            run = self.runs[run_id] = ModelRun()
            for i in range(tasks):
                run.tasks[f"{run_id}-tr{i}"] = ["Pending", 0]
                run.task_keys[(f"t{i}", -1)] = f"{run_id}-tr{i}"

    def set_flow(self, run: ModelRun, proposed: str, version: int | None) -> Expect:
        if version is not None and version != run.version:
            return Expect(False, "VERSION_MISMATCH")
        broken = violated("flow run", run.state, proposed, run.state)
        if broken:
            return Expect(False, "TRANSITION_REJECTED", frozenset(broken))
        run.state, run.version = proposed, run.version + 1
        if proposed in ("Cancelled", "Cancelling"):
            for task in run.tasks.values():
                if task[0] in FINISHED:
                    continue
                target = "Cancelling" if proposed == "Cancelling" and task[0] in RUNNING else "Cancelled"
                if task[0] != target:
                    task[0], task[1] = target, task[1] + 1
        return Expect(True, outcome={"version": run.version, "state": proposed})

    def set_task(self, run: ModelRun, task_id: str, proposed: str, version: int | None) -> Expect:
        task = run.tasks[task_id]
        if version is not None and version != task[1]:
            return Expect(False, "VERSION_MISMATCH")
        broken = violated("task run", task[0], proposed, run.state)
        if broken:
            return Expect(False, "TRANSITION_REJECTED", frozenset(broken))
        task[0], task[1] = proposed, task[1] + 1
        return Expect(True, outcome={"version": task[1], "state": proposed})

    def cancel(self, run: ModelRun) -> Expect:
        if run.state in FINISHED:
            return Expect(True, outcome={"version": run.version, "state": run.state})  # a no-op
        return self.set_flow(run, "Cancelling" if run.state == "Running" else "Cancelled", None)


# -- random operations -------------------------------------------------------------------------
# mostly right or absent versions, so that runs get somewhere; sometimes stale, ahead or arbitrary
versions = st.sampled_from(["current", "current", "current", "none", "none", "stale", "ahead", 0, 3])
run_ids = st.sampled_from(sorted(RUNS))
OPERATIONS = {  # kind -> (weight, its arguments)
    "flow": (30, st.tuples(run_ids, states, versions)),
    "task": (40, st.tuples(run_ids, st.integers(0, 3), states, versions)),
    "cancel": (6, st.tuples(run_ids)),
    "rename": (2, st.tuples(run_ids, st.text(min_size=1, max_size=5))),
    "map": (3, st.tuples(run_ids, st.integers(0, 1))),  # get-or-create a mapped task run
    "heartbeat": (2, st.tuples(run_ids)),
    "ghost": (2, st.tuples(states)),  # a command for a run that does not exist
    "repeat": (5, st.tuples(st.integers(0, 10**6))),  # an earlier command again
    "reuse": (3, st.tuples(st.integers(0, 10**6), run_ids, states)),  # an earlier command id, a new payload
}
operation = st.sampled_from([kind for kind, (weight, _) in OPERATIONS.items() for _ in range(weight)]).flatmap(
    lambda kind: OPERATIONS[kind][1].map(lambda args: [(kind, *args)])
)
# a shortcut to the interesting part: the flow run and all its task runs Running (each one command)
start_everything = run_ids.map(lambda run_id: [("flow", run_id, "Running", "none")] + [("task", run_id, i, "Running", "none") for i in range(3)])
operations = st.lists(st.one_of(operation, operation, operation, operation, start_everything), min_size=8, max_size=50).map(
    lambda groups: [op for group in groups for op in group]
)


def pick_version(choice, current: int) -> int | None:
    if isinstance(choice, int):
        return choice
    return {"current": current, "stale": current - 1, "none": None, "ahead": current + 1}[choice]


@dataclass
class Sent:
    envelope: object
    answer: Answer
    recorded: bool


@dataclass
class Trace:
    ledger: Ledger
    model: Model
    log: list = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)


def check_answer(answer: Answer, expect: Expect) -> None:
    assert not answer.duplicate
    if expect.accepted:
        assert answer.rejection is None, answer.rejection
        if expect.outcome is not None:
            assert {k: answer.outcome[k] for k in expect.outcome} == expect.outcome
    else:
        assert answer.rejection is not None and answer.rejection.code == expect.code, (answer.rejection, expect)
        if expect.rules:
            assert answer.rejection.rule in expect.rules


def assert_same(ledger: Ledger, model: Model) -> None:
    for run_id, expected in model.runs.items():
        run = ledger.aggregates[run_id]
        assert (run.state.type.value, run.version, run.name) == (expected.state, expected.version, expected.name)
        assert {tid: [r.state.type.value, r.version] for tid, r in run.task_runs.items()} == expected.tasks
        assert run.task_run_by_key == expected.task_keys


def run_operations(ops, max_hot: int | None = None) -> Trace:
    trace = Trace(Ledger(max_hot=max_hot), Model())
    for run_id, tasks in RUNS.items():
        answer = trace.ledger.decide(envelope(run_id, c.CreateFlowRun(spec=spec(run_id, tasks)), f"create-{run_id}"), at(0))
        trace.log += answer.events
        trace.sent.append(Sent(None, answer, True))
    for i, op in enumerate(ops, start=1):
        now, command_id, kind = at(i), f"cmd-{i}", op[0]
        if kind in ("repeat", "reuse"):
            candidates = [s for s in trace.sent[len(RUNS):] if s.recorded or kind == "repeat"]
            if not candidates:
                continue
            earlier = candidates[op[1] % len(candidates)]
            env = earlier.envelope
            if kind == "reuse":
                env = envelope(op[2], c.SetFlowRunState(state=State(type=op[3])), env.command_id)
            answer = trace.ledger.decide(env, now)
            if earlier.recorded:
                # the first verdict comes back; nothing is decided again
                assert answer.duplicate and answer.events == []
                assert (answer.outcome, answer.rejection) == (earlier.answer.outcome, earlier.answer.rejection)
            else:  # an unrecorded no-op (get-or-create of an existing task run): decided again, still a no-op
                assert not answer.duplicate and answer.events == [] and answer.rejection is None and kind == "repeat"
            assert_same(trace.ledger, trace.model)
            continue
        if kind == "ghost":
            env = envelope("no-such-run", c.SetFlowRunState(state=State(type=op[1])), command_id)
            answer = trace.ledger.decide(env, now)
            assert answer.rejection.code == "NOT_FOUND" and answer.events == [] and "no-such-run" not in trace.ledger.aggregates
            continue
        run_id = op[1]
        run = trace.model.runs[run_id]
        recorded = True
        if kind == "flow":
            payload = c.SetFlowRunState(state=State(type=op[2], message=f"#{i}"), version=pick_version(op[3], run.version))
            expect = trace.model.set_flow(run, op[2], payload.version)
        elif kind == "task":
            task_ids = sorted(run.tasks)
            task_id = task_ids[op[2] % len(task_ids)]
            version = pick_version(op[4], run.tasks[task_id][1])
            payload = c.SetTaskRunState(task_run_id=task_id, state=State(type=op[3]), version=version)
            expect = trace.model.set_task(run, task_id, op[3], version)
        elif kind == "cancel":
            payload, expect = c.CancelFlowRun(), trace.model.cancel(run)
        elif kind == "rename":
            payload, expect = c.RenameFlowRun(name=op[2]), Expect(True)
            run.name = op[2]
        elif kind == "heartbeat":
            payload, expect = c.RecordFlowRunHeartbeat(), Expect(True)
        else:  # map: get-or-create a mapped child of task t0
            key = ("t0", op[2])
            planned = PlannedTaskRun(task_run_id=f"{run_id}-child-{i}", task_id="t0", task_slug="t0-1", map_index=op[2])
            payload = c.GetOrCreateTaskRun(task_run=planned)
            existing = run.task_keys.get(key)
            expect = Expect(True, outcome={"task_run_id": existing or planned.task_run_id, "created": existing is None})
            if existing is None:
                run.task_keys[key] = planned.task_run_id
                run.tasks[planned.task_run_id] = ["Pending", 0]
            recorded = existing is None  # an existence no-op is not recorded: its answer cannot change
        env = envelope(run_id, payload, command_id)
        answer = trace.ledger.decide(env, now)
        check_answer(answer, expect)
        assert bool(answer.events) == recorded
        trace.log += answer.events
        trace.sent.append(Sent(env, answer, recorded))
        assert_same(trace.ledger, trace.model)
    return trace


# -- properties ----------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(operations, st.sampled_from([None, 1, 2]))
def test_every_verdict_and_state_matches_the_model_and_versions_never_repeat(ops, max_hot):
    """Also with at most ``max_hot`` runs kept as objects: the others are decoded again when used."""
    trace = run_operations(ops, max_hot)
    for run_id in RUNS:
        events = [env for env in trace.log if env.aggregate_id == run_id]
        assert [env.seq for env in events] == list(range(1, len(events) + 1))
        flow_versions = [env.payload.version for env in events if isinstance(env.payload, FlowRunStateSet)]
        assert flow_versions == list(range(1, len(flow_versions) + 1))  # 1..n: no gaps, no repeats
        assert flow_versions[-1] == trace.ledger.aggregates[run_id].version
        for task_id in trace.ledger.aggregates[run_id].task_runs:
            task_versions = [env.payload.version for env in events if isinstance(env.payload, TaskRunStateSet) and env.payload.task_run_id == task_id]
            assert task_versions == list(range(1, len(task_versions) + 1))
    # every accepted state change was answered with a distinct (subject, version)
    answered = [(s.answer.outcome.get("task_run_id") or s.answer.outcome["flow_run_id"], s.answer.outcome["version"])
                for s in trace.sent[len(RUNS):]
                if any(isinstance(env.payload, (FlowRunStateSet, TaskRunStateSet)) for env in s.answer.events)]  # fmt: skip
    assert len(answered) == len(set(answered))
    assert all(version >= 2 or subject not in RUNS for subject, version in answered)


def noisy_copy(log: list, rnd: random.Random) -> tuple[list, list[bool]]:
    """The log as a reader may see it: some records written twice (producer retries), later on."""
    noisy, firsts = [], []
    pending: list = []
    for env in log:
        noisy.append(env)
        firsts.append(True)
        if rnd.random() < 0.25:
            pending.append(env)
        while pending and rnd.random() < 0.5:
            noisy.append(pending.pop(rnd.randrange(len(pending))))
            firsts.append(False)
    for env in pending:
        noisy.append(env)
        firsts.append(False)
    return noisy, firsts


@settings(max_examples=150, deadline=None)
@given(operations, st.randoms(use_true_random=False))
def test_replaying_the_log_with_duplicates_rebuilds_the_same_ledger(ops, rnd):
    trace = run_operations(ops)
    noisy, firsts = noisy_copy(trace.log, rnd)
    rebuilt = Ledger()
    assert [rebuilt.replay(env) for env in noisy] == firsts
    assert rebuilt.aggregates == trace.ledger.aggregates  # every field, task runs and timestamps included
    assert_same(rebuilt, trace.model)
    # every recorded verdict survives: a redelivered command gets the answer its caller has
    for sent in trace.sent[len(RUNS):]:
        if not sent.recorded:
            continue
        again = rebuilt.decide(sent.envelope, at(10_000))
        assert again.duplicate and again.events == []
        assert (again.outcome, again.rejection) == (sent.answer.outcome, sent.answer.rejection)
    assert rebuilt.aggregates == trace.ledger.aggregates


@settings(max_examples=100, deadline=None)
@given(operations, st.randoms(use_true_random=False))
def test_the_projection_of_the_noisy_log_shows_the_models_state(ops, rnd):
    trace = run_operations(ops)
    noisy, firsts = noisy_copy(trace.log, rnd)
    projection, docs, changes = Projection(K), {}, Changes()
    assert [projection.apply(env, docs, changes) for env in noisy] == firsts
    for run_id, expected in trace.model.runs.items():
        doc = docs[K.flow_run(run_id)]
        assert (doc["state"]["type"], doc["version"], doc["name"]) == (expected.state, expected.version, expected.name)
        assert [s["version"] for s in doc["states"]] == list(range(1, expected.version + 1))
        assert sorted(doc["task_run_ids"]) == sorted(expected.tasks)
        assert doc["seq"] == trace.ledger.aggregates[run_id].seq
        for task_id, (state, version) in expected.tasks.items():
            task_doc = docs[K.task_run(task_id, run_id)]
            assert (task_doc["state"]["type"], task_doc["version"]) == (state, version)
            assert [s["version"] for s in task_doc["states"]] == list(range(1, version + 1))
        if expected.state in FINISHED:
            assert doc["end_time"] == doc["state"]["timestamp"]
        else:
            assert doc["end_time"] is None
        ran = [s["timestamp"] for s in doc["states"] if s["type"] == "Running"]
        assert doc["start_time"] == (ran[0] if ran else None)
