"""Broker CPU on the log path, by client setting: ``.venv/bin/python -m bench.broker_log_path``.

Why: with log batches of 100 records the embedded broker (Tansu) spends ~14 ms of CPU per 1,000
records, ~5 ms with batches of 1,000 (``bench.logs``): its cost is per Kafka request, not per byte.
This measures, without Redis or any service, which client settings change that cost:

- one broker started as ``services.devstack.Stack.start_broker`` does (``--bootstrap`` +
  ``--broker-pid``: a broker already running, e.g. real Kafka);
- per run, a fresh topic with ``--partitions`` partitions (deleted afterwards: Tansu frees memory
  only then) and a fresh consumer group;
- a producer process shaped like the ingress's ``LogsContext.producer_ready``: one producer
  (``runtime.kafka.producer``, acks=all) shared by ``--writers`` concurrent asyncio writers, each
  sending one ``--record-bytes`` record (= one HTTP batch of 100 log lines, keyed by one of
  ``--runs`` run ids) and awaiting its ack before the next, at ``--rate`` records/s in total
  (0: each writer as fast as it can);
- a consumer process shaped like the log service's consumer (``RunTimelines``): one group member
  (``runtime.kafka.consumer``, ``max_poll_records``) in a ``getmany(timeout_ms=200, max_records=)``
  loop, doing nothing with the records (``--handle-ms``: asyncio.sleep that long per getmany
  batch, to stand for the store's Redis pipeline).

For each setting combination (``--combos``; run ``--rounds`` times, interleaved) it reports, over
a ``--seconds`` window after ``--warmup``: records/s acked, the broker's CPU ms per 1,000 log
lines (1 Kafka record = ``--lines`` lines; ``/proc``), the producer's and the consumer's process
CPU per 1,000 lines, produce and fetch requests per second, and the delay from a record's ack (in
the writer) to the consumer's getmany returning it (p50/p99; CLOCK_MONOTONIC is shared by the
processes). Figures are medians over the rounds. With ``--probes`` it also prints whether the
broker holds a fetch for ``fetch_min_bytes`` and what idle consumers cost the broker.

A combination is written ``name:key=value,key=value``; keys: ``linger`` (producer linger_ms),
``batch`` (producer max_batch_size), ``wait`` (consumer fetch_max_wait_ms), ``minb`` (consumer
fetch_min_bytes), ``maxrec`` (getmany max_records and max_poll_records), ``rate``, ``writers``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import queue
import statistics
import time
import uuid
from collections import Counter

from bench.measure import cpu_seconds, pct

# The ingress's log producer and the log service's consumer before max_batch_size was raised (16 KB: aiokafka's
# default); every combination starts from these, so the bench measures the same whatever kafka.producer defaults to.
BASE = dict(linger=2, batch=16384, wait=10, minb=1, maxrec=2000)

DEFAULT_COMBOS = ";".join([
    "before:",
    "linger0:linger=0",
    "linger5:linger=5",
    "linger10:linger=10",
    "batch256k:batch=262144",
    "l0+b256k:linger=0,batch=262144",
    "l5+b256k:linger=5,batch=262144",
    "b256k+minb64k:batch=262144,minb=65536",
    "b256k+w25+minb64k:batch=262144,wait=25,minb=65536",
    "b256k+w50+minb64k:batch=262144,wait=50,minb=65536",
])


def parse_combos(text: str) -> list[tuple[str, dict]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, body = part.partition(":")
        cfg = dict(BASE)
        for kv in filter(None, body.split(",")):
            k, _, v = kv.partition("=")
            cfg[k.strip()] = int(v)
        out.append((name.strip() or body, cfg))
    return out


def _settings(bootstrap: str, embedded: bool):
    from runledger.settings import Settings

    return Settings(kafka_bootstrap=bootstrap, embedded_broker=embedded)


def _count_requests(client, counts: Counter) -> None:
    """Count the requests a client sends, by Kafka API key (0 produce, 1 fetch)."""
    original = client.send

    async def send(node_id, request, *args, **kwargs):
        counts[getattr(request, "API_KEY", -1)] += 1
        return await original(node_id, request, *args, **kwargs)

    client.send = send


async def _cpu_sampler(samples: list, stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append((time.monotonic(), time.process_time()))
        await asyncio.sleep(0.02)
    samples.append((time.monotonic(), time.process_time()))


def _cpu_between(samples: list, t0: float, t1: float) -> float:
    def at(t):
        return min(samples, key=lambda s: abs(s[0] - t))[1]

    return at(t1) - at(t0)


def _window_counts(stamps: list, t0: float, t1: float) -> int:
    return sum(1 for t in stamps if t0 <= t < t1)


# -- the producer process ---------------------------------------------------------------------
def producer_main(bootstrap, embedded, topic, cfg, record_bytes, runs, t_start, t_end, out) -> None:
    asyncio.run(_produce(bootstrap, embedded, topic, cfg, record_bytes, runs, t_start, t_end, out))


async def _produce(bootstrap, embedded, topic, cfg, record_bytes, runs, t_start, t_end, out) -> None:
    from runledger.services.runtime import kafka

    producer = kafka.producer(_settings(bootstrap, embedded), linger_ms=cfg["linger"], max_batch_size=cfg["batch"])
    counts: Counter = Counter()
    await producer.start()
    _count_requests(producer.client, counts)
    keys = [uuid.uuid4().hex.encode() for _ in range(runs)]
    value = os.urandom(record_bytes // 2).hex().encode()[:record_bytes]
    acks: list[tuple[int, int, float]] = []
    request_stamps: list[float] = []
    stop, samples = asyncio.Event(), []
    sampler = asyncio.create_task(_cpu_sampler(samples, stop))
    writers, rate = cfg["writers"], cfg["rate"]

    async def writer(w: int) -> None:
        interval = writers / rate if rate else 0.0
        next_at = time.monotonic() + (w * interval / writers)
        k = 0
        while True:
            now = time.monotonic()
            if now >= t_end:
                return
            if next_at > now:
                await asyncio.sleep(next_at - now)
            future = await producer.send(topic, value, key=keys[(w + k * writers) % len(keys)])
            meta = await future
            acks.append((meta.partition, meta.offset, time.monotonic()))
            k += 1
            next_at = max(next_at + interval, time.monotonic() - interval)

    async def stamp_requests() -> None:  # the request count at the window's edges
        for edge in (t_start, t_end):
            await asyncio.sleep(max(edge - time.monotonic(), 0))
            request_stamps.append(counts[0])

    await asyncio.gather(*(writer(w) for w in range(writers)), stamp_requests())
    stop.set()
    await sampler
    await producer.stop()
    out.put(("producer", {"acks": acks, "cpu": _cpu_between(samples, t_start, t_end),
                          "produce_requests": request_stamps[1] - request_stamps[0]}))


# -- the consumer process ---------------------------------------------------------------------
def consumer_main(bootstrap, embedded, topics, cfg, handle_ms, ready, stop_flag, window, out) -> None:
    asyncio.run(_consume(bootstrap, embedded, topics, cfg, handle_ms, ready, stop_flag, window, out))


async def _consume(bootstrap, embedded, topics, cfg, handle_ms, ready, stop_flag, window, out) -> None:
    from runledger.services.runtime import kafka

    consumer = kafka.consumer(
        _settings(bootstrap, embedded), *topics, group_id=f"bench-{uuid.uuid4().hex[:8]}",
        max_poll_records=cfg["maxrec"], fetch_max_wait_ms=cfg["wait"], fetch_min_bytes=cfg["minb"],
    )
    counts: Counter = Counter()
    await consumer.start()
    _count_requests(consumer._client, counts)
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=100)
    ready.set()
    stop, samples = asyncio.Event(), []
    sampler = asyncio.create_task(_cpu_sampler(samples, stop))
    received: dict[tuple[int, int], float] = {}
    fetch_stamps: list[tuple[float, int]] = []
    getmany_batches = 0
    while not stop_flag.is_set():
        batch = await consumer.getmany(timeout_ms=200, max_records=cfg["maxrec"])
        now = time.monotonic()
        fetch_stamps.append((now, counts[1]))
        for tp, records in batch.items():
            for r in records:
                received[(tp.partition, r.offset)] = now
        if batch:
            getmany_batches += 1
            if handle_ms:
                await asyncio.sleep(handle_ms / 1000)
    stop.set()
    await sampler
    await consumer.stop()
    t0, t1 = window[0], window[1]

    def fetches_at(t):
        return min(fetch_stamps, key=lambda s: abs(s[0] - t))[1] if fetch_stamps else 0

    out.put(("consumer", {"received": received, "cpu": _cpu_between(samples, t0, t1),
                          "fetch_requests": fetches_at(t1) - fetches_at(t0), "getmany_batches": getmany_batches}))


def idle_main(bootstrap, embedded, topic, count, wait, ready, stop_flag) -> None:
    async def run():
        from runledger.services.runtime import kafka

        consumers = [kafka.consumer(_settings(bootstrap, embedded), topic, group_id=f"idle-{uuid.uuid4().hex[:8]}",
                                    fetch_max_wait_ms=wait) for _ in range(count)]
        await asyncio.gather(*(c.start() for c in consumers))

        async def loop(c):
            while not stop_flag.is_set():
                await c.getmany(timeout_ms=200)

        async def all_assigned():
            while not all(c.assignment() for c in consumers):
                await asyncio.sleep(0.05)
            ready.set()

        await asyncio.gather(all_assigned(), *(loop(c) for c in consumers))
        await asyncio.gather(*(c.stop() for c in consumers))

    asyncio.run(run())


# -- the parent -------------------------------------------------------------------------------
class Broker:
    def __init__(self, bootstrap: str | None, pid: int | None) -> None:
        self.stack = None
        if bootstrap:
            self.bootstrap, self.embedded = bootstrap, False
            self.processes = {"broker": type("P", (), {"pid": pid})()} if pid else {}
        else:
            from runledger.services.devstack import Stack

            self.stack = Stack(own_redis=True, partitions=4)
            self.stack.start_broker()  # no Redis, no services: the broker alone
            self.bootstrap, self.embedded = f"127.0.0.1:{self.stack.broker_port}", True
            self.processes = self.stack.processes

    def cpu(self) -> float:
        return cpu_seconds(self, ["broker"])["broker"]

    async def admin(self, create: list[str] = (), delete: list[str] = (), partitions: int = 4) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        from runledger.services.runtime import kafka

        settings = _settings(self.bootstrap, self.embedded)
        await kafka.wait_for_broker(settings)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            if create:
                await admin.create_topics([NewTopic(t, partitions, 1) for t in create])
            if delete:
                await admin.delete_topics(list(delete))
        finally:
            await admin.close()

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()


def _sleep_until(t: float) -> None:
    time.sleep(max(t - time.monotonic(), 0))


def run_once(broker: Broker, cfg: dict, args) -> dict:
    ctx = mp.get_context("spawn")
    topic = f"bench-logs-{uuid.uuid4().hex[:8]}"
    asyncio.run(broker.admin(create=[topic], partitions=args.partitions))
    out, ready, stop_flag = ctx.Queue(), ctx.Event(), ctx.Event()
    window = ctx.Array("d", 2)
    consumer = ctx.Process(target=consumer_main, args=(broker.bootstrap, broker.embedded, [topic], cfg, args.handle_ms,
                                                       ready, stop_flag, window, out))
    consumer.start()
    if not ready.wait(60):
        consumer.kill()
        raise RuntimeError("the consumer was not assigned its partitions within 60 s")
    t_start = time.monotonic() + args.warmup + 1.0  # the producer process needs ~1 s to import and connect
    t_end = t_start + args.seconds
    window[0], window[1] = t_start, t_end
    producer = ctx.Process(target=producer_main, args=(broker.bootstrap, broker.embedded, topic, cfg, args.record_bytes,
                                                       args.runs, t_start, t_end, out))
    producer.start()
    _sleep_until(t_start)
    b0, load = broker.cpu(), os.getloadavg()[0]
    _sleep_until(t_end)
    b1 = broker.cpu()
    results = {}
    name, data = out.get(timeout=120)
    results[name] = data
    time.sleep(1.5)  # the consumer catches up with the last acks
    stop_flag.set()
    name, data = out.get(timeout=120)
    results[name] = data
    producer.join(30)
    consumer.join(30)
    asyncio.run(broker.admin(delete=[topic]))
    p, c = results["producer"], results["consumer"]
    in_window = [(part, off, t) for part, off, t in p["acks"] if t_start <= t < t_end]
    delays = [(c["received"][(part, off)] - t) * 1000 for part, off, t in in_window if (part, off) in c["received"]]
    missing = sum(1 for part, off, _ in in_window if (part, off) not in c["received"])
    lines_k = len(in_window) * args.lines / 1000 or float("nan")
    return {
        "records_s": len(in_window) / args.seconds,
        "broker_ms": (b1 - b0) * 1000 / lines_k,
        "producer_ms": p["cpu"] * 1000 / lines_k,
        "consumer_ms": c["cpu"] * 1000 / lines_k,
        "produce_rps": p["produce_requests"] / args.seconds,
        "fetch_rps": c["fetch_requests"] / args.seconds,
        "p50": pct(delays, 50), "p99": pct(delays, 99), "missing": missing, "load": load,
    }


def idle_cost(broker: Broker, count: int, wait: int, seconds: float) -> float:
    """Broker CPU ms per second with ``count`` idle group consumers polling an empty topic."""
    ctx = mp.get_context("spawn")
    topic = f"bench-idle-{uuid.uuid4().hex[:8]}"
    asyncio.run(broker.admin(create=[topic]))
    ready, stop_flag = ctx.Event(), ctx.Event()
    process = ctx.Process(target=idle_main, args=(broker.bootstrap, broker.embedded, topic, count, wait, ready, stop_flag))
    process.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("idle consumers not assigned within 60 s")
        time.sleep(1.0)
        b0, t0 = broker.cpu(), time.monotonic()
        time.sleep(seconds)
        b1, t1 = broker.cpu(), time.monotonic()
    finally:
        stop_flag.set()
        process.join(30)
        asyncio.run(broker.admin(delete=[topic]))
    return (b1 - b0) * 1000 / (t1 - t0)


def _median(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if r[key] == r[key]]
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--combos", default=DEFAULT_COMBOS, help="name:key=value,...;... (see above)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each combination, interleaved")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rate", type=int, default=500, help="records/s in total (0: full speed); 500 = 50,000 lines/s")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--record-bytes", type=int, default=22_000, help="one HTTP batch of 100 lines as the ingress encodes it")
    parser.add_argument("--lines", type=int, default=100, help="log lines per Kafka record")
    parser.add_argument("--runs", type=int, default=32, help="distinct record keys (run ids)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--handle-ms", type=float, default=0.0, help="sleep per non-empty getmany (the store's pipeline)")
    parser.add_argument("--probes", action="store_true", help="also: does the broker honour fetch_min_bytes; idle consumers' cost")
    parser.add_argument("--bootstrap", help="a running broker (default: start the embedded one)")
    parser.add_argument("--broker-pid", type=int, help="its process id, for the CPU figures")
    args = parser.parse_args()
    combos = parse_combos(args.combos)
    for _, cfg in combos:
        cfg.setdefault("rate", args.rate)
        cfg.setdefault("writers", args.writers)
    broker = Broker(args.bootstrap, args.broker_pid)
    rows: dict[str, list[dict]] = {name: [] for name, _ in combos}
    probe_rows, idle_rows = [], []
    try:
        for round_ in range(args.rounds):
            for name, cfg in combos:
                r = run_once(broker, cfg, args)
                rows[name].append(r)
                print(f"  round {round_ + 1} {name}: {r['records_s']:.0f} rec/s, broker {r['broker_ms']:.1f} ms/1k lines, "
                      f"produce {r['produce_rps']:.0f}/s, fetch {r['fetch_rps']:.0f}/s, p50/p99 {r['p50']:.1f}/{r['p99']:.1f} ms, "
                      f"missing {r['missing']}, load {r['load']:.1f}", flush=True)
        if args.probes:
            # fetch_min_bytes: one record every 200 ms; a broker that honours it holds each fetch for max_wait
            for name, extra in (("wait=200, min_bytes=1", dict(wait=200, minb=1)),
                                ("wait=200, min_bytes=1 MiB", dict(wait=200, minb=1 << 20))):
                cfg = dict(BASE, rate=5, writers=1, **extra)
                r = run_once(broker, cfg, args)
                probe_rows.append((name, r))
                print(f"  probe {name}: p50/p99 {r['p50']:.1f}/{r['p99']:.1f} ms, fetch {r['fetch_rps']:.0f}/s", flush=True)
            for count, wait in ((0, 10), (4, 10), (4, 50), (4, 100), (4, 500)):
                cost = idle_cost(broker, count, wait, args.seconds) if count else idle_cost(broker, 0, wait, args.seconds)
                idle_rows.append((count, wait, cost))
                print(f"  idle: {count} consumers at fetch_max_wait_ms={wait}: broker {cost:.1f} ms CPU/s", flush=True)
    finally:
        broker.stop()

    print(f"\nbroker: {'embedded (Tansu)' if broker.embedded else args.bootstrap}; {args.partitions} partitions, "
          f"{args.writers} writers, {args.record_bytes:,}-byte records of {args.lines} lines, acks=all, "
          f"{args.seconds:.0f} s per run, medians of {args.rounds} interleaved rounds; "
          f"1-min load {min(r['load'] for rs in rows.values() for r in rs):.1f}-{max(r['load'] for rs in rows.values() for r in rs):.1f}\n")
    print("| combination | linger | batch | wait | min bytes | max rec | records/s | broker CPU ms / 1k lines | producer | consumer "
          "| produce req/s | fetch req/s | ack→consumed p50 / p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, cfg in combos:
        rs = rows[name]
        print(f"| {name} | {cfg['linger']} | {cfg['batch'] // 1024}k | {cfg['wait']} | {cfg['minb']} | {cfg['maxrec']} "
              f"| {_median(rs, 'records_s'):,.0f} | {_median(rs, 'broker_ms'):.1f} ({', '.join(format(r['broker_ms'], '.1f') for r in rs)}) "
              f"| {_median(rs, 'producer_ms'):.1f} | {_median(rs, 'consumer_ms'):.1f} | {_median(rs, 'produce_rps'):.0f} "
              f"| {_median(rs, 'fetch_rps'):.0f} | {_median(rs, 'p50'):.1f} / {_median(rs, 'p99'):.1f} |")
    if probe_rows:
        print("\nfetch_min_bytes (1 record of 22 KB every 200 ms; a broker that honours min bytes answers after max_wait):\n")
        print("| consumer | ack→consumed p50 / p99 ms | fetch req/s |")
        print("|---|---|---|")
        for name, r in probe_rows:
            print(f"| {name} | {r['p50']:.1f} / {r['p99']:.1f} | {r['fetch_rps']:.0f} |")
    if idle_rows:
        print("\nidle group consumers (empty topic), broker CPU:\n")
        print("| idle consumers | fetch_max_wait_ms | broker CPU ms per second |")
        print("|---|---|---|")
        for count, wait, cost in idle_rows:
            print(f"| {count} | {wait if count else '-'} | {cost:.1f} |")


if __name__ == "__main__":
    main()
