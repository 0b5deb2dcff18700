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
import uuid

import pytest

from bench.writer_restart import stamped_runs, template_runs
from runledger.domain.scheduling import labelset_id
from runledger.services.devstack import Stack, wait_for_port
from runledger.services.runtime import kafka
from runledger.services.runtime.scheduling_store import SchedKeys
from runledger.topics import topics_for
from tests.integration.helpers import eventually

TEMPLATES = 64
COPIES = 30  # 1,920 finished runs, ~21,500 events: several of the service's fetches


@pytest.fixture(scope="module")
def stack():
    # Timer passes every 50 ms: a rewrite (below) starts right after its marker goes. There is no
    # writer: recovery (of the runs left Running, their times in January) waits out the command
    # timeout, which must not hold up the Redis rewrites.
    env = {"RUNLEDGER_SCHEDULING_TICK_SECONDS": "0.05"}
    with Stack(own_redis=True, partitions=2, services=("scheduling",), extra_env=env) as s:
        yield s


async def _produce_runs_interleaved(settings, copies: int = COPIES, first_copy: int = 0) -> list[str]:
    """Every run of the bench's templates (each created, run and finished by the pure ledger),
    ``COPIES`` times with their own ids, in one order that keeps each run's events in order but
    puts step n of every run before step n + 1 of any: every run is Scheduled for a while of the
    log before it is finished."""
    templates = template_runs(TEMPLATES)
    runs = []
    for suffix, (key, events, _, _) in stamped_runs(templates, sum(len(t[1]) for t in templates) * copies, first_copy):
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


class OneRun:
    """A run of the bench's templates with an id of its own: created, Submitted, Running (holding
    its labels' slots), its task runs done, then Success, as events produced straight to the log."""

    def __init__(self, stack) -> None:
        template = template_runs(2)[1]
        suffix = uuid.uuid4().hex[:12].encode()
        self.stack, self.key = stack, template[0].replace(b"aaaaaaaaaaaa", suffix)
        self.events = [e.replace(b"aaaaaaaaaaaa", suffix) for e in template[1]]
        self.id = self.key.decode()
        self.keys = SchedKeys(stack.settings().redis_prefix)
        self.slot = self.keys.occ("label", "etl")

    def run(self) -> None:
        asyncio.run(_produce(self.stack.settings(), [(self.key, e) for e in self.events[:-1]]))

    def finish(self) -> None:
        asyncio.run(_produce(self.stack.settings(), [(self.key, self.events[-1])]))

    def holds_slot(self) -> bool:
        return bool(self.stack.redis_client().sismember(self.slot, self.id))

    def markers(self) -> list:
        redis = self.stack.redis_client()
        return [redis.get(self.keys.written(p)) for p in range(self.stack.partitions)]


def _restart_redis_from_its_last_save(stack, meanwhile=lambda: None) -> None:
    """SIGKILL Redis, run ``meanwhile``, start it again: it loads what it last saved."""
    process = stack.processes.pop("redis")
    argv = process.args
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    try:
        meanwhile()
    finally:
        log = open(stack.workdir / "redis.restarted.log", "ab")
        stack.processes["redis"] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=stack.workdir)
        wait_for_port(int(argv[argv.index("--port") + 1]))


def test_what_a_batch_changed_is_written_when_redis_comes_back_with_its_data(stack):
    """Redis restarts with its data (AOF or RDB, as in production) while a run finishes: the
    batch is retried with its events already applied, and the run must still leave its slot."""
    run = OneRun(stack)
    run.run()
    eventually(run.holds_slot, what="the running run holding its slot")
    eventually(lambda: all(run.markers()), what="keys marked written")  # else all is written again anyway
    stack.redis_client().save()

    def finish_while_redis_is_gone():
        run.finish()
        time.sleep(1.5)  # the service applies it and fails to write it, at least once

    _restart_redis_from_its_last_save(stack, finish_while_redis_is_gone)
    assert run.holds_slot() and all(run.markers())  # the data came back
    eventually(lambda: not run.holds_slot(), what="the finished run leaving its slot")
    assert b'"state":"Success"' in stack.redis_client().get(run.keys.run(run.id))


def test_a_redis_that_comes_back_older_is_written_again(stack):
    """Redis restarts from a save made before a run finished (an RDB or AOF behind its last
    writes, a failover to a lagging replica): the service sees that Redis is behind what it wrote
    and writes its partitions again, so the finished run does not get its slot back: promptly,
    even while a recovery command waits for a writer that is not there."""
    run = OneRun(stack)
    run.run()
    eventually(run.holds_slot, what="the running run holding its slot")
    eventually(lambda: all(run.markers()), what="keys marked written")
    stack.redis_client().save()  # Redis as it will come back: the run holds its slot
    run.finish()
    eventually(lambda: not run.holds_slot(), what="the finished run leaving its slot")
    _restart_redis_from_its_last_save(stack)
    assert run.holds_slot()  # came back older
    eventually(lambda: not run.holds_slot(), timeout=10, what="the finished run leaving its slot again")
    assert b'"state":"Success"' in stack.redis_client().get(run.keys.run(run.id))


def test_sigterm_stops_the_service_even_in_the_middle_of_a_redis_write(stack):
    """SIGTERM while a timer pass writes every run again (its marker gone): the pass's cancel
    used to be lost in a Redis call (Python 3.11's wait_for, see services/runtime/tasks.py) and
    the process never stopped. It must stop, every time."""
    asyncio.run(_produce_runs_interleaved(stack.settings(), copies=100, first_copy=10**6))  # ~6,400 more runs to write
    keys = SchedKeys(stack.settings().redis_prefix)
    for attempt in range(3):
        stack.wait_ready("scheduling", timeout=120)
        redis = stack.redis_client()
        eventually(lambda: all(redis.get(keys.written(p)) for p in range(stack.partitions)), what="keys marked written")
        redis.delete(*[keys.written(p) for p in range(stack.partitions)])
        time.sleep(0.1)  # the next pass is writing every run again
        process = stack.processes.pop("scheduling")
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError(f"the scheduling service ignored SIGTERM (attempt {attempt + 1})") from None
        stack.start_service("scheduling")
    stack.wait_ready("scheduling", timeout=120)
