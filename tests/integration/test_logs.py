"""Logs: write over REST and GraphQL, read back ordered and filtered with cursor paging, refusals
(invalid record, unknown run, limits), redelivery without duplicates, a kill -9 of the log service
mid-stream without losing an acknowledged line, and a rebuild of the store from the topic.

On a stack of its own that also runs the log service (``logs_stack``, shared with test_watch and
the CLI watch test), so nothing depends on devstack's default service list."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest
import redis as redis_sync

from runledger.services.devstack import Stack

SERVICES = ("transitions", "projector", "ingress", "logs")
MAX_MESSAGE = 4096


@pytest.fixture(scope="session")
def logs_stack():
    s = Stack(
        own_redis=True,
        partitions=2,
        extra_env={
            "RUNLEDGER_LOGS_WATCH_END_GRACE_SECONDS": "0.3",
            "RUNLEDGER_LOGS_MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
            "RUNLEDGER_LOGS_MAX_BATCH_BYTES": "200000",
        },
    )
    try:
        s.start(services=SERVICES)
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def lapi(logs_stack):
    with httpx.Client(base_url=logs_stack.api_url + "/api/v1", timeout=60) as client:
        yield client


def new_run(client: httpx.Client, **body) -> dict:
    project = client.post("/projects", json={"name": f"p-{uuid.uuid4().hex[:8]}"}).json()
    flow = client.post(
        "/flows",
        json={"name": f"f-{uuid.uuid4().hex[:8]}", "project_id": project["id"], "tasks": [{"id": "t1", "slug": "t1-1", "name": "say"}]},
    ).json()
    run = client.post("/flow_runs", json={"flow_id": flow["id"], **body})
    assert run.status_code == 201, run.text
    return run.json()


def wait_for(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def read_all(client: httpx.Client, run_id: str, **params) -> list[dict]:
    out, cursor = [], None
    while True:
        page = client.get(f"/flow_runs/{run_id}/logs", params={**params, **({"cursor": cursor} if cursor else {})}).json()
        out += page["logs"]
        cursor = page["next_cursor"]
        if cursor is None:
            return out


def wait_lines(client, run_id, n, **params) -> list[dict]:
    return wait_for(lambda: (lines := read_all(client, run_id, **params)) and len(lines) >= n and lines)


def test_write_then_read_ordered_filtered_and_paged(lapi):
    run = new_run(lapi)
    rid = run["id"]
    records = [
        {"flow_run_id": rid, "timestamp": "2024-05-01T10:00:03Z", "level": "INFO", "name": "a", "message": "third"},
        {"flow_run_id": rid, "timestamp": "2024-05-01T10:00:01Z", "level": "DEBUG", "name": "a", "message": "first"},
        {"flow_run_id": rid, "timestamp": "2024-05-01T12:00:02+02:00", "level": "ERROR", "name": "a", "message": "second", "info": {"k": [1, 2]}},
        {"flow_run_id": rid, "timestamp": "2024-05-01T10:00:03Z", "level": "WARNING", "name": "a", "message": "third-b (same time, later arrival)"},
    ]
    r = lapi.post("/logs", json={"logs": records})
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "accepted": 4, "refused": 0}
    lines = wait_lines(lapi, rid, 4)
    assert [l["message"] for l in lines] == ["first", "second", "third", "third-b (same time, later arrival)"]
    assert lines[1]["info"] == {"k": [1, 2]} and lines[1]["level"] == "ERROR" and lines[1]["flow_run_id"] == rid
    # filters
    assert [l["message"] for l in read_all(lapi, rid, level="ERROR,WARNING")] == ["second", "third-b (same time, later arrival)"]
    assert [l["message"] for l in read_all(lapi, rid, min_level="WARNING")] == ["second", "third-b (same time, later arrival)"]
    assert [l["message"] for l in read_all(lapi, rid, after="2024-05-01T10:00:01Z", before="2024-05-01T10:00:03Z")] == ["second"]
    assert [l["message"] for l in read_all(lapi, rid, since="2024-05-01T10:00:01Z", until="2024-05-01T10:00:02Z")] == ["first", "second"]
    assert [l["message"] for l in read_all(lapi, rid, order="desc")][0] == "third-b (same time, later arrival)"
    # cursor paging: one line per page, nothing lost or repeated
    paged, cursor, pages = [], None, 0
    while True:
        page = lapi.get(f"/flow_runs/{rid}/logs", params={"limit": 1, **({"cursor": cursor} if cursor else {})}).json()
        paged += page["logs"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [l["id"] for l in paged] == [l["id"] for l in lines] and pages >= 4
    bad = lapi.get(f"/flow_runs/{rid}/logs", params={"cursor": "garbage"})  # as GET /flow_runs answers a bad cursor
    assert bad.status_code == 400 and bad.json()["detail"][0]["type"] == "invalid_cursor", bad.text
    assert lapi.get(f"/flow_runs/{uuid.uuid4()}/logs").status_code == 404


def test_agent_lines_without_timestamp_or_level_get_now_and_info(lapi):
    rid = new_run(lapi)["id"]
    before = time.time()
    assert lapi.post("/logs", json={"flow_run_id": rid, "name": "agent", "message": "Submitted"}).status_code == 200  # one object
    (line,) = wait_lines(lapi, rid, 1)
    assert line["level"] == "INFO"
    from datetime import datetime

    assert abs(datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp() - before) < 30


def test_task_run_logs(lapi):
    rid = new_run(lapi)["id"]
    task_run_id = lapi.get(f"/flow_runs/{rid}/task_runs").json()[0]["id"]
    lapi.post("/logs", json={"logs": [
        {"flow_run_id": rid, "message": "flow line"},
        {"flow_run_id": rid, "task_run_id": task_run_id, "message": "task line"},
    ]})
    wait_lines(lapi, rid, 2)
    assert [l["message"] for l in lapi.get(f"/task_runs/{task_run_id}/logs").json()["logs"]] == ["task line"]
    assert [l["message"] for l in read_all(lapi, rid, task_run_id=task_run_id)] == ["task line"]


def test_invalid_records_and_unknown_runs_are_refused_by_index_and_field_the_rest_kept(lapi):
    rid = new_run(lapi)["id"]
    missing_run = str(uuid.uuid4())
    r = lapi.post("/logs", json={"logs": [
        {"flow_run_id": rid, "message": "ok 0"},
        {"flow_run_id": rid, "message": "bad level", "level": "LOUD"},
        {"flow_run_id": missing_run, "message": "unknown run"},
        {"flow_run_id": rid, "message": "bad time", "timestamp": "yesterday"},
        {"flow_run_id": rid},
        {"flow_run_id": rid, "message": "x" * (MAX_MESSAGE + 1)},
        {"flow_run_id": rid, "message": "ok 6", "level": "warning"},
    ]})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["success"] is False and body["accepted"] == 2 and body["refused"] == 5
    refused = {(d["index"], d["field"]): d["msg"] for d in body["detail"]}
    assert set(refused) == {(1, "level"), (2, "flow_run_id"), (3, "timestamp"), (4, "message"), (5, "message")}
    assert "LOUD" in refused[(1, "level")] and missing_run in refused[(2, "flow_run_id")]
    assert f"over the limit of {MAX_MESSAGE} bytes" in refused[(5, "message")]
    assert all(d["loc"][:3] == ["body", "logs", d["index"]] for d in body["detail"])
    assert [l["message"] for l in wait_lines(lapi, rid, 2)] == ["ok 0", "ok 6"]


def test_a_batch_over_the_size_limit_is_refused_whole(lapi):
    rid = new_run(lapi)["id"]
    r = lapi.post("/logs", json={"logs": [{"flow_run_id": rid, "message": "y" * 4000} for _ in range(60)]})
    assert r.status_code == 413
    assert "over the limit of 200000 bytes" in r.json()["detail"][0]["msg"]
    time.sleep(0.3)
    assert read_all(lapi, rid) == []


GQL_WRITE = "mutation($input: write_run_logs_input!) { write_run_logs(input: $input) { success } }"
R7 = """query { flow_run(where: {id: {_eq: "%s"}}) { logs(order_by: {timestamp: asc}, where: {_and: [{timestamp: {_lte: "%s"}}, %s]}) { timestamp message level } } }"""


def gql(logs_stack, query: str, variables=None) -> dict:
    import json

    # Prefect 1.x sends variables as a JSON string, to the endpoint's root
    r = httpx.post(logs_stack.api_url + "/", json={"query": query, "variables": json.dumps(variables)}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_graphql_write_run_logs_and_prefect_r7_read(logs_stack, lapi):
    rid = new_run(lapi)["id"]
    task_run_id = lapi.get(f"/flow_runs/{rid}/task_runs").json()[0]["id"]
    many = [
        {"flow_run_id": rid, "timestamp": "2024-05-01T10:00:01+00:00", "level": "INFO", "name": "prefect.FlowRunner", "message": "one"},
        {"flow_run_id": rid, "task_run_id": task_run_id, "timestamp": "2024-05-01T10:00:02+00:00", "level": "ERROR", "name": "prefect.TaskRunner", "message": "two"},
    ]
    assert gql(logs_stack, GQL_WRITE, {"input": {"logs": many}}) == {"data": {"write_run_logs": {"success": True}}}
    # a single object where the client sends one (cli/execute.py), inline
    single = 'mutation { write_run_logs(input: {logs: {flow_run_id: "%s", name: "agent", message: "three", timestamp: "2024-05-01T10:00:03Z"}}) { success } }' % rid
    assert gql(logs_stack, single)["data"]["write_run_logs"]["success"] is True
    wait_lines(lapi, rid, 3)
    # R7 with the empty {} inside _and (means true)
    data = gql(logs_stack, R7 % (rid, "2024-05-01T10:00:03+00:00", "{}"))["data"]
    assert [(l["message"], l["level"]) for l in data["flow_run"][0]["logs"]] == [("one", "INFO"), ("two", "ERROR"), ("three", "INFO")]
    assert data["flow_run"][0]["logs"][0]["timestamp"] == "2024-05-01T10:00:01Z"
    data = gql(logs_stack, R7 % (rid, "2024-05-01T10:00:03+00:00", '{timestamp: {_gt: "2024-05-01T10:00:01+00:00"}}'))["data"]
    assert [l["message"] for l in data["flow_run"][0]["logs"]] == ["two", "three"]
    # task_run { logs }, and a level filter
    data = gql(logs_stack, 'query { task_run(where: {id: {_eq: "%s"}}) { logs { message level } } }' % task_run_id)["data"]
    assert data["task_run"][0]["logs"] == [{"message": "two", "level": "ERROR"}]
    data = gql(logs_stack, 'query { flow_run_by_pk(id: "%s") { logs(where: {level: {_eq: "INFO"}}, order_by: {timestamp: desc}, limit: 1) { message } } }' % rid)["data"]
    assert data["flow_run_by_pk"]["logs"] == [{"message": "three"}]
    # ordered by another field, the limit applies after the ordering (not to the first lines by time)
    data = gql(logs_stack, 'query { flow_run_by_pk(id: "%s") { logs(order_by: {level: asc}, limit: 1) { message } } }' % rid)["data"]
    assert data["flow_run_by_pk"]["logs"] == [{"message": "two"}]


def test_graphql_refusals_name_the_index_and_field(logs_stack, lapi):
    rid = new_run(lapi)["id"]
    result = gql(logs_stack, GQL_WRITE, {"input": {"logs": [
        {"flow_run_id": rid, "message": "kept"},
        {"flow_run_id": str(uuid.uuid4()), "message": "unknown run"},
        {"flow_run_id": rid, "message": "bad", "level": "NOISY"},
        {"flow_run_id": rid, "message": 5},  # a wrong type is the record's error too, not the whole request's
        "not a record",
        {"flow_run_id": rid, "message": "also kept", "colour": "red"},
    ]}})
    (err,) = result["errors"]
    assert err["extensions"]["code"] == "BAD_USER_INPUT" and err["extensions"]["accepted"] == 1
    assert "logs[1].flow_run_id: no flow run" in err["message"] and "logs[2].level" in err["message"]
    assert {(e["index"], e["field"]) for e in err["extensions"]["errors"]} == {(1, "flow_run_id"), (2, "level"), (3, "message"), (4, ""), (5, "colour")}
    assert [l["message"] for l in wait_lines(lapi, rid, 1)] == ["kept"]


def test_a_keyed_batch_sent_again_is_stored_once_rest_and_graphql(logs_stack, lapi):
    rid = new_run(lapi)["id"]
    other = new_run(lapi)["id"]
    batch = [{"flow_run_id": rid, "message": f"k-{i}"} for i in range(3)] + [{"flow_run_id": other, "message": "k-other"}]
    for _ in range(3):  # the client lost the answer twice and re-sent
        r = lapi.post("/logs", json={"logs": batch, "idempotency_key": "batch-1"})
        assert r.status_code == 200 and r.json()["accepted"] == 4, r.text
    assert gql(logs_stack, GQL_WRITE, {"input": {"logs": batch, "idempotency_key": "batch-1"}})["data"]["write_run_logs"]["success"]
    # the same records under another key, or none, are another batch
    lapi.post("/logs", json={"logs": batch[:1], "idempotency_key": "batch-2"})
    lapi.post("/logs", json={"logs": [{"flow_run_id": rid, "message": "marker"}]})
    messages = [l["message"] for l in wait_lines(lapi, rid, 5)]
    assert sorted(messages) == ["k-0", "k-0", "k-1", "k-2", "marker"]
    assert [l["message"] for l in wait_lines(lapi, other, 1)] == ["k-other"]
    r = _redis(logs_stack)
    assert r.zcard(f"rl:logs:{{{rid}}}:bk") == 2  # batch-1#0, batch-2#0
    # a rebuild of the store from the topic drops the repeats again
    r.delete(*r.scan_iter(f"rl:logs:{{{rid}}}:*"))
    r.delete(*r.scan_iter("rl:logs:cp:*"))
    time.sleep(1.0)
    assert sorted(l["message"] for l in wait_lines(lapi, rid, 5)) == ["k-0", "k-0", "k-1", "k-2", "marker"]


def test_an_unkeyed_batch_sent_again_is_stored_once_when_every_record_has_a_timestamp(logs_stack, lapi):
    rid = new_run(lapi)["id"]
    stamped = [{"flow_run_id": rid, "timestamp": f"2024-05-01T10:00:0{i}.123456Z", "message": f"s-{i}"} for i in range(3)]
    for _ in range(2):  # as the Prefect client re-sends after a 5xx or a dropped connection
        assert gql(logs_stack, GQL_WRITE, {"input": {"logs": stamped}})["data"]["write_run_logs"]["success"]
    # without timestamps (an agent's lines) the same message twice is two lines
    for _ in range(2):
        assert lapi.post("/logs", json={"logs": [{"flow_run_id": rid, "message": "agent says"}]}).status_code == 200
    lapi.post("/logs", json={"logs": [{"flow_run_id": rid, "message": "marker"}]})
    lines = wait_lines(lapi, rid, 6)
    assert sorted(l["message"] for l in lines) == ["agent says", "agent says", "marker", "s-0", "s-1", "s-2"]


def test_a_bad_batch_key_is_refused_naming_the_field(logs_stack, lapi):
    rid = new_run(lapi)["id"]
    record = {"flow_run_id": rid, "message": "never stored"}
    for key in ("", 7, "x" * 501):
        r = lapi.post("/logs", json={"logs": [record], "idempotency_key": key})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "idempotency_key"], r.text
    r = lapi.post("/logs", json={"logs": [record], "idempotency-key": "k"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "idempotency-key"], r.text
    (err,) = gql(logs_stack, GQL_WRITE, {"input": {"logs": [record], "idempotency_key": ""}})["errors"]
    assert err["extensions"]["code"] == "BAD_USER_INPUT" and err["extensions"]["field"] == "idempotency_key"
    lapi.post("/logs", json={"logs": [{"flow_run_id": rid, "message": "marker"}]})
    assert [l["message"] for l in wait_lines(lapi, rid, 1)] == ["marker"]


def _redis(logs_stack):
    return redis_sync.Redis.from_url(logs_stack.redis_url)


def test_redelivery_and_rebuild_never_duplicate_a_line(logs_stack, lapi):
    rid = new_run(lapi)["id"]
    for b in range(5):
        lapi.post("/logs", json={"logs": [{"flow_run_id": rid, "message": f"{b}-{i}"} for i in range(50)]})
    lines = wait_lines(lapi, rid, 250)
    r = _redis(logs_stack)
    # Redelivery: forget the service's positions; it replays both topics from the start.
    for key in r.scan_iter("rl:logs:cp:*"):
        r.delete(key)
    wait_for(lambda: len(list(r.scan_iter("rl:logs:cp:*"))) >= 1)
    time.sleep(1.5)
    again = read_all(lapi, rid)
    assert [l["id"] for l in again] == [l["id"] for l in lines]
    # Rebuild: drop the whole store; it is rebuilt from the topics.
    keys = list(r.scan_iter("rl:logs:*"))
    r.delete(*keys)
    rebuilt = wait_for(lambda: len(got := read_all(lapi, rid)) == 250 and got)
    assert sorted(l["message"] for l in rebuilt) == sorted(l["message"] for l in lines)
    assert len({l["id"] for l in rebuilt}) == 250


@pytest.mark.slow
def test_kill_9_of_the_log_service_mid_stream_loses_no_acknowledged_line(logs_stack, lapi):
    rid = new_run(lapi)["id"]
    acknowledged: list[str] = []
    stop = threading.Event()

    def writer():
        with httpx.Client(base_url=logs_stack.api_url + "/api/v1", timeout=30) as c:
            n = 0
            while not stop.is_set():
                batch = [f"line-{n + i}" for i in range(20)]
                r = c.post("/logs", json={"logs": [{"flow_run_id": rid, "message": m} for m in batch]})
                if r.status_code == 200:
                    acknowledged.extend(batch)
                n += 20

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: len(acknowledged) > 400)
        logs_stack.kill("logs")  # SIGKILL, mid-stream
        time.sleep(0.5)
        logs_stack.start_service("logs")
        logs_stack.wait_ready("logs")
        wait_for(lambda: len(acknowledged) > 1600, timeout=30)
    finally:
        stop.set()
        thread.join()
    stored = wait_for(lambda: len(got := read_all(lapi, rid)) >= len(acknowledged) and got, timeout=30)
    messages = [l["message"] for l in stored]
    assert len(messages) == len(set(messages)), "a line was stored twice"
    assert set(acknowledged) <= set(messages), f"{len(set(acknowledged) - set(messages))} acknowledged lines lost"


def test_the_logs_and_dead_letter_topics_accept_records_over_kafkas_1_mb_default(logs_stack):
    """Real Kafka refuses a record batch over the topic's ``max.message.bytes`` (1 MB by default);
    a log chunk can be one line of ~1.1 MB, and a dead letter carries the record it sets aside."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from runledger.settings import Settings
    from runledger.topics import DEAD_LETTERS, LOGS, MAX_RECORD_BYTES, topics_for

    names = {t.name for t in topics_for(Settings(topic_prefix="runledger")).all() if t.spec in (LOGS, DEAD_LETTERS)}

    async def described() -> dict[str, dict[str, str]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{logs_stack.broker_port}")
        await admin.start()
        try:
            responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in sorted(names)])
        finally:
            await admin.close()
        return {resource[3]: {entry[0]: entry[1] for entry in resource[4]} for response in responses for resource in response.resources}

    configs = asyncio.run(described())
    assert set(configs) == names and all(c.get("max.message.bytes") == str(MAX_RECORD_BYTES) for c in configs.values()), configs
