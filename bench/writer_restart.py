"""Writer restart benchmark: ``.venv/bin/python -m bench.writer_restart``.

Fills the events log of a fresh embedded-broker stack (``runledger.services.devstack.Stack``:
Tansu + a private redis-server; only the broker and the topics are used) with N valid events,
then measures the transitions service's restart with snapshots off and on:

* ``ready s``: process start -> ``/readyz`` 200 (imports, broker, group join, rebuild);
* ``caught up s``: the rebuild after the assignment, from the service's "caught up" log line
  (restore + tail; the writer restores its snapshots while it joins the group, so this counts
  only the part of the restore the assignment still waited for);
* ``RSS MiB``: the writer's resident memory right after it is ready.

``--restarts N`` measures the restart with snapshots on N times and prints, for each, the
per-partition restore times ("snapshot restored" seconds: from the start of the restore to that
partition's book) and a timeline of the writer's log lines in seconds after the spawn.

The events are made by the pure ``Ledger`` (so they are exactly what the writer would have
written): a few template runs, each through create (2 task runs) -> Submitted -> Running -> task
runs Running/Success -> Success, every fourth with a refused stale update (``VerdictRecorded``);
then stamped into as many runs as needed by substituting a per-copy id suffix, and produced
straight to the events topic in large batches (no HTTP: a million requests would take hours).

Sizes up to ``--full-max``: (1) start with ``RUNLEDGER_SNAPSHOTS=false`` (full replay), stop;
(2) start with snapshots on (no snapshot yet: full replay, then it snapshots every partition),
wait until every partition's snapshot is saved, stop; (3) restart with snapshots on: restore +
tail. Larger sizes seed the snapshots (``seeded_snapshots``, checked against replaying ledgers by
``check_seeding``), add ``--tail`` events and time only (3): two full replays of a million events
would take minutes each. Stops are SIGTERM (a kill -9 adds about two group session timeouts on
the embedded broker, nothing of ours).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from aiokafka.partitioner import DefaultPartitioner

from bench.measure import cpu_seconds
from runledger.domain import snapshots
from runledger.domain.ledger import Ledger
from runledger.domain.aggregate_store import encode_aggregate
from runledger.domain.snapshots import Captured
from runledger.domain.states import State
from runledger.messages import commands as c
from runledger.messages.codec import decode_event, encode
from runledger.messages.commands import CommandEnvelope
from runledger.messages.models import FlowRunSpec, PlannedTaskRun
from runledger.services.devstack import Stack, free_port
from runledger.services.runtime import kafka
from runledger.services.transitions.snapshots import SnapshotStore, pack
from runledger.settings import Settings
from runledger.topics import SNAPSHOTS, topics_for

SUFFIX = b"aaaaaaaaaaaa"  # the last 12 hex digits of every id in a template: replaced per copy
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


# -- events -------------------------------------------------------------------------------------
def _id(kind: int, n: int) -> str:
    return f"{n:08x}-{kind:04x}-4000-8000-{SUFFIX.decode()}"


def template_runs(count: int) -> list[tuple[bytes, list[bytes]]]:
    """``count`` template runs: (run id, its encoded events), made by the pure ledger."""
    counter = iter(range(1, 10**9))
    ledger = Ledger(new_id=lambda: uuid.UUID(_id(1, next(counter))))
    out = []
    for r in range(count):
        run_id = _id(2, r)
        command_ids = iter(range(r * 100, r * 100 + 100))

        def command(payload) -> CommandEnvelope:
            return CommandEnvelope(
                command_id=_id(3, next(command_ids)), type=payload.type, aggregate_id=run_id, issued_at=T0, payload=payload
            )

        spec = FlowRunSpec(
            flow_run_id=run_id, flow_id="f3c1a9d2-5b7e-4a10-9c3e-2d8f6b1a0e44", flow_name="etl-nightly", flow_version=3,
            version_group_id="0b9e3c57-8a21-4f6d-b1c2-7e5d4a3f2c10", project_id="5d2f8e1a-3c4b-4a9e-8f70-1b2c3d4e5f60",
            name=f"electric-mandrill-{r}", parameters={"who": "marvin", "batch": r}, labels=["docker", "etl"],
            scheduled_start_time=T0, idempotency_key=f"key-{r}-{SUFFIX.decode()}",
            task_runs=[PlannedTaskRun(task_run_id=_id(4, r * 10 + k), task_id=f"t{k}", task_slug=f"task-{k}-1", task_name=f"task{k}")
                       for k in range(2)],
        )
        events = []
        now = T0 + timedelta(seconds=r)
        steps = [c.CreateFlowRun(spec=spec), c.SetFlowRunState(state=State(type="Submitted"), version=1),
                 c.SetFlowRunState(state=State(type="Running"), version=2)]
        for k in range(2):
            tr = spec.task_runs[k].task_run_id
            steps += [c.SetTaskRunState(task_run_id=tr, state=State(type="Running"), version=0),
                      c.SetTaskRunState(task_run_id=tr, state=State(type="Success", message="ok"), version=1)]
        if r % 4 == 0:
            steps.append(c.SetFlowRunState(state=State(type="Success"), version=1))  # stale: a recorded refusal
        steps.append(c.SetFlowRunState(state=State(type="Success", message="All reference tasks succeeded."), version=3))
        seen = len(ledger.verdicts())
        for payload in steps:
            answer = ledger.decide(command(payload), now)
            events += [encode(env) for env in answer.events]
        verdicts = [(cid.encode(), raw) for cid, raw in ledger.verdicts()[seen:]]
        out.append((run_id.encode(), events, encode_aggregate(ledger.aggregates[run_id]), verdicts))
    return out


def stamped_runs(templates, total_events: int, first_copy: int = 0):
    """Copies of the template runs with unique ids (whole runs) until ``total_events`` events:
    yields (suffix, template)."""
    produced, copy = 0, first_copy
    while produced < total_events:
        suffix = f"{copy:012x}".encode()
        for template in templates:
            yield suffix, template
            produced += len(template[1])
            if produced >= total_events:
                return
        copy += 1


def stamp(templates, total_events: int, first_copy: int = 0):
    """Yields (key, value) event records of ``stamped_runs``."""
    for suffix, (key, events, _, _) in stamped_runs(templates, total_events, first_copy):
        k = key.replace(SUFFIX, suffix)
        for value in events:
            yield k, value.replace(SUFFIX, suffix)


def seeded_snapshots(templates, total_events: int, partitions: int, dedup_window: int) -> dict[int, Captured]:
    """The snapshot the writer would take of each partition at the end of ``stamp(templates,
    total_events)``: the templates' encoded aggregates and verdicts, stamped the same way (the
    encoder's output is per aggregate and per verdict, so this is byte for byte what it writes;
    ``check_seeding`` verifies it against a ledger that replays the events)."""
    partitioner, ps = DefaultPartitioner(), list(range(partitions))
    aggregates = {p: [] for p in ps}
    verdicts = {p: [] for p in ps}
    counts = dict.fromkeys(ps, 0)
    for suffix, (key, events, aggregate, run_verdicts) in stamped_runs(templates, total_events):
        k = key.replace(SUFFIX, suffix)
        p = partitioner(k, ps, ps)
        counts[p] += len(events)
        aggregates[p].append((k.decode(), aggregate.replace(SUFFIX, suffix)))
        verdicts[p] += [(cid.replace(SUFFIX, suffix).decode(), raw.replace(SUFFIX, suffix)) for cid, raw in run_verdicts]
    return {p: Captured(counts[p], aggregates[p], verdicts[p][-dedup_window:]) for p in ps}


def check_seeding(templates, partitions: int) -> None:
    """Seeded snapshots == snapshots of ledgers that replayed the same events (two copies)."""
    total = 2 * sum(len(t[1]) for t in templates)
    partitioner, ps = DefaultPartitioner(), list(range(partitions))
    ledgers = {p: Ledger() for p in ps}
    for key, value in stamp(templates, total):
        ledgers[partitioner(key, ps, ps)].replay(decode_event(value))
    seeded = seeded_snapshots(templates, total, partitions, Settings().dedup_window)
    for p in ps:
        restored, position = snapshots.decode(seeded[p].to_bytes())
        assert dict(restored.aggregates.items()) == ledgers[p].aggregates, f"seeded aggregates differ in partition {p}"
        assert restored.verdicts() == ledgers[p].verdicts(), f"seeded verdicts differ in partition {p}"


async def seed(settings: Settings, captured: dict[int, Captured]) -> float:
    """Write the snapshots with the writer's own store."""
    producer = kafka.producer(settings)
    await producer.start()
    started = time.perf_counter()
    try:
        store = SnapshotStore(topics_for(settings)[SNAPSHOTS].name, producer, None)
        for p, cap in captured.items():
            raw = cap.to_bytes()
            await store.save(p, cap.position, pack(raw), len(raw))
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def fill(settings: Settings, total_events: int, templates, first_copy: int = 0) -> tuple[float, list[int]]:
    topic = topics_for(settings).events.name
    partitions = list(range(settings.partitions))
    partitioner = DefaultPartitioner()
    producer = kafka.producer(settings, linger_ms=50)
    producer._max_batch_size = 1 << 20  # noqa: SLF001 (aiokafka has no public knob on an instance)
    await producer.start()
    started = time.perf_counter()
    counts = [0] * len(partitions)
    batches = {p: producer.create_batch() for p in partitions}
    pending = []

    async def flush(p: int) -> None:
        batch = batches[p]
        batch.close()
        pending.append(await producer.send_batch(batch, topic, partition=p))
        batches[p] = producer.create_batch()
        if len(pending) >= 64:
            await asyncio.gather(*pending)
            pending.clear()

    try:
        for key, value in stamp(templates, total_events, first_copy):
            p = partitioner(key, partitions, partitions)
            if batches[p].append(key=key, value=value, timestamp=None) is None:
                await flush(p)
                batches[p].append(key=key, value=value, timestamp=None)
            counts[p] += 1
        for p in partitions:
            if batches[p].record_count():
                await flush(p)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started, counts


