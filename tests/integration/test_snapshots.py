"""The writer restarts from its newest ledger snapshot plus the tail of the log: after a kill -9 it
restores a snapshot, replays only the events after it, versions continue, and a repeated command
(same command id) is answered as before. On a stack of its own with a tiny snapshot interval."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from datetime import datetime, timezone

import httpx
import pytest
from aiokafka import TopicPartition

from runledger.messages.codec import decode_reply, encode
from runledger.messages.commands import CommandEnvelope, ReplyTo, SetFlowRunState
from runledger.domain.states import State
from runledger.services.devstack import Stack
from runledger.services.runtime import kafka
from runledger.topics import SNAPSHOTS, topics_for
from tests.integration.helpers import settings_for

pytestmark = pytest.mark.slow

EVERY = 12  # events per snapshot


@pytest.fixture(scope="module")
def own_stack():
    with Stack(
        own_redis=True,
        partitions=2,
        extra_env={"RUNLEDGER_SNAPSHOT_EVERY_EVENTS": str(EVERY), "RUNLEDGER_SNAPSHOT_EVERY_SECONDS": "3600"},
    ) as s:
        yield s


def _health(stack) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.health_ports['transitions']}/healthz", timeout=2) as r:
        return json.loads(r.read())


def _wait_for(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


async def _command(stack, command: CommandEnvelope):
    """Send one command straight to the writer (a chosen command id) and read its reply."""
    settings = settings_for(stack)
    topics = topics_for(settings)
    tp = TopicPartition(topics.replies.name, topics.replies.partitions - 1)
    consumer = kafka.consumer(settings)
    producer = kafka.producer(settings)
    await asyncio.gather(consumer.start(), producer.start())
    try:
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)
        command = command.model_copy(update={"reply_to": ReplyTo(topic=tp.topic, partition=tp.partition)})
        await producer.send_and_wait(topics.commands.name, encode(command), key=command.aggregate_id.encode())
        deadline = asyncio.get_running_loop().time() + 30
        while asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            for record in batch.get(tp, []):
                try:
                    reply = decode_reply(record.value)
                except ValueError:
                    continue
                if reply.command_id == command.command_id:
                    return reply
        raise AssertionError(f"no reply to {command.command_id}")
    finally:
        await asyncio.gather(consumer.stop(), producer.stop())


async def _ends(stack, topic: str) -> dict[int, int]:
    settings = settings_for(stack)
    consumer = kafka.consumer(settings)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(stack.partitions)]
        return {tp.partition: end for tp, end in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


def _set_state(run_id: str, state: str, version: int | None, command_id: str) -> CommandEnvelope:
    return CommandEnvelope(
        command_id=command_id, type="SetFlowRunState", aggregate_id=run_id, issued_at=datetime.now(timezone.utc),
        payload=SetFlowRunState(state=State(type=state), version=version),
    )


def test_kill_9_restores_the_snapshot_and_replays_only_the_tail(own_stack):
    stack = own_stack
    topics = topics_for(settings_for(stack))
    with httpx.Client(base_url=stack.api_url + "/api/v1", timeout=60) as api:
        project = api.post("/projects", json={"name": f"p-{uuid.uuid4().hex[:8]}"}).json()
        flow = api.post("/flows", json={"name": f"f-{uuid.uuid4().hex[:8]}", "project_id": project["id"]}).json()
        runs = [api.post("/flow_runs", json={"flow_id": flow["id"]}).json()["id"] for _ in range(8)]
        for run_id in runs:
            for version, state in enumerate(["Submitted", "Running"], start=1):
                r = api.post(f"/flow_runs/{run_id}/state", json={"state": {"type": state}, "version": version})
                assert r.status_code == 200, r.text
        # A refusal and an acceptance with chosen command ids, recorded before the snapshots.
        early_refused = asyncio.run(_command(stack, _set_state(runs[0], "Success", 1, "early-stale")))
        early_accepted = asyncio.run(_command(stack, _set_state(runs[1], "Success", 3, "early-ok")))
        assert not early_refused.ok and early_refused.rejection.code == "VERSION_MISMATCH"
        assert early_accepted.ok and early_accepted.outcome["version"] == 4

        # every partition with events has a snapshot
        ends = asyncio.run(_ends(stack, topics.events.name))
        books = _wait_for(lambda: (b := _health(stack)["books"]) and all(
            b[str(p)]["snapshot_position"] for p, end in ends.items() if end >= EVERY) and b)
        assert any(book["snapshot_position"] for book in books.values()), books
        snapped = {int(p): book["snapshot_position"] or 0 for p, book in books.items()}

        # a tail after the snapshot: a state change and a refusal with a chosen id
        tail_run = runs[2]
        r = api.post(f"/flow_runs/{tail_run}/state", json={"state": {"type": "Success"}, "version": 3})
        assert r.status_code == 200 and r.json()["version"] == 4
        tail_refused = asyncio.run(_command(stack, _set_state(tail_run, "Running", 2, "tail-stale")))
        assert not tail_refused.ok

        ends = asyncio.run(_ends(stack, topics.events.name))
        stack.kill("transitions")  # SIGKILL
        stack.start_service("transitions")
        stack.wait_ready("transitions", 60)

        after = _health(stack)["books"]
        for p, end in ends.items():
            book = after[str(p)]
            if snapped[p]:
                assert book["restored_position"] is not None and book["restored_position"] >= snapped[p], (p, book)
                assert book["replayed"] == end - book["restored_position"] < end, (p, book, end)
        log = (stack.workdir / "transitions.log").read_text()
        assert '"snapshot restored"' in log.split('"started"')[-1] or "snapshot restored" in log

        # repeated commands (same ids) are answered as before, from before and after the snapshot
        for original, command in [
            (early_refused, _set_state(runs[0], "Success", 1, "early-stale")),
            (early_accepted, _set_state(runs[1], "Success", 3, "early-ok")),
            (tail_refused, _set_state(tail_run, "Running", 2, "tail-stale")),
        ]:
            again = asyncio.run(_command(stack, command))
            assert (again.ok, again.outcome, again.rejection) == (original.ok, original.outcome, original.rejection)

        # versions continue
        for run_id in runs:
            current = api.get(f"/flow_runs/{run_id}").json()
            r = api.post(f"/flow_runs/{run_id}/state", json={"state": {"type": "Scheduled"}, "version": current["version"]})
            assert r.status_code == 200 and r.json()["version"] == current["version"] + 1, r.text
            history = api.get(f"/flow_runs/{run_id}").json()["states"]
            assert [s["version"] for s in history] == list(range(1, len(history) + 1))


def test_an_unreadable_snapshot_falls_back_to_a_full_replay(own_stack):
    """Garbage as the newest record of a snapshot partition: logged, the partition replayed in
    full, the writer ready and deciding as before."""
    stack = own_stack
    settings = settings_for(stack)
    topics = topics_for(settings)

    async def poison():
        producer = kafka.producer(settings)
        await producer.start()
        try:
            for p in range(stack.partitions):
                await producer.send_and_wait(topics[SNAPSHOTS].name,
                                             b"garbage", key=str(p).encode(), partition=p,
                                             headers=[("kind", b"manifest")])
        finally:
            await producer.stop()

    asyncio.run(poison())
    stack.kill("transitions")
    stack.start_service("transitions")
    stack.wait_ready("transitions", 60)
    books = _health(stack)["books"]
    ends = asyncio.run(_ends(stack, topics.events.name))
    for p, end in ends.items():
        assert books[str(p)]["restored_position"] is None and books[str(p)]["replayed"] == end
    assert "snapshot unusable" in (stack.workdir / "transitions.log").read_text()
    with httpx.Client(base_url=stack.api_url + "/api/v1", timeout=60) as api:
        project = api.post("/projects", json={"name": f"p-{uuid.uuid4().hex[:8]}"})
        assert project.status_code == 201, project.text
