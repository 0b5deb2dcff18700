"""Faust vs plain aiokafka on RunLedger's hot path: ``python -m bench.faust_vs_aiokafka [--quick]``.

The hot path is the state-transitions writer (``services/transitions/service.py``): consume a
command keyed by run id, check the run's current version (optimistic lock) in per-partition
state, append an event, reply to the requester. The same workload goes through two writers,
each a separate OS process on its own fresh embedded Tansu broker (``runledger.services.devstack``):

* ``faust``       — ``bench/faust_app_for_bench.py``: a Faust agent over the commands topic with a
  changelog-backed ``app.Table`` (version per run id); the reply is sent once the event is
  acknowledged (the writer's "durable first" contract). Settings and the 10 ms fetch-wait patch
  from /work/shared/research/tansu.md.
* ``aiokafka``    — ``serve-aiokafka`` below: a consumer-group loop in the shape of the real
  service (getmany batches, dict state per partition rebuilt from the events topic on
  assignment, producer.send for events, gather the acks, send replies, gather, commit).
* ``faust-noack`` — (optional, in the full run) the Faust agent without waiting for the event's
  ack before replying: shows how much of Faust's cost is the per-message ack wait.

The requester (this process): an aiokafka producer (linger 0, acks=all) and a reply consumer
with manual assignment (no group) and ``fetch_max_wait_ms=10``; replies are matched by command
id. Latency is request -> reply per command; throughput is replies per second of wall time.
Each scenario is bounded by a count and a time cap. Runs are handed out from a FIFO pool larger
than the concurrency, so no two commands in flight touch the same run; every command carries the
run's current version, so any rejection or wrong version is an error (and a sign of lost state).

Also measured: spawn -> first reply for a fresh writer (process start, group join, Faust's table
recovery), and after a graceful restart with state (Faust restores its table from the
changelog; the aiokafka loop replays the events topic), checked by sending each of a few runs
its known version: a stale restore answers a conflict.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

REPO = Path(__file__).resolve().parent.parent
PARTITIONS = 4
SESSION_MS = 2000  # the same group timings as the Faust app (Tansu holds a join for session/2)
HEARTBEAT_MS = 500
FETCH_WAIT_MS = 10  # Tansu's long poll answers up to W/2 late; see tansu.md #5
STATES = ("Submitted", "Running", "Success", "Scheduled")
REQUEST_TIMEOUT_S = 15.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN when empty."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# ==================================================================================================
# (b) the plain aiokafka writer — runs in its own process: python -m bench.faust_vs_aiokafka serve-aiokafka
# ==================================================================================================
class AiokafkaWriter:
    def __init__(self, bootstrap: str, group: str, commands: str, events: str) -> None:
        self.bootstrap, self.group, self.commands, self.events = bootstrap, group, commands, events
        self.versions: dict[int, dict[str, int]] = {}  # partition -> run id -> version
        self.next_event_offset: dict[int, int] = {}
        self.lock = asyncio.Lock()
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        from runledger.services.runtime import tansu_compat

        tansu_compat.apply()
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=0)
        self.reader = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=FETCH_WAIT_MS
        )
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=FETCH_WAIT_MS,
            session_timeout_ms=SESSION_MS,
            heartbeat_interval_ms=HEARTBEAT_MS,
            rebalance_timeout_ms=10000,
            max_poll_records=1000,
        )
        await asyncio.gather(self.producer.start(), self.reader.start())
        self.consumer.subscribe([self.commands], listener=_Rebuild(self))
        await self.consumer.start()
        try:
            while not self.stopping.is_set():
                batch = await self.consumer.getmany(timeout_ms=200, max_records=1000)
                if batch:
                    async with self.lock:
                        await self.process(batch)
        finally:
            await self.consumer.stop()
            await asyncio.gather(self.producer.stop(), self.reader.stop())

    async def rebuild(self, partitions: list[int]) -> None:
        """Replay the events of newly assigned partitions into the dict state (the service's catch_up)."""
        for p in list(self.versions):
            if p not in partitions:
                del self.versions[p]
        tps = [TopicPartition(self.events, p) for p in partitions]
        if not tps:
            return
        self.reader.assign(tps)
        for tp in tps:
            self.versions.setdefault(tp.partition, {})
            self.reader.seek(tp, self.next_event_offset.setdefault(tp.partition, 0))
        end = await self.reader.end_offsets(tps)
        remaining = {tp for tp in tps if self.next_event_offset[tp.partition] < end[tp]}
        while remaining:
            batch = await self.reader.getmany(*remaining, timeout_ms=500, max_records=5000)
            for tp, records in batch.items():
                versions = self.versions[tp.partition]
                for record in records:
                    if record.offset < end[tp]:
                        event = orjson.loads(record.value)
                        versions[event["run"]] = event["version"]
                        self.next_event_offset[tp.partition] = record.offset + 1
                if self.next_event_offset[tp.partition] >= end[tp]:
                    remaining.discard(tp)

    async def process(self, batch: dict) -> None:
        decided = []
        for tp, records in batch.items():
            versions = self.versions.get(tp.partition)
            if versions is None:  # revoked while fetched
                continue
            for record in records:
                command = orjson.loads(record.value)
                run = command["run"]
                current = versions.get(run, 0)
                expected = command["expected"]
                if expected is not None and expected != current:
                    decided.append((tp.partition, command, False, current, None))
                    continue
                version = current + 1
                versions[run] = version
                event = {"run": run, "version": version, "state": command["state"], "cmd": command["id"]}
                sent = await self.producer.send(
                    self.events, orjson.dumps(event), key=run.encode(), partition=tp.partition
                )
                decided.append((tp.partition, command, True, version, sent))
        # Durable first: every event of the batch is acknowledged before any reply goes out.
        acks = [sent for *_, sent in decided if sent is not None]
        if acks:
            for metadata in await asyncio.gather(*acks):
                p = metadata.partition
                self.next_event_offset[p] = max(self.next_event_offset.get(p, 0), metadata.offset + 1)
        replies = [
            await self.producer.send(
                self.replies_topic(command),
                orjson.dumps({"id": command["id"], "ok": ok, "version": version}),
                key=command["run"].encode(),
                partition=command["rp"],
            )
            for _, command, ok, version, _ in decided
        ]
        if replies:
            await asyncio.gather(*replies)
        await self.consumer.commit(
            {tp: records[-1].offset + 1 for tp, records in batch.items() if tp.partition in self.versions}
        )

    def replies_topic(self, command: dict) -> str:
        return command["rt"]


class _Rebuild(ConsumerRebalanceListener):
    def __init__(self, writer: AiokafkaWriter) -> None:
        self.writer = writer

    async def on_partitions_revoked(self, revoked) -> None:
        async with self.writer.lock:
            pass

    async def on_partitions_assigned(self, assigned) -> None:
        async with self.writer.lock:
            await self.writer.rebuild(sorted(tp.partition for tp in assigned))


def serve_aiokafka() -> None:
    env = os.environ
    writer = AiokafkaWriter(env["BENCH_AK_BOOTSTRAP"], env["BENCH_AK_GROUP"], env["BENCH_AK_COMMANDS"], env["BENCH_AK_EVENTS"])

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, writer.stopping.set)
        await writer.run()

    asyncio.run(runner())


