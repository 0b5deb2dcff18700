"""Does Faust commit the offsets of a ``stream.take`` batch whose processing failed or was still
running at shutdown? ``.venv/bin/python -m bench.faust_take_ack crash|stop`` (~10 s, own broker).

10 records on a 1-partition topic; a Faust agent takes them in one ``take_events`` batch and
``crash``: raises while "writing" it; ``stop``: is still writing it (5 s) when ``app.stop()`` is
called. Prints the batches the agent saw and the group's committed offset afterwards. Measured
(faust-streaming 0.15.3, embedded Tansu): crash -> committed 10 with nothing written (``take``
acks the buffered events in the ``finally`` of its generator, which runs when the agent's loop is
left by the exception; Faust's commit loop then commits them and the restarted agent goes on
after them); stop -> Faust waits for the write (``stream_wait_empty``), then commits 10: safe.
"""
import asyncio
import sys


import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from runledger.services.devstack import Stack
from runledger.services.runtime import tansu_compat

tansu_compat.apply()

MODE = sys.argv[1] if len(sys.argv) > 1 else "crash"  # crash | stop


async def main(bootstrap):
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await p.start()
    for i in range(10):
        await p.send_and_wait("t", str(i).encode(), partition=0)
    await p.stop()
    app = faust.App("g-" + MODE, broker=f"kafka://{bootstrap}", store="memory://", broker_session_timeout=2.0,
                    broker_heartbeat_interval=0.5, broker_commit_interval=0.5, consumer_auto_offset_reset="earliest",
                    topic_disable_leader=True, web_enabled=False, autodiscover=False, datadir=f"/tmp/faust-take-ack-{MODE}")
    topic = app.topic("t", value_type=bytes, value_serializer="raw", partitions=1)
    seen = []
    @app.agent(topic)
    async def agent(stream):
        async for events in stream.take_events(100, within=0.2):
            seen.append([e.message.offset for e in events])
            if MODE == "crash" and len(seen) == 1:
                raise RuntimeError("store write failed")
            if MODE == "stop" and len(seen) == 1:
                await asyncio.sleep(5)
                seen.append("written")  # a write in progress when the service stops
    await app.start()
    if MODE == "crash":
        await asyncio.sleep(6)
    else:
        while not seen:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        await app.stop()
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id="g-" + MODE, enable_auto_commit=False)
    await c.start()
    committed = await c.committed(TopicPartition("t", 0))
    await c.stop()
    print(f"{MODE}: the agent saw {seen}; the group's committed offset afterwards: {committed}")
    if MODE == "crash":
        await app.stop()

if __name__ == "__main__":
    s = Stack()
    s.start_broker()
    try:
        asyncio.run(main(f"127.0.0.1:{s.broker_port}"))
    finally:
        s.stop()
