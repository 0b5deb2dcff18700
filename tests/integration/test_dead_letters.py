"""A message that cannot be decoded, decided or projected is set aside on the dead-letter topic,
counted in health details, and the consumer goes on; a malformed reply does not stop the
ingress's reply reader. On a stack of its own: the poison stays out of the shared log."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
import uuid
from datetime import datetime, timezone

import httpx
import orjson
import pytest
from aiokafka import TopicPartition

from runledger.messages.dead_letter import DeadLetter
from runledger.services.devstack import Stack
from runledger.services.runtime import kafka
from runledger.topics import topics_for
from tests.integration.helpers import all_events, eventually


@pytest.fixture(scope="module")
def own_stack():
    with Stack(own_redis=True, partitions=2) as s:
        yield s


async def _produce(stack, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> None:
    producer = kafka.producer(stack.settings())
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()


async def _dead_letters(stack) -> list[DeadLetter]:
    settings = stack.settings()
    topic = topics_for(settings).dead_letters.name
    consumer = kafka.consumer(settings)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out = []
        while len(out) < end:
            batch = await consumer.getmany(tp, timeout_ms=500)
            out += [DeadLetter.model_validate(orjson.loads(r.value)) for r in batch.get(tp, []) if r.offset < end]
        return out
    finally:
        await consumer.stop()


def _health(stack, name: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.health_ports[name]}/healthz", timeout=2) as r:
        return json.loads(r.read())


def _create_run(client: httpx.Client) -> dict:
    project = client.post("/projects", json={"name": f"p-{uuid.uuid4().hex[:8]}"}).json()
    flow = client.post("/flows", json={"name": f"f-{uuid.uuid4().hex[:8]}", "project_id": project["id"]}).json()
    r = client.post("/flow_runs", json={"flow_id": flow["id"]})
    assert r.status_code == 201, r.text
    return r.json()


def test_poison_messages_are_set_aside_and_every_consumer_goes_on(own_stack):
    topics = topics_for(own_stack.settings())
    with httpx.Client(base_url=own_stack.api_url + "/api/v1", timeout=30) as client:
        _create_run(client)
        # 1. a command that is not even JSON
        asyncio.run(_produce(own_stack, topics.commands.name, b"\xff not json", key=b"x", partition=0))
        # 2. an event that decodes but cannot be projected (a state for a run nobody created)
        template = next(e for e in all_events(own_stack) if e.type == "FlowRunStateSet")
        orphan = template.model_copy(update={"aggregate_id": "no-such-run", "flow_run_id": "no-such-run", "seq": 1,
                                             "event_id": uuid.uuid4(), "time": datetime.now(timezone.utc)})
        asyncio.run(_produce(own_stack, topics.events.name, orjson.dumps(orphan.model_dump(mode="python")), key=b"no-such-run", partition=1))
        # 3. a reply the ingress cannot decode, on every reply partition (its own among them)
        for p in range(topics.replies.partitions):
            asyncio.run(_produce(own_stack, topics.replies.name, b'{"half": ', partition=p))

        letters = eventually(lambda: (ls := asyncio.run(_dead_letters(own_stack))) and len(ls) >= 2 and ls, timeout=20)
        by_stage = {(d.consumer, d.stage): d for d in letters}
        assert ("runledger-transitions", "decode") in by_stage
        assert by_stage[("runledger-transitions", "decode")].value.endswith("not json")
        assert ("runledger-projector", "project") in by_stage
        assert "no-such-run" in by_stage[("runledger-projector", "project")].value
        assert eventually(lambda: _health(own_stack, "transitions")["dead_letters"] >= 1, timeout=20)
        assert eventually(lambda: _health(own_stack, "projector")["dead_letters"] >= 1, timeout=20)
        # The poison event was appended behind the writer's back: a second writer, to the writer.
        # At its next event in that partition it would exit (SecondWriter) for its restart to
        # rebuild from the log, the poison event included. Restart it now, as a supervisor would.
        own_stack.kill("transitions", signal.SIGTERM)
        own_stack.restart("transitions")
        own_stack.wait_ready("transitions", 60)

        # Every consumer and the ingress's reply reader still work: a full write-then-read round trip.
        run = _create_run(client)
        r = client.post(f"/flow_runs/{run['id']}/state", json={"state": {"type": "Running"}, "version": 1})
        assert r.status_code == 200, r.text
        assert client.get(f"/flow_runs/{run['id']}").json()["version"] == 2
        ready = httpx.get(own_stack.api_url + "/health/ready", timeout=5)
        assert ready.status_code == 200, ready.text
    for name in ("transitions", "projector"):
        assert own_stack.processes[name].poll() is None, f"{name} exited"
    # The poison event is still in the log (the system of record is never edited), and set aside once.
    assert sum(1 for e in all_events(own_stack) if e.aggregate_id == "no-such-run") == 1
    assert sum(1 for d in asyncio.run(_dead_letters(own_stack)) if d.stage == "project") == 1
