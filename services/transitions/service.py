"""The state-transitions service: the single writer of every aggregate's events.

It consumes ``commands`` (consumer group, partitioned by aggregate id), decides each command
with the pure ``Ledger`` of its partition, appends the resulting events to the same partition
number of ``events``, waits until they are acknowledged, replies to the caller, and only then
commits the command offsets. After a restart or a rebalance it replays ``events`` to rebuild
its ledgers, so a redelivered command is recognised by its id and answered as before.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from aiokafka import TopicPartition
from pydantic import ValidationError

from runledger.domain.ledger import Answer, Ledger
from runledger.messages.codec import decode_command, decode_event, encode
from runledger.messages.commands import Rejection, Reply
from runledger.services.runtime.consumer import ConsumerService
from runledger.services.runtime.kafka import consumer as kafka_consumer
from runledger.services.runtime.process import run_until_stopped
from runledger.settings import Settings
from runledger.topics import TRANSITIONS


class PartitionBook:
    def __init__(self, dedup_window: int) -> None:
        self.ledger = Ledger(dedup_window)
        self.next_event_offset = 0


class TransitionsService(ConsumerService):
    group = TRANSITIONS
    max_records = 1000

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.books: dict[int, PartitionBook] = {}
        self.lock = asyncio.Lock()

    def source(self):
        return self.topics.commands

    async def start_resources(self) -> None:
        self.reader = kafka_consumer(self.settings)  # replays events; no group
        await self.reader.start()

    async def stop_resources(self) -> None:
        await self.reader.stop()

    def details(self) -> dict:
        return {"partitions": sorted(self.books)}

    async def handle(self, batch: dict) -> None:
        if batch:
            async with self.lock:
                await self._process(batch)

    async def on_revoked(self, partitions: list[int]) -> None:
        async with self.lock:  # let an in-flight batch finish before ownership moves
            pass

    async def on_assigned(self, partitions: list[int]) -> None:
        # aiokafka may already be fetching commands for these partitions: the replay holds the
        # same lock as command processing, so no command is decided on a half-rebuilt ledger.
        async with self.lock:
            await self.catch_up(partitions)

    # -- rebuilding from the log --------------------------------------------------------------
    async def catch_up(self, partitions: list[int]) -> None:
        """Bring each partition's ledger up to the end of its events (from scratch if new)."""
        for p in list(self.books):
            if p not in partitions:
                del self.books[p]
        tps = [TopicPartition(self.topics.events.name, p) for p in partitions]
        if not tps:
            return
        started = asyncio.get_running_loop().time()
        self.reader.assign(tps)
        for tp in tps:
            book = self.books.setdefault(tp.partition, PartitionBook(self.settings.dedup_window))
            self.reader.seek(tp, book.next_event_offset)
        end = await self.reader.end_offsets(tps)
        remaining = {tp for tp in tps if self.books[tp.partition].next_event_offset < end[tp]}
        replayed = 0
        while remaining:
            batch = await self.reader.getmany(*remaining, timeout_ms=500, max_records=5000)
            for tp, records in batch.items():
                book = self.books[tp.partition]
                for record in records:
                    if record.offset < end[tp]:
                        try:
                            book.ledger.replay(decode_event(record.value))
                        except Exception as exc:  # not ours to fix here; never a crash loop
                            await self.dead_letter(record, "replay", exc)
                        book.next_event_offset = record.offset + 1
                        replayed += 1
                if book.next_event_offset >= end[tp]:
                    remaining.discard(tp)
        self.log.info(
            "caught up",
            partitions=partitions,
            replayed=replayed,
            seconds=round(asyncio.get_running_loop().time() - started, 3),
        )

    # -- the command loop ---------------------------------------------------------------------
    async def _process(self, batch: dict) -> None:
        now = datetime.now(timezone.utc)
        pending = []
        for tp, records in batch.items():
            book = self.books.get(tp.partition)
            if book is None:  # revoked while fetched; the new owner will handle these
                continue
            for record in records:
                try:
                    command = decode_command(record.value)
                except (ValidationError, ValueError) as exc:
                    await self.dead_letter(record, "decode", exc)
                    continue
                try:
                    answer = book.ledger.decide(command, now)
                except Exception as exc:  # a command the ledger cannot decide: never a crash loop
                    await self.dead_letter(record, "handle", exc)
                    answer = Answer(command.command_id, [], rejection=Rejection(
                        code="INVALID", message=f"the command could not be decided and was set aside: {type(exc).__name__}"
                    ))
                if answer.rejection is not None and answer.rejection.code == "NOT_FOUND":
                    # The ingress checks existence first, so this means a stale read model or a lost log.
                    self.log.warning(
                        "command for an unknown aggregate",
                        partition=tp.partition,
                        offset=record.offset,
                        aggregate=command.aggregate_id,
                        command=command.type,
                        known=len(book.ledger.aggregates),
                    )
                sends = [
                    await self.producer.send(
                        self.topics.events.name, encode(env), key=command.aggregate_id.encode(), partition=tp.partition
                    )
                    for env in answer.events
                ]
                pending.append((tp.partition, command, answer, sends))
        # Durable first: nothing is answered before every event of the batch is acknowledged.
        replies = []
        for partition, command, answer, sends in pending:
            book = self.books[partition]
            if sends:
                metadata = await asyncio.gather(*sends)
                book.next_event_offset = max(book.next_event_offset, metadata[-1].offset + 1)
            if command.reply_to is None:
                continue
            # Every answer, even a rejection or a no-op repeat, names the partition's last event:
            # the caller waits for the read model to pass it, so what it reads next agrees.
            offset = book.next_event_offset - 1 if book.next_event_offset else None
            reply = Reply(
                command_id=command.command_id,
                ok=answer.rejection is None,
                outcome=answer.outcome,
                rejection=answer.rejection,
                partition=partition if offset is not None else None,
                offset=offset,
            )
            replies.append(
                await self.producer.send(command.reply_to.topic, encode(reply), partition=command.reply_to.partition)
            )
        if replies:
            await asyncio.gather(*replies)
        await self.consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items() if tp.partition in self.books})
        self.handled += len(pending)

def main() -> None:
    run_until_stopped(TransitionsService(Settings()))
