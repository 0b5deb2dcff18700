"""``flow.register()`` / ``Client.register()`` (pure): a flow registered without its tasks, then its
tasks and edges in batches through the registry's single writer; the registration's schedule
switch; task-run artifacts in the flow run's log; and what the projection and the snapshots make
of them."""

from __future__ import annotations

import copy

import pytest

from runledger.domain.decisions import Accepted, Rejected
from runledger.domain.flow_run import FlowRun
from runledger.domain.ledger import Ledger
from runledger.domain.registry import Registry, extended
from runledger.domain.aggregate_store import decode_aggregate, encode_aggregate
from runledger.messages import commands as c
from runledger.messages import events as e
from runledger.prefect.flows import SerializedFlowError, flow_definition, serialized_edges, serialized_tasks, task_id_for
from runledger.readmodel.keys import Keys
from runledger.readmodel.projection import Changes, Projection
from runledger.topics import REGISTRY_AGGREGATE
from tests.unit.factories import T0, at, envelope, spec
from tests.unit.test_registration import SERIALIZED

K = Keys("rl", 8)
SCHEDULE = {"type": "Schedule", "clocks": [{"type": "IntervalClock", "interval": 3600000000, "start_date": None}]}


def without_tasks(serialized=SERIALIZED, **changes) -> dict:
    """What Client.register() sends first: the flow with ``tasks`` and ``edges`` taken out."""
    flow = {k: v for k, v in copy.deepcopy(serialized).items() if k not in ("tasks", "edges")}
    return {**flow, **changes}


def step(registry: Registry, command):
    before = copy.deepcopy(registry)
    decision = registry.handle(command, T0)
    assert registry == before, "handle must not change the aggregate"
    if isinstance(decision, Accepted):
        for event in decision.events:
            registry.apply(event)
    return decision


def registry_with_project() -> Registry:
    registry = Registry()
    step(registry, c.CreateProject(project_id="p1", name="demo"))
    return registry


def register_open(registry: Registry, flow_id="f1", schedule_active=False, **changes):
    flow = flow_definition(without_tasks(**changes), flow_id=flow_id, project_id="p1", version_group_id="g-" + flow_id)
    return step(registry, c.RegisterFlow(flow=flow, tasks_follow=True, schedule_active=schedule_active))


TASKS = serialized_tasks(copy.deepcopy(SERIALIZED["tasks"]), "f1")
EDGES = [spec_ for _, _, spec_ in serialized_edges(copy.deepcopy(SERIALIZED["edges"]), "f1")]


# -- parsing the batches ---------------------------------------------------------------------------
def test_batches_parse_like_the_flow_they_were_taken_from():
    whole = flow_definition(copy.deepcopy(SERIALIZED), flow_id="f1", project_id="p1", version_group_id="g1")
    assert [t.model_copy(update={"mapped": False}) for t in whole.tasks] == TASKS  # mapped follows from the edges
    assert EDGES == whole.edges
    staged = flow_definition(without_tasks(), flow_id="f1", project_id="p1", version_group_id="g1")
    assert staged.tasks == [] and staged.edges == [] and "tasks" not in staged.serialized_flow
    ups = serialized_edges(copy.deepcopy(SERIALIZED["edges"]), "f1")
    assert [(up, down) for up, down, _ in ups] == [("say_hello-1", "shout-1"), ("who", "say_hello-1")]
    assert ups[0][2].upstream_task_id == task_id_for("f1", "say_hello-1")


@pytest.mark.parametrize(
    "parse, value, message",
    [
        (serialized_tasks, {"slug": "a"}, "serialized_tasks: expected a list"),
        (serialized_tasks, [{"name": "x"}], "serialized_tasks.0: a task is named by its slug"),
        (serialized_tasks, [{"slug": "a"}, {"slug": "a"}], "serialized_tasks: duplicate slug 'a'"),
        (serialized_tasks, [{"slug": "a", "max_retries": -1}], "serialized_tasks.0.max_retries"),
        (serialized_edges, [{"upstream_task": {"slug": "a"}}], "serialized_edges.0.downstream_task: a task is named by its slug"),
        (serialized_edges, [{"upstream_task": "a", "downstream_task": "b", "key": 3}], "serialized_edges.0.key: must be a string"),
    ],
)
def test_a_bad_batch_is_refused_naming_the_field(parse, value, message):
    with pytest.raises(SerializedFlowError, match=message.replace(".", r"\.")):
        parse(value, "f1")