# ==================================================================================================
# the requester and the scenarios (this process)
# ==================================================================================================
class Requester:
    def __init__(self, bootstrap: str, commands: str, replies: str) -> None:
        self.bootstrap, self.commands, self.replies = bootstrap, commands, replies
        self.pending: dict[str, asyncio.Future] = {}
        self.ids = itertools.count()
        self.prefix = uuid.uuid4().hex[:8]

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=0)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=FETCH_WAIT_MS)
        await asyncio.gather(self.producer.start(), self.consumer.start())
        tps = [TopicPartition(self.replies, p) for p in range(PARTITIONS)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)  # a fresh topic per writer; unknown ids are ignored
        self.listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=200, max_records=5000)
            now = time.perf_counter()
            for records in batch.values():
                for record in records:
                    reply = orjson.loads(record.value)
                    fut = self.pending.pop(reply["id"], None)
                    if fut is not None and not fut.done():
                        fut.set_result((now, reply))

    async def request(self, run: str, expected: int | None, state: str, timeout: float = REQUEST_TIMEOUT_S):
        """Send one command and wait for its reply: (seconds, reply)."""
        n = next(self.ids)
        cid = f"{self.prefix}-{n}"
        fut = asyncio.get_running_loop().create_future()
        self.pending[cid] = fut
        command = {"id": cid, "run": run, "expected": expected, "state": state, "rp": n % PARTITIONS, "rt": self.replies}
        started = time.perf_counter()
        try:
            await self.producer.send(self.commands, orjson.dumps(command), key=run.encode())
            received, reply = await asyncio.wait_for(fut, timeout)
        finally:
            self.pending.pop(cid, None)
        return received - started, reply

    async def stop(self) -> None:
        self.listener.cancel()
        try:
            await self.listener
        except (asyncio.CancelledError, Exception):
            pass
        await asyncio.gather(self.producer.stop(), self.consumer.stop())


