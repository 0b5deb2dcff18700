"""The log-line consumer alone, engines interleaved: ``.venv/bin/python -m bench.logs_consumer
[--trials 4] [--lines 200000] [--engines aiokafka,faust]``.

One stack (embedded Tansu broker, private redis-server, the log service only; no HTTP). Each
trial: stop the log service, produce ``--lines`` lines straight to the ``logs`` topic as the
ingress writes them (one record per run and batch, 100 or 1,000 lines each, over ``--runs`` runs,
with the lines' sort keys unless ``--no-keys``),
start the log service with the trial's engine, and time it from the first stored line to the
last: lines/s. The engines alternate trial by trial (aiokafka, faust, aiokafka, ...) so a change
of the machine's load hits both alike; the median per engine and record size is printed with
every trial's figure and the 1-minute load around it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import time
import uuid

import redis.asyncio as aioredis

from bench.logs import produce_direct, stored_lines
from runledger.services.devstack import Stack


async def trial(stack: Stack, engine: str, batch: int, lines: int, runs_n: int, with_keys: bool, redis) -> dict:
    runs = [str(uuid.uuid4()) for _ in range(runs_n)]
    if "logs" in stack.processes:
        stack.kill("logs", signal.SIGTERM)
    total = await produce_direct(stack, runs, lines, batch, with_keys)
    load0 = os.getloadavg()[0]
    stack.start_service("logs", RUNLEDGER_LOGS_ENGINE=engine)
    spawned = time.monotonic()
    first = None
    n = 0
    while time.monotonic() < spawned + 600:
        n = await stored_lines(redis, runs)
        now = time.monotonic()
        if n and first is None:
            first = now
        if n >= total:
            break
        await asyncio.sleep(0.02)
    done = time.monotonic()
    return {"runs": runs, "engine": engine, "batch": batch, "lines": total, "stored": n, "seconds": done - (first or done),
            "rate": n / (done - first) if first and done > first else float("nan"), "start_s": (first or done) - spawned,
            "load": [load0, os.getloadavg()[0]]}


async def main_async(args, stack: Stack) -> list[dict]:
    redis = aioredis.from_url(stack.redis_url)
    out = []
    engines = args.engines.split(",")
    try:
        for t in range(args.trials):
            for batch in (100, 1000):
                for engine in (engines if t % 2 == 0 else engines[::-1]):
                    r = await trial(stack, engine, batch, args.lines, args.runs, not args.no_keys, redis)
                    print(f"  trial {t + 1} {engine:8} records of {batch:>5,} lines: {r['rate']:>9,.0f} lines/s "
                          f"({r['stored']:,}/{r['lines']:,} in {r['seconds']:.1f} s; load {r['load'][0]:.1f}→{r['load'][1]:.1f})", flush=True)
                    out.append(r)
                    # free the trial's lines (its runs are never used again); the saved positions stay,
                    # so the next trial's service starts where this one ended
                    await redis.delete(*[f"rl:logs:{{{run}}}:{k}" for run in r.pop("runs") for k in ("tl", "ix", "meta")])
    finally:
        await redis.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4, help="trials per engine and record size")
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--engines", default="aiokafka,faust")
    parser.add_argument("--no-keys", action="store_true", help="records without the lines' sort keys (LogChunk.keys)")
    parser.add_argument("--json")
    args = parser.parse_args()
    stack = Stack(own_redis=True, partitions=args.partitions, extra_env={"RUNLEDGER_LOG_LEVEL": "WARNING"})
    try:
        stack.start(services=())
        results = asyncio.run(main_async(args, stack))
    finally:
        stack.stop()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print()
    print("| consumer alone (lines/s, median of trials) | " + " | ".join(args.engines.split(",")) + " | faust / aiokafka |")
    print("|---|" + "---|" * (len(args.engines.split(",")) + 1))
    for batch in (100, 1000):
        med = {}
        cells = []
        for engine in args.engines.split(","):
            rates = [r["rate"] for r in results if r["engine"] == engine and r["batch"] == batch]
            med[engine] = statistics.median(rates)
            cells.append(f"{med[engine]:,.0f} ({', '.join(f'{x:,.0f}' for x in rates)})")
        ratio = med.get("faust", float("nan")) / med["aiokafka"] if "aiokafka" in med else float("nan")
        print(f"| records of {batch:,} lines | " + " | ".join(cells) + f" | {ratio:.2f} |")
    loads = [r["load"][0] for r in results]
    print(f"1-minute load during the trials: {min(loads):.1f}–{max(loads):.1f}")


if __name__ == "__main__":
    main()