# -- the registry: an open flow grows, append-only ----------------------------------------------------
def test_an_open_flow_takes_its_tasks_in_batches_then_its_edges():
    registry = registry_with_project()
    assert register_open(registry).events[0].tasks_follow
    first = step(registry, c.RegisterTasks(flow_id="f1", tasks=TASKS[:2]))
    second = step(registry, c.RegisterTasks(flow_id="f1", tasks=TASKS[1:]))  # overlaps: only the new one is recorded
    assert first.outcome == {"flow_id": "f1", "added": 2} and second.outcome == {"flow_id": "f1", "added": 1}
    assert [t.slug for t in second.events[0].tasks] == ["who"]
    edges = step(registry, c.RegisterEdges(flow_id="f1", edges=EDGES))
    assert edges.outcome == {"flow_id": "f1", "added": 2}
    shape = registry.shapes["f1"]
    assert set(shape.tasks) == {t.id for t in TASKS} and len(shape.edges) == 2


def test_repeats_are_no_ops_and_a_changed_definition_is_refused():
    registry = registry_with_project()
    register_open(registry)
    step(registry, c.RegisterTasks(flow_id="f1", tasks=TASKS))
    step(registry, c.RegisterEdges(flow_id="f1", edges=EDGES))
    again = step(registry, c.RegisterTasks(flow_id="f1", tasks=TASKS))
    assert isinstance(again, Accepted) and again.events == [] and again.outcome["added"] == 0
    assert step(registry, c.RegisterEdges(flow_id="f1", edges=EDGES)).events == []
    changed = TASKS[1].model_copy(update={"max_retries": 9})
    refused = step(registry, c.RegisterTasks(flow_id="f1", tasks=[TASKS[0], changed]))
    assert isinstance(refused, Rejected) and refused.rejection.code == "CONFLICT"
    assert refused.rejection.field == "serialized_tasks.1" and "'shout-1'" in refused.rejection.message
    flipped = step(registry, c.RegisterEdges(flow_id="f1", edges=[EDGES[0].model_copy(update={"mapped": True})]))
    assert isinstance(flipped, Rejected) and flipped.rejection.field == "serialized_edges.0"
    inside = step(registry, c.RegisterTasks(flow_id="f1", tasks=[changed, changed.model_copy(update={"max_retries": 1})]))
    assert isinstance(inside, Rejected)  # the same slug twice in one batch, differently


def test_edges_need_their_tasks_and_unknown_flows_are_not_found():
    registry = registry_with_project()
    register_open(registry)
    step(registry, c.RegisterTasks(flow_id="f1", tasks=TASKS[:1]))
    early = step(registry, c.RegisterEdges(flow_id="f1", edges=EDGES))
    assert isinstance(early, Rejected) and early.rejection.code == "INVALID"
    assert early.rejection.field == "serialized_edges.0.downstream_task"
    for command in (c.RegisterTasks(flow_id="nope", tasks=TASKS), c.RegisterEdges(flow_id="nope", edges=EDGES)):
        missing = step(registry, command)
        assert isinstance(missing, Rejected) and missing.rejection.code == "NOT_FOUND" and missing.rejection.field == "flow_id"


def test_a_flow_registered_with_its_tasks_takes_only_what_it_has():
    registry = registry_with_project()
    whole = flow_definition(copy.deepcopy(SERIALIZED), flow_id="f1", project_id="p1", version_group_id="g1")
    step(registry, c.RegisterFlow(flow=whole))
    same = step(registry, c.RegisterTasks(flow_id="f1", tasks=TASKS))  # the idempotency-key repeat of flow.register()
    assert isinstance(same, Accepted) and same.events == []
    assert step(registry, c.RegisterEdges(flow_id="f1", edges=EDGES)).events == []
    extra = serialized_tasks([{"slug": "tidy_up-1", "name": "tidy_up"}], "f1")
    refused = step(registry, c.RegisterTasks(flow_id="f1", tasks=extra))
    assert isinstance(refused, Rejected) and refused.rejection.code == "CONFLICT"
    assert "never changes" in refused.rejection.message and refused.rejection.field == "serialized_tasks.0"


