"""Log ingestion benchmark: ``.venv/bin/python -m bench.logs [--seconds 30] [--conc 8]``.

On its own stack (``services.devstack.Stack``: embedded Tansu broker, private redis-server,
transitions, projector, ingress and the log service as separate processes, service logs at
WARNING) it measures, and prints as one table:

1. sustained ingestion: ``POST /api/v1/logs`` batches of 100 and of 1,000 records from ``--conc``
   concurrent aiohttp clients for ``--seconds`` each; records/s acknowledged (durable in Kafka,
   acks=all) and records/s stored (until the log service has stored every acknowledged line);
   then batches of 100 through GraphQL ``write_run_logs``, the Prefect 1.x client's way
   (``--no-graphql`` skips it);
2. watch delay: one SSE watcher per run, batches of 10 lines at a steady rate; the delay from a
   batch's acknowledgement (the POST's answer) to the watcher receiving its last line, p50/p99;
   and the CPU time each process (ingress, log service, broker, Redis, this client) spent per 1,000 records
   acknowledged, a figure a shared machine disturbs much less than records/s;
3. Redis memory per million records: ``used_memory`` growth over the lines stored in (1),
   divided by their number, times 10^6 (extrapolated from the measured count, which is printed);
4. the consumer alone (no HTTP): the log service is stopped, ``--consumer-lines`` lines are
   produced straight to the ``logs`` topic as the ingress writes them (one record per run and
   batch: 100 or 1,000 lines each, with the lines' sort keys; ``--no-keys``: without, as records
   written before ``LogChunk.keys`` existed), the service is started again, and the rate is timed
   from the first stored line to the last, with the log service's and Redis's CPU per 1,000 lines.

``--engine aiokafka|faust`` picks the log-line consumer (``RUNLEDGER_LOGS_ENGINE``); ``--json FILE``
writes the figures; ``bench/logs_compare.py`` runs both engines repeatedly and prints medians.

Record shape: Prefect-like (``name`` "prefect.CloudTaskRunner", a task_run_id, INFO, a message
of ~60 characters, a client timestamp), the shape ``CloudHandler`` sends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import platform
import statistics
import time
import uuid
from datetime import datetime, timezone

import aiohttp
import orjson
import redis.asyncio as aioredis

from bench.measure import cpu_seconds, pct
from runledger.messages.logs import LogChunk, line_keys
from runledger.services.devstack import Stack
from runledger.services.runtime import kafka
from runledger.topics import LOGS, topics_for


def record(run_id: str, task_run_id: str, n: int) -> dict:
    return {
        "flow_run_id": run_id,
        "task_run_id": task_run_id,
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "level": "INFO",
        "name": "prefect.CloudTaskRunner",
        "message": f"Task 'say_hello': Finished task run for task with final state: 'Success' #{n}",
    }


def batch_body(run_id: str, task_run_id: str, first: int, count: int) -> bytes:
    """``{"logs": [record(run_id, task_run_id, first + i) for i in range(count)]}`` as JSON, at a
    fraction of the CPU (one clock read and one template per batch): the load generator shares the
    two cores with what it measures."""
    template = orjson.dumps(record(run_id, task_run_id, 0))
    head, _, tail = template.rpartition(b"#0")
    return b'{"logs":[' + b",".join(head + b"#%d" % (first + i) + tail for i in range(count)) + b"]}"


def direct_record(run_id: str, lines: list[dict], with_keys: bool) -> bytes:
    """A ``logs`` topic record of ``lines`` as the ingress writes it (with the lines' sort keys,
    ``LogChunk.keys``) or, ``with_keys`` False, as records written before those existed."""
    keys = line_keys(lines) if with_keys else None
    return LogChunk.model_construct(flow_run_id=run_id, lines=lines, end=None, keys=keys).encode()


async def setup_runs(http: aiohttp.ClientSession, api: str, count: int) -> list[str]:
    async with http.post(f"{api}/projects", json={"name": f"bench-{uuid.uuid4().hex[:6]}"}) as r:
        project = await r.json()
    async with http.post(f"{api}/flows", json={"name": "bench-logs", "project_id": project["id"]}) as r:
        flow = await r.json()
    runs = []
    for _ in range(count):
        async with http.post(f"{api}/flow_runs", json={"flow_id": flow["id"]}) as r:
            runs.append((await r.json())["id"])
    return runs


async def stored_lines(redis: aioredis.Redis, runs: list[str]) -> int:
    async with redis.pipeline(transaction=False) as pipe:
        for run in runs:
            pipe.zcard(f"rl:logs:{{{run}}}:ix")
        return sum(await pipe.execute())


CPU_PROCESSES = ("ingress", "logs", "broker", "redis")
CONSUMER_CPU = ("logs", "redis")


GRAPHQL_WRITE = b'{"query":"mutation($input: write_run_logs_input!) { write_run_logs(input: $input) { success } }","variables":{"input":'


async def ingest(stack: Stack, api: str, runs: list[str], batch: int, seconds: float, conc: int, redis, graphql: bool = False) -> dict:
    """``graphql``: through ``write_run_logs`` (the Prefect 1.x client's way) instead of REST."""
    stop_at = time.monotonic() + seconds
    cpu_before = cpu_seconds(stack, CPU_PROCESSES)
    client_before = sum(os.times()[:2])  # this process: the load generator shares the cores
    acked = 0
    errors = 0
    latencies: list[float] = []
    task_run = str(uuid.uuid4())
    before = await stored_lines(redis, runs)

    async def worker(w: int):
        nonlocal acked, errors
        async with aiohttp.ClientSession(json_serialize=lambda o: orjson.dumps(o).decode()) as http:
            n = k = 0
            while time.monotonic() < stop_at:
                run = runs[(w + k * conc) % len(runs)]  # every run in turn (not one run per writer: the per-run cap)
                k += 1
                body = batch_body(run, task_run, n, batch)
                url = f"{api}/logs"
                if graphql:
                    body, url = GRAPHQL_WRITE + body + b"}}", api.removesuffix("/api/v1") + "/graphql"
                t0 = time.perf_counter()
                async with http.post(url, data=body, headers={"content-type": "application/json"}) as r:
                    answer = await r.read()
                    if r.status == 200 and not (graphql and b'"errors"' in answer):
                        acked += batch
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors += 1
                n += batch

    t0 = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(conc)))
    elapsed = time.monotonic() - t0
    # until everything acknowledged is stored
    deadline = time.monotonic() + 300
    while (await stored_lines(redis, runs)) - before < acked and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    drained = time.monotonic() - t0
    stored = (await stored_lines(redis, runs)) - before
    cpu_after = cpu_seconds(stack, CPU_PROCESSES)
    return {
        "cpu_ms_per_1000": {**{name: (cpu_after[name] - cpu_before[name]) * 1e6 / max(acked, 1) for name in CPU_PROCESSES},
                            "bench client": (sum(os.times()[:2]) - client_before) * 1e6 / max(acked, 1)},
        "batch": batch,
        "api": "graphql" if graphql else "rest",
        "acked": acked,
        "errors": errors,
        "ack_rate": acked / elapsed,
        "store_rate": stored / drained,
        "stored": stored,
        "drain_after_s": drained - elapsed,
        "post_p50_ms": pct(latencies, 50) * 1000,
        "post_p99_ms": pct(latencies, 99) * 1000,
    }