@dataclass
class Result:
    impl: str
    conc: int
    target: int
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    capped: bool = False
    throughput: float = 0.0
    p50_ms: float = float("nan")
    p90_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    cpu: dict = field(default_factory=dict)  # process -> % of one core
    error_samples: list = field(default_factory=list)


class Runs:
    """The runs and their versions as the requester knows them; a FIFO pool of idle runs."""

    def __init__(self, prefix: str, count: int) -> None:
        self.version = {f"{prefix}-run-{i}": 0 for i in range(count)}
        self.pool = deque(self.version)
        self.steps = {run: 0 for run in self.version}


async def scenario(req: Requester, runs: Runs, impl: str, conc: int, n: int, max_seconds: float) -> Result:
    result = Result(impl, conc, n)
    latencies: list[float] = []
    issued = 0
    started = time.perf_counter()
    deadline = started + max_seconds

    async def worker() -> None:
        nonlocal issued
        while issued < n and time.perf_counter() < deadline:
            issued += 1
            run = runs.pool.popleft()
            expected = runs.version[run]
            state = STATES[runs.steps[run] % len(STATES)]
            try:
                seconds, reply = await req.request(run, expected, state)
            except asyncio.TimeoutError:
                result.errors += 1
                if len(result.error_samples) < 5:
                    result.error_samples.append(f"{run}: no reply in {REQUEST_TIMEOUT_S}s")
                runs.pool.append(run)
                continue
            if reply.get("ok") and reply.get("version") == expected + 1:
                result.ok += 1
                latencies.append(seconds)
                runs.version[run] = expected + 1
                runs.steps[run] += 1
            else:
                result.errors += 1
                if len(result.error_samples) < 5:
                    result.error_samples.append(f"{run}: sent version {expected}, got {reply}")
                if isinstance(reply.get("version"), int):
                    runs.version[run] = reply["version"]
            runs.pool.append(run)

    await asyncio.gather(*(worker() for _ in range(conc)))
    result.seconds = time.perf_counter() - started
    result.capped = issued < n
    result.throughput = result.ok / result.seconds if result.seconds else 0.0
    latencies.sort()
    if latencies:
        result.p50_ms = percentile(latencies, 50) * 1000
        result.p90_ms = percentile(latencies, 90) * 1000
        result.p99_ms = percentile(latencies, 99) * 1000
        result.max_ms = latencies[-1] * 1000
    return result


# -- CPU sampling ----------------------------------------------------------------------------------
def cpu_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)
    except (OSError, IndexError, ValueError):
        return None


class CpuSampler:
    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.before = {name: cpu_ticks(pid) for name, pid in self.pids.items()}
        return self

    def __exit__(self, *exc):
        elapsed = time.perf_counter() - self.t0
        self.percent = {}
        for name, pid in self.pids.items():
            after = cpu_ticks(pid)
            if after is not None and self.before[name] is not None and elapsed > 0:
                self.percent[name] = round(100.0 * (after - self.before[name]) / CLK_TCK / elapsed)
        return False


