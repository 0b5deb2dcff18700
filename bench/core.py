"""RunLedger benchmark: ``python -m bench`` (or ``./run bench``).

Starts its own stack (embedded Tansu broker, a private redis-server, the three services as
processes, via ``runledger.services.devstack.Stack``) unless ``--url`` names a running one, then drives the
public REST API (``/api/v1``) through pooled keep-alive HTTP clients (one per concurrency level, aiohttp by default) and prints, per scenario,
count, errors, throughput and latency percentiles (p50/p90/p99/max, computed here without
``statistics`` or numpy), plus the CPU each process used during each scenario when the stack is
our own.

Scenarios (each bounded by a count *and* a time cap, after one warm-up phase):

* create flow run, unique idempotency keys, at concurrency 1 and ``--conc`` (32)
* create flow run repeating an existing idempotency key (deduplicated: 200, same run)
* set state round trip: each run walks Scheduled -> Submitted -> Running -> Success ->
  Scheduled ... with its current ``version`` (or ``--state-version null``); runs are handed out
  from a FIFO pool so no two requests in flight ever touch the same run and each run sees only a
  few transitions
* get flow run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

JSON_HEADERS = {"content-type": "application/json"}


# -- percentiles (no statistics / numpy) ----------------------------------------------------------
def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, linear interpolation between the
    closest ranks (numpy's default 'linear' method). NaN for an empty list."""
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# -- HTTP clients ---------------------------------------------------------------------------------
class BenchError(Exception):
    pass


class HttpxApi:
    """One httpx.AsyncClient: a pool of keep-alive HTTP/1.1 connections, no proxies from the env."""

    name = "httpx"

    def __init__(self, base_url: str, pool: int) -> None:
        import httpx

        self.client = httpx.AsyncClient(
            base_url=base_url + "/api/v1",
            timeout=httpx.Timeout(60.0),
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool, keepalive_expiry=300),
            trust_env=False,
            headers=JSON_HEADERS,
        )

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        content = orjson.dumps(body) if body is not None else None
        r = await self.client.request(method, path, content=content)
        return r.status_code, orjson.loads(r.content) if r.content else None

    async def close(self) -> None:
        await self.client.aclose()


class AiohttpApi:
    """The same over one aiohttp.ClientSession (cheaper per request for the load generator)."""

    name = "aiohttp"

    def __init__(self, base_url: str, pool: int) -> None:
        import aiohttp

        self.base = base_url + "/api/v1"
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool, keepalive_timeout=300),
            timeout=aiohttp.ClientTimeout(total=60),
            trust_env=False,
            headers=JSON_HEADERS,
        )

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = orjson.dumps(body) if body is not None else None
        async with self.session.request(method, self.base + path, data=data) as r:
            raw = await r.read()
            return r.status, orjson.loads(raw) if raw else None

    async def close(self) -> None:
        await self.session.close()


CLIENTS = {"httpx": HttpxApi, "aiohttp": AiohttpApi}


# -- per-process CPU from /proc -------------------------------------------------------------------
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    except (OSError, IndexError, ValueError):
        return None


class CpuMeter:
    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def snapshot(self) -> dict[str, float | None]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    @staticmethod
    def percent(before: dict, after: dict, wall: float) -> dict[str, float | None]:
        out = {}
        for name, b in before.items():
            a = after.get(name)
            out[name] = None if a is None or b is None or wall <= 0 else 100.0 * (a - b) / wall
        return out


# -- the measuring loop ---------------------------------------------------------------------------
@dataclass
class Result:
    scenario: str
    concurrency: int
    planned: int
    count: int = 0  # successful operations
    errors: int = 0
    seconds: float = 0.0
    throughput: float = 0.0
    p50_ms: float = float("nan")
    p90_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    capped: bool = False  # stopped by the time cap before ``planned`` operations
    error_samples: list[str] = field(default_factory=list)
    cpu_percent: dict[str, float | None] = field(default_factory=dict)


