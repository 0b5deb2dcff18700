"""Dependency outages are ridden out: with the broker paused (SIGSTOP: the embedded broker keeps its
log in memory, so it is paused rather than stopped) or Redis stopped, no service exits, the ingress
answers 503 with Retry-After within the command timeout and says "not ready", the consumers say
"not ready" with the reason, and everything resumes by itself, with nothing lost or duplicated."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import httpx
import pytest

from runledger.services.devstack import Stack, wait_for_port
from tests.integration.helpers import all_events, eventually

pytestmark = pytest.mark.slow

COMMAND_TIMEOUT = 4.0


@pytest.fixture(scope="module")
def own_stack():
    with Stack(own_redis=True, partitions=2, extra_env={"RUNLEDGER_COMMAND_TIMEOUT_SECONDS": str(COMMAND_TIMEOUT)}) as s:
        yield s


def _readiness(stack, name: str) -> tuple[int, dict]:
    url = stack.api_url + "/health/ready" if name == "ingress" else f"http://127.0.0.1:{stack.health_ports[name]}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except (TimeoutError, urllib.error.URLError) as e:  # a busy machine: not an answer, ask again
        return 0, {"error": f"{name}: {e!r}"}


def _not_ready(stack) -> list:
    return [r for n in ("ingress", "transitions", "projector") if (r := _readiness(stack, n))[0] != 200]


def _setup(client: httpx.Client) -> str:
    project = client.post("/projects", json={"name": f"p-{uuid.uuid4().hex[:8]}"}).json()
    flow = client.post("/flows", json={"name": f"f-{uuid.uuid4().hex[:8]}", "project_id": project["id"]})
    assert flow.status_code == 201, flow.text
    return flow.json()["id"]


def _stop_redis(stack) -> list[str]:
    """SIGTERM the stack's Redis; its command line, to start it again (empty: no persistence here)."""
    redis = stack.processes.pop("redis")
    redis.send_signal(signal.SIGTERM)
    redis.wait(timeout=10)
    return redis.args


def _start_redis(stack, argv: list[str]) -> None:
    log = open(stack.workdir / "redis.restarted.log", "ab")
    stack.processes["redis"] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(int(argv[argv.index("--port") + 1]))


def _all_alive(stack):
    for name, process in stack.processes.items():
        assert process.poll() is None, f"{name} exited with {process.returncode}"


def test_a_paused_broker_is_ridden_out(own_stack):
    with httpx.Client(base_url=own_stack.api_url + "/api/v1", timeout=30) as client:
        flow_id = _setup(client)
        broker = own_stack.processes["broker"]
        broker.send_signal(signal.SIGSTOP)
        try:
            eventually(lambda: _readiness(own_stack, "ingress")[0] == 503, what="ingress not ready")
            for name in ("transitions", "projector"):
                status, details = eventually(lambda: (r := _readiness(own_stack, name))[0] == 503 and r, what=f"{name} not ready")
                assert details["broker_error"], details
            started = time.monotonic()
            r = client.post("/flow_runs", json={"flow_id": flow_id, "idempotency_key": "during-pause"})
            waited = time.monotonic() - started
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            assert waited < COMMAND_TIMEOUT + 3, f"held {waited:.1f}s, past the command timeout"
        finally:
            broker.send_signal(signal.SIGCONT)
        eventually(lambda: not _not_ready(own_stack), what=f"everything ready again ({_not_ready(own_stack)})")
        _all_alive(own_stack)
        # The caller retries with its key: one run, whether or not the first attempt was applied.
        r = client.post("/flow_runs", json={"flow_id": flow_id, "idempotency_key": "during-pause"})
        assert r.status_code in (200, 201), r.text
        run_id = r.json()["id"]
        assert client.get(f"/flow_runs/{run_id}").json()["version"] == 1
    created = [e for e in all_events(own_stack) if e.type == "FlowRunCreated" and e.payload.spec.idempotency_key == "during-pause"]
    assert [e.aggregate_id for e in created] == [run_id]


def test_a_stopped_redis_is_ridden_out(own_stack):
    with httpx.Client(base_url=own_stack.api_url + "/api/v1", timeout=30) as client:
        flow_id = _setup(client)
        before = client.post("/flow_runs", json={"flow_id": flow_id})
        assert before.status_code == 201
        argv = _stop_redis(own_stack)
        try:
            eventually(lambda: _readiness(own_stack, "ingress")[0] == 503, what="ingress not ready")
            status, details = eventually(lambda: (r := _readiness(own_stack, "projector"))[0] == 503 and r, what="projector not ready")
            assert details["dependency_error"], details
            r = client.get("/projects")
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            time.sleep(2)
            _all_alive(own_stack)
        finally:
            _start_redis(own_stack, argv)
        eventually(lambda: not _not_ready(own_stack), what=f"everything ready again ({_not_ready(own_stack)})")
        _all_alive(own_stack)
        # Redis came back empty (no persistence here): the read models are rebuilt from the log.
        eventually(lambda: client.get(f"/flow_runs/{before.json()['id']}").status_code == 200, what="read model rebuilt")
        after = client.post("/flow_runs", json={"flow_id": flow_id})
        assert after.status_code == 201, after.text
        assert client.get(f"/flow_runs/{after.json()['id']}").json()["version"] == 1


