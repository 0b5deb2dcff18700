"""Broker cost per produce and per fetch as a partition grows: ``.venv/bin/python -m bench.broker_fetch_cost``.

Why: on the embedded broker (Tansu, memory-only) the benchmarks that run long (scheduling with
10,000 runs, chaos) spend most of the machine's CPU in the broker, more the longer they run. This
measures it on its own: one partition is filled with ``--record-bytes`` records up to each of
``--sizes``; at each size the broker's CPU time (``/proc``) is read over ``--ops`` produces
(acks=all, one record each) and ``--ops`` single-record fetches of the newest records. It prints
one table: broker CPU ms per produce and per fetch, by partition size.

``--bootstrap HOST:PORT`` measures a broker that is already running instead (e.g. real Kafka;
``--broker-pid`` then names its process for the CPU figures).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.measure import cpu_seconds
from runledger.services.runtime import kafka
from runledger.settings import Settings


class _Pid:
    def __init__(self, pid: int) -> None:
        self.processes = {"broker": type("P", (), {"pid": pid})()}


async def measure(settings: Settings, cpu_of, sizes: list[int], ops: int, record_bytes: int) -> list[dict]:
    topic = f"bench-fetch-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = kafka.producer(settings, linger_ms=0)
    reader = kafka.consumer(settings, group_id=None)
    await producer.start()
    await reader.start()
    tp = TopicPartition(topic, 0)
    reader.assign([tp])
    rows, size = [], 0
    try:
        for target in sizes:
            futures = [await producer.send(topic, b"x" * record_bytes, partition=0) for _ in range(max(target - size, 0))]
            if futures:
                await asyncio.gather(*futures)
            size = max(size, target)
            c0, t0 = cpu_of(), time.perf_counter()
            first = None
            for _ in range(ops):
                meta = await producer.send_and_wait(topic, b"y" * record_bytes, partition=0)
                first = meta.offset if first is None else first
            c1, t1 = cpu_of(), time.perf_counter()
            for i in range(ops):
                reader.seek(tp, first + i)
                got = await reader.getmany(tp, timeout_ms=5000, max_records=1)
                assert got.get(tp), f"fetch of offset {first + i} returned nothing"
            c2, t2 = cpu_of(), time.perf_counter()
            size += ops
            rows.append({"size": size, "produce_ms": (c1 - c0) * 1000 / ops, "fetch_ms": (c2 - c1) * 1000 / ops,
                         "produce_wall_ms": (t1 - t0) * 1000 / ops, "fetch_wall_ms": (t2 - t1) * 1000 / ops})
            print(f"  {size:,} records: produce {rows[-1]['produce_ms']:.2f} ms, fetch {rows[-1]['fetch_ms']:.2f} ms of broker CPU", flush=True)
    finally:
        await producer.stop()
        await reader.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0,10000,50000,100000,200000", help="partition sizes (records) to measure at")
    parser.add_argument("--ops", type=int, default=200, help="produces and fetches timed at each size")
    parser.add_argument("--record-bytes", type=int, default=300)
    parser.add_argument("--bootstrap", help="a running broker (default: start the embedded one)")
    parser.add_argument("--broker-pid", type=int, help="its process id, for the CPU figures")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    stack = None
    if args.bootstrap:
        settings = Settings(kafka_bootstrap=args.bootstrap, embedded_broker=False)
        holder = _Pid(args.broker_pid) if args.broker_pid else None
    else:
        from runledger.services.devstack import Stack

        stack = Stack(own_redis=True, partitions=1)
        stack.start(services=())
        settings = stack.settings()
        holder = stack

    def cpu_of() -> float:
        return cpu_seconds(holder, ["broker"])["broker"] if holder is not None else float("nan")

    try:
        rows = asyncio.run(measure(settings, cpu_of, sizes, args.ops, args.record_bytes))
    finally:
        if stack is not None:
            stack.stop()
    print(f"\nbroker: {'embedded (Tansu)' if stack is not None else args.bootstrap}; {args.ops} ops per size, "
          f"{args.record_bytes}-byte records; load {os.getloadavg()[0]:.1f}\n")
    print("| records in the partition | broker CPU per produce (ms) | broker CPU per fetch (ms) | fetch wall (ms) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']:,} | {r['produce_ms']:.2f} | {r['fetch_ms']:.2f} | {r['fetch_wall_ms']:.2f} |")
    if len(rows) > 1 and rows[-1]["size"] > rows[0]["size"]:
        slope = (rows[-1]["fetch_ms"] - rows[0]["fetch_ms"]) / ((rows[-1]["size"] - rows[0]["size"]) / 1000)
        print(f"\nfetch cost grows by {slope * 1000:.1f} µs of broker CPU per 1,000 records in the partition")


if __name__ == "__main__":
    main()
