"""Bad input: a clear 4xx naming the field and the reason, and nothing written."""

from __future__ import annotations

import pytest

from tests.integration.helpers import events_in_log


@pytest.fixture
def nothing_written(stack):
    before = events_in_log(stack)
    yield
    assert events_in_log(stack) == before, "a refused request wrote events"


def test_malformed_json(api, flow, nothing_written):
    r = api.post("/flow_runs", content=b'{"flow_id": ', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize(
    "body, loc",
    [
        ({"flow_id": 5}, ["body", "flow_id"]),
        ({"flow_id": "x", "parameters": [1, 2]}, ["body", "parameters"]),
        ({"flow_id": "x", "labels": "a"}, ["body", "labels"]),
        ({"flow_id": "x", "scheduled_start_time": "next tuesday"}, ["body", "scheduled_start_time"]),
        ({"flow_id": "x", "scheduled_start_time": "2030-13-45T00:00:00"}, ["body", "scheduled_start_time"]),
        ({"flow_id": "x", "surprise": 1}, ["body", "surprise"]),
        ({"flow_id": "x", "idempotency_key": ""}, ["body", "idempotency_key"]),
        ({"flow_id": "x", "scheduled_start_time": "0001-01-01T00:30:00+01:00"}, ["body", "scheduled_start_time"]),  # was a 500
        ({"flow_id": "x", "run_config": {"labels": 5}}, ["body", "run_config"]),  # was a 500
        ({"flow_id": "x", "run_config": {"labels": "gpu"}}, ["body", "run_config"]),  # was labels g, p, u
        ({"flow_id": "x", "labels": [f"l{n}" for n in range(101)]}, ["body", "labels"]),
        ({"flow_id": "x", "labels": ["x" * 201]}, ["body", "labels", 0]),
    ],
)
def test_wrong_types_and_bad_dates_name_the_field(api, body, loc, nothing_written):
    r = api.post("/flow_runs", json=body)
    assert r.status_code == 422, r.text
    assert any(e["loc"] == loc for e in r.json()["detail"]), r.json()


def test_nan_is_not_json_even_where_the_parser_takes_it(api, nothing_written):
    r = api.post("/flow_runs", content=b'{"flow_id": "x", "parameters": {"x": NaN}}', headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert any(e["loc"] == ["body", "parameters"] and "NaN" in e["msg"] for e in r.json()["detail"]), r.json()


def test_no_flow_reference(api, nothing_written):
    r = api.post("/flow_runs", json={"parameters": {}})
    assert r.status_code == 422 and "exactly one of flow_id" in r.json()["detail"][0]["msg"]


def test_unknown_ids(api, nothing_written):
    missing = "00000000-0000-0000-0000-000000000000"
    r = api.post("/flow_runs", json={"flow_id": missing})
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["body", "flow_id"]
    r = api.post("/flow_runs", json={"version_group_id": missing})
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["body", "version_group_id"]
    r = api.post("/flow_runs", json={"flow_name": "no-such-flow"})
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["body", "flow_name"]
    assert api.get(f"/flow_runs/{missing}").status_code == 404
    r = api.post(f"/flow_runs/{missing}/state", json={"state": {"type": "Running"}})
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["path", "flow_run_id"]
    assert api.post(f"/task_runs/{missing}/state", json={"state": {"type": "Running"}}).status_code == 404
    assert api.get(f"/flows/{missing}").status_code == 404
    r = api.post("/flows", json={"name": "f", "project_id": missing})
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["body", "project_id"]


def test_bad_states_and_versions(api, flow, nothing_written):
    missing = "00000000-0000-0000-0000-000000000000"
    r = api.post(f"/flow_runs/{missing}/state", json={"state": {"type": "Exploded"}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "state", "type"]
    r = api.post(f"/flow_runs/{missing}/state", json={"state": {"type": "Running"}, "version": "two"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "version"]


def test_oversized_bodies_and_fields(api, flow, nothing_written):
    r = api.post("/flow_runs", json={"flow_id": flow["id"], "parameters": {"who": "x" * 2_000_000}})
    assert r.status_code == 413 and r.json()["detail"][0]["loc"] == ["body"]
    assert "limit" in r.json()["detail"][0]["msg"]
    r = api.post("/flow_runs", json={"flow_id": flow["id"], "parameters": {"who": "x" * 300_000}})
    assert r.status_code == 413 and r.json()["detail"][0]["loc"] == ["body", "parameters"]
    chunks = (b"x" * 65536 for _ in range(40))  # chunked: no Content-Length to refuse early
    r = api.post("/flow_runs", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_bad_flow_registrations(api, project, nothing_written):
    r = api.post("/flows", json={"name": "f", "project_id": project["id"], "tasks": [{"id": "a", "slug": "s"}, {"id": "a", "slug": "t"}]})
    assert r.status_code == 422 and "duplicate task ids" in r.text
    r = api.post("/flows", json={"name": "f", "project_id": project["id"], "edges": [{"upstream_task_id": "a", "downstream_task_id": "b"}]})
    assert r.status_code == 422 and "unknown task id" in r.text
    r = api.post("/flows", json={"name": "", "project_id": project["id"]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "name"]
    r = api.post("/flows", json={"name": "f"})
    assert r.status_code == 422 and "project_id or project_name" in r.text


def test_a_refused_idempotent_create_leaves_no_key(api, flow, redis_client, nothing_written):
    r = api.post("/flow_runs", json={"flow_id": flow["id"], "idempotency_key": "refused"})
    assert r.status_code == 422
    assert redis_client.keys("rl:idem:*refused") == []


def test_log_batches_get_their_own_body_limit(api, flow):
    """A 2 MB log batch (Prefect batches up to 4 MB) is not refused by the 1 MiB body limit of the
    other endpoints; a 5 MB one is, naming the log-batch limit."""
    run = api.post("/flow_runs", json={"flow_id": flow["id"], "parameters": {"who": "logs"}}).json()
    lines = [{"flow_run_id": run["id"], "level": "INFO", "name": "big", "message": "x" * 700_000} for _ in range(3)]
    r = api.post("/logs", json={"logs": lines})
    assert r.status_code == 200, r.text[:300]
    r = api.post("/logs", json={"logs": lines * 3})
    assert r.status_code == 413
    assert "limit of 4065536 bytes" in r.json()["detail"][0]["msg"]