async def watch_delay(api: str, runs: list[str], seconds: float, rate: float) -> dict:
    """Watchers on ``runs``; batches of 10 lines to them at ``rate`` batches/s; ack -> receipt."""
    acked_at: dict[str, float] = {}
    received_at: dict[str, float] = {}
    ready = asyncio.Event()
    connected = 0

    async def watcher(run: str, http: aiohttp.ClientSession):
        nonlocal connected
        async with http.get(f"{api}/flow_runs/{run}/watch", timeout=aiohttp.ClientTimeout(total=None)) as r:
            connected += 1
            if connected == len(runs):
                ready.set()
            buffer = b""
            async for chunk in r.content.iter_any():
                now = time.perf_counter()
                buffer += chunk
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    for line in event.split(b"\n"):
                        if line.startswith(b"data: ") and b'"message":"mark ' in line:
                            mark = orjson.loads(line[6:])["message"].split(" ", 1)[1]
                            received_at.setdefault(mark, now)

    async with aiohttp.ClientSession() as http:
        tasks = [asyncio.create_task(watcher(run, http)) for run in runs]
        await asyncio.wait_for(ready.wait(), 30)
        await asyncio.sleep(1.0)  # history delivered
        n = 0
        stop_at = time.monotonic() + seconds
        pending = []

        async def send(mark: str, run: str):
            lines = [record(run, "", i) for i in range(9)] + [{**record(run, "", 9), "message": f"mark {mark}"}]
            for line in lines:
                line.pop("task_run_id")
            async with http.post(f"{api}/logs", json={"logs": lines}) as r:
                await r.read()
                acked_at[mark] = time.perf_counter()

        while time.monotonic() < stop_at:
            mark = f"{n}"
            pending.append(asyncio.create_task(send(mark, runs[n % len(runs)])))
            n += 1
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*pending)
        await asyncio.sleep(2.0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    delays = [(received_at[m] - acked_at[m]) * 1000 for m in acked_at if m in received_at]
    return {"batches": len(acked_at), "received": len(delays), "p50_ms": pct(delays, 50), "p99_ms": pct(delays, 99),
            "max_ms": max(delays) if delays else float("nan"), "mean_ms": statistics.fmean(delays) if delays else float("nan")}


async def produce_direct(stack: Stack, runs: list[str], lines: int, batch: int, with_keys: bool) -> int:
    """Produce ``lines`` lines (whole records only) straight to the logs topic in records of
    ``batch`` lines, one run each, the runs in turn (as the ingress writes them); returns how many
    lines that is. Also used by bench/logs_consumer.py."""
    settings = stack.settings()
    topic = topics_for(settings)[LOGS].name
    producer = kafka.producer(settings, linger_ms=5)
    await producer.start()
    task_run = str(uuid.uuid4())
    try:
        futures = []
        for n in range(lines // batch):
            run = runs[n % len(runs)]
            body = [record(run, task_run, n * batch + i) for i in range(batch)]
            for line in body:
                del line["flow_run_id"]
            futures.append(await producer.send(topic, direct_record(run, body, with_keys), key=run.encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return (lines // batch) * batch


async def consumer_only(stack: Stack, args, batch: int, redis) -> dict:
    """Stop the log service, produce ``args.consumer_lines`` lines straight to the logs topic in
    records of ``batch`` lines (one run each, as the ingress writes them), start the service again
    and time it from the first stored line to the last."""
    runs = [str(uuid.uuid4()) for _ in range(args.runs)]
    stack.kill("logs", signal.SIGTERM)
    total = await produce_direct(stack, runs, args.consumer_lines, batch, not args.no_keys)
    stack.start_service("logs")
    spawned = time.monotonic()
    first = None
    at_first = n = 0
    cpu_first = cpu_seconds(stack, CONSUMER_CPU)
    deadline = spawned + 600
    while time.monotonic() < deadline:
        n = await stored_lines(redis, runs)
        now = time.monotonic()
        if n and first is None:  # CPU from here on: not the service's start
            first, at_first, cpu_first = now, n, cpu_seconds(stack, CONSUMER_CPU)
        if n >= total:
            break
        await asyncio.sleep(0.02)
    done = time.monotonic()
    cpu_done = cpu_seconds(stack, CONSUMER_CPU)
    stack.wait_ready("logs")
    return {"batch": batch, "lines": total, "stored": n, "rate": n / (done - first) if first and done > first else float("nan"),
            "seconds": done - (first or done), "start_s": (first or done) - spawned,
            "cpu_ms_per_1000": {name: (cpu_done[name] - cpu_first[name]) * 1e6 / max(n - at_first, 1) for name in CONSUMER_CPU}}


async def main_async(args, stack: Stack) -> None:
    load_before = os.getloadavg()
    try:
        api = stack.api_url + "/api/v1"
        redis = aioredis.from_url(stack.redis_url)
        async with aiohttp.ClientSession() as http:
            runs = await setup_runs(http, api, args.runs)
            watch_runs = await setup_runs(http, api, args.watchers)
        mem0 = (await redis.info("memory"))["used_memory"]
        results = [await ingest(stack, api, runs, b, args.seconds, args.conc, redis) for b in (100, 1000)]
        if not args.no_graphql:
            results.append(await ingest(stack, api, runs, 100, args.seconds, args.conc, redis, graphql=True))
        mem1 = (await redis.info("memory"))["used_memory"]
        stored = sum(r["stored"] for r in results)
        load_ingest = os.getloadavg()
        delay = await watch_delay(api, watch_runs, min(args.seconds, 20), args.rate)
        load_watch = os.getloadavg()
        alone = [await consumer_only(stack, args, b, redis) for b in (100, 1000)] if args.consumer_lines else []
        await redis.aclose()
    finally:
        stack.stop()
    load_after = os.getloadavg()
    per_million = (mem1 - mem0) / stored * 1_000_000 if stored else float("nan")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"engine": args.engine, "settings": vars(args), "cores": os.cpu_count(),
                       "load": {"before": load_before, "after_ingest": load_ingest, "after_watch": load_watch, "after": load_after},
                       "ingest": results, "watch": delay, "consumer_only": alone,
                       "redis_bytes_per_record": (mem1 - mem0) / max(stored, 1), "redis_mib_per_million": per_million / 2**20}, f, indent=1)
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"load {load_before[0]:.2f} before / {os.getloadavg()[0]:.2f} after")
    print(f"engine: {args.engine}; load 1-min: {load_ingest[0]:.2f} after ingestion, {load_watch[0]:.2f} after watch, {load_after[0]:.2f} at the end")
    print(f"settings: {args.seconds:.0f} s per batch size, concurrency {args.conc}, {args.runs} runs, {args.partitions} partitions, "
          f"watch: {args.watchers} watchers, {args.rate:.0f} batches/s of 10 lines")
    print()
    print("| measure | value | goal |")
    print("|---|---|---|")
    for r in results:
        if r["api"] == "graphql":
            print(f"| GraphQL `write_run_logs`, batches of {r['batch']:,}: acknowledged | {r['ack_rate']:,.0f} records/s ({r['acked']:,} records, {r['errors']} errors; POST p50 {r['post_p50_ms']:.0f} ms, p99 {r['post_p99_ms']:.0f} ms) | |")
            cpu = ", ".join(f"{name} {ms:.0f}" for name, ms in r["cpu_ms_per_1000"].items())
            print(f"| GraphQL `write_run_logs`, batches of {r['batch']:,}: CPU ms per 1,000 records | {cpu} | |")
            continue
        print(f"| ingestion, batches of {r['batch']:,}: acknowledged | {r['ack_rate']:,.0f} records/s ({r['acked']:,} records, {r['errors']} errors; POST p50 {r['post_p50_ms']:.0f} ms, p99 {r['post_p99_ms']:.0f} ms) | ≥ 50,000 records/s |")
        print(f"| ingestion, batches of {r['batch']:,}: stored | {r['store_rate']:,.0f} records/s (all stored {r['drain_after_s']:.1f} s after the last ack) | |")
        cpu = ", ".join(f"{name} {ms:.0f}" for name, ms in r["cpu_ms_per_1000"].items())
        print(f"| ingestion, batches of {r['batch']:,}: CPU ms per 1,000 records | {cpu} | |")
    print(f"| watch delay, ack → watcher (p50 / p99 / max) | {delay['p50_ms']:.1f} / {delay['p99_ms']:.1f} / {delay['max_ms']:.1f} ms ({delay['received']} of {delay['batches']} batches) | p99 ≤ 100 ms |")
    for r in alone:
        keys = "without" if args.no_keys else "with"
        print(f"| consumer alone, records of {r['batch']:,} lines {keys} sort keys: stored | {r['rate']:,.0f} records/s ({r['stored']:,} of {r['lines']:,} in {r['seconds']:.1f} s; first line {r['start_s']:.1f} s after the start) | |")
        cpu = ", ".join(f"{name} {ms:.1f}" for name, ms in r["cpu_ms_per_1000"].items())
        print(f"| consumer alone, records of {r['batch']:,} lines {keys} sort keys: CPU ms per 1,000 records | {cpu} | |")
    print(f"| Redis memory per million records | {per_million / 2**20:,.0f} MiB ({(mem1 - mem0) / 2**20:,.1f} MiB for {stored:,} records, extrapolated; {(mem1 - mem0) / max(stored, 1):.0f} B/record) | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of ingestion per batch size (default 30)")
    parser.add_argument("--conc", type=int, default=8, help="concurrent writers")
    parser.add_argument("--runs", type=int, default=50, help="flow runs the lines are spread over")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--watchers", type=int, default=10, help="runs watched in the delay scenario (one watcher each)")
    parser.add_argument("--rate", type=float, default=50.0, help="batches/s in the delay scenario")
    parser.add_argument("--engine", choices=("aiokafka", "faust"), default=os.environ.get("RUNLEDGER_LOGS_ENGINE", "aiokafka"),
                        help="the log service's consumer of the logs topic (RUNLEDGER_LOGS_ENGINE)")
    parser.add_argument("--consumer-lines", type=int, default=500_000,
                        help="lines produced straight to the logs topic per record size for the consumer-alone scenario (0: skip it)")
    parser.add_argument("--no-keys", action="store_true",
                        help="the consumer-alone records carry no sort keys (LogChunk.keys), as records written before them")
    parser.add_argument("--no-graphql", action="store_true",
                        help="skip the third ingestion run: batches of 100 through GraphQL write_run_logs, as the Prefect client sends them")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    stack = Stack(own_redis=True, partitions=args.partitions, extra_env={"RUNLEDGER_LOG_LEVEL": "WARNING",
                                                                          "RUNLEDGER_MAX_BODY_BYTES": str(8 * 1024 * 1024),
                                                                          "RUNLEDGER_LOGS_ENGINE": args.engine,
                                                                          # a fast run must not reach the per-run cap
                                                                          "RUNLEDGER_LOGS_MAX_LINES_PER_RUN": "10000000"})
    try:
        stack.start(services=("transitions", "projector", "ingress", "logs"))
    except Exception:
        stack.stop()
        raise
    asyncio.run(main_async(args, stack))


if __name__ == "__main__":
    main()