def test_an_open_flow_with_its_tasks_and_edges_is_the_whole_flow():
    """What readers that keep definitions (the scheduler) and the projection make of the events."""
    registry = registry_with_project()
    flow = register_open(registry).events[0].flow
    for command in (c.RegisterTasks(flow_id="f1", tasks=TASKS), c.RegisterEdges(flow_id="f1", edges=EDGES)):
        for event in step(registry, command).events:
            flow = extended(flow, event)
    whole = flow_definition(copy.deepcopy(SERIALIZED), flow_id="f1", project_id="p1", version_group_id="g-f1")
    assert (flow.tasks, flow.edges) == (whole.tasks, whole.edges)  # mapped included

    ledger, log = Ledger(), []
    whole_open = flow_definition(without_tasks(), flow_id="f1", project_id="p1", version_group_id="g-f1")
    for command in (
        c.CreateProject(project_id="p1", name="demo"),
        c.RegisterFlow(flow=whole_open, tasks_follow=True),
        c.RegisterTasks(flow_id="f1", tasks=TASKS),
        c.RegisterEdges(flow_id="f1", edges=EDGES),
    ):
        log += ledger.decide(envelope(REGISTRY_AGGREGATE, command), T0).events
    docs, changes = {}, Changes()
    for env in log:
        Projection(K).apply(env, docs, changes)
    doc = docs[K.flow("f1")]
    assert doc["tasks"] == [t.model_dump(mode="json") for t in whole.tasks]
    assert doc["edges"] == [x.model_dump(mode="json") for x in whole.edges]

    replayed = Ledger()
    for env in log:
        replayed.replay(env)
    assert replayed.aggregates[REGISTRY_AGGREGATE] == ledger.aggregates[REGISTRY_AGGREGATE]
    restored = decode_aggregate(REGISTRY_AGGREGATE, encode_aggregate(ledger.aggregates[REGISTRY_AGGREGATE]))
    assert restored == ledger.aggregates[REGISTRY_AGGREGATE]


def test_a_registry_snapshot_from_before_shapes_still_restores():
    registry = registry_with_project()
    register_open(registry, schedule_active=None)
    raw = encode_aggregate(registry)
    import orjson

    old = orjson.loads(raw)
    del old["shapes"]
    for group in old["groups"]:
        del group["schedule_active"]
    restored = decode_aggregate(REGISTRY_AGGREGATE, orjson.dumps(old))
    assert restored.shapes == {}
    closed = step(restored, c.RegisterTasks(flow_id="f1", tasks=TASKS))  # unknown shape: closed
    assert isinstance(closed, Rejected) and closed.rejection.code == "CONFLICT"


# -- the registration's schedule switch -------------------------------------------------------------------
def test_the_registration_sets_the_groups_schedule_switch_when_the_flow_has_a_schedule():
    registry = registry_with_project()
    off = register_open(registry, "f1", schedule_active=False, schedule=SCHEDULE)
    assert off.events[0].schedule_active is False and registry.groups["g-f1"].schedule_active is False
    flow = flow_definition(without_tasks(schedule=SCHEDULE), flow_id="f2", project_id="p1", version_group_id="x")
    on = step(registry, c.RegisterFlow(flow=flow, schedule_active=True))  # the next version, switched on
    assert on.events[0].schedule_active is True and registry.groups["g-f1"].schedule_active is True
    flow3 = flow.model_copy(update={"id": "f3"})
    assert step(registry, c.RegisterFlow(flow=flow3, schedule_active=True)).events[0].schedule_active is None  # already on
    plain = register_open(registry, "f4", schedule_active=False, name="other")  # no schedule: nothing to switch
    assert plain.events[0].schedule_active is None and registry.groups["g-f4"].schedule_active is None
    step(registry, c.UpdateFlowGroup(flow_group_id="g-f1", changes={"schedule_active": False}))  # the mutation
    assert registry.groups["g-f1"].schedule_active is False


def test_the_projection_shows_the_switch_on_the_flow_group():
    ledger, log = Ledger(), []
    flow = flow_definition(without_tasks(schedule=SCHEDULE), flow_id="f1", project_id="p1", version_group_id="g1")
    for command in (c.CreateProject(project_id="p1", name="demo"), c.RegisterFlow(flow=flow, tasks_follow=True, schedule_active=False)):
        log += ledger.decide(envelope(REGISTRY_AGGREGATE, command), T0).events
    docs, changes = {}, Changes()
    for env in log:
        Projection(K).apply(env, docs, changes)
    assert docs[K.flow_group("g1")]["schedule_active"] is False


# -- task-run artifacts ---------------------------------------------------------------------------------
def run_step(run: FlowRun, command):
    before = copy.deepcopy(run)
    decision = run.handle(command, T0)
    assert run == before
    if isinstance(decision, Accepted):
        for event in decision.events:
            run.apply(event)
    return decision


