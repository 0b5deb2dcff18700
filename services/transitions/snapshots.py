"""Where the writer keeps its ledger snapshots: the ``snapshots`` topic.

Partition p of ``snapshots`` belongs to partition p of ``events``. One snapshot is written as
zstd-compressed chunks (each under real Kafka's default 1 MB record limit), keyed
``"p:i"``, then a JSON manifest keyed ``"p"`` naming the chunks' offsets, the event offset the
snapshot covers (the next one to replay) and a checksum. The newest manifest is therefore the
last record of the partition; a chunk or tombstone left last by a crash mid-write carries a
``prev`` header pointing at the manifest before it. Nothing here relies on compaction (the
embedded broker never compacts): the reader looks only at the partition's last records.

On real Kafka the topic is compacted: the newest record of each key stays, which is the newest
manifest and the newest chunk of each index, i.e. exactly the newest snapshot. Leftover chunk
keys of an earlier, larger snapshot are tombstoned.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import cramjam
import orjson
from aiokafka import TopicPartition

CHUNK_BYTES = 900_000  # under Kafka's default message.max.bytes (1 MB), headers included
MANIFEST = b"manifest"


class SnapshotUnavailable(Exception):
    """The stored snapshot cannot be read back (missing chunks, bad checksum, not a manifest)."""


@dataclass(frozen=True)
class Stored:
    partition: int
    snapshot_id: str
    position: int  # the next event offset to replay
    raw: bytes  # the uncompressed snapshot (runledger.domain.snapshots format, with its own CRC-32)
    chunks: int
    manifest_offset: int
    compressed_bytes: int


def _headers(**values) -> list[tuple[str, bytes]]:
    return [(k, str(v).encode()) for k, v in values.items()]


def pack(raw: bytes) -> list[bytes]:
    """Compress and cut into record-sized chunks (CPU-bound: run it in a thread)."""
    compressed = bytes(cramjam.zstd.compress(raw, level=1))
    return [compressed[i : i + CHUNK_BYTES] for i in range(0, len(compressed), CHUNK_BYTES)] or [b""]


class SnapshotStore:
    def __init__(self, topic: str, producer, reader) -> None:
        self.topic = topic
        self.producer = producer
        self.reader = reader  # a consumer without group, shared with the event replay (assign/seek)
        self.last_manifest: dict[int, int] = {}  # partition -> offset of its newest manifest
        self.last_chunks: dict[int, int] = {}  # partition -> chunk count of that snapshot

    # -- writing ------------------------------------------------------------------------------
    async def save(self, partition: int, position: int, chunks: list[bytes], raw_bytes: int) -> dict:
        snapshot_id = uuid.uuid4().hex
        prev = self.last_manifest.get(partition, -1)
        sends = [
            await self.producer.send(
                self.topic,
                chunk,
                key=f"{partition}:{i}".encode(),
                partition=partition,
                headers=_headers(kind="chunk", snapshot=snapshot_id, chunk=i, of=len(chunks), prev=prev),
            )
            for i, chunk in enumerate(chunks)
        ]
        offsets = [m.offset for m in await asyncio.gather(*sends)]
        manifest = {
            "snapshot_id": snapshot_id,
            "partition": partition,
            "position": position,
            "chunk_offsets": offsets,
            "compressed_bytes": sum(len(c) for c in chunks),
            "raw_bytes": raw_bytes,
            "codec": "zstd",
        }
        meta = await (
            await self.producer.send(
                self.topic, orjson.dumps(manifest), key=str(partition).encode(), partition=partition,
                headers=_headers(kind="manifest"),
            )
        )
        # Chunk keys of an earlier, larger snapshot: tombstones, so compaction drops them.
        stale = range(len(chunks), self.last_chunks.get(partition, 0))
        if stale:
            tombstones = [
                await self.producer.send(
                    self.topic, None, key=f"{partition}:{i}".encode(), partition=partition,
                    headers=_headers(kind="tombstone", prev=meta.offset),
                )
                for i in stale
            ]
            await asyncio.gather(*tombstones)
        self.last_manifest[partition] = meta.offset
        self.last_chunks[partition] = len(chunks)
        return {**manifest, "manifest_offset": meta.offset, "chunks": len(chunks)}

    # -- reading ------------------------------------------------------------------------------
    async def load(self, partition: int) -> Stored | None:
        """The newest complete snapshot of ``partition``; None if there is none.
        ``SnapshotUnavailable`` if one is named but cannot be read back."""
        tp = TopicPartition(self.topic, partition)
        self.reader.assign([tp])
        end = (await self.reader.end_offsets([tp]))[tp]
        if end == 0:
            return None
        last = await self._read(tp, end - 1, end - 1)
        record = last.get(end - 1)
        if record is None:
            raise SnapshotUnavailable(f"the last record ({end - 1}) of {self.topic}[{partition}] could not be read")
        headers = dict(record.headers or ())
        if headers.get("kind") != MANIFEST:
            prev = int(headers.get("prev", b"-1"))
            if prev < 0:
                return None  # chunks of a first snapshot that was never finished
            record = (await self._read(tp, prev, prev)).get(prev)
            if record is None or dict(record.headers or ()).get("kind") != MANIFEST:
                raise SnapshotUnavailable(f"no manifest at offset {prev} of {self.topic}[{partition}]")
        try:
            manifest = orjson.loads(record.value)
            offsets = [int(o) for o in manifest["chunk_offsets"]]
            snapshot_id, position = manifest["snapshot_id"], int(manifest["position"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise SnapshotUnavailable(f"undecodable manifest at offset {record.offset}: {exc}") from None
        found = await self._read(tp, min(offsets), max(offsets)) if offsets else {}
        chunks = []
        for i, offset in enumerate(offsets):
            chunk = found.get(offset)
            h = dict(chunk.headers or ()) if chunk is not None else {}
            if chunk is None or h.get("snapshot") != snapshot_id.encode() or int(h.get("chunk", b"-1")) != i:
                raise SnapshotUnavailable(f"chunk {i} of snapshot {snapshot_id} missing at offset {offset}")
            chunks.append(chunk.value or b"")
        compressed = b"".join(chunks)
        try:
            raw = bytes(cramjam.zstd.decompress(compressed))
        except Exception as exc:  # cramjam raises its own DecompressionError
            raise SnapshotUnavailable(f"snapshot {snapshot_id} does not decompress: {exc}") from None
        self.last_manifest[partition] = record.offset
        self.last_chunks[partition] = len(offsets)
        return Stored(partition, snapshot_id, position, raw, len(offsets), record.offset, len(compressed))

    async def _read(self, tp: TopicPartition, first: int, last: int) -> dict[int, object]:
        """Records ``first..last`` of ``tp`` by offset (compaction may have removed some)."""
        self.reader.seek(tp, first)
        out: dict[int, object] = {}
        idle = 0
        while True:
            batch = await self.reader.getmany(tp, timeout_ms=500, max_records=1000)
            records = batch.get(tp, [])
            for record in records:
                if first <= record.offset <= last:
                    out[record.offset] = record
            if (records and records[-1].offset >= last) or last in out:
                return out
            idle = 0 if records else idle + 1
            if idle >= 10:  # 5 s without a record: what is not here will not come
                return out
