"""The Faust implementation of the bench's state-transitions writer (see bench/faust_vs_aiokafka.py).

Run only as a subprocess of the bench::

    BENCH_FAUST_BOOTSTRAP=127.0.0.1:PORT BENCH_FAUST_APP_ID=... BENCH_FAUST_COMMANDS=... \\
    BENCH_FAUST_EVENTS=... BENCH_FAUST_ACK_EVENTS=1 \\
        python -m bench.faust_app_for_bench worker --without-web --loglevel warning

One agent over the commands topic (keyed by run id, 4 partitions) with a changelog-backed
``app.Table`` holding the version of each run. Per command: look up the run's version, check
the expected version (optimistic lock), on success write the new version to the table (Faust
sends it to the changelog), send the event to the events topic (same partition as the command)
and reply to the partition of the replies topic named in the command. With
``BENCH_FAUST_ACK_EVENTS=1`` (the default) the reply is sent only once the event is acknowledged,
the same contract as ``services/transitions`` ("durable first"); with ``0`` it is fire-and-forget.

Embedded-broker settings from /work/shared/research/tansu.md: short session/heartbeat, memory
store, at_least_once, 4 partitions, ``runledger.services.runtime.tansu_compat.apply()`` and the worker's fetch
wait patched from Faust's hard-coded 1500 ms to 10 ms (else every hop costs ~750 ms on Tansu).
"""

from __future__ import annotations

import os

import faust
import orjson
from faust.transport.drivers import aiokafka as faust_aiokafka

from runledger.services.runtime import tansu_compat

FETCH_WAIT_MS = int(os.environ.get("BENCH_FAUST_FETCH_WAIT_MS", "10"))

tansu_compat.apply()

_original_create_worker_consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def _create_worker_consumer(self, transport):
    consumer = _original_create_worker_consumer(self, transport)
    # AIOKafkaConsumer keeps the value and hands it to its Fetcher in start().
    consumer._fetch_max_wait_ms = FETCH_WAIT_MS
    return consumer


faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer

BOOTSTRAP = os.environ.get("BENCH_FAUST_BOOTSTRAP", "127.0.0.1:9092")
APP_ID = os.environ.get("BENCH_FAUST_APP_ID", "bench-faust-writer")
ACK_EVENTS = os.environ.get("BENCH_FAUST_ACK_EVENTS", "1") == "1"
PARTITIONS = 4

app = faust.App(
    APP_ID,
    broker=f"kafka://{BOOTSTRAP}",
    store="memory://",
    processing_guarantee="at_least_once",
    broker_session_timeout=2.0,
    broker_heartbeat_interval=0.5,
    broker_rebalance_timeout=10.0,
    broker_request_timeout=30.0,
    broker_commit_interval=1.0,
    table_standby_replicas=0,
    stream_recovery_delay=0.0,
    consumer_auto_offset_reset="earliest",
    producer_linger=0.0,
    topic_partitions=PARTITIONS,
    web_enabled=False,
    datadir=os.environ.get("BENCH_FAUST_DATADIR", f"/tmp/{APP_ID}-data"),  # never inside the repo
    autodiscover=False,
)


def _raw_topic(name: str):
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=PARTITIONS,
    )


commands_topic = _raw_topic(os.environ.get("BENCH_FAUST_COMMANDS", "bench-faust-commands"))
events_topic = _raw_topic(os.environ.get("BENCH_FAUST_EVENTS", "bench-faust-events"))
replies_topic = _raw_topic(os.environ.get("BENCH_FAUST_REPLIES", "bench-faust-replies"))

versions = app.Table("versions", default=int, partitions=PARTITIONS)


@app.agent(commands_topic)
async def writer(stream):
    async for event in stream.events():
        command = orjson.loads(event.value)
        run = command["run"]
        current = versions[run]
        expected = command["expected"]
        if expected is not None and expected != current:
            reply = {"id": command["id"], "ok": False, "version": current}
        else:
            version = current + 1
            versions[run] = version
            delivery = await events_topic.send(
                key=run.encode(),
                value=orjson.dumps({"run": run, "version": version, "state": command["state"], "cmd": command["id"]}),
                partition=event.message.partition,
            )
            if ACK_EVENTS:
                await delivery
            reply = {"id": command["id"], "ok": True, "version": version}
        await replies_topic.send(key=run.encode(), value=orjson.dumps(reply), partition=command["rp"])


if __name__ == "__main__":
    app.main()
