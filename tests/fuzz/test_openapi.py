"""Schemathesis against the OpenAPI document of the running ingress (the session stack: the app
needs Kafka, Redis and its lifespan, so it is fuzzed over HTTP, not in-process).

Stateless: every operation, every phase (examples, coverage, fuzzing), positive and negative
data, every check (no 5xx; every status, content type, header and body as documented; invalid
data refused, valid data accepted; 405 with the right ``Allow``). Stateful: the OpenAPI links of
``app.py`` (create project -> register flow -> create run -> set state / read / cancel ...).

Bounded and reproducible: ``RUNLEDGER_FUZZ_EXAMPLES`` examples per operation (default 6), a fixed
seed, derandomized. ``RUNLEDGER_FUZZ_URL=http://127.0.0.1:PORT`` fuzzes a stack that is already
running instead of starting one.

What a JSON Schema cannot say, and how it is handled here (each is documented on the operation):
a cursor is opaque (only one the API gave out is valid), so positive cases carry none; a GraphQL
document's validity is the GraphQL schema's business (``test_graphql.py``), so positive cases on
the GraphQL endpoints carry a valid one; parameter names, task ids and slugs of a registered flow
are unique and edges join its own tasks, so positive bodies are made so; a run's parameters must
fit its flow's, and log records must name existing runs: those two operations may answer 422 to
schema-valid data.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest
import schemathesis
from schemathesis.engine import Status, events
from hypothesis import HealthCheck, Phase, settings

from runledger.services.ingress.app import create_app
from runledger.settings import Settings

MAX_EXAMPLES = int(os.environ.get("RUNLEDGER_FUZZ_EXAMPLES", "6"))
SEED = 20_100_501
STATEFUL_SCENARIOS = int(os.environ.get("RUNLEDGER_FUZZ_SCENARIOS", "40"))

SEMANTIC_422 = ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]  # the default list, plus 422

CONFIG = {
    "seed": SEED,
    "cache": {"enabled": False},  # no state carried between runs: CI reproducible
    "request-timeout": 60,
    "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True},
    "checks": {"enabled": True},
    "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True}, "stateful": {"enabled": True}},
    "operations": [
        {"include-path": "/api/v1/flow_runs", "include-method": "POST", "checks": {"positive_data_acceptance": {"expected-statuses": SEMANTIC_422}}},
        {"include-path": "/api/v1/logs", "include-method": "POST", "checks": {"positive_data_acceptance": {"expected-statuses": SEMANTIC_422}}},
    ],
}

GRAPHQL_PATHS = {"/", "/graphql"}
CURSOR_PATHS = {"/api/v1/flow_runs", "/api/v1/flow_runs/{flow_run_id}/logs", "/api/v1/task_runs/{task_run_id}/logs"}


def _positive(case) -> bool:
    return case.meta is not None and case.meta.generation.mode.is_positive


def _unique_flow(body: dict) -> dict:
    """A registered flow's parameter names, task ids and slugs are unique; edges join its tasks."""
    seen: set = set()
    if isinstance(body.get("parameters"), list):
        body["parameters"] = [p for p in body["parameters"] if p.get("name") not in seen and not seen.add(p.get("name"))]
    ids: set = set()
    slugs: set = set()
    if isinstance(body.get("tasks"), list):
        body["tasks"] = [
            t for t in body["tasks"]
            if t.get("id") not in ids and t.get("slug") not in slugs and not ids.add(t.get("id")) and not slugs.add(t.get("slug"))
        ]
    if isinstance(body.get("edges"), list):
        body["edges"] = [e for e in body["edges"] if e.get("upstream_task_id") in ids and e.get("downstream_task_id") in ids]
    return body


def prepare(schema):
    schema = schema.exclude(path_regex=r"/watch$")  # an SSE stream: open until the run finishes

    @schema.hook
    def map_case(context, case):
        if not _positive(case):
            return case
        path, method = case.operation.path, case.method.upper()
        if path in CURSOR_PATHS and isinstance(case.query, dict):
            case.query.pop("cursor", None)
        if path in GRAPHQL_PATHS and method == "POST" and isinstance(case.body, dict):
            variables = case.body.get("variables")
            case.body = {"query": "query Fuzz { hello }", "operationName": "Fuzz"}
            if isinstance(variables, (dict, type(None))):
                case.body["variables"] = variables
            else:
                case.body["variables"] = json.dumps({"v": variables})
        if path == "/api/v1/flows" and method == "POST" and isinstance(case.body, dict):
            case.body = _unique_flow(case.body)
        return case

    return schema


@pytest.fixture(scope="module")
def api_url(request) -> str:
    return os.environ.get("RUNLEDGER_FUZZ_URL") or request.getfixturevalue("stack").api_url


# The document is the app's own (``create_app().openapi()`` needs no broker); the requests go to
# the stack. (Schemathesis's lazy ``from_fixture`` loader does not run on pytest 9.2.)
schema = prepare(schemathesis.openapi.from_dict(create_app(Settings()).openapi(), config=schemathesis.Config.from_dict(CONFIG)))
FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck), max_examples=MAX_EXAMPLES)


def test_the_stack_serves_this_document(api_url):
    assert httpx.get(api_url + "/openapi.json").json() == schema.raw_schema


@schema.parametrize()
@FUZZ
def test_operations(case, api_url):
    case.call_and_validate(base_url=api_url)


STATEFUL = {"examples": {"enabled": False}, "coverage": {"enabled": False}, "fuzzing": {"enabled": False}, "stateful": {"enabled": True, "max-steps": 10, "generation": {"max-examples": STATEFUL_SCENARIOS}}}


def test_stateful(api_url):
    """Scenarios along the links, run by Schemathesis's engine (as ``st run --phases stateful``):
    it treats a scenario the server's state made unreplayable as done, not as flaky, where a
    plain Hypothesis state machine would fail."""
    config = schemathesis.Config.from_dict({**CONFIG, "base-url": api_url, "phases": STATEFUL, "workers": 1})
    stateful = prepare(schemathesis.openapi.from_url(api_url + "/openapi.json", config=config))
    problems, steps = [], 0
    for event in schemathesis.engine.from_schema(stateful).execute():
        if isinstance(event, events.ScenarioFinished):
            steps += len(event.recorder.cases)
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE:
                        case = event.recorder.cases[case_id].value
                        problems.append(f"{check.failure_info.failure.title if check.failure_info else check.name}: {case.as_curl_command()}")
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            problems.append(repr(event.info if hasattr(event, "info") else event.exception))
    assert not problems, "\n".join(dict.fromkeys(problems))
    assert steps > 0
