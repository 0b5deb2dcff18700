"""Restart safety of the log service: ``.venv/bin/python -m bench.logs_restart [--engine faust]
[--restarts 10] [--signal KILL|TERM] [--rounds 1] [--resume-from store|kafka]``.

On a stack of its own (embedded Tansu broker, private redis-server, only the log service), a
producer thread writes log records straight to the ``logs`` topic (acks=all; one record = 5 lines
of one of 8 runs, every line named by its record's sequence number) while the log service is
killed (``--signal``, SIGKILL by default) and started again ``--restarts`` times: every other time
once it is ready and has stored for a moment, the others at a random moment of its start (the
case where a restarted Faust worker was once seen to skip records). Then production stops, the
service is started a last time and the store is read back: every line of every acknowledged
record must be there exactly once. Prints lost and duplicated lines per round.

``--resume-from kafka`` (Faust only) makes the Faust engine resume from Faust's committed offsets
instead of the store's saved positions (``RUNLEDGER_LOGS_FAUST_RESUME_FROM``): the diagnostic for
"does Faust itself lose records on restart". ``tests/integration/test_logs_restart.py`` runs
``run_restarts`` for both engines.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import threading
import time
import uuid
from collections import Counter

import orjson

from runledger.messages.logs import LogChunk
from runledger.services.devstack import Stack
from runledger.services.runtime import kafka
from runledger.topics import LOGS, topics_for

RUNS = 8
LINES_PER_RECORD = 5


class Producer(threading.Thread):
    """Produces records until stopped; ``acked`` holds the sequence numbers the broker acknowledged."""

    def __init__(self, stack: Stack, rate: float) -> None:
        super().__init__(daemon=True)
        self.stack, self.rate = stack, rate
        self.runs = [str(uuid.uuid4()) for _ in range(RUNS)]
        self.acked: list[int] = []
        self.failed = 0
        self.halt = threading.Event()

    def run(self) -> None:
        asyncio.run(self._produce())

    async def _produce(self) -> None:
        settings = self.stack.settings()
        topic = topics_for(settings)[LOGS].name
        producer = kafka.producer(settings, linger_ms=2)
        await producer.start()
        try:
            seq = 0
            pending: set[asyncio.Task] = set()

            async def send(n: int, run: str) -> None:
                lines = [{"timestamp": "2024-05-01T10:00:00+00:00", "level": "INFO", "name": "bench", "message": f"{n}:{i}",
                          "task_run_id": None, "info": None} for i in range(LINES_PER_RECORD)]
                try:
                    await producer.send_and_wait(topic, LogChunk.model_construct(flow_run_id=run, lines=lines, end=None).encode(), key=run.encode())
                    self.acked.append(n)
                except Exception:
                    self.failed += 1

            while not self.halt.is_set():
                task = asyncio.create_task(send(seq, self.runs[seq % RUNS]))
                pending.add(task)
                task.add_done_callback(pending.discard)
                seq += 1
                await asyncio.sleep(1 / self.rate)
            await asyncio.gather(*pending)
        finally:
            await producer.stop()


def stored_messages(stack: Stack, runs: list[str]) -> Counter:
    client = stack.redis_client()
    try:
        seen: Counter = Counter()
        for run in runs:
            for _, fields in client.xrange(f"rl:logs:{{{run}}}:tl", "-", "+"):
                if fields.get(b"k") == b"l":
                    seen[orjson.loads(fields[b"d"])["message"]] += 1
        return seen
    finally:
        client.close()


def run_restarts(engine: str, restarts: int = 10, sig: int = signal.SIGKILL, resume_from: str = "store",
                 rate: float = 200.0, partitions: int = 4, seed: int | None = None, log=print) -> dict:
    """One round; returns counts of acknowledged, lost and duplicated lines (and which were lost)."""
    rnd = random.Random(seed)
    stack = Stack(own_redis=True, partitions=partitions, extra_env={
        "RUNLEDGER_LOGS_ENGINE": engine, "RUNLEDGER_LOGS_FAUST_RESUME_FROM": resume_from, "RUNLEDGER_LOG_LEVEL": "WARNING"})
    try:
        stack.start(services=("logs",))
        producer = Producer(stack, rate)
        producer.start()
        t0 = time.monotonic()
        for i in range(restarts):
            if i % 2 == 0:  # a worker that is up and storing
                stack.wait_ready("logs", timeout=120)
                time.sleep(rnd.uniform(0.3, 1.5))
            else:  # a worker still starting (joining the group, seeking, first fetches)
                time.sleep(rnd.uniform(0.2, 4.0))
            stack.kill("logs", sig)
            stack.start_service("logs")
            log(f"  restart {i + 1}/{restarts} at {time.monotonic() - t0:.1f} s, {len(producer.acked)} records acknowledged")
        stack.wait_ready("logs", timeout=120)
        time.sleep(1.0)
        producer.halt.set()
        producer.join(timeout=60)
        expected = {f"{n}:{i}" for n in producer.acked for i in range(LINES_PER_RECORD)}
        deadline = time.monotonic() + 60
        while True:
            seen = stored_messages(stack, producer.runs)
            if expected <= set(seen) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        lost = sorted(expected - set(seen), key=lambda m: tuple(int(x) for x in m.split(":")))
        duplicated = {m: c for m, c in seen.items() if c > 1}
        lost_records = sorted({int(m.split(":")[0]) for m in lost})
        return {"engine": engine, "resume_from": resume_from, "signal": signal.Signals(sig).name, "restarts": restarts,
                "acked_records": len(producer.acked), "failed_sends": producer.failed, "lines": len(expected),
                "lost_lines": len(lost), "lost_records": lost_records, "duplicated_lines": len(duplicated),
                "workdir": str(stack.workdir)}
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("aiokafka", "faust"), default="faust")
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--signal", choices=("KILL", "TERM"), default="KILL")
    parser.add_argument("--resume-from", choices=("store", "kafka"), default="store")
    parser.add_argument("--rate", type=float, default=200.0, help="records/s produced")
    args = parser.parse_args()
    total_lost = 0
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}: {args.engine}, resume from {args.resume_from}, SIG{args.signal} x {args.restarts}")
        out = run_restarts(args.engine, args.restarts, getattr(signal, "SIG" + args.signal), args.resume_from, args.rate, seed=r)
        total_lost += out["lost_lines"]
        print(f"  acknowledged {out['acked_records']} records ({out['lines']} lines), lost {out['lost_lines']} lines "
              f"(records {out['lost_records'][:20]}), duplicated {out['duplicated_lines']}; logs in {out['workdir']}")
    print(f"total lost lines: {total_lost}")


if __name__ == "__main__":
    main()