# -- the writers as processes ----------------------------------------------------------------------
@dataclass
class Impl:
    name: str
    topics: dict
    workdir: Path
    bootstrap: str
    spawns: int = 0

    def argv_env(self) -> tuple[list[str], dict[str, str]]:
        env = os.environ.copy()
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["PYTHONUNBUFFERED"] = "1"
        if self.name.startswith("faust"):
            env.update(
                BENCH_FAUST_BOOTSTRAP=self.bootstrap,
                BENCH_FAUST_APP_ID=self.topics["group"],
                BENCH_FAUST_COMMANDS=self.topics["commands"],
                BENCH_FAUST_EVENTS=self.topics["events"],
                BENCH_FAUST_REPLIES=self.topics["replies"],
                BENCH_FAUST_ACK_EVENTS="0" if self.name == "faust-noack" else "1",
                BENCH_FAUST_DATADIR=str(self.workdir / "faust-data"),
            )
            argv = [sys.executable, "-m", "bench.faust_app_for_bench", "worker", "--without-web", "--loglevel", "warn"]
        else:
            env.update(
                BENCH_AK_BOOTSTRAP=self.bootstrap,
                BENCH_AK_GROUP=self.topics["group"],
                BENCH_AK_COMMANDS=self.topics["commands"],
                BENCH_AK_EVENTS=self.topics["events"],
            )
            argv = [sys.executable, "-m", "bench.faust_vs_aiokafka", "serve-aiokafka"]
        return argv, env

    def spawn(self) -> subprocess.Popen:
        argv, env = self.argv_env()
        self.spawns += 1
        self.log = self.workdir / f"{self.name}-{self.spawns}.log"
        # cwd outside the repo: Faust writes a data directory and nothing may land in the checkout.
        return subprocess.Popen(argv, env=env, cwd=self.workdir, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)


def stop_process(process: subprocess.Popen, timeout: float = 20.0) -> float:
    """SIGTERM our own child, wait; SIGKILL it only if it does not exit. Returns seconds taken."""
    started = time.perf_counter()
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return time.perf_counter() - started


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def create_topics(bootstrap: str, names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=PARTITIONS, replication_factor=1) for name in names])
    finally:
        await admin.close()