def test_a_full_redis_is_ridden_out_and_no_log_line_is_set_aside(own_stack):
    """Redis at maxmemory with noeviction refuses writes with an error reply (OOM), as a read-only
    replica does (READONLY): Redis's trouble, not the records'. The log service pauses and says
    why, sets nothing aside, and stores every line once Redis has room again."""
    redis = own_stack.redis_client()
    with httpx.Client(base_url=own_stack.api_url + "/api/v1", timeout=30) as client:
        flow_id = _setup(client)
        run_id = client.post("/flow_runs", json={"flow_id": flow_id}).json()["id"]
        dead_before = _readiness(own_stack, "logs")[1]["dead_letters"]
        policy = redis.config_get("maxmemory-policy")["maxmemory-policy"]
        redis.config_set("maxmemory-policy", "noeviction")
        redis.config_set("maxmemory", 1)
        try:
            lines = [{"flow_run_id": run_id, "message": f"while full {n}", "level": "INFO"} for n in range(20)]
            r = client.post("/logs", json={"logs": lines})
            assert r.status_code == 200, r.text  # acknowledged once in Kafka
            status, details = eventually(lambda: (r := _readiness(own_stack, "logs"))[0] == 503 and r, what="log service not ready")
            assert "OutOfMemoryError" in details["dependency_error"], details
            time.sleep(1)
            _all_alive(own_stack)
        finally:
            redis.config_set("maxmemory", 0)
            redis.config_set("maxmemory-policy", policy)
        messages = lambda: [line["message"] for line in client.get(f"/flow_runs/{run_id}/logs").json()["logs"]]  # noqa: E731
        eventually(lambda: len(messages()) >= 20, what="the lines stored")
        assert messages() == [f"while full {n}" for n in range(20)]
        assert _readiness(own_stack, "logs")[1]["dead_letters"] == dead_before
        eventually(lambda: not _not_ready(own_stack), what=f"everything ready again ({_not_ready(own_stack)})")


def test_a_rebalance_while_redis_is_down_is_ridden_out(own_stack):
    """A second projector joins while Redis is down: both take over partitions (their seeks need
    Redis) once it is back, and say ready again; before, a failed takeover left them not ready
    until the next rebalance."""
    argv = _stop_redis(own_stack)
    try:
        own_stack.start_service("projector2", "projector")
        eventually(lambda: _readiness(own_stack, "projector2")[0] == 503, what="second projector up, not ready")
        time.sleep(4)  # the group rebalances onto two members while Redis is down
        assert _readiness(own_stack, "projector")[0] == 503
    finally:
        _start_redis(own_stack, argv)
    try:
        eventually(lambda: _readiness(own_stack, "projector")[0] == 200 and _readiness(own_stack, "projector2")[0] == 200,
                   what="both projectors ready")
        _all_alive(own_stack)
    finally:
        own_stack.kill("projector2", signal.SIGTERM)
    eventually(lambda: not _not_ready(own_stack), what=f"everything ready again ({_not_ready(own_stack)})")


def test_a_quiet_partition_comes_back_after_redis_lost_its_data_while_another_is_busy(own_stack):
    """After Redis lost its data, a partition with records coming notices by its next batch; a
    quiet one only by the projector's periodic look, which used to run only when no partition
    had records: under steady load elsewhere the quiet partition's runs stayed unreadable (503)."""
    import asyncio
    import threading
    from datetime import datetime, timezone

    from runledger.messages.codec import encode
    from runledger.messages.commands import CommandEnvelope, RenameFlowRun
    from runledger.partitioning import partition_for
    from runledger.services.runtime import kafka
    from runledger.topics import topics_for

    with httpx.Client(base_url=own_stack.api_url + "/api/v1", timeout=30) as client:
        flow_id = _setup(client)
        by_partition: dict[int, str] = {}
        while len(by_partition) < 2:
            run_id = client.post("/flow_runs", json={"flow_id": flow_id}).json()["id"]
            by_partition.setdefault(partition_for(run_id, 2), run_id)
        quiet, busy = by_partition[0], by_partition[1]
        stop = threading.Event()

        async def rename_busy_run_nonstop() -> None:  # straight to the writer: no read model needed
            settings = own_stack.settings()
            producer = kafka.producer(settings, linger_ms=0)
            await producer.start()
            try:
                n = 0
                while not stop.is_set():
                    n += 1
                    command = CommandEnvelope(command_id=uuid.uuid4().hex, type="RenameFlowRun", aggregate_id=busy,
                                              issued_at=datetime.now(timezone.utc), payload=RenameFlowRun(name=f"busy-{n}"))
                    await producer.send_and_wait(topics_for(settings).commands.name, encode(command), key=busy.encode())
                    await asyncio.sleep(0.005)
            finally:
                await producer.stop()

        load = threading.Thread(target=asyncio.run, args=(rename_busy_run_nonstop(),))
        load.start()
        try:
            time.sleep(1.5)
            own_stack.redis_client().flushall()
            eventually(lambda: client.get(f"/flow_runs/{quiet}").status_code == 200, timeout=20, what="the quiet partition's run readable again")
            assert load.is_alive()  # it came back under load
        finally:
            stop.set()
            load.join(timeout=30)
        eventually(lambda: client.get(f"/flow_runs/{busy}").status_code == 200, what="the busy run readable again")