async def measure(
    name: str, concurrency: int, count: int, max_seconds: float, op: Callable[[int], Awaitable[None]], meter: CpuMeter | None = None
) -> Result:
    """Run ``op(i)`` for i in 0..count-1 with at most ``concurrency`` in flight (a semaphore),
    launching nothing new once ``max_seconds`` have passed. ``op`` raises on a wrong answer.
    Latency is timed around ``op`` only, after the semaphore is held."""
    result = Result(name, concurrency, count)
    latencies: list[float] = []
    sem = asyncio.Semaphore(concurrency)
    in_flight: set[asyncio.Task] = set()

    async def one(i: int) -> None:
        try:
            t0 = time.perf_counter()
            try:
                await op(i)
            except Exception as exc:  # a failed op is counted, never fatal
                result.errors += 1
                if len(result.error_samples) < 3:
                    result.error_samples.append(f"{type(exc).__name__}: {exc}"[:300])
                return
            latencies.append(time.perf_counter() - t0)
        finally:
            sem.release()

    before = meter.snapshot() if meter else {}
    started = time.perf_counter()
    deadline = started + max_seconds
    for i in range(count):
        await sem.acquire()
        if time.perf_counter() >= deadline:
            sem.release()
            result.capped = True
            break
        task = asyncio.create_task(one(i))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)
    result.seconds = time.perf_counter() - started
    if meter:
        result.cpu_percent = CpuMeter.percent(before, meter.snapshot(), result.seconds)
    latencies.sort()
    result.count = len(latencies)
    result.throughput = result.count / result.seconds if result.seconds > 0 else 0.0
    if latencies:
        result.p50_ms = percentile(latencies, 50) * 1000
        result.p90_ms = percentile(latencies, 90) * 1000
        result.p99_ms = percentile(latencies, 99) * 1000
        result.max_ms = latencies[-1] * 1000
    return result


# -- the scenarios --------------------------------------------------------------------------------
NEXT_STATE = {"Scheduled": "Submitted", "Submitted": "Running", "Running": "Success", "Success": "Scheduled"}


@dataclass
class Slot:
    """One flow run the set-state scenario owns while a request for it is in flight."""

    run_id: str
    state: str
    version: int


@dataclass
class Settings:
    url: str | None
    own_stack: bool
    client: str
    n: int
    conc: int
    low_share: int  # concurrency-1 scenarios run n // low_share operations
    max_seconds: float
    warmup: int
    state_version: str
    tasks: int
    partitions: int
    scenario_warmup: int  # unmeasured ops before each scenario (times the concurrency when > 1)
    env: dict[str, str] = field(default_factory=dict)  # extra environment of our own stack's services


