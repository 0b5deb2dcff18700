"""Redis restarts empty while the log service holds a batch it cannot store: once Redis is back,
the service must replay the logs topic from the (now missing) saved position, not store that
batch and save a position past every line the store lost. Found by the chaos run (bench/chaos.py):
under steady load the service was never idle, so its idle-time realign never looked. Own stack."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import httpx
import pytest

from runledger.messages.logs import LogChunk
from runledger.services.devstack import Stack, wait_for_port
from runledger.services.runtime import kafka as clients
from runledger.topics import LOGS, topics_for
from tests.integration.helpers import eventually

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_stack():
    s = Stack(own_redis=True, partitions=2)
    try:
        s.start(services=("transitions", "projector", "ingress", "logs"))
        yield s
    finally:
        s.stop()


async def _produce(stack, run_id: str, message: str) -> None:
    settings = stack.settings()
    producer = clients.producer(settings)
    await producer.start()
    try:
        line = {"task_run_id": None, "timestamp": "2026-01-01T00:00:00Z", "level": "INFO", "name": "t", "message": message, "info": None}
        await producer.send_and_wait(topics_for(settings)[LOGS].name, LogChunk(flow_run_id=run_id, lines=[line]).encode(), key=run_id.encode())
    finally:
        await producer.stop()


def _messages(client: httpx.Client, run_id: str) -> list[str] | None:
    r = client.get(f"/flow_runs/{run_id}/logs")
    return [line["message"] for line in r.json()["logs"]] if r.status_code == 200 else None


def test_lines_stored_before_redis_restarted_empty_come_back(own_stack):
    with httpx.Client(base_url=own_stack.api_url + "/api/v1", timeout=60) as client:
        project = client.post("/projects", json={"name": f"p-{uuid.uuid4().hex[:8]}"}).json()
        flow = client.post("/flows", json={"name": "f", "project_id": project["id"]}).json()
        run_id = client.post("/flow_runs", json={"flow_id": flow["id"]}).json()["id"]
        before = [f"before-{i}" for i in range(5)]
        r = client.post("/logs", json={"logs": [{"flow_run_id": run_id, "message": m} for m in before]})
        assert r.status_code == 200, r.text
        eventually(lambda: _messages(client, run_id) == before, timeout=60, interval=0.2, what="lines stored")

        redis = own_stack.processes.pop("redis")
        argv = own_stack.launches["redis"][0]
        redis.send_signal(signal.SIGKILL)
        redis.wait(timeout=10)
        asyncio.run(_produce(own_stack, run_id, "during"))  # the log service takes it and cannot store it
        time.sleep(2)
        own_stack.restart("redis")
        wait_for_port(int(argv[argv.index("--port") + 1]))

        expected = sorted([*before, "during"])
        got = eventually(lambda: (m := _messages(client, run_id)) is not None and sorted(m) == expected and m, timeout=90, interval=0.2,
                         what=f"every line back after Redis restarted empty (last read: {_messages(client, run_id)})")
        assert sorted(got) == expected


async def test_a_position_is_never_saved_past_lines_redis_could_not_write(own_stack):
    """Redis kept its data but lost its scripts (a restart with persistence, SCRIPT FLUSH): every
    write of the log service's pipeline fails with NOSCRIPT, and its saved position with them.
    Were the position a plain SET, it would be saved past lines a kill before the retry loses."""
    from redis.exceptions import NoScriptError

    from runledger.services.runtime import redis as redis_clients
    from runledger.services.runtime.logstore import LogStore

    redis = redis_clients.client(own_stack.settings(redis_url=own_stack.redis_url))
    store = LogStore(redis, prefix=f"t-{uuid.uuid4().hex[:8]}")
    try:
        await store.ensure_scripts()
        line = {"task_run_id": None, "timestamp": "2026-01-01T00:00:00Z", "level": "INFO", "name": "t", "message": "m", "info": None}
        await redis.script_flush()
        async with redis.pipeline(transaction=False) as pipe:
            store.queue_lines(pipe, "run-1", 7, [line], cap=100)
            store.queue_checkpoint(pipe, "logs", 0, 8)
            with pytest.raises(NoScriptError):
                await pipe.execute()
        assert await store.checkpoints([("logs", 0)]) == {("logs", 0): 0}
        await store.ensure_scripts()  # what the service does next
        async with redis.pipeline(transaction=False) as pipe:
            store.queue_lines(pipe, "run-1", 7, [line], cap=100)
            store.queue_checkpoint(pipe, "logs", 0, 8)
            await pipe.execute()
        assert await store.checkpoints([("logs", 0)]) == {("logs", 0): 8}
    finally:
        await redis.aclose()
