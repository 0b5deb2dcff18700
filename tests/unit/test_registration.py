"""Prefect 1.x registrations (pure): serialized flows as flow definitions, the registry's
versioning and idempotency for them, the additive FlowDefinition fields, and idempotent repeats
that ask for other parameters."""

from __future__ import annotations

import base64
import copy
import gzip
import json
from datetime import datetime, timezone

import pytest

from runledger.api_models import CreateFlowRunRequest
from runledger.domain.decisions import Accepted, Rejected
from runledger.domain.idempotency import check_repeat, differing_fields
from runledger.domain.registry import UNIQUENESS, Registry
from runledger.domain.run_requests import RequestError, resolve_flow_run
from runledger.messages import commands as c
from runledger.messages import events as e
from runledger.messages.models import FlowDefinition
from runledger.prefect.flows import SerializedFlowError, decompress, flow_definition, task_id_for

NOW = datetime(2026, 3, 1, tzinfo=timezone.utc)


def task(slug: str, **extra) -> dict:
    return {
        "slug": slug, "name": slug.split("-")[0], "type": "prefect.tasks.core.function.FunctionTask", "max_retries": 0,
        "retry_delay": None, "tags": [], "trigger": {"fn": "prefect.triggers.all_successful", "kwargs": {}}, "__version__": "1.4.1",
        **extra,
    }


def edge(up: str, down: str, key: str, mapped: bool = False) -> dict:
    return {"upstream_task": {"slug": up, "__version__": "1.4.1"}, "downstream_task": {"slug": down, "__version__": "1.4.1"},
            "key": key, "mapped": mapped, "flattened": False, "__version__": "1.4.1"}


# What prefect 1.4.1's Flow.serialize() gives for the tests' hello-world flow (trimmed).
SERIALIZED = {
    "name": "hello-world",
    "type": "prefect.core.flow.Flow",
    "schedule": None,
    "parameters": [{"slug": "who", "name": "who", "default": "world", "required": False, "type": "prefect.core.parameter.Parameter"}],
    "tasks": [task("say_hello-1"), task("shout-1", max_retries=2, retry_delay=5, tags=["b", "a"]), task("who", type="prefect.core.parameter.Parameter")],
    "edges": [edge("say_hello-1", "shout-1", "text"), edge("who", "say_hello-1", "who", mapped=True)],
    "reference_tasks": [],
    "run_config": {"type": "UniversalRun", "labels": ["vm"], "env": {}, "__version__": "1.4.1"},
    "storage": {"type": "Local", "path": "/flows/flow.py", "stored_as_script": True, "flows": {}, "secrets": [], "__version__": "1.4.1"},
    "__version__": "1.4.1",
}


def compress(value) -> str:
    return base64.b64encode(gzip.compress(json.dumps(value).encode())).decode()


def definition(serialized=SERIALIZED, flow_id="f1", group="g1", key=None, project="p1") -> FlowDefinition:
    return flow_definition(copy.deepcopy(serialized), flow_id=flow_id, project_id=project, version_group_id=group, idempotency_key=key)


# -- serialized flows ------------------------------------------------------------------------
def test_a_serialized_flow_becomes_a_definition_with_task_ids_from_slugs():
    flow = definition()
    ids = {t.slug: t.id for t in flow.tasks}
    assert ids == {slug: task_id_for("f1", slug) for slug in ("say_hello-1", "shout-1", "who")}
    assert len(set(ids.values())) == 3 and task_id_for("f2", "who") != ids["who"]
    shout = next(t for t in flow.tasks if t.slug == "shout-1")
    assert (shout.max_retries, shout.retry_delay_seconds, shout.tags, shout.trigger) == (2, 5.0, ["a", "b"], "prefect.triggers.all_successful")
    assert [t.mapped for t in flow.tasks] == [True, False, False]  # an edge into say_hello-1 is mapped
    assert [(e.upstream_task_id, e.downstream_task_id, e.key) for e in flow.edges] == [
        (ids["say_hello-1"], ids["shout-1"], "text"),
        (ids["who"], ids["say_hello-1"], "who"),
    ]
    assert [(p.name, p.default, p.required) for p in flow.parameters] == [("who", "world", False)]
    assert flow.run_config == SERIALIZED["run_config"] and flow.storage == SERIALIZED["storage"]
    assert flow.core_version == "1.4.1" and flow.version == 0 and flow.environment is None
    assert flow.serialized_flow == SERIALIZED


@pytest.mark.parametrize(
    "change, message",
    [
        ({"name": None}, "a flow needs a name"),
        ({"tasks": [task("a-1"), task("a-1")]}, "duplicate slug 'a-1'"),
        ({"edges": [edge("say_hello-1", "nope", "x")]}, "unknown task slug 'nope'"),
        ({"tasks": ["not a task"]}, "tasks.0: expected an object"),
        ({"parameters": [{"slug": "a", "name": "a"}, {"slug": "a", "name": "a"}]}, "duplicate names"),
        ({"parameters": [{"slug": "", "name": ""}]}, "parameters.0.name"),
    ],
)
def test_a_serialized_flow_we_cannot_register_is_refused_by_name(change, message):
    with pytest.raises(SerializedFlowError, match=message.replace(".", r"\.").replace("(", r"\(")):
        definition({**SERIALIZED, **change})