class Bench:
    def __init__(self, apis: dict[int, Any], settings: Settings, meter: CpuMeter | None) -> None:
        # One pooled keep-alive client per concurrency level, its pool exactly that size: httpcore
        # checks every pooled connection on each request, so a 32-connection pool would tax the
        # concurrency-1 numbers too.
        self.apis, self.s, self.meter = apis, settings, meter
        self.api = apis[settings.conc]
        self.flow_id = ""
        self.keys: list[tuple[str, str]] = []  # (idempotency key, run id) of runs created here
        self.pool: asyncio.Queue[Slot] = asyncio.Queue()
        self.run_ids: list[str] = []
        self.results: list[Result] = []
        self.tag = uuid.uuid4().hex[:8]

    async def setup(self) -> None:
        try:
            status, project = await self.api.call("POST", "/projects", {"name": f"bench-{self.tag}"})
        except Exception as exc:
            raise BenchError(f"cannot talk to {self.s.url}: {type(exc).__name__}: {exc}") from exc
        if status != 201:
            raise BenchError(f"create project: {status} {project}")
        tasks = [{"id": f"t{i}", "slug": f"t{i}-1", "name": f"t{i}"} for i in range(1, self.s.tasks + 1)]
        status, flow = await self.api.call(
            "POST",
            "/flows",
            {"name": f"bench-{self.tag}", "project_id": project["id"], "parameters": [{"name": "x", "default": 1}], "tasks": tasks},
        )
        if status != 201:
            raise BenchError(f"register flow: {status} {flow}")
        self.flow_id = flow["id"]

    # operations ----------------------------------------------------------------------------------
    async def create(self, i: int) -> None:
        key = f"bench-{self.tag}-{uuid.uuid4().hex}"
        status, body = await self.api.call("POST", "/flow_runs", {"flow_id": self.flow_id, "idempotency_key": key})
        if status != 201 or body.get("deduplicated"):
            raise BenchError(f"create: {status} {str(body)[:200]}")
        self.keys.append((key, body["id"]))
        self.run_ids.append(body["id"])
        state = body.get("state")
        state = state.get("type") if isinstance(state, dict) else state
        self.pool.put_nowait(Slot(body["id"], state or "Scheduled", body.get("version", 1)))

    async def repeat(self, i: int) -> None:
        key, run_id = self.keys[i % len(self.keys)]
        status, body = await self.api.call("POST", "/flow_runs", {"flow_id": self.flow_id, "idempotency_key": key})
        if status != 200 or body.get("id") != run_id or body.get("deduplicated") is not True:
            raise BenchError(f"repeat: {status} {str(body)[:200]}")

    async def set_state(self, i: int) -> None:
        slot = self.pool.get_nowait()  # the pool holds more runs than requests in flight
        try:
            target = NEXT_STATE.get(slot.state, "Running")
            version = slot.version if self.s.state_version == "track" else None
            status, body = await self.api.call(
                "POST", f"/flow_runs/{slot.run_id}/state", {"state": {"type": target}, "version": version}
            )
            if status != 200:
                raise BenchError(f"set state {slot.state}->{target} v{version}: {status} {str(body)[:200]}")
            slot.state, slot.version = body["state"], body["version"]
        finally:
            self.pool.put_nowait(slot)  # to the back: the next request takes another run

    async def get(self, i: int) -> None:
        run_id = self.run_ids[(i * 7919) % len(self.run_ids)]  # spread over all runs
        status, body = await self.api.call("GET", f"/flow_runs/{run_id}")
        if status != 200 or body.get("id") != run_id:
            raise BenchError(f"get: {status} {str(body)[:200]}")

    # phases --------------------------------------------------------------------------------------
    async def warm_up(self) -> Result:
        """Open the connection pool and warm every code path (imports, caches, consumers) first."""
        w, c = self.s.warmup, self.s.conc
        total = Result("warm-up", c, 0)
        for op in (self.create, self.repeat, self.set_state, self.get):
            r = await measure("warm-up", c, max(w, 2 * c), 60.0, op)
            total.count += r.count
            total.errors += r.errors
            total.error_samples += r.error_samples
            total.seconds += r.seconds
        return total

    async def run(self, progress: Callable[[str], None]) -> list[Result]:
        await self.setup()
        progress("warm-up")
        warm = await self.warm_up()
        if warm.errors:
            raise BenchError(f"warm-up failed {warm.errors} times: {warm.error_samples}")
        if self.pool.qsize() < 2 * self.s.conc:
            raise BenchError("warm-up created too few runs for the set-state pool")
        n, c, low, cap = self.s.n, self.s.conc, max(1, self.s.n // self.s.low_share), self.s.max_seconds
        plan = [
            ("create run (unique key)", 1, low, self.create),
            ("create run (unique key)", c, n, self.create),
            ("create run (dedup repeat)", 1, low, self.repeat),
            ("create run (dedup repeat)", c, n, self.repeat),
            ("set state (" + ("versioned" if self.s.state_version == "track" else "version null") + ")", 1, low, self.set_state),
            ("set state (" + ("versioned" if self.s.state_version == "track" else "version null") + ")", c, n, self.set_state),
            ("get run", 1, low, self.get),
            ("get run", c, n, self.get),
        ]
        for name, conc, count, op in plan:
            progress(f"{name} @ {conc}")
            self.api = self.apis[conc]
            # Unmeasured: reopen connections the server closed while idle (uvicorn's keep-alive
            # timeout is 5 s) and settle the path, so the measured part has no connection set-up.
            if self.s.scenario_warmup:
                await measure("warm-up", conc, self.s.scenario_warmup * conc if conc > 1 else self.s.scenario_warmup, 10.0, op)
            self.results.append(await measure(name, conc, count, cap, op, self.meter))
        return self.results


# -- output ---------------------------------------------------------------------------------------
def machine_context() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "cpu_model": model,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
    }


