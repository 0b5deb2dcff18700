"""The lines' sort keys (``LogChunk.keys``) change nothing stored: a chunk with them, the same
chunk without them (a record written before they existed) and one whose keys are malformed
(dropped, computed from the lines) leave the same index members and stream entries. Real broker,
Redis and log service (the session stack)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timezone

import orjson

from runledger.messages.logs import LogChunk, LogLimits, LogLine, chunks, validate_batch
from runledger.services.runtime import kafka as clients
from runledger.services.runtime import redis as redis_clients
from runledger.services.runtime.logstore import LogStore
from runledger.topics import LOGS, topics_for

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)


def ingress_lines(n: int, run_id: str = "r") -> list[LogLine]:
    """``n`` lines as the ingress validates them: out of timestamp order, every level, JSON that
    needs escaping."""
    levels = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    records = [{"flow_run_id": run_id, "level": levels[i % 5], "name": "prefect.Task", "info": {"i": i, "nested": [1.5, None]},
                "timestamp": f"2026-05-01T10:00:{(i * 7) % 60:02d}.{i:06d}+01:00",
                "message": f"line {i}: \"quoted\", new\nline, tab\t, ünïcode ✓"} for i in range(n)]
    return validate_batch(records, LogLimits(), NOW).lines


def as_stored(lines: list[LogLine]) -> tuple[list[dict], str]:
    return [orjson.loads(line.encoded) for line in lines], "".join(line.sort_key() for line in lines)


def stored(redis, run_id: str) -> tuple[list[bytes], list[bytes]]:
    """A run's index members less their stream ids (the arrival time differs from run to run),
    and its lines' stored JSON in arrival order; checks that the members name the entries."""
    members = redis.zrange(f"rl:logs:{{{run_id}}}:ix", 0, -1)
    entries = redis.xrange(f"rl:logs:{{{run_id}}}:tl")
    ids = {b"%d-%d" % (int(m[16:29]), int(m[30:36])) for m in members}
    assert ids == {entry_id for entry_id, _ in entries}
    assert all(fields[b"k"] == b"l" for _, fields in entries)
    return [m[:16] + m[36:] for m in members], [fields[b"d"] for _, fields in entries]


async def _produce(stack, records: list[tuple[str, bytes]]) -> None:
    settings = stack.settings()
    producer = clients.producer(settings)
    await producer.start()
    try:
        for run_id, value in records:
            await producer.send_and_wait(topics_for(settings)[LOGS].name, value, key=run_id.encode())
    finally:
        await producer.stop()


def test_a_chunk_stores_the_same_with_its_keys_without_them_and_with_malformed_ones(stack, redis_client):
    runs = {name: str(uuid.uuid4()) for name in ("keys", "none", "short", "garbled")}
    (_, with_keys), = chunks(ingress_lines(30, runs["keys"]), LogLimits())[0]  # as the ingress writes it
    lines, keys = as_stored(ingress_lines(30))
    assert orjson.loads(with_keys)["keys"] == keys
    values = {
        "keys": with_keys,
        "none": LogChunk(flow_run_id=runs["none"], lines=lines).encode(),
        "short": LogChunk(flow_run_id=runs["short"], lines=lines, keys=keys[:-17]).encode(),
        "garbled": LogChunk(flow_run_id=runs["garbled"], lines=lines, keys=keys.replace("E", "X")).encode(),
    }
    asyncio.run(_produce(stack, [(runs[name], value) for name, value in values.items()]))
    deadline = time.monotonic() + 30
    while any(redis_client.zcard(f"rl:logs:{{{run}}}:ix") < len(lines) for run in runs.values()):
        assert time.monotonic() < deadline, "lines not stored"
        time.sleep(0.05)
    members, data = stored(redis_client, runs["keys"])
    assert members == sorted(k.encode() for k in (keys[i:i + 17] for i in range(0, len(keys), 17)))
    assert data == [orjson.dumps(line) for line in lines]
    for name in ("none", "short", "garbled"):
        assert stored(redis_client, runs[name]) == (members, data), name


async def test_a_chunk_over_the_cap_and_over_one_zadd_keeps_the_newest_lines(stack):
    """2,500 lines in one chunk (the script adds index members 2,000 at a time) under a cap of
    2,200: the 300 oldest by timestamp go, from the index and the timeline; the same chunk without
    its keys leaves the same. A store of its own (prefix) beside the running log service's."""
    redis = redis_clients.client(stack.settings())
    store = LogStore(redis, prefix=f"t{uuid.uuid4().hex[:8]}")
    try:
        await store.ensure_scripts()
        lines, keys = as_stored(ingress_lines(2500))
        runs = (str(uuid.uuid4()), str(uuid.uuid4()))
        async with redis.pipeline(transaction=False) as pipe:
            store.queue_lines(pipe, runs[0], 7, lines, 2200, keys=keys)
            store.queue_lines(pipe, runs[1], 7, lines, 2200)
            store.queue_lines(pipe, runs[0], 7, lines, 2200, keys=keys)  # a redelivery: a no-op
            assert await pipe.execute() == [2500, 2500, 0]
        key_of = [keys[i * 17:i * 17 + 17] for i in range(len(lines))]
        newest = sorted(sorted(range(len(lines)), key=key_of.__getitem__)[300:])
        for run in runs:
            members = [m.decode() for m in await redis.zrange(store.index_key(run), 0, -1)]
            assert [m[:16] + m[36:] for m in members] == sorted(key_of[i] for i in newest)
            entries = await redis.xrange(store.timeline_key(run))
            assert {i.decode() for i, _ in entries} == {f"{int(m[16:29])}-{int(m[30:36])}" for m in members}
            assert [f[b"d"] for _, f in entries] == [orjson.dumps(lines[i]) for i in newest]
    finally:
        await redis.delete(*[k async for k in redis.scan_iter(f"{store.base}:*")] or ["-"])
        await redis.aclose()