# -- the writer ---------------------------------------------------------------------------------
def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def log_lines(stack: Stack, since: int) -> list[dict]:
    text = (stack.workdir / "transitions.log").read_bytes()[since:]
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def log_size(stack: Stack) -> int:
    path = stack.workdir / "transitions.log"
    return path.stat().st_size if path.exists() else 0


TIMELINE = ("started", "snapshot restored", "caught up")  # log events placed on the restart's timeline


def _at(line: dict) -> float | None:
    try:
        return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return None


def start_writer(stack: Stack, snapshots: bool, timeout: float) -> dict:
    since = log_size(stack)
    broker_cpu = cpu_seconds(stack, ["broker"])["broker"]
    started, spawned = time.perf_counter(), time.time()
    process = stack.start_service("transitions", RUNLEDGER_SNAPSHOTS=str(snapshots).lower())
    stack.wait_ready("transitions", timeout)
    ready = time.perf_counter() - started
    cpu = cpu_seconds(stack, ["transitions", "broker"])  # a busy, shared machine changes CPU s far less than s
    rss = rss_mib(process.pid)
    lines = log_lines(stack, since)
    caught = [line for line in lines if line.get("event") == "caught up"]
    restored = [line for line in lines if line.get("event") == "snapshot restored"]
    # When (s after spawn) the first log line, "started", each restore and "caught up" were logged.
    timeline = [(line["event"] + (f"[{line['partition']}]" if "partition" in line else ""), round(_at(line) - spawned, 2))
                for line in lines if line.get("event") in TIMELINE and _at(line) is not None]
    first = next((_at(line) for line in lines if _at(line) is not None), None)
    if first is not None:
        timeline.insert(0, ("first log line", round(first - spawned, 2)))
    return {
        "ready": ready,
        "caught_up": sum(line["seconds"] for line in caught),
        "replayed": sum(line["replayed"] for line in caught),
        "restored": len(restored),
        "restore_s": max((line["seconds"] for line in restored), default=0.0),
        "restore_by_partition": {line["partition"]: line["seconds"] for line in restored},
        "timeline": timeline,
        "cpu": cpu["transitions"],
        "broker_cpu": cpu["broker"] - broker_cpu,
        "rss": rss,
        "since": since,
    }