async def first_reply(req: Requester, process: subprocess.Popen, spawned: float, probes: list[tuple[str, int]],
                      timeout: float) -> tuple[float | None, int, list]:
    """Send the probes right after the spawn; seconds from spawn to the first reply, and how many
    probes were answered as expected (ok, version + 1)."""
    async def one(run: str, version: int):
        seconds, reply = await req.request(run, version, "Running", timeout=timeout)
        return reply

    tasks = {asyncio.create_task(one(run, version)) for run, version in probes}
    first = None
    good = 0
    bad = []
    while tasks:
        done, tasks = await asyncio.wait(tasks, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            try:
                reply = task.result()
            except asyncio.TimeoutError:
                bad.append("no reply")
                continue
            if first is None:
                first = time.perf_counter() - spawned
            if reply.get("ok"):
                good += 1
            else:
                bad.append(reply)
        if tasks and process.poll() is not None:
            bad.append(f"writer exited with {process.returncode}")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            break
    return first, good, bad


@dataclass
class ImplReport:
    impl: str
    startup_s: float | None = None
    restart_s: float | None = None
    restart_good: str = ""
    restart_runs: int = 0
    restart_events: int = 0
    stop_s: float | None = None
    results: list = field(default_factory=list)
    notes: list = field(default_factory=list)


async def bench_impl(name: str, args, workdir: Path) -> ImplReport:
    from runledger.services.devstack import Stack

    report = ImplReport(name)
    stack = Stack(workdir=workdir / f"broker-{name}")
    stack.start_broker()  # a fresh embedded broker per writer, on a free 127.0.0.1 port
    bootstrap = f"127.0.0.1:{stack.broker_port}"
    tag = f"{uuid.uuid4().hex[:6]}-{name}"
    topics = {
        "commands": f"bench-{tag}-commands",
        "events": f"bench-{tag}-events",
        "replies": f"bench-{tag}-replies",
        "group": f"bench-{tag}",
    }
    process = None
    req = None
    try:
        await create_topics(bootstrap, [topics["commands"], topics["events"], topics["replies"]])
        req = Requester(bootstrap, topics["commands"], topics["replies"])
        await req.start()
        impl = Impl(name, topics, workdir, bootstrap)
        runs = Runs(tag, max(4 * args.conc, 64))

        spawned = time.perf_counter()
        process = impl.spawn()
        first, good, bad = await first_reply(req, process, spawned, [(f"{tag}-probe", 0)], args.startup_timeout)
        report.startup_s = first
        if first is None:
            report.notes.append(f"no first reply: {bad}\n{log_tail(impl.log)}")
            return report
        print(f"  {name}: first reply {first:.2f} s after spawn", flush=True)

        pids = {"writer": process.pid, "broker": stack.processes["broker"].pid, "bench": os.getpid()}
        await scenario(req, runs, name, args.conc, args.warmup, 30.0)  # unmeasured warm-up
        for conc, n in ((1, args.n1), (args.conc, args.n)):
            with CpuSampler(pids) as cpu:
                result = await scenario(req, runs, name, conc, n, args.max_seconds)
            result.cpu = cpu.percent
            report.results.append(result)
            print(f"  {name}: c={conc} {result.ok} ok in {result.seconds:.1f} s, p50 {result.p50_ms:.1f} ms", flush=True)

        if args.restart:
            report.restart_runs = len(runs.version)
            report.restart_events = sum(runs.version.values()) + 1  # + the startup probe
            report.stop_s = stop_process(process)
            spawned = time.perf_counter()
            process = impl.spawn()
            probes = [(run, runs.version[run]) for run in list(runs.version)[:8]]
            first, good, bad = await first_reply(req, process, spawned, probes, args.restart_timeout)
            report.restart_s = first
            unanswered = sum(1 for b in bad if b == "no reply")
            report.restart_good = f"{good}/{len(probes)} ok" + (f", {unanswered} unanswered" if unanswered else "")
            if bad:
                report.notes.append(
                    f"after the restart, {len(bad)} of {len(probes)} probes (sent while the writer was starting) "
                    f"were not answered as expected within {args.restart_timeout:g} s: {bad[:4]}"
                )
            print(f"  {name}: restart, first reply {first if first is None else round(first, 2)} s after spawn, "
                  f"probes {report.restart_good}", flush=True)
        return report
    finally:
        if req is not None:
            await req.stop()
        if process is not None:
            stop_process(process)
        stack.stop()


# -- output -----------------------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:.{digits}f}"


def print_report(reports: list[ImplReport], args, context: dict) -> None:
    print()
    print(f"Faust vs plain aiokafka: state-transitions writer hot path ({context['mode']})")
    print(f"machine: {context['cores']} cores, {context['cpu']}, Python {context['python']}; "
          f"faust-streaming {context['faust']}, aiokafka {context['aiokafka']}; "
          f"load avg before {context['load_before']}, after {context['load_after']}")
    print(f"workload: commands keyed by run id, {PARTITIONS} partitions, fresh Tansu broker per writer; "
          f"c=1: n={args.n1}, c={args.conc}: n={args.n}, cap {args.max_seconds:g} s each; warm-up {args.warmup}; "
          f"fetch_max_wait 10 ms everywhere; session {SESSION_MS} ms")
    print()
    header = ("writer", "conc", "ok", "err", "secs", "cmd/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
              "writer%", "broker%", "bench%")
    rows = []
    for report in reports:
        for r in report.results:
            rows.append((
                report.impl, str(r.conc), f"{r.ok}{'*' if r.capped else ''}", str(r.errors), fmt(r.seconds),
                fmt(r.throughput, 0), fmt(r.p50_ms), fmt(r.p90_ms), fmt(r.p99_ms), fmt(r.max_ms),
                str(r.cpu.get("writer", "-")), str(r.cpu.get("broker", "-")), str(r.cpu.get("bench", "-")),
            ))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    print(line(header))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))
    print("  (* = stopped by the time cap; CPU as % of one core during the scenario)")
    print()
    header2 = ("writer", "spawn->1st reply, fresh (s)", "restart: spawn->1st reply (s)", "restart probes (run, version)",
               "graceful stop (s)")
    rows2 = [(
        r.impl, fmt(r.startup_s, 2),
        fmt(r.restart_s, 2) + (f" ({r.restart_runs} runs, {r.restart_events} events)" if r.restart_runs else ""),
        r.restart_good or "-", fmt(r.stop_s, 2),
    ) for r in reports]
    widths2 = [max(len(h), *(len(row[i]) for row in rows2)) for i, h in enumerate(header2)]
    line2 = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths2)))
    print(line2(header2))
    print(line2(["-" * w for w in widths2]))
    for row in rows2:
        print(line2(row))
    by = {(rep.impl, r.conc): r for rep in reports for r in rep.results}
    print()
    for other in ("faust", "faust-noack"):
        for conc in (1, args.conc):
            f, a = by.get((other, conc)), by.get(("aiokafka", conc))
            if f and a and a.p50_ms == a.p50_ms and f.p50_ms == f.p50_ms and a.throughput:
                print(f"{other} / aiokafka at c={conc}: p50 x{f.p50_ms / a.p50_ms:.2f}, p99 x{f.p99_ms / a.p99_ms:.2f}, "
                      f"throughput x{f.throughput / a.throughput:.2f}")
    for report in reports:
        for note in report.notes:
            print(f"note ({report.impl}): {note}")
        for r in report.results:
            for sample in r.error_samples:
                print(f"error ({report.impl}, c={r.conc}): {sample}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve-aiokafka"]:
        serve_aiokafka()
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.faust_vs_aiokafka", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts and caps, no faust-noack (< 60 s)")
    parser.add_argument("--impls", default=None, help="comma list of faust,aiokafka,faust-noack")
    parser.add_argument("--conc", type=int, default=32)
    parser.add_argument("--n", type=int, default=None, help="commands at --conc")
    parser.add_argument("--n1", type=int, default=None, help="commands at concurrency 1")
    parser.add_argument("--max-seconds", type=float, default=None, help="time cap per scenario")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--no-restart", dest="restart", action="store_false", help="skip the restart-with-state measurement")
    parser.add_argument("--startup-timeout", type=float, default=60.0, help="fresh start: wait this long for the first reply")
    parser.add_argument("--restart-timeout", type=float, default=None, help="restart probes: wait this long for each reply")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    quick = args.quick
    args.n = args.n or (2000 if quick else 10000)
    args.n1 = args.n1 or (200 if quick else 500)
    args.max_seconds = args.max_seconds or (6.0 if quick else 15.0)
    args.restart_timeout = args.restart_timeout or (10.0 if quick else 20.0)
    args.warmup = args.warmup if args.warmup is not None else (64 if quick else 200)
    impls = (args.impls or ("faust,aiokafka" if quick else "faust,aiokafka,faust-noack")).split(",")

    from runledger.services.runtime import tansu_compat

    tansu_compat.apply()
    from importlib.metadata import version

    context = {
        "mode": "--quick" if quick else "full",
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "faust": version("faust-streaming"),
        "aiokafka": version("aiokafka"),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="bench-faust-vs-aiokafka-"))
    print(f"logs in {workdir}", flush=True)
    reports = []
    for name in impls:
        reports.append(asyncio.run(bench_impl(name, args, workdir)))
    context["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print_report(reports, args, context)
    print(f"\ntotal {time.perf_counter() - started:.0f} s. Client, writer and broker share the same cores, "
          "and other work on this machine adds noise: compare ratios, not absolute numbers.")
    if args.json:
        args.json.write_text(json.dumps({
            "context": context,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "reports": [asdict(r) for r in reports],
        }, indent=2, default=str))
    failed = any(r.startup_s is None or any(x.errors for x in r.results) for r in reports)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