def fmt(x: float, digits: int = 1) -> str:
    return "-" if x != x else f"{x:.{digits}f}"  # NaN -> "-"


def render(settings: Settings, before: dict, after: dict, results: list[Result], cpu_names: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, int(os.environ.get("COLUMNS", "0") or 0)), highlight=False)
    target = (
        f"own stack (Tansu embedded broker, private redis-server, {settings.partitions} partitions)"
        if settings.own_stack
        else settings.url
    )
    console.print(
        f"[bold]RunLedger bench[/bold] — {before['python']}, {before['cpu_count']} cores "
        f"({before['usable_cpus']} usable) {before['cpu_model']}\n"
        f"load average before {' '.join(map(str, before['loadavg']))}, after {' '.join(map(str, after['loadavg']))}\n"
        f"target: {target}; client: {settings.client} (one keep-alive client per concurrency level, pool = concurrency); n={settings.n} "
        f"(concurrency 1: n/{settings.low_share}), high concurrency={settings.conc}, time cap {settings.max_seconds:g}s/scenario, "
        f"warm-up {settings.warmup}/path, flow with {settings.tasks} task(s), set-state version: {settings.state_version}"
        + (f"; stack env: {' '.join(f'{k}={v}' for k, v in settings.env.items())}" if settings.env else "")
    )
    table = Table(title="latency in ms (success only); ops/s = successful ops / scenario wall time")
    for col in ("scenario", "conc", "count", "err", "ops/s", "p50", "p90", "p99", "max"):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for r in results:
        table.add_row(
            r.scenario, str(r.concurrency), f"{r.count}{'*' if r.capped else ''}", str(r.errors), fmt(r.throughput, 0),
            fmt(r.p50_ms), fmt(r.p90_ms), fmt(r.p99_ms), fmt(r.max_ms),
        )
    console.print(table)
    if any(r.capped for r in results):
        console.print("* stopped by the time cap before the planned count")
    for r in results:
        for sample in r.error_samples:
            console.print(f"[red]{r.scenario} @ {r.concurrency}: {sample}[/red]")
    if cpu_names:
        cpu = Table(title="CPU per process during each scenario (% of one core)")
        cpu.add_column("scenario")
        cpu.add_column("conc", justify="right")
        for name in cpu_names:
            cpu.add_column(name, justify="right")
        cpu.add_column("total", justify="right")
        cpu.add_column("busiest")
        for r in results:
            values = {n: v for n, v in r.cpu_percent.items() if v is not None}
            busiest = max(values, key=values.get) if values else "-"
            cpu.add_row(
                r.scenario, str(r.concurrency), *(fmt(values.get(n, float("nan")), 0) for n in cpu_names),
                fmt(sum(values.values()), 0) if values else "-", busiest,
            )
        console.print(cpu)
        cores = before.get("usable_cpus") or before.get("cpu_count") or 1
        console.print(f"(the machine has {cores * 100}% in all; a process near 100% is bound on its single thread)")
        saturated = [r for r in results if (r.cpu_percent.get("bench") or 0) >= 85]
        if saturated:
            console.print(
                "[yellow]note: the load generator itself used >= 85% of a core in "
                + ", ".join(f"{r.scenario} @ {r.concurrency}" for r in saturated)
                + f"; those numbers are bound by the {settings.client} client"
                + (" (httpcore scans every pooled connection per request); try --client aiohttp" if settings.client == "httpx" else "")
                + "[/yellow]"
            )


