"""The writer restarts from its newest ledger snapshot plus the tail of the log: after a kill -9 it
restores a snapshot, replays only the events after it, versions continue, and a repeated command
(same command id) is answered as before. On a stack of its own with a tiny snapshot interval."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
import uuid
from datetime import datetime, timezone

import httpx
import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner

from runledger.messages.codec import decode_reply, encode
from runledger.messages.commands import CommandEnvelope, ReplyTo, SetFlowRunState
from runledger.domain.states import State
from runledger.services.devstack import Stack
from runledger.services.runtime import kafka
from runledger.services.transitions.snapshots import SnapshotStore, SnapshotUnavailable, pack, unpack
from runledger.topics import SNAPSHOTS, topics_for
from tests.integration.helpers import eventually

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


async def _command(stack, command: CommandEnvelope):
    """Send one command straight to the writer (a chosen command id) and read its reply."""
    settings = stack.settings()
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
    settings = stack.settings()
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
    topics = topics_for(stack.settings())
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
        books = eventually(lambda: (b := _health(stack)["books"]) and all(
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


def test_the_store_reads_every_partitions_newest_snapshot_in_one_pass(own_stack):
    """``SnapshotStore.load`` of five partitions at once, each in another state: a newer snapshot
    over an older one (several chunks), a chunk left last by a crash (its ``prev`` names the
    manifest), nothing, only chunks of a first snapshot never finished, and a manifest naming a
    chunk of another snapshot. Each partition gets its own answer."""
    settings = own_stack.settings()
    topic = f"snapshots-{uuid.uuid4().hex[:8]}"

    async def scenario():
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=5, replication_factor=1)])
        finally:
            await admin.close()
        producer, reader = kafka.producer(settings), kafka.consumer(settings)
        await asyncio.gather(producer.start(), reader.start())
        try:
            store = SnapshotStore(topic, producer, reader)
            raws = {p: os.urandom(2_000_000 if p == 0 else 1000 + p) for p in range(5)}  # 2 MB: 3 chunks
            await store.save(0, 10, pack(b"older"), 5)
            newest = await store.save(0, 20, pack(raws[0]), len(raws[0]))
            assert newest["chunks"] == 3
            saved_1 = await store.save(1, 5, pack(raws[1]), len(raws[1]))
            await producer.send_and_wait(topic, b"cut short", key=b"1:0", partition=1, headers=[
                ("kind", b"chunk"), ("snapshot", b"next"), ("chunk", b"0"), ("of", b"2"), ("prev", str(saved_1["manifest_offset"]).encode())])
            await producer.send_and_wait(topic, b"cut short", key=b"3:0", partition=3, headers=[
                ("kind", b"chunk"), ("snapshot", b"first"), ("chunk", b"0"), ("of", b"2"), ("prev", b"-1")])
            await store.save(4, 7, pack(raws[4]), len(raws[4]))
            await producer.send_and_wait(topic, orjson.dumps({"snapshot_id": "other", "position": 9, "chunk_offsets": [0]}),
                                         key=b"4", partition=4, headers=[("kind", b"manifest")])

            found = await SnapshotStore(topic, producer, reader).load([0, 1, 2, 3, 4])
        finally:
            await asyncio.gather(producer.stop(), reader.stop())
        assert set(found) == {0, 1, 2, 3, 4}
        assert (found[0].position, found[0].chunks, unpack(found[0])) == (20, 3, raws[0])
        assert found[0].manifest_offset == newest["manifest_offset"]
        assert (found[1].position, found[1].snapshot_id, unpack(found[1])) == (5, saved_1["snapshot_id"], raws[1])
        assert found[2] is None and found[3] is None
        assert isinstance(found[4], SnapshotUnavailable) and "chunk 0 of snapshot other" in str(found[4])

    asyncio.run(scenario())


def test_a_broken_snapshot_in_one_partition_replays_that_one_while_the_others_restore(own_stack):
    """The writer reads every partition's snapshot in the same pass and decodes them side by side:
    a manifest naming a chunk of another snapshot in partition 0 sends only partition 0 to a full
    replay; partition 1 restores its snapshot; both books decide repeated and new commands as
    before."""
    stack = own_stack
    settings = stack.settings()
    topics = topics_for(settings)
    partitioner = DefaultPartitioner()
    with httpx.Client(base_url=stack.api_url + "/api/v1", timeout=60) as api:
        project = api.post("/projects", json={"name": f"p-{uuid.uuid4().hex[:8]}"}).json()
        flow = api.post("/flows", json={"name": f"f-{uuid.uuid4().hex[:8]}", "project_id": project["id"]}).json()
        runs: dict[int, list[str]] = {0: [], 1: []}
        while min(len(r) for r in runs.values()) < 6:  # 6 runs created and submitted: >= EVERY events
            run_id = api.post("/flow_runs", json={"flow_id": flow["id"]}).json()["id"]
            runs[partitioner(run_id.encode(), [0, 1], [0, 1])].append(run_id)
        recorded = {}
        for p, ids in runs.items():
            for run_id in ids[:6]:
                r = api.post(f"/flow_runs/{run_id}/state", json={"state": {"type": "Submitted"}, "version": 1})
                assert r.status_code == 200, r.text
            command = _set_state(ids[0], "Running", 1, f"stale-{p}-{uuid.uuid4().hex[:6]}")  # a refusal
            recorded[p] = (command, asyncio.run(_command(stack, command)))
            assert not recorded[p][1].ok

        # both partitions have a snapshot that covers all but the last few events
        ends = asyncio.run(_ends(stack, topics.events.name))
        eventually(lambda: (b := _health(stack)["books"]) and all(
            b[str(p)]["snapshot_position"] and b[str(p)]["snapshot_position"] > ends[p] - EVERY for p in (0, 1)) and b, timeout=60)

        async def break_partition_0():
            producer = kafka.producer(settings)
            await producer.start()
            try:
                manifest = {"snapshot_id": "not-there", "partition": 0, "position": 1, "chunk_offsets": [0],
                            "compressed_bytes": 1, "raw_bytes": 1, "codec": "zstd"}
                await producer.send_and_wait(topics[SNAPSHOTS].name, orjson.dumps(manifest), key=b"0", partition=0,
                                             headers=[("kind", b"manifest")])
            finally:
                await producer.stop()

        asyncio.run(break_partition_0())
        log_from = (stack.workdir / "transitions.log").stat().st_size
        ends = asyncio.run(_ends(stack, topics.events.name))
        stack.kill("transitions")
        stack.start_service("transitions")
        stack.wait_ready("transitions", 60)

        books = _health(stack)["books"]
        assert books["0"]["restored_position"] is None and books["0"]["replayed"] == ends[0], books
        assert books["1"]["restored_position"] is not None and books["1"]["replayed"] == ends[1] - books["1"]["restored_position"], books
        log = (stack.workdir / "transitions.log").read_text()[log_from:]
        unusable = [json.loads(line) for line in log.splitlines() if '"snapshot unusable' in line]
        assert [line["partition"] for line in unusable] == [0], unusable
        assert "chunk 0 of snapshot not-there" in unusable[0]["error"]

        for p, (command, original) in recorded.items():
            again = asyncio.run(_command(stack, command))
            assert (again.ok, again.outcome, again.rejection) == (original.ok, original.outcome, original.rejection), p
        for ids in runs.values():
            for run_id in ids[:6]:
                r = api.post(f"/flow_runs/{run_id}/state", json={"state": {"type": "Running"}, "version": 2})
                assert r.status_code == 200 and r.json()["version"] == 3, r.text


def test_an_unreadable_snapshot_falls_back_to_a_full_replay(own_stack):
    """Garbage as the newest record of a snapshot partition: logged, the partition replayed in
    full, the writer ready and deciding as before."""
    stack = own_stack
    settings = stack.settings()
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


async def _append_a_copy_of_the_last_event(stack, partition: int) -> None:
    """What a second writer does: append to the partition behind the owner's back (a copy of its
    last event: a repeat the ledger and the read models drop by its sequence number)."""
    settings = stack.settings()
    topics = topics_for(settings)
    tp = TopicPartition(topics.events.name, partition)
    consumer, producer = kafka.consumer(settings), kafka.producer(settings)
    await asyncio.gather(consumer.start(), producer.start())
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, end - 1)
        (last,) = (await consumer.getmany(tp, timeout_ms=5000, max_records=1))[tp]
        await producer.send_and_wait(tp.topic, last.value, key=last.key, partition=partition)
    finally:
        await asyncio.gather(consumer.stop(), producer.stop())


def test_a_second_writer_in_its_partition_makes_the_writer_exit_and_its_successor_rebuild(own_stack):
    from runledger.partitioning import partition_for

    stack = own_stack
    with httpx.Client(base_url=stack.api_url + "/api/v1", timeout=60) as api:
        project = api.post("/projects", json={"name": f"p-{uuid.uuid4().hex[:8]}"}).json()
        flow = api.post("/flows", json={"name": f"f-{uuid.uuid4().hex[:8]}", "project_id": project["id"]}).json()
        run_id = api.post("/flow_runs", json={"flow_id": flow["id"]}).json()["id"]
        asyncio.run(_append_a_copy_of_the_last_event(stack, partition_for(run_id, stack.partitions)))
        try:
            api.post(f"/flow_runs/{run_id}/state", json={"state": {"type": "Submitted"}, "version": 1}, timeout=5)
        except httpx.TimeoutException:
            pass  # not answered: the writer stops before it answers
        eventually(lambda: stack.processes["transitions"].poll() is not None, what="the writer exited")
        assert "another writer appended to it" in (stack.workdir / "transitions.log").read_text()
        stack.restart("transitions")
        stack.wait_ready("transitions", 90)
        run = eventually(lambda: (doc := api.get(f"/flow_runs/{run_id}").json()).get("version") == 2 and doc, what="the claim applied once")
        assert run["state"]["type"] == "Submitted"
        again = api.post(f"/flow_runs/{run_id}/state", json={"state": {"type": "Running"}, "version": 2})
        assert again.status_code == 200 and again.json()["version"] == 3, again.text