def wait_for_snapshots(stack: Stack, since: int, partitions: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        saved = {line["partition"]: line for line in log_lines(stack, since) if line.get("event") == "snapshot saved"}
        if len(saved) >= partitions:
            return list(saved.values())
        time.sleep(0.2)
    raise RuntimeError(f"not every partition saved a snapshot within {timeout}s; see {stack.workdir / 'transitions.log'}")


def stop_writer(stack: Stack) -> None:
    stack.kill("transitions", signal.SIGTERM)


# -- main ---------------------------------------------------------------------------------------
def _median_run(runs: list[dict]) -> dict:
    """The restart with the median "ready" (the lower middle one of an even count)."""
    return sorted(runs, key=lambda m: m["ready"])[(len(runs) - 1) // 2]


def _spread(values: list[float]) -> str:
    ordered = sorted(values)
    n = len(ordered)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return f"median {median:.2f} s ({ordered[0]:.2f}-{ordered[-1]:.2f})"


def run_size(total: int, templates, partitions: int, timeout: float, full: bool, tail: int, restarts: int = 1) -> dict:
    """``full``: the writer replays everything itself (off, then on and snapshotting), then restarts
    from its own snapshots. Otherwise the snapshots are seeded (``seeded_snapshots``) and ``tail``
    more events are produced after them: only the restart with snapshots on is measured."""
    stack = Stack(own_redis=True, partitions=partitions, extra_env={"RUNLEDGER_LOG_LEVEL": "INFO"})
    stack.api_port = free_port()
    try:
        stack.start_broker()
        stack.start_redis()
        asyncio.run(stack.create_topics())
        settings = stack.settings()
        fill_s, counts = asyncio.run(fill(settings, total, templates))
        print(f"  {sum(counts):,} events produced in {fill_s:.1f} s ({sum(counts) / fill_s:,.0f}/s), per partition {counts}", flush=True)
        row: dict = {"events": sum(counts), "fill_s": fill_s, "full": full}
        if full:
            row["off"] = start_writer(stack, False, timeout)
            stop_writer(stack)
            print(f"  snapshots off: ready {row['off']['ready']:.2f} s", flush=True)
            first = start_writer(stack, True, timeout)
            row["first"] = first
            print(f"  snapshots on, first start: ready {first['ready']:.2f} s", flush=True)
            row["snapshots"] = wait_for_snapshots(stack, first["since"], partitions, timeout)
            stop_writer(stack)
        else:
            started = time.perf_counter()
            seeded = seeded_snapshots(templates, total, partitions, settings.dedup_window)
            seed_s = asyncio.run(seed(settings, seeded))
            row["snapshots"] = [{"bytes": len(c.to_bytes()), "compressed_bytes": 0, "chunks": 0, "capture_ms": float("nan")}
                                for c in seeded.values()]
            print(f"  snapshots seeded in {time.perf_counter() - started:.1f} s (written in {seed_s:.1f} s)", flush=True)
            tail_s, tail_counts = asyncio.run(fill(settings, tail, templates, first_copy=10**6))
            row["tail"] = sum(tail_counts)
            print(f"  then {sum(tail_counts):,} more events (the tail) in {tail_s:.1f} s", flush=True)
        print(f"  snapshots: {sum(x['bytes'] for x in row['snapshots']) / 2**20:.1f} MiB raw", flush=True)
        row["restarts"] = []
        for _ in range(restarts):
            m = start_writer(stack, True, timeout)
            stop_writer(stack)
            row["restarts"].append(m)
            restores = " ".join(f"{p}:{s:.2f}" for p, s in sorted(m["restore_by_partition"].items()))
            print(f"  snapshots on, restart: ready {m['ready']:.2f} s, caught up {m['caught_up']:.2f} s, "
                  f"restore s by partition {restores or '-'}, CPU s to ready: writer {m['cpu']:.2f}, "
                  f"broker {m['broker_cpu']:.2f}; load {os.getloadavg()[0]:.2f}", flush=True)
            print("    timeline (s after spawn): " + ", ".join(f"{e} {t:.2f}" for e, t in m["timeline"]), flush=True)
        row["on"] = _median_run(row["restarts"])
        return row
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.writer_restart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated event counts (default 100000,1000000)")
    parser.add_argument("--full-max", type=int, default=200_000,
                        help="sizes up to this run the full protocol (writer replays all, snapshots itself); "
                        "larger ones seed the snapshots and time only the restart (default 200000)")
    parser.add_argument("--tail", type=int, default=5000, help="events after a seeded snapshot (default 5000)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--templates", type=int, default=64, help="distinct template runs made by the ledger")
    parser.add_argument("--timeout", type=float, default=600.0, help="per writer start (s)")
    parser.add_argument("--restarts", type=int, default=1,
                        help="measure the restart with snapshots on this many times (the table shows the median)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    settings = Settings()
    print(f"writer restart bench: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"load {os.getloadavg()[0]:.2f}, partitions {args.partitions}, "
          f"snapshot every {settings.snapshot_every_events:,} events / {settings.snapshot_every_seconds:g} s", flush=True)
    started = time.perf_counter()
    templates = template_runs(args.templates)
    check_seeding(templates, args.partitions)
    per_run = sum(len(t[1]) for t in templates) / len(templates)
    print(f"  {len(templates)} template runs from the ledger, {per_run:.1f} events per run (seeding checked)", flush=True)
    rows = []
    for total in sizes:
        print(f"{total:,} events:", flush=True)
        rows.append(run_size(total, templates, args.partitions, args.timeout, total <= args.full_max, args.tail,
                             args.restarts))
    print()
    header = f"{'events':>10} | {'snapshots':<28} | {'ready s':>8} | {'caught up s':>11} | {'replayed':>9} | {'RSS MiB':>8}"
    print(header)
    print("-" * len(header))
    rate = next((r["off"]["replayed"] / r["off"]["caught_up"] for r in rows if r.get("off") and r["off"]["caught_up"]), None)
    for row in rows:
        cases = [("off (full replay)", row.get("off")), ("on, first start (full)*", row.get("first")),
                 ("on, restart" + (" (seeded)**" if not row["full"] else ""), row["on"])]
        for label, m in cases:
            if m is not None:
                print(f"{row['events']:>10,} | {label:<28} | {m['ready']:>8.2f} | {m['caught_up']:>11.2f} | "
                      f"{m['replayed']:>9,} | {m['rss']:>8.0f}")
        if not row["full"] and rate:
            print(f"{row['events']:>10,} | {'off: not run; estimate':<28} | {'':>8} | {row['events'] / rate:>11.0f} | "
                  f"{row['events']:>9,} | {'':>8}")
    print("\n*  no snapshot exists yet: a full replay, after which every partition is snapshotted.")
    print("** snapshots seeded by the bench (byte-equivalent to the writer's; see seeded_snapshots), then a tail of events.")
    for row in rows:
        s = row["snapshots"]
        line = f"{row['events']:,} events: snapshots {sum(x['bytes'] for x in s) / 2**20:.1f} MiB raw"
        if row["full"]:
            line += (f" / {sum(x['compressed_bytes'] for x in s) / 2**20:.1f} MiB stored in {sum(x['chunks'] for x in s)} chunks; "
                     f"longest lock hold while snapshotting {max(x.get('longest_hold_ms', x['capture_ms']) for x in s):.0f} ms")
        line += f"; restore (read + decode, slowest partition) {row['on']['restore_s']:.2f} s"
        print(line)
        runs = row["restarts"]
        if len(runs) > 1:
            print(f"{row['events']:,} events, {len(runs)} restarts with snapshots on: ready {_spread([m['ready'] for m in runs])}, "
                  f"caught up {_spread([m['caught_up'] for m in runs])}, "
                  f"restore per partition {_spread([s for m in runs for s in m['restore_by_partition'].values()])}; "
                  f"CPU to ready: writer {_spread([m['cpu'] for m in runs])}, broker {_spread([m['broker_cpu'] for m in runs])}")
    print(f"\ntotal bench time {time.perf_counter() - started:.0f} s, load average now {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
