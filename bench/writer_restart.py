"""Writer restart benchmark: ``.venv/bin/python -m bench.writer_restart``.

Fills the events log of a fresh embedded-broker stack (``runledger.services.devstack.Stack``:
Tansu + a private redis-server; only the broker and the topics are used) with N valid events,
then measures the transitions service's restart with snapshots off and on:

* ``ready s``: process start -> ``/readyz`` 200 (imports, broker, group join, rebuild);
* ``caught up s``: the rebuild alone, from the service's "caught up" log line (restore + tail);
* ``RSS MiB``: the writer's resident memory right after it is ready.

The events are made by the pure ``Ledger`` (so they are exactly what the writer would have
written): a few template runs, each through create (2 task runs) -> Submitted -> Running -> task
runs Running/Success -> Success, every fourth with a refused stale update (``VerdictRecorded``);
then stamped into as many runs as needed by substituting a per-copy id suffix, and produced
straight to the events topic in large batches (no HTTP: a million requests would take hours).

Per size: (1) start with ``RUNLEDGER_SNAPSHOTS=false`` (full replay), stop; (2) start with
snapshots on (no snapshot yet: full replay, then it snapshots every partition), wait until every
partition's snapshot is saved, stop; (3) restart with snapshots on: restore + tail. Stops are
SIGTERM (a kill -9 adds about two group session timeouts on the embedded broker, nothing of ours).
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

from runledger.domain.ledger import Ledger
from runledger.domain.states import State
from runledger.messages import commands as c
from runledger.messages.codec import encode
from runledger.messages.commands import CommandEnvelope
from runledger.messages.models import FlowRunSpec, PlannedTaskRun
from runledger.services.devstack import Stack, free_port
from runledger.services.runtime import kafka
from runledger.settings import Settings
from runledger.topics import topics_for

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
        for payload in steps:
            answer = ledger.decide(command(payload), now)
            events += [encode(env) for env in answer.events]
        out.append((run_id.encode(), events))
    return out


def stamp(templates, total_events: int):
    """Yields (key, value) records: copies of the template runs with unique ids, ``total`` events."""
    produced, copy = 0, 0
    while produced < total_events:
        suffix = f"{copy:012x}".encode()
        for key, events in templates:
            k = key.replace(SUFFIX, suffix)
            for value in events:
                yield k, value.replace(SUFFIX, suffix)
                produced += 1
            if produced >= total_events:
                return
        copy += 1


async def fill(settings: Settings, total_events: int, templates) -> tuple[float, list[int]]:
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
        for key, value in stamp(templates, total_events):
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


def start_writer(stack: Stack, snapshots: bool, timeout: float) -> dict:
    since = log_size(stack)
    started = time.perf_counter()
    process = stack.start_service("transitions", RUNLEDGER_SNAPSHOTS=str(snapshots).lower())
    stack.wait_ready("transitions", timeout)
    ready = time.perf_counter() - started
    rss = rss_mib(process.pid)
    lines = log_lines(stack, since)
    caught = [line for line in lines if line.get("event") == "caught up"]
    restored = [line for line in lines if line.get("event") == "snapshot restored"]
    return {
        "ready": ready,
        "caught_up": sum(line["seconds"] for line in caught),
        "replayed": sum(line["replayed"] for line in caught),
        "restored": len(restored),
        "restore_s": max((line["seconds"] for line in restored), default=0.0),
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
def run_size(total: int, templates, partitions: int, timeout: float, skip_off: bool) -> dict:
    stack = Stack(own_redis=True, partitions=partitions, extra_env={"RUNLEDGER_LOG_LEVEL": "INFO"})
    stack.api_port = free_port()
    try:
        stack.start_broker()
        stack.start_redis()
        asyncio.run(stack.create_topics())
        settings = Settings(kafka_bootstrap=f"127.0.0.1:{stack.broker_port}", embedded_broker=True, partitions=partitions)
        fill_s, counts = asyncio.run(fill(settings, total, templates))
        print(f"  {total:,} events produced in {fill_s:.1f} s ({total / fill_s:,.0f}/s), per partition {counts}", flush=True)
        row: dict = {"events": total, "fill_s": fill_s}
        if not skip_off:
            row["off"] = start_writer(stack, False, timeout)
            stop_writer(stack)
            print(f"  snapshots off: ready {row['off']['ready']:.2f} s", flush=True)
        first = start_writer(stack, True, timeout)
        row["first"] = first
        saved = wait_for_snapshots(stack, first["since"], partitions, timeout)
        row["snapshots"] = saved
        stop_writer(stack)
        print(f"  snapshots taken: {sum(s['bytes'] for s in saved) / 2**20:.1f} MiB raw, "
              f"{sum(s['compressed_bytes'] for s in saved) / 2**20:.1f} MiB stored", flush=True)
        row["on"] = start_writer(stack, True, timeout)
        stop_writer(stack)
        return row
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.writer_restart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated event counts (default 100000,1000000)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--templates", type=int, default=64, help="distinct template runs made by the ledger")
    parser.add_argument("--timeout", type=float, default=300.0, help="per writer start (s)")
    parser.add_argument("--skip-off", action="store_true", help="skip the snapshots-off start (the first start is one too)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print(f"writer restart bench: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"load {os.getloadavg()[0]:.2f}, partitions {args.partitions}, "
          f"snapshot every {Settings().snapshot_every_events:,} events / {Settings().snapshot_every_seconds:g} s", flush=True)
    started = time.perf_counter()
    templates = template_runs(args.templates)
    per_run = sum(len(e) for _, e in templates) / len(templates)
    print(f"  {len(templates)} template runs from the ledger, {per_run:.1f} events per run", flush=True)
    rows = []
    for total in sizes:
        print(f"{total:,} events:", flush=True)
        rows.append(run_size(total, templates, args.partitions, args.timeout, args.skip_off))
    print()
    header = f"{'events':>10} | {'snapshots':<22} | {'ready s':>8} | {'caught up s':>11} | {'replayed':>9} | {'RSS MiB':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        cases = [("off (full replay)", row.get("off")), ("on, first start*", row["first"]), ("on, restart", row["on"])]
        for label, m in cases:
            if m is None:
                continue
            print(f"{row['events']:>10,} | {label:<22} | {m['ready']:>8.2f} | {m['caught_up']:>11.2f} | "
                  f"{m['replayed']:>9,} | {m['rss']:>8.0f}")
    print("\n* no snapshot exists yet: a full replay, after which every partition is snapshotted.")
    for row in rows:
        s = row["snapshots"]
        print(f"{row['events']:,} events: snapshot {sum(x['bytes'] for x in s) / 2**20:.1f} MiB raw / "
              f"{sum(x['compressed_bytes'] for x in s) / 2**20:.1f} MiB stored in {sum(x['chunks'] for x in s)} chunks; "
              f"longest lock hold while snapshotting {max(x.get('longest_hold_ms', x['capture_ms']) for x in s):.0f} ms; "
              f"restore (read + decode, slowest partition) {row['on']['restore_s']:.2f} s")
    print(f"\ntotal bench time {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
