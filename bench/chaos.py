"""Chaos under load, verified from the log: ``python -m bench.chaos [--seconds N] [--json FILE]``.

Starts its own stack (embedded Tansu broker, a private redis-server, every service as a process),
drives sustained traffic through the public REST API and injects faults while it runs:

* load (asyncio + httpx, ``--conc`` workers, bounded by ``--seconds`` and ``--max-requests``):
  creates with idempotency keys drawn from a pool of repeated keys (half new, half reused), state
  updates on created runs (each run is held by one worker at a time, walks Scheduled -> Submitted
  -> Running -> Success -> Scheduled with the version it last got back, and carries a
  ``command_id``), and log batches (``POST /api/v1/logs``, every line with a unique message id).
  A client retries 503s (after ``Retry-After``) and connection errors/timeouts as a real one
  would: a create with the same idempotency key, a state update with the same ``command_id`` and
  version, a log batch with the same lines.
* faults, in turn (``--rounds`` times each): ``kill -9`` of each service followed by
  ``Stack.restart`` (ingress, transitions, projector, logs and scheduling), the
  broker paused with SIGSTOP for ``--pause`` seconds then SIGCONT, and Redis killed and started
  again from its launch argv (``--save "" --appendonly no``: it comes back EMPTY). The next fault
  waits until every service says ready again.

Afterwards (load over, every service ready, the projection caught up with the log) it reads the
whole events log and checks:

1. every acknowledged request is in the log exactly once (a create: one ``FlowRunCreated`` for its
   key, naming the run it was answered with; a state update: one ``FlowRunStateSet`` caused by its
   ``command_id``, with the version it was answered with);
2. no idempotency key has two runs (and every ``rl:idem`` key names the log's run);
3. every run's versions are 1..n in log order, with no gap or repeat (and every aggregate's
   ``seq`` too, no two events at one ``(aggregate, seq)``);
4. the read models (every ``rl:rm:*`` key, indexes and checkpoints included) equal a fresh rebuild
   (``rebuild_read_models``);
5. every acknowledged log line is stored exactly once (read back through the REST API), except
   lines of a batch the client re-sent after an unanswered attempt (log writes have no
   idempotency key: those are counted and reported, not failed);
6. concurrency slots (when the scheduling service exists; the flow carries the label ``chaos``):
   the runs holding a slot under it in Redis are those whose last logged state holds one, and
   every derived scheduling key (queue, slots, run facts) equals what the service rewrites from
   the log after a restart.

It prints the faults injected, the requests sent / acknowledged / lost / duplicated per kind, and
for each fault the longest unavailability (the longest stretch, after the fault, from a request
that failed to the next one of the same kind that succeeded), and exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import os
import random
import signal
import sys
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import orjson

from runledger import api_models as api
from runledger.messages.commands import client_command_id
from runledger.services.ingress.application import state_command

LABEL = "chaos"  # the flow's label: its runs hold slots under it (when a scheduling service runs)
NEXT_STATE = {"Scheduled": "Submitted", "Submitted": "Running", "Running": "Success", "Success": "Scheduled"}
INFRA = ("broker", "redis")
KINDS = ("create", "state", "logs")


# -- what happened ----------------------------------------------------------------------------------
@dataclass
class Attempt:
    kind: str
    t0: float
    t1: float
    outcome: str  # ok | unavailable | refused
    detail: str = ""


@dataclass
class Fault:
    name: str
    at: float  # seconds since the load started
    detail: str = ""
    ready_after: float | None = None  # seconds from injection until every service was ready again
    longest: dict[str, float] = field(default_factory=dict)  # kind -> seconds
    open_ended: dict[str, bool] = field(default_factory=dict)
    slowest_ok: float = 0.0


@dataclass
class Op:
    """One logical request (all its attempts)."""

    kind: str
    body: dict
    attempts: int = 0
    unanswered_attempts: int = 0  # attempts that got no answer (connection error / timeout / 5xx)
    status: int | None = None  # the final answer's status (None: gave up)
    answer: Any = None
    run_id: str | None = None  # state updates: the run


@dataclass
class Totals:
    sent: int = 0
    attempts: int = 0
    acknowledged: int = 0
    refused: int = 0
    gave_up: int = 0
    lost: int = 0
    duplicated: int = 0
    applied_unanswered: int = 0  # in the log although the client never got a 2xx


class Recorder:
    def __init__(self) -> None:
        self.t_start = time.monotonic()
        self.attempts: list[Attempt] = []
        self.ops: list[Op] = []
        self.unexpected: list[str] = []

    def now(self) -> float:
        return time.monotonic() - self.t_start


# -- the load ---------------------------------------------------------------------------------------
class Load:
    def __init__(self, client: httpx.AsyncClient, rec: Recorder, flow_id: str, args) -> None:
        self.client, self.rec, self.flow_id, self.args = client, rec, flow_id, args
        self.rng = random.Random(args.seed)
        self.keys: list[str] = []
        self.key_counter = itertools.count()
        self.runs: dict[str, dict] = {}  # run id -> {"version", "state"} as last acknowledged
        self.free_runs: collections.deque[str] = collections.deque()
        self.line_counter = itertools.count()
        self.stop = asyncio.Event()
        self.deadline_for_retries = float("inf")
        self.sent = 0

    async def call(self, op: Op, method: str, path: str) -> None:
        """Send until answered: 503 -> wait Retry-After; connection error/timeout/5xx -> back off."""
        backoff = 0.2
        while True:
            op.attempts += 1
            t0 = self.rec.now()
            try:
                r = await self.client.request(method, path, json=op.body)
            except httpx.TransportError as exc:
                self.rec.attempts.append(Attempt(op.kind, t0, self.rec.now(), "unavailable", type(exc).__name__))
                op.unanswered_attempts += 1
                wait = backoff
                backoff = min(backoff * 2, 2.0)
            else:
                t1 = self.rec.now()
                if r.status_code < 300:
                    self.rec.attempts.append(Attempt(op.kind, t0, t1, "ok"))
                    op.status, op.answer = r.status_code, r.json()
                    return
                if r.status_code == 503 or r.status_code >= 500:
                    self.rec.attempts.append(Attempt(op.kind, t0, t1, "unavailable", str(r.status_code)))
                    if r.status_code != 503:
                        op.unanswered_attempts += 1  # a 500 says nothing about whether it was applied
                        self.rec.unexpected.append(f"{op.kind} {r.status_code}: {r.text[:300]}")
                    try:
                        wait = float(r.headers.get("retry-after", "1"))
                    except ValueError:
                        wait = 1.0
                else:
                    self.rec.attempts.append(Attempt(op.kind, t0, t1, "refused", str(r.status_code)))
                    op.status = r.status_code
                    try:
                        op.answer = r.json()
                    except ValueError:
                        op.answer = r.text
                    return
            if self.rec.now() > self.deadline_for_retries:
                return  # gave up: status stays None
            await asyncio.sleep(wait * (0.8 + 0.4 * self.rng.random()))

    # -- the three kinds --------------------------------------------------------------------------
    async def create(self) -> None:
        if not self.keys or self.rng.random() < 0.5:
            key = f"k{next(self.key_counter)}"
            self.keys.append(key)
        else:
            key = self.rng.choice(self.keys[-200:])  # recent keys: repeats while the first may be in flight
        op = Op("create", {"flow_id": self.flow_id, "idempotency_key": key})
        self.rec.ops.append(op)
        await self.call(op, "POST", "/flow_runs")
        if op.status in (200, 201) and isinstance(op.answer, dict):
            run_id = op.answer["id"]
            if run_id not in self.runs:
                self.runs[run_id] = {"version": op.answer.get("version", 1), "state": (op.answer.get("state") or {}).get("type", "Scheduled")}
                self.free_runs.append(run_id)

    async def set_state(self) -> None:
        run_id = self.free_runs.popleft()
        try:
            run = self.runs[run_id]
            target = NEXT_STATE.get(run["state"], "Running")
            op = Op("state", {"state": {"type": target}, "version": run["version"], "command_id": uuid.uuid4().hex})
            op.run_id = run_id
            self.rec.ops.append(op)
            await self.call(op, "POST", f"/flow_runs/{run_id}/state")
            if op.status == 200 and isinstance(op.answer, dict):
                run["version"] = op.answer["version"]
                run["state"] = op.answer.get("state", {}).get("type", target) if isinstance(op.answer.get("state"), dict) else op.answer.get("state", target)
            elif op.status is not None and op.status != 200:
                # Refused (a stale version would be a finding: this worker holds the run alone).
                self.rec.unexpected.append(f"state {op.status} for {run_id} v{run['version']}: {str(op.answer)[:300]}")
                current = await self.client.get(f"/flow_runs/{run_id}")
                if current.status_code == 200:
                    doc = current.json()
                    run["version"], run["state"] = doc["version"], doc["state"]["type"] if isinstance(doc["state"], dict) else doc["state"]
        finally:
            self.free_runs.append(run_id)

    async def write_logs(self) -> None:
        run_ids = list(self.runs)
        lines = []
        for _ in range(self.args.batch):
            n = next(self.line_counter)
            lines.append({"flow_run_id": self.rng.choice(run_ids[-300:]), "level": "INFO", "name": "chaos",
                          "message": f"chaos-line m{n}-{uuid.uuid4().hex[:8]}"})
        # Keyed, so a batch re-sent after an unanswered attempt is stored once.
        op = Op("logs", {"logs": lines, "idempotency_key": f"chaos-logs-{uuid.uuid4().hex}"})
        self.rec.ops.append(op)
        await self.call(op, "POST", "/logs")
        if op.status is not None and op.status != 200:
            self.rec.unexpected.append(f"logs {op.status}: {str(op.answer)[:300]}")

    async def worker(self) -> None:
        while not self.stop.is_set() and self.sent < self.args.max_requests:
            self.sent += 1
            roll = self.rng.random()
            if roll < self.args.create_share or len(self.free_runs) < 2:
                await self.create()
            elif roll < self.args.create_share + self.args.state_share:
                await self.set_state()
            else:
                await self.write_logs()


# -- faults -----------------------------------------------------------------------------------------
def readiness_urls(stack) -> dict[str, str]:
    urls = {"ingress": f"{stack.api_url}/health/ready"}
    for name, port in stack.health_ports.items():
        if name in stack.processes:
            urls[name] = f"http://127.0.0.1:{port}/readyz"
    return urls


def not_ready(stack) -> list[str]:
    out = []
    for name, url in readiness_urls(stack).items():
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                if r.status != 200:
                    out.append(name)
        except Exception:
            out.append(name)
    return out


async def wait_all_ready(stack, timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        for name, process in stack.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; see {stack.workdir / (name + '.log')}")
        if not await asyncio.to_thread(not_ready, stack):
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    return None


def fault_kinds(stack) -> list[str]:
    services = [n for n in stack.processes if n not in INFRA]
    # interleave: infrastructure faults between the kills
    # scheduling early: a Redis restart after its last restart shows whether it rewrites what Redis lost
    order = ["ingress", "scheduling", "broker-pause", "transitions", "redis-empty", "projector", "logs"]
    kinds = [k for k in order if k in ("broker-pause", "redis-empty") or k in services]
    kinds += [f"kill:{n}" for n in services if n not in order]
    return kinds


async def inject(stack, kind: str, args) -> str:
    if kind == "broker-pause":
        broker = stack.processes["broker"]
        broker.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(args.pause)
        finally:
            broker.send_signal(signal.SIGCONT)
        return f"SIGSTOP {args.pause:g}s, SIGCONT"
    if kind == "redis-empty":
        from runledger.services.devstack import wait_for_port

        process = stack.processes.pop("redis")
        argv = stack.launches["redis"][0]
        port = int(argv[argv.index("--port") + 1])
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait, 30)
        await asyncio.sleep(args.redis_down)
        stack.restart("redis")
        await asyncio.to_thread(wait_for_port, port, 30)
        return f"kill -9, down {args.redis_down:g}s, restarted empty"
    name = kind.removeprefix("kill:")
    await asyncio.to_thread(stack.kill, name, signal.SIGKILL)
    stack.restart(name)
    return "kill -9, restarted"


async def run_faults(stack, load: Load, rec: Recorder, args, faults: list[Fault]) -> None:
    kinds = fault_kinds(stack) * args.rounds
    span = max(1.0, args.seconds - args.warmup - args.tail)
    interval = span / len(kinds)
    await asyncio.sleep(args.warmup)
    for i, kind in enumerate(kinds):
        planned = args.warmup + i * interval
        await asyncio.sleep(max(0.0, planned - rec.now()))
        fault = Fault(kind, rec.now())
        faults.append(fault)
        print(f"[{fault.at:7.1f}s] fault {i + 1}/{len(kinds)}: {kind}", flush=True)
        fault.detail = await inject(stack, kind, args)
        ready = await wait_all_ready(stack, args.recovery_timeout)
        fault.ready_after = None if ready is None else rec.now() - fault.at
        if ready is None:
            print(f"  not ready {args.recovery_timeout:g}s after {kind}: {not_ready(stack)}", flush=True)
        else:
            print(f"  ready again {fault.ready_after:.1f}s after injection", flush=True)
        await asyncio.sleep(args.settle)
    await asyncio.sleep(args.tail)


def unavailability(rec: Recorder, faults: list[Fault], end: float) -> None:
    """Per fault and kind: the longest stretch from a failed request (its start, not before the
    fault) to the completion of the next successful one of that kind; attributed to the fault
    whose window (up to the next fault) it opened in."""
    bounds = [f.at for f in faults] + [float("inf")]

    def fault_of(t: float) -> Fault | None:
        for i, f in enumerate(faults):
            if bounds[i] <= t < bounds[i + 1]:
                return f
        return None

    for kind in KINDS:
        opened: float | None = None
        for a in sorted((a for a in rec.attempts if a.kind == kind), key=lambda a: a.t1):
            if a.outcome == "unavailable":
                if opened is None:
                    f = fault_of(a.t1)
                    opened = a.t0 if f is None else max(a.t0, f.at)
            elif a.outcome == "ok" and opened is not None:
                f = fault_of(opened)
                if f is not None:
                    f.longest[kind] = max(f.longest.get(kind, 0.0), a.t1 - opened)
                opened = None
        if opened is not None and (f := fault_of(opened)) is not None:
            f.longest[kind] = max(f.longest.get(kind, 0.0), end - opened)
            f.open_ended[kind] = True
    for a in rec.attempts:
        if a.outcome == "ok" and (f := fault_of(a.t0)) is not None:
            f.slowest_ok = max(f.slowest_ok, a.t1 - a.t0)


# -- verification -----------------------------------------------------------------------------------
async def wait_projection_caught_up(stack, timeout: float) -> bool:
    from aiokafka import TopicPartition

    from runledger.readmodel.keys import Keys
    from runledger.services.runtime import kafka as clients
    from runledger.topics import topics_for

    settings = stack.settings()
    topics = topics_for(settings)
    keys = Keys(settings.redis_prefix, settings.partitions)
    consumer = clients.consumer(settings)
    await consumer.start()
    redis = stack.redis_client()
    try:
        tps = [TopicPartition(topics.events.name, p) for p in range(topics.events.partitions)]
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            values = [redis.get(keys.checkpoint(tp.partition)) for tp in tps]
            if all(int(v or 0) >= ends[tp] for tp, v in zip(tps, values)):
                return True
            await asyncio.sleep(0.2)
        return False
    finally:
        redis.close()
        await consumer.stop()


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    samples: list[str] = field(default_factory=list)


async def read_logs(client: httpx.AsyncClient, run_id: str) -> list[str]:
    messages, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 10000}
        if cursor:
            params["cursor"] = cursor
        for _ in range(60):
            r = await client.get(f"/flow_runs/{run_id}/logs", params=params)
            if r.status_code == 200:
                break
            await asyncio.sleep(1)
        else:
            raise RuntimeError(f"logs of {run_id}: {r.status_code} {r.text[:200]}")
        page = r.json()
        messages += [line["message"] for line in page["logs"]]
        cursor = page.get("next_cursor")
        if not cursor:
            return messages


async def verify(stack, client: httpx.AsyncClient, load: Load, rec: Recorder, flow_id: str, args) -> tuple[list[Check], dict[str, Totals]]:
    from runledger.services.devstack import read_events, snapshot

    checks: list[Check] = []
    totals = {k: Totals() for k in KINDS}
    for op in rec.ops:
        t = totals[op.kind]
        t.sent += 1
        t.attempts += op.attempts
        if op.status is None:
            t.gave_up += 1
        elif op.status < 300:
            t.acknowledged += 1
        else:
            t.refused += 1

    caught_up = await wait_projection_caught_up(stack, 120)
    checks.append(Check("projection caught up with the log", caught_up, "every events partition's checkpoint reached its end offset" if caught_up else "timed out"))
    events = await read_events(stack)

    # 3. versions and seqs
    by_agg: dict[str, list] = collections.defaultdict(list)
    for _, _, env in events:
        by_agg[env.aggregate_id].append(env)
    seq_problems, version_problems, rerecorded = [], [], 0
    for agg, envs in by_agg.items():
        seen: dict[int, str] = {}
        for env in envs:
            if env.seq in seen:
                if seen[env.seq] != str(env.event_id):
                    seq_problems.append(f"{agg} seq {env.seq} written by two events")
                else:
                    rerecorded += 1  # the same event appended twice (a producer retry): readers skip it by seq
            seen[env.seq] = str(env.event_id)
        seqs = sorted(seen)
        if seqs != list(range(1, len(seqs) + 1)):
            seq_problems.append(f"{agg} seqs {seqs[:5]}... not 1..{len(seqs)}")
        distinct = list({str(e.event_id): e for e in envs}.values())
        versions = [e.payload.version for e in distinct if e.type == "FlowRunStateSet"]
        if versions and versions != list(range(1, len(versions) + 1)):
            version_problems.append(f"{agg}: versions {versions}")
    checks.append(Check("every run's versions are 1..n (no gap, no repeat)", not version_problems,
                        f"{sum(1 for e in by_agg.values() if any(x.type == 'FlowRunCreated' for x in e))} runs", version_problems[:5]))
    checks.append(Check("every aggregate's seq is 1..n, one event per (aggregate, seq)", not seq_problems,
                        f"{len(by_agg)} aggregates, {len(events)} records" + (f", {rerecorded} records re-appended (same event id)" if rerecorded else ""),
                        seq_problems[:5]))

    # 1+2. creates
    created: dict[str, list] = collections.defaultdict(list)  # key -> distinct FlowRunCreated events
    seen_ids: set[str] = set()
    for _, _, env in events:
        if env.type == "FlowRunCreated" and env.payload.spec.flow_id == flow_id and str(env.event_id) not in seen_ids:
            seen_ids.add(str(env.event_id))
            created[env.payload.spec.idempotency_key].append(env)
    answered: dict[str, set[str]] = collections.defaultdict(set)
    acked_keys = set()
    for op in rec.ops:
        if op.kind == "create" and op.status in (200, 201):
            key = op.body["idempotency_key"]
            acked_keys.add(key)
            answered[key].add(op.answer["id"])
    t = totals["create"]
    lost, dup, wrong = [], [], []
    for key in acked_keys:
        runs = {e.aggregate_id for e in created.get(key, [])}
        if not runs:
            lost.append(key)
        elif len(created[key]) > 1:
            dup.append(f"{key}: {len(created[key])} FlowRunCreated for runs {sorted(runs)}")
        if len(answered[key]) > 1 or (runs and not answered[key] <= runs):
            wrong.append(f"{key}: answered {sorted(answered[key])}, log {sorted(runs)}")
    sent_keys = {op.body["idempotency_key"] for op in rec.ops if op.kind == "create"}
    t.lost, t.duplicated = len(lost), len(dup)
    t.applied_unanswered = len([k for k in created if k in sent_keys and k not in acked_keys])
    checks.append(Check("every acknowledged create is in the log exactly once", not lost and not dup and not wrong,
                        f"{len(acked_keys)} keys acknowledged ({t.acknowledged} answers), {len(created)} keys in the log",
                        (lost[:3] and [f"lost: {k}" for k in lost[:3]]) + dup[:3] + wrong[:3]))
    two_runs = [f"{k}: {sorted({e.aggregate_id for e in v})}" for k, v in created.items() if len({e.aggregate_id for e in v}) > 1]
    # the idempotency keys Redis holds now name the log's runs
    from runledger.domain.idempotency import PENDING_PREFIX, scoped_key
    from runledger.readmodel.keys import Keys

    keys = Keys("rl", stack.partitions)
    redis = stack.redis_client()
    idem_wrong, idem_missing = [], []
    try:
        for key, envs in created.items():
            value = redis.get(keys.idempotency(scoped_key(flow_id, key)))
            run = envs[0].aggregate_id
            if value is None:
                idem_missing.append(key)
            else:
                value = value.decode()
                if value.removeprefix(PENDING_PREFIX) != run:
                    idem_wrong.append(f"{key}: Redis {value}, log {run}")
    finally:
        redis.close()
    checks.append(Check("no idempotency key has two runs (log), Redis keys name the log's run", not two_runs and not idem_wrong and not idem_missing,
                        f"{len(created)} keys, {sum(len(v) for v in created.values())} runs" + (f"; {len(idem_missing)} keys missing in Redis" if idem_missing else ""),
                        two_runs[:3] + idem_wrong[:3] + idem_missing[:3]))

    # 1. state updates
    caused: dict[str, list] = collections.defaultdict(list)
    seen_ids = set()
    for _, _, env in events:
        if env.type == "FlowRunStateSet" and str(env.event_id) not in seen_ids:
            seen_ids.add(str(env.event_id))
            caused[env.causation_id].append(env)
    t = totals["state"]
    lost, dup, wrong = [], [], []
    for op in rec.ops:
        if op.kind != "state":
            continue
        # the command id the writer saw (and the events name): the client's, scoped to its run and command
        cid = client_command_id(op.run_id, state_command(api.SetStateRequest.model_validate(op.body)), op.body["command_id"])
        if op.status == 200:
            evs = caused.get(cid, [])
            if not evs:
                lost.append(cid)
            elif len(evs) > 1:
                dup.append(f"{cid}: {len(evs)} events")
            elif evs[0].payload.version != op.answer["version"] or evs[0].aggregate_id != op.run_id:
                wrong.append(f"{cid}: answered v{op.answer['version']} on {op.run_id}, log v{evs[0].payload.version} on {evs[0].aggregate_id}")
        elif cid in caused:
            t.applied_unanswered += 1
    t.lost, t.duplicated = len(lost), len(dup)
    checks.append(Check("every acknowledged state update is in the log exactly once", not lost and not dup and not wrong,
                        f"{t.acknowledged} acknowledged", [f"lost: {c}" for c in lost[:3]] + dup[:3] + wrong[:3]))

    # 4. read models == a fresh rebuild
    from runledger.services.runtime.rebuild import rebuild_read_models

    redis = stack.redis_client()
    try:
        live = await asyncio.to_thread(snapshot, redis, strict=False)
        result = await rebuild_read_models(stack.settings(), timeout=300)
        rebuilt = await asyncio.to_thread(snapshot, redis, strict=False)
    finally:
        redis.close()
    only_live = sorted(set(live) - set(rebuilt))
    only_rebuilt = sorted(set(rebuilt) - set(live))
    differ = sorted(k for k in set(live) & set(rebuilt) if live[k] != rebuilt[k])
    samples = [f"only live: {k.decode()}" for k in only_live[:3]] + [f"only rebuilt: {k.decode()}" for k in only_rebuilt[:3]]
    for k in differ[:3]:
        samples.append(f"differs: {k.decode()}: live {str(live[k][1])[:300]} / rebuilt {str(rebuilt[k][1])[:300]}")
    checks.append(Check("read models and indexes equal a fresh rebuild", not (only_live or only_rebuilt or differ),
                        f"{len(live)} keys live, {len(rebuilt)} rebuilt from {result['events']} events; "
                        f"{len(only_live)} only live, {len(only_rebuilt)} only rebuilt, {len(differ)} differ", samples))

    # 6. concurrency slots (the scheduling service's derived keys)
    if "scheduling" not in stack.processes:
        checks.append(Check("concurrency-slot counts equal a rebuild", True, "n/a: no scheduling service on main (no slot counts to check)"))
    else:
        checks += await check_slots(stack, events, flow_id)

    # 5. log lines, read back through the API
    acked_lines: dict[str, str] = {}  # message -> run
    retried_lines: set[str] = set()  # lines of a batch re-sent after an attempt that got no answer
    unacked_lines: dict[str, str] = {}
    for op in rec.ops:
        if op.kind != "logs":
            continue
        target = acked_lines if op.status == 200 else unacked_lines
        for line in op.body["logs"]:
            target[line["message"]] = line["flow_run_id"]
            if op.unanswered_attempts:
                retried_lines.add(line["message"])
    runs = sorted(set(acked_lines.values()) | set(unacked_lines.values()))
    sem = asyncio.Semaphore(8)
    counts: collections.Counter = collections.Counter()
    deadline = time.monotonic() + args.logs_timeout
    while True:
        async def one(run_id: str) -> list[str]:
            async with sem:
                return await read_logs(client, run_id)

        counts = collections.Counter(m for ms in await asyncio.gather(*(one(r) for r in runs)) for m in ms if m.startswith("chaos-line"))
        missing = [m for m in acked_lines if counts[m] == 0]
        if not missing or time.monotonic() > deadline:
            break
        await asyncio.sleep(2)
    t = totals["logs"]
    t.sent, t.acknowledged = len(acked_lines) + len(unacked_lines), len(acked_lines)
    t.attempts = sum(op.attempts for op in rec.ops if op.kind == "logs")
    t.refused = sum(len(op.body["logs"]) for op in rec.ops if op.kind == "logs" and op.status not in (None, 200))
    t.gave_up = sum(len(op.body["logs"]) for op in rec.ops if op.kind == "logs" and op.status is None)
    dups = {m: n for m, n in counts.items() if n > 1}
    t.lost = len(missing)
    t.duplicated = len([m for m in dups if m in acked_lines])
    t.applied_unanswered = len([m for m in unacked_lines if counts[m]])
    retried_batches = sum(1 for op in rec.ops if op.kind == "logs" and op.unanswered_attempts)
    checks.append(Check("every acknowledged log line is stored exactly once", not missing and not t.duplicated,
                        f"{len(acked_lines)} lines acknowledged in {sum(1 for op in rec.ops if op.kind == 'logs' and op.status == 200)} batches "
                        f"({retried_batches} re-sent after an unanswered attempt), "
                        f"{sum(counts.values())} stored; {len(missing)} missing, {t.duplicated} stored twice or more",
                        [f"missing: {m} (run {acked_lines[m]})" for m in missing[:3]]
                        + [f"x{n}: {m}{' (re-sent batch)' if m in retried_lines else ''}" for m, n in list(dups.items())[:3]]))
    totals["logs"] = t
    refusals = [u for u in rec.unexpected]
    gave_up = sum(1 for op in rec.ops if op.status is None)
    checks.append(Check("every request answered 2xx in the end (503s retried; no refusal, no 500)", not refusals and not gave_up,
                        f"{len(refusals)} unexpected answers, {gave_up} requests given up after the retry budget",
                        [u[:300] for u in refusals[:3]]))
    return checks, totals


SCHED_DERIVED = ("run:*", "labelsets", "due:*", "occ:*")


def sched_snapshot(redis_client) -> dict:
    from runledger.services.devstack import snapshot

    out = {}
    for pattern in SCHED_DERIVED:
        out.update(snapshot(redis_client, "rl:{sched}:" + pattern, strict=False))
    return out


async def check_slots(stack, events, flow_id: str) -> list[Check]:
    """Slot holders per label against the log (runs whose last state holds a slot), and every
    derived scheduling key against what a restarted scheduling service rewrites from the log."""
    from runledger.domain.scheduling import FLOW_SLOT_STATES

    ours, last_state = set(), {}
    for _, _, env in events:
        if env.type == "FlowRunCreated" and env.payload.spec.flow_id == flow_id:
            ours.add(env.aggregate_id)
        elif env.type == "FlowRunStateSet":
            last_state[env.aggregate_id] = env.payload.state.type
    expected = {r for r in ours if last_state.get(r) in FLOW_SLOT_STATES}
    redis = stack.redis_client()
    try:
        live = {m.decode() for m in redis.smembers(f"rl:{{sched}}:occ:label:{LABEL}")}
        before = await asyncio.to_thread(sched_snapshot, redis)
        await asyncio.to_thread(stack.kill, "scheduling", signal.SIGKILL)
        stack.restart("scheduling")
        await asyncio.sleep(1)
        await asyncio.to_thread(stack.wait_ready, "scheduling", 180)
        await asyncio.sleep(2)
        after = await asyncio.to_thread(sched_snapshot, redis)
    finally:
        redis.close()
    missing, extra = sorted(expected - live), sorted(live - expected)
    checks = [Check(f"concurrency-slot holders of label {LABEL!r} equal the log's", not missing and not extra,
                    f"{len(expected)} runs hold a slot per the log, {len(live)} in Redis; {len(missing)} missing, {len(extra)} extra",
                    [f"missing: {r} ({last_state.get(r)})" for r in missing[:3]] + [f"extra: {r} ({last_state.get(r)})" for r in extra[:3]])]
    only_b, only_a = sorted(set(before) - set(after)), sorted(set(after) - set(before))
    differ = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    samples = [f"only live: {k.decode()}" for k in only_b[:3]] + [f"only rebuilt: {k.decode()}" for k in only_a[:3]]
    samples += [f"differs: {k.decode()}: live {str(before[k][1])[:200]} / rebuilt {str(after[k][1])[:200]}" for k in differ[:3]]
    checks.append(Check("scheduling keys (queue, slots, run facts) equal a fresh rebuild (service restarted)", not (only_b or only_a or differ),
                        f"{len(before)} keys live, {len(after)} rebuilt; {len(only_b)} only live, {len(only_a)} only rebuilt, {len(differ)} differ", samples))
    return checks


# -- output -----------------------------------------------------------------------------------------
def render(args, machine: dict, faults: list[Fault], totals: dict[str, Totals], checks: list[Check], rec: Recorder, elapsed: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(140, int(os.environ.get("COLUMNS", "0") or 0)), highlight=False)
    console.print(
        f"[bold]RunLedger chaos[/bold] — {machine['cpu_count']} cores, load average {' '.join(map(str, machine['loadavg']))} "
        f"(after: {' '.join(map(str, os.getloadavg() and [round(x, 2) for x in os.getloadavg()]))}); "
        f"load {elapsed['load']:.0f}s at concurrency {args.conc}, verification {elapsed['verify']:.0f}s; "
        f"command timeout {args.command_timeout:g}s, {args.partitions} partitions"
    )
    ft = Table(title="Faults injected (longest unavailability: from a failed request after the fault to the next success of that kind)")
    for col in ("#", "at s", "fault", "what", "ready again s", "create s", "state s", "logs s", "slowest ok s"):
        ft.add_column(col, justify="right" if col not in ("fault", "what") else "left")
    for i, f in enumerate(faults, 1):
        def cell(kind: str) -> str:
            v = f.longest.get(kind)
            return "-" if v is None else f"{v:.1f}{'+' if f.open_ended.get(kind) else ''}"
        ft.add_row(str(i), f"{f.at:.1f}", f.name, f.detail, "-" if f.ready_after is None else f"{f.ready_after:.1f}",
                   cell("create"), cell("state"), cell("logs"), f"{f.slowest_ok:.1f}")
    console.print(ft)
    rt = Table(title="Requests (logs: lines; lost = acknowledged but not in the log/store; duplicated = acknowledged and in it more than once)")
    for col in ("kind", "sent", "attempts (requests)", "acknowledged", "refused", "gave up", "lost", "duplicated", "applied, unanswered"):
        rt.add_column(col, justify="right" if col != "kind" else "left")
    for kind, t in totals.items():
        rt.add_row(kind, str(t.sent), str(t.attempts), str(t.acknowledged), str(t.refused), str(t.gave_up),
                   str(t.lost), str(t.duplicated), str(t.applied_unanswered))
    console.print(rt)
    ct = Table(title="Invariants (checked from the event log after the faults)")
    ct.add_column("check")
    ct.add_column("result")
    ct.add_column("detail")
    for c in checks:
        ct.add_row(c.name, "[green]ok[/green]" if c.ok else "[red]VIOLATED[/red]", c.detail + "".join(f"\n  {s}" for s in c.samples))
    console.print(ct)


# -- main -------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=240, help="load phase, faults included (it runs longer if recovery is slow)")
    p.add_argument("--rounds", type=int, default=None, help="times each fault kind is injected (default: 2, or 1 under 120 s)")
    p.add_argument("--conc", type=int, default=12)
    p.add_argument("--max-requests", type=int, default=200_000)
    p.add_argument("--create-share", type=float, default=0.35)
    p.add_argument("--state-share", type=float, default=0.4)
    p.add_argument("--batch", type=int, default=5, help="log lines per batch")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--command-timeout", type=float, default=10.0)
    p.add_argument("--pause", type=float, default=5.0, help="broker SIGSTOP seconds")
    p.add_argument("--redis-down", type=float, default=1.0, help="seconds Redis stays down before it restarts empty")
    p.add_argument("--warmup", type=float, default=8.0)
    p.add_argument("--tail", type=float, default=8.0, help="load after the last fault")
    p.add_argument("--settle", type=float, default=2.0, help="load between a recovery and the next fault at least")
    p.add_argument("--recovery-timeout", type=float, default=180.0)
    p.add_argument("--retry-budget", type=float, default=120.0, help="seconds after the load a request may still be retried")
    p.add_argument("--logs-timeout", type=float, default=90.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 2 if args.seconds >= 120 else 1
    return args


async def amain(args) -> int:
    from runledger.services.devstack import Stack

    from bench.core import machine_context

    machine = machine_context()
    stack = Stack(own_redis=True, partitions=args.partitions,
                  extra_env={"RUNLEDGER_LOG_LEVEL": "WARNING", "RUNLEDGER_COMMAND_TIMEOUT_SECONDS": str(args.command_timeout)})
    rec = Recorder()
    faults: list[Fault] = []
    try:
        await asyncio.to_thread(stack.start)
        stack.start_service("scheduling")
        await asyncio.to_thread(stack.wait_ready, "scheduling", 120)
        print(f"stack up in {stack.workdir} (services: {', '.join(n for n in stack.processes if n not in INFRA)})", flush=True)
        limits = httpx.Limits(max_connections=args.conc + 8, max_keepalive_connections=args.conc + 8)
        timeout = httpx.Timeout(args.command_timeout + 30, connect=5.0)
        async with httpx.AsyncClient(base_url=stack.api_url + "/api/v1", timeout=timeout, limits=limits) as client:
            project = (await client.post("/projects", json={"name": f"chaos-{uuid.uuid4().hex[:8]}"})).json()
            flow = await client.post("/flows", json={"name": "chaos", "project_id": project["id"], "labels": [LABEL]})
            flow.raise_for_status()
            flow_id = flow.json()["id"]
            rec.t_start = time.monotonic()
            load = Load(client, rec, flow_id, args)
            workers = [asyncio.create_task(load.worker()) for _ in range(args.conc)]
            try:
                await run_faults(stack, load, rec, args, faults)
            finally:
                load.stop.set()
                load.deadline_for_retries = rec.now() + args.retry_budget
                for process in (stack.processes.get("broker"),):
                    if process is not None:
                        process.send_signal(signal.SIGCONT)
            await asyncio.gather(*workers)
            load_end = rec.now()
            print(f"[{load_end:7.1f}s] load over: {len(rec.ops)} requests; waiting for every service to be ready", flush=True)
            if await wait_all_ready(stack, args.recovery_timeout) is None:
                print(f"not ready: {not_ready(stack)}", flush=True)
            unavailability(rec, faults, load_end)
            t_verify = time.monotonic()
            checks, totals = await verify(stack, client, load, rec, flow_id, args)
            elapsed = {"load": load_end, "verify": time.monotonic() - t_verify}
        render(args, machine, faults, totals, checks, rec, elapsed)
        if args.json:
            with open(args.json, "wb") as f:
                f.write(orjson.dumps({
                    "settings": vars(args), "machine": machine, "loadavg_after": os.getloadavg(), "elapsed": elapsed,
                    "faults": [asdict(f) for f in faults], "totals": {k: asdict(t) for k, t in totals.items()},
                    "checks": [asdict(c) for c in checks], "unexpected": rec.unexpected[:50],
                }, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        return 0 if all(c.ok for c in checks) else 1
    finally:
        broker = stack.processes.get("broker")
        if broker is not None and broker.poll() is None:
            broker.send_signal(signal.SIGCONT)
        await asyncio.to_thread(stack.stop)


def main(argv=None) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