# -- entry point ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description="RunLedger HTTP benchmark (see bench/README.md).")
    p.add_argument("--url", help="benchmark a running stack, e.g. http://127.0.0.1:4200 (default: start our own)")
    p.add_argument("--quick", action="store_true", help="a ~20 s smoke run (n=300, 2 s cap per scenario)")
    p.add_argument("--n", type=int, help="operations per high-concurrency scenario (default 2000; quick 300)")
    p.add_argument("--conc", type=int, default=32, help="the high concurrency (default 32)")
    p.add_argument("--low-share", type=int, default=4, help="concurrency-1 scenarios run n/LOW_SHARE ops (default 4)")
    p.add_argument("--max-seconds", type=float, help="time cap per scenario (default 9; quick 2)")
    p.add_argument("--warmup", type=int, help="warm-up operations per code path (default 100; quick 64)")
    p.add_argument("--scenario-warmup", type=int, default=2,
                   help="unmeasured ops before each scenario, times its concurrency when > 1 (default 2)")
    p.add_argument("--client", choices=sorted(CLIENTS), default="aiohttp", help="HTTP client library (default aiohttp: httpx costs the load generator about twice the CPU)")
    p.add_argument("--state-version", choices=("track", "null"), default="track",
                   help="set-state sends the run's current version (track) or null (no check)")
    p.add_argument("--tasks", type=int, default=0, help="tasks in the benchmark flow (each run creates that many task runs)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of our own stack")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the services of our own stack, e.g. RUNLEDGER_FETCH_MAX_WAIT_MS=2 (repeatable)")
    p.add_argument("--json", metavar="FILE", help="also write settings, machine context and results to FILE")
    a = p.parse_args(argv)
    for item in a.env:
        if "=" not in item or not item.split("=", 1)[0]:
            p.error(f"--env wants KEY=VALUE, got {item!r}")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.url:
        host = urlsplit(a.url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"refusing to benchmark {host}: only loopback targets are allowed", file=sys.stderr)
            return 2
    settings = Settings(
        url=a.url.rstrip("/") if a.url else None,
        own_stack=a.url is None,
        client=a.client,
        n=a.n if a.n is not None else (300 if a.quick else 2000),
        conc=a.conc,
        low_share=a.low_share,
        max_seconds=a.max_seconds if a.max_seconds is not None else (2.0 if a.quick else 9.0),
        warmup=a.warmup if a.warmup is not None else (64 if a.quick else 100),
        state_version=a.state_version,
        tasks=a.tasks,
        partitions=a.partitions,
        scenario_warmup=a.scenario_warmup,
        env=dict(item.split("=", 1) for item in a.env),
    )
    if settings.env and not settings.own_stack:
        print("--env only applies to the stack the bench starts itself, not to --url", file=sys.stderr)
        return 2

    def progress(msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    stack = None
    pids: dict[str, int] = {}
    before = machine_context()  # before our own stack adds load

    def terminated(signum, frame):  # make SIGTERM unwind like Ctrl-C, so our stack is stopped
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    try:
        if settings.own_stack:
            from runledger.services.devstack import Stack

            progress("starting the stack (broker, redis-server, transitions, projector, ingress)")
            stack = Stack(own_redis=True, partitions=settings.partitions, extra_env={"RUNLEDGER_LOG_LEVEL": "WARNING", **settings.env})
            stack.start()
            settings.url = stack.api_url
            progress(f"stack up at {stack.api_url} (logs in {stack.workdir})")
            pids = {name: p.pid for name, p in stack.processes.items()}
        pids["bench"] = os.getpid()
        results = asyncio.run(_run(settings, CpuMeter(pids), progress))
        after = machine_context()
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if stack is not None:
            progress("stopping the stack")
            stack.stop()
    render(settings, before, after, results, list(pids))
    if a.json:
        with open(a.json, "wb") as f:
            f.write(orjson.dumps(
                {"settings": asdict(settings), "machine_before": before, "machine_after": after,
                 "results": [asdict(r) for r in results]},
                option=orjson.OPT_INDENT_2,
            ))
        progress(f"wrote {a.json}")
    return 0 if all(r.errors == 0 for r in results) else 1


async def _run(settings: Settings, meter: CpuMeter, progress) -> list[Result]:
    apis = {c: CLIENTS[settings.client](settings.url, pool=c) for c in sorted({1, settings.conc})}
    try:
        return await Bench(apis, settings, meter).run(progress)
    finally:
        for api in apis.values():
            await api.close()
