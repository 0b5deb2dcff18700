"""RunLedger benchmark: ``python -m bench`` (or ``./run bench``).

Starts its own stack (embedded broker, private redis-server, the three services) unless ``--url``
points at a running one, then measures through the public HTTP API with one pooled aiohttp
session (aiohttp rather than httpx: the load generator shares the 2 cores with the system under
test, and httpx cost about twice as much CPU per request). Prints medians and tails, not means.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
import uuid

import aiohttp
import orjson
from rich.console import Console
from rich.table import Table


class Api:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def call(self, method: str, path: str, body=None) -> tuple[int, dict]:
        data = orjson.dumps(body) if body is not None else None
        async with self.session.request(method, "/api/v1" + path, data=data, headers={"content-type": "application/json"}) as r:
            return r.status, orjson.loads(await r.read())


async def measure(name: str, concurrency: int, count: int, op) -> dict:
    """Run ``op(i)`` ``count`` times with ``concurrency`` in flight; op returns True on success."""
    latencies: list[float] = []
    failures = 0
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        nonlocal failures
        async with sem:
            start = time.perf_counter()
            ok = await op(i)
            latencies.append(time.perf_counter() - start)
            failures += not ok

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "scenario": name,
        "concurrency": concurrency,
        "count": count,
        "failures": failures,
        "throughput": count / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


async def bench(url: str, n: int) -> list[dict]:
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=256), timeout=aiohttp.ClientTimeout(total=120)) as session:
        api = Api(session)
        _, project = await api.call("POST", "/projects", {"name": f"bench-{uuid.uuid4().hex[:6]}"})
        status, flow = await api.call(
            "POST",
            "/flows",
            {"name": "bench", "project_id": project["id"], "parameters": [{"name": "x", "default": 1}],
             "tasks": [{"id": "t1", "slug": "t1-1"}, {"id": "t2", "slug": "t2-1"}]},
        )
        assert status == 201, flow
        run_ids: list[str] = []

        async def create(i: int) -> bool:
            status, body = await api.call("POST", "/flow_runs", {"flow_id": flow["id"], "idempotency_key": uuid.uuid4().hex})
            if status == 201:
                run_ids.append(body["id"])
            return status == 201

        await measure("warm-up", 16, max(50, n // 10), create)
        results = [await measure("create (unique keys)", 1, max(50, n // 5), create)]
        results.append(await measure("create (unique keys)", 32, n, create))

        status, existing = await api.call("POST", "/flow_runs", {"flow_id": flow["id"], "idempotency_key": "bench-repeat"})

        async def repeat(i: int) -> bool:
            status, body = await api.call("POST", "/flow_runs", {"flow_id": flow["id"], "idempotency_key": "bench-repeat"})
            return status == 200 and body["id"] == existing["id"] and body["deduplicated"]

        results.append(await measure("create (deduplicated repeat)", 1, max(50, n // 5), repeat))
        results.append(await measure("create (deduplicated repeat)", 32, n, repeat))

        # Set-state round trips: each run walks Submitted -> Running with the version check on.
        targets = run_ids[:]
        versions = {run_id: 1 for run_id in targets}

        def set_state_op(start: int):
            async def op(i: int) -> bool:
                run_id = targets[(start + i) % len(targets)]
                state = "Running" if versions[run_id] % 2 else "Submitted"
                status, body = await api.call("POST", f"/flow_runs/{run_id}/state", {"state": {"type": state}, "version": versions[run_id]})
                if status == 200:
                    versions[run_id] = body["version"]
                return status == 200

            return op

        # concurrency 32 over distinct runs: no two requests in flight touch the same run
        results.append(await measure("set state (version checked)", 1, max(50, n // 5), set_state_op(0)))
        results.append(await measure("set state (version checked)", 32, min(n, len(targets)), set_state_op(0)))

        async def get(i: int) -> bool:
            status, body = await api.call("GET", f"/flow_runs/{run_ids[i % len(run_ids)]}")
            return status == 200

        results.append(await measure("get run", 1, max(100, n // 2), get))
        results.append(await measure("get run", 32, n * 2, get))
        return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--url", help="benchmark a running stack (e.g. http://127.0.0.1:4200) instead of starting one")
    parser.add_argument("--n", type=int, default=3000, help="operations per concurrent scenario (default 3000)")
    parser.add_argument("--quick", action="store_true", help="a small smoke run (n=300)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    n = 300 if args.quick else args.n
    stack = None
    if args.url is None:
        from services.devstack import Stack

        stack = Stack(own_redis=True, partitions=args.partitions, extra_env={"RUNLEDGER_LOG_LEVEL": "WARNING"})
        stack.start()
        url = stack.api_url
    else:
        url = args.url
    try:
        results = asyncio.run(bench(url, n))
    finally:
        if stack is not None:
            stack.stop()
    console = Console(width=120)
    load = os.getloadavg()
    console.print(
        f"RunLedger bench — {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; n={n}; "
        + (f"own stack: embedded Tansu, redis-server, {args.partitions} partitions" if stack else f"target {url}")
    )
    table = Table()
    for column in ("scenario", "conc.", "count", "failures", "ops/s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for r in results:
        table.add_row(r["scenario"], str(r["concurrency"]), str(r["count"]), str(r["failures"]), f"{r['throughput']:.0f}",
                      f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}")
    console.print(table)
    if args.json:
        with open(args.json, "wb") as f:
            f.write(orjson.dumps({"n": n, "load": load, "results": results}, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