def test_artifacts_are_created_once_updated_and_deleted_while_they_exist():
    run = FlowRun(id="run-1")
    run_step(run, c.CreateFlowRun(spec=spec("run-1", 1)))
    create = c.CreateTaskRunArtifact(artifact_id="a1", task_run_id="run-1-tr0", kind="link", data={"link": "x"})
    made = run_step(run, create)
    assert made.outcome == {"artifact_id": "a1", "task_run_id": "run-1-tr0", "flow_run_id": "run-1", "created": True}
    assert run_step(run, create).events == []  # the same id again: a no-op
    orphan = run_step(run, c.CreateTaskRunArtifact(artifact_id="a2", task_run_id="nope", kind="link"))
    assert isinstance(orphan, Rejected) and orphan.rejection.field == "task_run_id"
    updated = run_step(run, c.UpdateTaskRunArtifact(artifact_id="a1", data={"link": "y"}))
    assert updated.events == [e.TaskRunArtifactUpdated(artifact_id="a1", task_run_id="run-1-tr0", data={"link": "y"})]
    assert decode_aggregate("run-1", encode_aggregate(run)) == run
    run_step(run, c.DeleteTaskRunArtifact(artifact_id="a1"))
    for command in (c.UpdateTaskRunArtifact(artifact_id="a1", data={}), c.DeleteTaskRunArtifact(artifact_id="a1")):
        gone = run_step(run, command)
        assert isinstance(gone, Rejected) and gone.rejection.code == "NOT_FOUND" and gone.rejection.field == "task_run_artifact_id"


def test_artifacts_project_to_documents_in_their_runs_partition():
    ledger, log = Ledger(), []
    for i, command in enumerate(
        [
            c.CreateFlowRun(spec=spec("run-1", 1)),
            c.CreateTaskRunArtifact(artifact_id="a1", task_run_id="run-1-tr0", kind="markdown", data={"markdown": "# hi"}),
            c.CreateTaskRunArtifact(artifact_id="a2", task_run_id="run-1-tr0", kind="link", data={"link": "x"}),
            c.UpdateTaskRunArtifact(artifact_id="a1", data={"markdown": "# bye"}),
            c.DeleteTaskRunArtifact(artifact_id="a2"),
        ]
    ):
        log += ledger.decide(envelope("run-1", command), at(i)).events
    docs, changes = {}, Changes()
    for env in log:
        Projection(K).apply(env, docs, changes)
    a1 = docs[K.task_run_artifact("a1", "run-1")]
    assert K.task_run_artifact("a1", "run-1").startswith(K.tag(K.partition("run-1")))
    assert (a1["kind"], a1["data"], a1["task_run_id"], a1["flow_run_id"]) == ("markdown", {"markdown": "# bye"}, "run-1-tr0", "run-1")
    assert (a1["created"], a1["updated"]) == (at(1).isoformat(), at(3).isoformat())
    assert docs[K.task_run_artifact("a2", "run-1")]["deleted"] is True
    assert docs[K.task_run("run-1-tr0", "run-1")]["artifact_ids"] == ["a1"]


def test_a_schedule_with_required_parameters_no_clock_gives_stays_off():
    """Prefect Server: such a schedule cannot be switched on (the registration leaves it off, the
    switch is refused) unless the flow group's default parameters give them."""
    registry = registry_with_project()
    needs_who = [{"slug": "who", "name": "who", "default": None, "required": True}]
    flow = flow_definition(without_tasks(schedule=SCHEDULE, parameters=needs_who), flow_id="f1", project_id="p1", version_group_id="g1")
    registered = step(registry, c.RegisterFlow(flow=flow, schedule_active=True))
    assert registered.events[0].schedule_active is False and registry.shapes["f1"].unscheduled == ["who"]
    refused = step(registry, c.UpdateFlowGroup(flow_group_id="g1", changes={"schedule_active": True}))
    assert isinstance(refused, Rejected) and refused.rejection.code == "INVALID" and refused.rejection.field == "schedule_active"
    assert refused.rejection.message.startswith("Can not schedule a flow that has required parameters") and "'who'" in refused.rejection.message
    step(registry, c.UpdateFlowGroup(flow_group_id="g1", changes={"default_parameters": {"who": "marvin"}}))
    assert isinstance(step(registry, c.UpdateFlowGroup(flow_group_id="g1", changes={"schedule_active": True})), Accepted)
    assert registry.groups["g1"].schedule_active is True
    restored = decode_aggregate(REGISTRY_AGGREGATE, encode_aggregate(registry))
    assert restored == registry
    with_defaults = {**SCHEDULE, "clocks": [{**SCHEDULE["clocks"][0], "parameter_defaults": {"who": "x"}}]}
    given = flow_definition(without_tasks(schedule=with_defaults, parameters=needs_who, name="n2"), flow_id="f2", project_id="p1",
                            version_group_id="g2")
    fresh = registry_with_project()
    assert step(fresh, c.RegisterFlow(flow=given, schedule_active=False)).events[0].schedule_active is False
    assert fresh.shapes["f2"].unscheduled == []
    assert isinstance(step(fresh, c.UpdateFlowGroup(flow_group_id="g2", changes={"schedule_active": True})), Accepted)
