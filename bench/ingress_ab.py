"""Two builds of the ingress side by side: ``.venv/bin/python -m bench.ingress_ab --b-python
OTHER/.venv/bin/python [--api rest|graphql] [--rounds 6]``.

One stack (embedded broker, private Redis, transitions and projector, no log service) with two
ingress processes: A runs this checkout, B runs ``--b-python`` (the interpreter of another
worktree's ``.venv``, say one at the commit before a change; without it, this checkout again, an
A/A check of the method). Phases alternate A, B, B, A, ...; each posts the same number of log
batches of ``--batch`` records (8 concurrent aiohttp writers, bodies built before the phase) and
reads the ingress's and the broker's CPU time from ``/proc``. It prints the CPU ms per 1,000
records of each phase and the medians. Both builds share the machine's noise phase by phase, so
on a busy shared machine their ratio means more than either figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import uuid

import aiohttp
import orjson

from bench.logs import GRAPHQL_WRITE, batch_body, setup_runs
from bench.measure import cpu_seconds
from runledger.services.devstack import Stack, free_port

RUNS = 50


async def phase(stack: Stack, process: str, port: int, runs: list[str], first_batch: int, args) -> dict[str, float]:
    api = f"http://127.0.0.1:{port}/api/v1"
    url = f"http://127.0.0.1:{port}/graphql" if args.api == "graphql" else f"{api}/logs"
    task_run = str(uuid.uuid4())
    bodies = []
    for k in range(first_batch, first_batch + args.records // args.batch):
        body = batch_body(runs[k % RUNS], task_run, k * args.batch, args.batch)
        bodies.append(GRAPHQL_WRITE + body + b"}}" if args.api == "graphql" else body)
    bodies.reverse()
    before = cpu_seconds(stack, (process, "broker"))

    async def writer() -> None:
        async with aiohttp.ClientSession() as http:
            while bodies:
                async with http.post(url, data=bodies.pop(), headers={"content-type": "application/json"}) as r:
                    answer = await r.read()
                    if r.status != 200 or b'"errors"' in answer:
                        raise RuntimeError(f"{process}: HTTP {r.status}: {answer[:300]!r}")

    await asyncio.gather(*(writer() for _ in range(8)))
    after = cpu_seconds(stack, (process, "broker"))
    return {"ingress": (after[process] - before[process]) * 1e6 / args.records, "broker": (after["broker"] - before["broker"]) * 1e6 / args.records}


async def main_async(stack: Stack, ports: dict[str, int], args) -> None:
    async with aiohttp.ClientSession() as http:
        runs = await setup_runs(http, stack.api_url + "/api/v1", RUNS)
    figures: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    batches = 0
    for n in range(args.rounds):
        for build in ("A", "B") if n % 2 == 0 else ("B", "A"):
            got = await phase(stack, "ingress" if build == "A" else "ingress_b", ports[build], runs, batches, args)
            batches += args.records // args.batch
            figures[build].append(got)
            print(f"round {n + 1} {build}: ingress {got['ingress']:.1f}, broker {got['broker']:.1f} ms per 1,000 records "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    print()
    print(f"| {args.api}, batches of {args.batch}, CPU ms per 1,000 records (median of {args.rounds}) | ingress | broker |")
    print("|---|---|---|")
    for build, label in (("A", "A: this checkout"), ("B", f"B: {args.b_python or 'this checkout'}")):
        print(f"| {label} | {statistics.median(f['ingress'] for f in figures[build]):.1f} | {statistics.median(f['broker'] for f in figures[build]):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--b-python", help="the interpreter B runs the ingress with (default: this one)")
    parser.add_argument("--api", choices=("rest", "graphql"), default="rest")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--records", type=int, default=100_000, help="records per phase")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    stack = Stack(own_redis=True, partitions=4, extra_env={"RUNLEDGER_LOG_LEVEL": "WARNING", "RUNLEDGER_MAX_BODY_BYTES": str(8 << 20),
                                                           "RUNLEDGER_LOGS_MAX_LINES_PER_RUN": "10000000"})
    stack.api_port = free_port()
    ports = {"A": stack.api_port, "B": free_port()}
    try:
        stack.start_broker()
        stack.start_redis()
        asyncio.run(stack.create_topics())
        for name in ("transitions", "projector", "ingress"):
            stack.start_service(name)
        stack.start_service("ingress_b", "ingress", interpreter=args.b_python, RUNLEDGER_API_PORT=str(ports["B"]))
        for name in ("transitions", "projector", "ingress"):
            stack.wait_ready(name)
        stack.wait_ready("ingress_b", url=f"http://127.0.0.1:{ports['B']}/health/ready")
        asyncio.run(main_async(stack, ports, args))
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
