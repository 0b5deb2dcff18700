"""The state-transitions service: the single writer of every aggregate's events.

It consumes ``commands`` (consumer group, partitioned by aggregate id), decides each command
with the pure ``Ledger`` of its partition, appends the resulting events to the same partition
number of ``events``, waits until they are acknowledged, replies to the caller, and only then
commits the command offsets. After a restart or a rebalance it rebuilds its ledgers, so a
redelivered command is recognised by its id and answered as before: from the partition's newest
snapshot (``snapshots`` topic, see ``snapshots.py``) plus the events after it, or, without a
usable snapshot, from all of ``events``. A snapshot is taken every ``snapshot_every_events`` new
events or ``snapshot_every_seconds`` (if there are new events), always between command batches,
when every event the ledger reflects is acknowledged; it is compressed and written off the
command path.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from aiokafka import TopicPartition
from pydantic import ValidationError

from runledger.domain import snapshots
from runledger.domain.ledger import Answer, Ledger
from runledger.messages.codec import decode_command, decode_event, encode
from runledger.messages.commands import Rejection, Reply
from runledger.services.runtime.consumer import ConsumerService
from runledger.services.runtime.kafka import consumer as kafka_consumer
from runledger.services.runtime.process import run_until_stopped
from runledger.services.runtime.tasks import stop_tasks
from runledger.services.transitions.snapshots import SnapshotStore, Stored, pack, unpack
from runledger.settings import Settings
from runledger.topics import SNAPSHOTS, TRANSITIONS

REFRESH_SLICE = 200  # aggregates re-encoded per turn of the lock while a snapshot is prepared
# The restore readers read what is already in the log, so they can wait as long as Kafka's default
# (500 ms) for a fetch: a broker answers as soon as there is data anyway. The embedded profile's
# 10 ms (settings.effective_fetch_max_wait_ms, for live consumers) is too short for the embedded
# broker to find an offset deep in a large partition: at 1M events a 5k-event tail came back as
# seconds of empty fetches (3-190 s measured), against 0.1 s at 500 ms.
READER_FETCH_WAIT_MS = 500
# Snapshots unpacked and decoded at once, in threads. Decoding holds the GIL, so more at once does
# not go faster (4 at once measured slower than one after another); 2 lets one's zstd unpack (which
# releases the GIL) overlap another's decode, and bounds the raw snapshots held to 2.
RESTORE_DECODES = 2


class SecondWriter(RuntimeError):
    """Events of another producer in a partition this writer holds: exit, rebuild from the log."""


class PartitionBook:
    def __init__(self, settings: Settings, ledger: Ledger | None = None, position: int = 0) -> None:
        self.ledger = ledger or Ledger(settings.dedup_window, max_hot=settings.writer_hot_aggregates)
        self.next_event_offset = position
        self.snapshot_position = position  # the event offset the newest snapshot covers
        self.snapshot_time = asyncio.get_running_loop().time()
        self.saving: asyncio.Task | None = None
        self.info: dict = {"restored_position": None, "replayed": 0, "snapshot_position": None}


class TransitionsService(ConsumerService):
    group = TRANSITIONS
    max_records = 1000
    # The ledger decides and remembers each command before its events are acknowledged: handled
    # again in this process, a batch would be answered "duplicate" with no events. A failure ends
    # the process instead, and the restart rebuilds the ledger from the log.
    retries_batches = False

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.books: dict[int, PartitionBook] = {}
        self.lock = asyncio.Lock()
        self.early: asyncio.Task | None = None  # the snapshots restored while the group is joined

    def source(self):
        return self.topics.commands

    async def start_resources(self) -> None:
        # Two readers without a group: one replays events, one reads snapshots.
        self.reader = kafka_consumer(self.settings, fetch_max_wait_ms=READER_FETCH_WAIT_MS)
        self.snapshot_reader = kafka_consumer(self.settings, fetch_max_wait_ms=READER_FETCH_WAIT_MS)
        await self.reader.start()
        await self.snapshot_reader.start()
        self.snapshot_store = SnapshotStore(self.topics[SNAPSHOTS].name, self.producer, self.snapshot_reader)
        if self.settings.snapshots:
            # Joining the consumer group takes seconds on any broker; restore every partition's
            # snapshot meanwhile. The first assignment takes the books of its partitions and drops
            # the rest (with several writers, each restores some it will not own: start-up CPU
            # and memory that a sole writer, or the one taking over, needs anyway).
            self.early = asyncio.create_task(self._restore(list(range(self.topics.events.partitions))))

    async def stop_resources(self) -> None:
        await stop_tasks(self.early, *(book.saving for book in self.books.values()))
        await self.reader.stop()
        await self.snapshot_reader.stop()

    def details(self) -> dict:
        return {"partitions": sorted(self.books), "books": {str(p): book.info for p, book in sorted(self.books.items())}}

    async def handle(self, batch: dict) -> None:
        if batch:
            async with self.lock:
                await self._process(batch)
        if self.settings.snapshots:
            self._snapshot_when_due()

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
        """Bring each partition's ledger up to the end of its events: a partition kept from before
        continues where it was; a new one starts from its newest snapshot, or from scratch."""
        for p in list(self.books):
            if p not in partitions:
                del self.books[p]
        tps = [TopicPartition(self.topics.events.name, p) for p in partitions]
        early, self.early = self.early, None  # only the first assignment takes the early restore
        if not tps:
            if early is not None:
                early.cancel()  # none of its books are ours: don't hold them
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        new = [p for p in partitions if p not in self.books]
        if early is not None:  # the snapshots restored while joining
            try:
                early_books = await early
            except Exception as exc:  # never expected (_restore logs and falls back itself)
                self.log.error("early snapshot restore failed", error=f"{type(exc).__name__}: {exc}"[:500])
                early_books = {}
            self.books.update({p: early_books[p] for p in new if p in early_books})
            new = [p for p in new if p not in self.books]
        self.books.update(await self._restore(new))
        restored = loop.time()
        self.reader.assign(tps)
        end = await self.reader.end_offsets(tps)
        for tp in tps:
            book = self.books[tp.partition]
            if book.next_event_offset > end[tp]:  # a snapshot of a log that is not this one
                self.log.error(
                    "snapshot is ahead of the events log; replaying the partition in full",
                    partition=tp.partition, snapshot_position=book.next_event_offset, events_end=end[tp],
                )
                self.books[tp.partition] = book = PartitionBook(self.settings)
            self.reader.seek(tp, book.next_event_offset)
        remaining = {tp for tp in tps if self.books[tp.partition].next_event_offset < end[tp]}
        replayed = {tp.partition: 0 for tp in tps}
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
                        replayed[tp.partition] += 1
                if book.next_event_offset >= end[tp]:
                    remaining.discard(tp)
        self.reader.unsubscribe()  # nothing left to fetch in the background
        for p, n in replayed.items():
            self.books[p].info["replayed"] += n
        self.log.info(
            "caught up",
            partitions=partitions,
            replayed=sum(replayed.values()),
            replayed_by_partition={str(p): n for p, n in replayed.items()},
            restored_from={str(p): self.books[p].info["restored_position"] for p in partitions},
            restore_seconds=round(restored - started, 3),  # waited for; an early restore ran while joining
            seconds=round(loop.time() - started, 3),
        )
        if self.settings.snapshots:
            self._snapshot_when_due()

    async def _restore(self, partitions: list[int]) -> dict[int, PartitionBook]:
        """A book for each of ``partitions`` from its newest snapshot; an empty one where there is
        none or it is unusable (logged: that partition is then replayed in full, never a crash
        loop). The snapshots are read in one pass (``SnapshotStore.load``) and decoded in threads,
        ``RESTORE_DECODES`` at a time."""
        books = {p: PartitionBook(self.settings) for p in partitions}
        if not self.settings.snapshots or not partitions:
            return books
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            found = await self.snapshot_store.load(partitions)
        except Exception as exc:  # the read as a whole failed: every partition replays in full
            self.log.error(
                "snapshots unreadable; replaying the partitions in full", partitions=partitions,
                error=f"{type(exc).__name__}: {exc}"[:500],
            )
            return books
        read_seconds = loop.time() - started
        decoding = asyncio.Semaphore(RESTORE_DECODES)

        async def restore(p: int) -> None:
            stored = found[p]
            if stored is None:
                self.log.info("no snapshot; replaying the partition in full", partition=p)
                return
            try:
                if isinstance(stored, Exception):
                    raise stored
                async with decoding:
                    decode_started = loop.time()
                    ledger, position, raw_bytes, verdicts = await asyncio.to_thread(self._decode, stored)
            except Exception as exc:  # unreadable, undecodable or inconsistent: never a crash loop
                self.log.error(
                    "snapshot unusable; replaying the partition in full", partition=p, error=f"{type(exc).__name__}: {exc}"[:500]
                )
                return
            book = books[p] = PartitionBook(self.settings, ledger, position)
            book.info.update(restored_position=position, snapshot_position=position)
            self.log.info(
                "snapshot restored",
                partition=p,
                position=position,
                aggregates=len(ledger.aggregates),
                verdicts=verdicts,
                bytes=raw_bytes,
                compressed_bytes=len(stored.compressed),
                read_seconds=round(read_seconds, 3),  # one read for all the partitions restored together
                decode_seconds=round(loop.time() - decode_started, 3),
                seconds=round(loop.time() - started, 3),
            )

        await asyncio.gather(*(restore(p) for p in partitions))
        return books

    def _decode(self, stored: Stored):
        """Unpack and decode one snapshot (CPU: runs in a thread)."""
        raw = unpack(stored)
        ledger, position = snapshots.decode(raw, self.settings.dedup_window, self.settings.writer_hot_aggregates)
        if position != stored.position:
            raise snapshots.SnapshotError(f"manifest says position {stored.position}, snapshot {position}")
        # Counted from the header: ``len(ledger.verdicts())`` copies the whole window (~0.1 s at 1M events).
        verdicts = min(int(snapshots.read_header(raw)["verdicts"]), self.settings.dedup_window)
        return ledger, position, len(raw), verdicts

    # -- snapshots ----------------------------------------------------------------------------
    def _snapshot_when_due(self) -> None:
        now = asyncio.get_running_loop().time()
        for p, book in self.books.items():
            new = book.next_event_offset - book.snapshot_position
            due = new >= self.settings.snapshot_every_events or (
                new > 0 and now - book.snapshot_time >= self.settings.snapshot_every_seconds
            )
            if due and book.saving is None:
                book.saving = asyncio.create_task(self._snapshot(p, book))

    async def _snapshot(self, partition: int, book: PartitionBook) -> None:
        loop = asyncio.get_running_loop()
        try:
            store = book.ledger.aggregates
            # Re-encode what changed in slices, letting command batches run in between; then
            # capture at a batch boundary (the lock), where every event the ledger holds is acked.
            longest = 0.0  # the longest the command loop waited for us (lock held)
            while True:
                async with self.lock:
                    if self.books.get(partition) is not book:
                        return  # revoked meanwhile
                    started = loop.time()
                    if len(store.changed) <= REFRESH_SLICE:
                        captured = snapshots.capture(book.ledger, book.next_event_offset)
                        stall = loop.time() - started
                        longest = max(longest, stall)
                        break
                    store.encode_changed(REFRESH_SLICE)
                    longest = max(longest, loop.time() - started)
                await asyncio.sleep(0)
            book.snapshot_time = loop.time()
            raw = await asyncio.to_thread(captured.to_bytes)
            chunks = await asyncio.to_thread(pack, raw)
            saved = await self.snapshot_store.save(partition, captured.position, chunks, len(raw))
            book.snapshot_position = captured.position
            book.info["snapshot_position"] = captured.position
            self.log.info(
                "snapshot saved",
                partition=partition,
                position=captured.position,
                aggregates=len(captured.aggregates),
                verdicts=len(captured.verdicts),
                bytes=len(raw),
                compressed_bytes=saved["compressed_bytes"],
                chunks=saved["chunks"],
                capture_ms=round(stall * 1000, 1),
                longest_hold_ms=round(longest * 1000, 1),
                seconds=round(loop.time() - book.snapshot_time, 3),
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a snapshot is an optimisation: log, try again at the next interval
            book.snapshot_time = loop.time()
            self.log.warning("snapshot failed", partition=partition, error=f"{type(exc).__name__}: {exc}"[:500])
        finally:
            book.saving = None

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
                    # The ingress checks existence first: for an aggregate this book does not hold,
                    # that means a stale read model or a lost log; otherwise it is a part (a task
                    # run, a flow) the command named wrongly.
                    self.log.warning(
                        "command refused: not found",
                        reason=answer.rejection.message,
                        aggregate_known=command.aggregate_id in book.ledger.aggregates,
                        partition=tp.partition,
                        offset=record.offset,
                        aggregate=command.aggregate_id,
                        command=command.type,
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
                offsets = [m.offset for m in metadata]
                if offsets != list(range(book.next_event_offset, book.next_event_offset + len(offsets))):
                    # Another producer appended to our partition: a writer that lost the partition
                    # without knowing (a stall past the session timeout) and is still writing, or
                    # we are that writer. Either way this book no longer reflects the log: answer
                    # nothing, exit, and let a fresh start rebuild the partition from the log.
                    raise SecondWriter(
                        f"events partition {partition}: our events landed at offsets {offsets[0]}..{offsets[-1]}, "
                        f"expected from {book.next_event_offset}; another writer appended to it"
                    )
                book.next_event_offset = offsets[-1] + 1
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
