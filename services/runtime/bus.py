"""Request/reply over Kafka: send a command to the writer and wait for its verdict, then for
the read model to include the verdict's events (read-your-writes).

Replies come back on one partition of the replies topic chosen from this instance's id; the
reply consumer uses manual assignment (no consumer group, no rebalances when replicas restart).
"""

from __future__ import annotations

import asyncio
import uuid
import zlib
from datetime import datetime, timezone

import redis.asyncio as aioredis
import structlog
from aiokafka import TopicPartition
from pydantic import ValidationError

from runledger.services.runtime import kafka as clients
from runledger.services.runtime import redis as redis_clients
from runledger.services.runtime.tasks import stop_tasks
from runledger.messages.codec import decode_reply, encode
from runledger.messages.commands import CommandEnvelope, Reply, ReplyTo
from runledger.readmodel.keys import Keys
from runledger.settings import Settings


log = structlog.get_logger(component="command_bus")


class CommandTimeout(Exception):
    """The writer did not answer in time; the command may still be applied later."""


class ProjectionTracker:
    """Knows how far the projector has applied each events partition."""

    POLL_SECONDS = 0.1  # the checkpoints are read this often (pub/sub is the fast path)

    def __init__(self, redis: aioredis.Redis, keys: Keys, partitions: int) -> None:
        self.redis, self.keys, self.partitions = redis, keys, partitions
        self.positions: dict[int, int] = {}
        self._waiters: dict[int, list[tuple[int, asyncio.Future]]] = {}
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        if redis_clients.is_cluster(self.redis):
            await self.redis.initialize()  # the cluster pub/sub routes by the slot map: load it first
        self.pubsub = self.redis.pubsub()
        await self.pubsub.subscribe(self.keys.progress_channel)
        await self._poll_once()
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._poll())]

    async def stop(self) -> None:
        await stop_tasks(*self._tasks)
        await self.pubsub.aclose()

    async def wait(self, partition: int, offset: int, timeout: float) -> None:
        """Return once the projector has applied ``offset`` of ``partition``."""
        if self.positions.get(partition, 0) > offset:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(partition, []).append((offset, future))
        try:
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise CommandTimeout(f"the read model did not reach offset {offset} of partition {partition} in {timeout}s")

    def _advance(self, partition: int, position: int) -> None:
        if position <= self.positions.get(partition, 0):
            return
        self.positions[partition] = position
        waiting = self._waiters.get(partition)
        if not waiting:
            return
        still = []
        for offset, future in waiting:
            if offset < position:
                if not future.done():
                    future.set_result(None)
            elif not future.done():
                still.append((offset, future))
        self._waiters[partition] = still

    async def _listen(self) -> None:
        while True:
            try:
                if not self.pubsub.subscribed:
                    await self.pubsub.subscribe(self.keys.progress_channel)
                async for message in self.pubsub.listen():
                    if message.get("type") == "message":
                        partition, position = message["data"].split(b":")
                        self._advance(int(partition), int(position))
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis went away: polling covers the gap; subscribe again shortly
                await asyncio.gather(self.pubsub.aclose(), return_exceptions=True)
                self.pubsub = self.redis.pubsub()
            await asyncio.sleep(0.5)  # never spin: listen() also ends when nothing is subscribed

    async def _poll_once(self) -> None:
        """Read every checkpoint; it is the truth, even below what we knew: after Redis lost its
        data the checkpoints start again from 0 while the projector replays, and a write must then
        wait for the replay to pass it, not be answered from a position that no longer holds."""
        # one checkpoint key per partition, each in its partition's slot (a cluster splits the read)
        values = await redis_clients.mget(self.redis, [self.keys.checkpoint(p) for p in range(self.partitions)])
        for p, value in enumerate(values):
            position = int(value or 0)
            if position < self.positions.get(p, 0):
                self.positions[p] = position
            self._advance(p, position)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.POLL_SECONDS)
            try:
                await self._poll_once()
            except Exception:  # Redis hiccup: the next poll retries
                pass


