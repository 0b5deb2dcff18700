"""The scheduling service rebuilds its facts by replaying its partitions from the start (after a
restart or a rebalance). What it writes to Redis is each run as it is at the end of the replay,
never as it was part-way: a finished run is never due again, nor holding a slot, even for a
moment (an agent polling then would be offered it, a claim would find its label full)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time

import pytest

from bench.writer_restart import stamped_runs, template_runs
from runledger.domain.scheduling import labelset_id
from runledger.services.devstack import Stack, wait_for_port
from runledger.services.runtime import kafka
from runledger.services.runtime.scheduling_store import SchedKeys
from runledger.topics import topics_for

TEMPLATES = 64
COPIES = 30  # 1,920 finished runs, ~21,500 events: several of the service's fetches


@pytest.fixture(scope="module")
def stack():
    with Stack(own_redis=True, partitions=2, services=("scheduling",)) as s:
        yield s


async def _produce_runs_interleaved(settings) -> list[str]:
    """Every run of the bench's templates (each created, run and finished by the pure ledger),
    ``COPIES`` times with their own ids, in one order that keeps each run's events in order but
    puts step n of every run before step n + 1 of any: every run is Scheduled for a while of the
    log before it is finished."""
    templates = template_runs(TEMPLATES)
    runs = []
    for suffix, (key, events, _, _) in stamped_runs(templates, sum(len(t[1]) for t in templates) * COPIES):
        runs.append((key.replace(b"aaaaaaaaaaaa", suffix), [e.replace(b"aaaaaaaaaaaa", suffix) for e in events]))
    producer = kafka.producer(settings, linger_ms=20)
    await producer.start()
    try:
        topic = topics_for(settings).events.name
        sends = []
        for step in range(max(len(events) for _, events in runs)):
            for key, events in runs:
                if step < len(events):
                    sends.append(await producer.send(topic, events[step], key=key))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    return [key.decode() for key, _ in runs]


def test_a_replay_never_shows_a_finished_run_as_due_or_holding_a_slot(stack):
    stack.kill("scheduling", signal.SIGKILL)
    run_ids = asyncio.run(_produce_runs_interleaved(stack.settings()))
    keys = SchedKeys(stack.settings().redis_prefix)
    watched = [("due", keys.due(labelset_id(["docker", "etl"])))] + [("occ", keys.occ("label", label)) for label in ("docker", "etl")]
    redis = stack.redis_client()
    most = {key: 0 for _, key in watched}
    stop = threading.Event()

    def watch() -> None:  # as an agent's poll and the slot gate would read, all through the replay
        while not stop.is_set():
            for kind, key in watched:
                most[key] = max(most[key], redis.zcard(key) if kind == "due" else redis.scard(key))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        stack.start_service("scheduling")
        stack.wait_ready("scheduling", timeout=120)
    finally:
        stop.set()
        watcher.join()
    assert most == {key: 0 for _, key in watched}
    # And at the end every run is written, as finished.
    docs = redis.mget([keys.run(run_id) for run_id in run_ids])
    assert all(doc is not None and b'"state":"Success"' in doc for doc in docs), sum(doc is None for doc in docs)


async def _produce(settings, records: list[tuple[bytes, bytes]]) -> None:
    producer = kafka.producer(settings)
    await producer.start()
    try:
        topic = topics_for(settings).events.name
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def test_what_a_batch_changed_is_written_when_redis_comes_back_with_its_data(stack):
    """Redis restarts with its data (AOF or RDB, as in production) while a run finishes: the
    batch is retried with its events already applied, and the run must still leave its slot."""
    keys = SchedKeys(stack.settings().redis_prefix)
    template = template_runs(2)[1]  # run, Submitted, Running, its task runs, Success
    suffix = b"%012x" % (10**9 + int(time.time()))
    run_key = template[0].replace(b"aaaaaaaaaaaa", suffix)
    events = [e.replace(b"aaaaaaaaaaaa", suffix) for e in template[1]]
    run_id = run_key.decode()
    redis = stack.redis_client()
    asyncio.run(_produce(stack.settings(), [(run_key, e) for e in events[:-1]]))
    slot = keys.occ("label", "etl")
    deadline = time.monotonic() + 30
    while not redis.sismember(slot, run_id):
        assert time.monotonic() < deadline, "the running run never took its slot"
        time.sleep(0.05)

    markers = [keys.written(p) for p in range(stack.partitions)]
    while not all(redis.get(m) for m in markers):  # else the service would write everything again anyway
        assert time.monotonic() < deadline, "the service never marked its keys written"
        time.sleep(0.05)

    process = stack.processes.pop("redis")
    argv = process.args
    port = int(argv[argv.index("--port") + 1])
    redis.save()  # what a restarted Redis with persistence comes back with
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    try:
        asyncio.run(_produce(stack.settings(), [(run_key, events[-1])]))  # Success, while Redis is gone
        time.sleep(1.5)  # the service applies it and fails to write it, at least once
    finally:
        log = open(stack.workdir / "redis.restarted.log", "ab")
        stack.processes["redis"] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=stack.workdir)
        wait_for_port(port)
    redis = stack.redis_client()
    assert redis.sismember(slot, run_id) and all(redis.get(m) for m in markers)  # the data came back
    deadline = time.monotonic() + 30
    while redis.sismember(slot, run_id):
        assert time.monotonic() < deadline, "the finished run still holds its slot"
        time.sleep(0.05)
    assert b'"state":"Success"' in redis.get(keys.run(run_id))