def test_decompress_undoes_prefects_compress_and_refuses_bad_or_huge_input():
    assert decompress(compress(SERIALIZED), 100_000) == SERIALIZED
    with pytest.raises(SerializedFlowError, match="not base64"):
        decompress("%%%", 1000)
    with pytest.raises(SerializedFlowError, match="not gzip"):
        decompress(base64.b64encode(b"plain").decode(), 1000)
    with pytest.raises(SerializedFlowError, match="not JSON"):
        decompress(base64.b64encode(gzip.compress(b"{nope")).decode(), 1000)
    with pytest.raises(SerializedFlowError, match="expected a JSON object"):
        decompress(compress([1]), 1000)
    bomb = base64.b64encode(gzip.compress(b'{"a": "' + b"x" * 5_000_000 + b'"}')).decode()
    assert len(bomb) < 20_000
    with pytest.raises(SerializedFlowError, match="more than 100000 bytes"):
        decompress(bomb, 100_000)
    truncated = base64.b64encode(gzip.compress(json.dumps(SERIALIZED).encode())[:-12]).decode()
    with pytest.raises(SerializedFlowError):
        decompress(truncated, 100_000)


# -- the additive FlowDefinition fields ----------------------------------------------------------
def test_unset_additions_are_left_out_so_old_flows_project_the_same():
    old = FlowDefinition(id="f", name="n", project_id="p", version=1, version_group_id="g")
    assert "serialized_flow" not in old.model_dump(mode="json") and "environment" not in old.model_dump()
    new = definition()
    dumped = new.model_dump(mode="json")
    assert dumped["serialized_flow"] == SERIALIZED and "environment" not in dumped
    assert FlowDefinition.model_validate(dumped) == new
    event = e.FlowRegistered(flow=new)
    assert e.FlowRegistered.model_validate_json(event.model_dump_json()) == event


# -- the registry decides versions -----------------------------------------------------------
def step(registry: Registry, command) -> Accepted | Rejected:
    decision = registry.handle(command, NOW)
    if isinstance(decision, Accepted):
        for event in decision.events:
            registry.apply(event)
    return decision


def test_registering_again_skips_on_the_same_key_and_versions_otherwise():
    registry = Registry()
    step(registry, c.CreateProject(project_id="p1", name="demo"))
    first = step(registry, c.RegisterFlow(flow=definition(flow_id="f1", group="g1", key="k1")))
    assert first.outcome == {"flow_id": "f1", "created": True, "version": 1, "version_group_id": "g1"}
    # The same key, a new proposed id and group: the group is found by name, the flow is skipped.
    skipped = step(registry, c.RegisterFlow(flow=definition(flow_id="f2", group="g2", key="k1")))
    assert isinstance(skipped, Accepted) and skipped.events == [] and skipped.outcome["flow_id"] == "f1"
    second = step(registry, c.RegisterFlow(flow=definition(flow_id="f3", group="g3", key="k2")))
    assert second.outcome == {"flow_id": "f3", "created": True, "version": 2, "version_group_id": "g1"}
    assert second.events[0].archived_flow_ids == ["f1"] and registry.archived == {"f1": True, "f3": False}
    # Back to the first key: it is no longer the group's last, so this is a new version.
    third = step(registry, c.RegisterFlow(flow=definition(flow_id="f4", group="g4", key="k1")))
    assert third.outcome["version"] == 3 and third.events[0].flow.serialized_flow == SERIALIZED
    # Another project: its own group.
    step(registry, c.CreateProject(project_id="p2", name="other"))
    elsewhere = step(registry, c.RegisterFlow(flow=definition(flow_id="f5", group="g5", key="k1", project="p2")))
    assert elsewhere.outcome == {"flow_id": "f5", "created": True, "version": 1, "version_group_id": "g5"}


def test_a_duplicate_project_is_exactly_the_message_prefects_client_looks_for():
    registry = Registry()
    step(registry, c.CreateProject(project_id="p1", name="demo"))
    duplicate = step(registry, c.CreateProject(project_id="p2", name="demo"))
    assert isinstance(duplicate, Rejected) and duplicate.rejection.message == UNIQUENESS == "Uniqueness violation."
    # prefect/client/client.py create_project: `"'Uniqueness violation.'" in str(exc)`
    assert "'Uniqueness violation.'" in str([{"message": duplicate.rejection.message}])


# -- idempotent repeats that ask for something else ------------------------------------------
def spec_for(parameters=None, context=None):
    request = CreateFlowRunRequest(flow_id="f1", parameters=parameters, context=context, idempotency_key="K")
    return resolve_flow_run(definition(), False, None, request, "run-1", NOW)


def test_a_repeat_is_compared_on_resolved_parameters_and_context():
    original = {"id": "run-1", **spec_for({"who": "marvin"}, {"a": 1}).model_dump(mode="json")}
    assert differing_fields(original, spec_for({"who": "marvin"}, {"a": 1})) == []
    assert differing_fields(original, spec_for({"who": "arthur"}, {"a": 1})) == ["parameters"]
    assert differing_fields(original, spec_for({"who": "marvin"})) == ["context"]
    # Defaults are merged before comparing: asking for the default explicitly is the same run.
    plain = {"id": "run-2", **spec_for().model_dump(mode="json")}
    assert differing_fields(plain, spec_for({"who": "world"})) == []
    check_repeat("K", original, spec_for({"who": "marvin"}, {"a": 1}))
    with pytest.raises(RequestError) as refused:
        check_repeat("K", original, spec_for({"who": "arthur"}))
    assert refused.value.status == 422
    [error] = refused.value.errors
    assert error.loc == ("body", "idempotency_key") and error.type == "idempotency_conflict"
    assert "idempotency key 'K' already names flow run run-1" in error.msg and "parameters and context" in error.msg