class CommandBus:
    def __init__(self, settings: Settings, redis: aioredis.Redis, keys: Keys) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = keys
        # command id -> the futures of the callers waiting for its reply (two callers may send
        # the same command: a client's retry while its first attempt still waits)
        self._pending: dict[str, list[asyncio.Future]] = {}
        self.ready = False
        self.malformed_replies = 0

    async def start(self) -> None:
        await clients.wait_for_broker(self.settings)
        self.topics = await clients.ensure_topics(self.settings)
        self.reply_partition = zlib.crc32(self.settings.instance_id.encode()) % self.topics.replies.partitions
        self.reply_to = ReplyTo(topic=self.topics.replies.name, partition=self.reply_partition)
        self.producer = clients.producer(self.settings, linger_ms=1)
        self.replies = clients.consumer(self.settings)
        await asyncio.gather(self.producer.start(), self.replies.start())
        tp = self._reply_tp = TopicPartition(self.topics.replies.name, self.reply_partition)
        self.replies.assign([tp])
        await self.replies.seek_to_end(tp)
        await self.replies.position(tp)  # resolve now: no reply to a later command may be skipped
        self.replies.pause(tp)  # until a command waits for its reply (see ``send``)
        self.tracker = ProjectionTracker(self.redis, self.keys, self.topics.events.partitions)
        await self.tracker.start()
        self._reader = asyncio.create_task(self._read_replies())
        self.probe = clients.BrokerProbe(self.producer.client)
        await self.probe.start()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await stop_tasks(self._reader)
        await self.probe.stop()
        await self.tracker.stop()
        await asyncio.gather(self.producer.stop(), self.replies.stop())

    @property
    def healthy(self) -> bool:
        """Started, the reply reader is still running, and the broker answers."""
        return self.ready and not self._reader.done() and self.probe.error is None

    async def _read_replies(self) -> None:
        while True:
            batch = await self.replies.getmany(timeout_ms=500, max_records=1000)
            for records in batch.values():
                for record in records:
                    try:
                        reply = decode_reply(record.value)
                    except (ValidationError, ValueError) as exc:
                        # Not ours to set aside (the writer answers; nobody re-reads replies):
                        # log it and go on, so one bad record cannot stop every caller's answers.
                        self.malformed_replies += 1
                        log.error("malformed reply skipped", partition=record.partition, offset=record.offset, error=str(exc)[:500])
                        continue
                    for future in self._pending.get(reply.command_id, ()):
                        if not future.done():
                            future.set_result(reply)

    async def send(self, aggregate_id: str, payload, *, command_id: str | None = None, correlation_id: str | None = None) -> Reply:
        """Send one command and return the writer's verdict once its effects are readable."""
        command = CommandEnvelope(
            command_id=command_id or uuid.uuid4().hex,
            type=payload.type,
            aggregate_id=aggregate_id,
            issued_at=datetime.now(timezone.utc),
            correlation_id=correlation_id,
            reply_to=self.reply_to,
            payload=payload,
        )
        timeout = self.settings.command_timeout_seconds
        future = asyncio.get_running_loop().create_future()
        self._pending.setdefault(command.command_id, []).append(future)
        # Fetch replies only while a command waits for one: an idle consumer costs the embedded
        # broker ~50 ms of CPU a second (bench/README.md "Broker CPU on the log path"). Paused, the
        # position stays put, so a resumed fetch still sees every reply produced meanwhile.
        self.replies.resume(self._reply_tp)
        # One deadline for the whole call (send, verdict, read model), so a paused broker or a
        # slow projector cannot hold a caller past the command timeout.
        try:
            async with asyncio.timeout(timeout):
                await self.producer.send_and_wait(self.topics.commands.name, encode(command), key=aggregate_id.encode())
                reply = await future
                if reply.partition is not None and reply.offset is not None:
                    await self.tracker.wait(reply.partition, reply.offset, timeout)
        except TimeoutError:
            raise CommandTimeout(
                f"command {command.command_id} was not answered and readable within {timeout}s; it may still take effect"
            ) from None
        finally:
            waiting = self._pending.get(command.command_id, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._pending.pop(command.command_id, None)
            if not self._pending:
                self.replies.pause(self._reply_tp)
        return reply
