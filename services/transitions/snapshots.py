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
    compressed: bytes  # zstd of the snapshot (runledger.domain.snapshots format, with its own CRC-32); see unpack
    chunks: int
    manifest_offset: int


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
    async def load(self, partitions: list[int]) -> dict[int, Stored | None | SnapshotUnavailable]:
        """The newest complete snapshot of each of ``partitions``, still compressed (``unpack`` it):
        None where there is none, a ``SnapshotUnavailable`` where one is named but cannot be read
        back. One pass over all the partitions at once (their last records, then the manifests
        those point back to, then every chunk range), so a restore of n partitions costs about the
        round trips of one."""
        tps = {p: TopicPartition(self.topic, p) for p in partitions}
        out: dict[int, Stored | None | SnapshotUnavailable] = {}
        try:
            self.reader.assign(list(tps.values()))
            ends = await self.reader.end_offsets(list(tps.values()))
            for p, tp in tps.items():
                if ends[tp] == 0:
                    out[p] = None
            # 1. the last record of each partition: the newest manifest, or a chunk/tombstone
            #    naming it (``prev``) when a later snapshot was cut short.
            lasts = await self._read({tps[p]: (ends[tps[p]] - 1, ends[tps[p]] - 1) for p in partitions if p not in out})
            manifests: dict[int, object] = {}
            back: dict[int, int] = {}
            for p in [p for p in partitions if p not in out]:
                record = lasts[tps[p]].get(ends[tps[p]] - 1)
                if record is None:
                    out[p] = SnapshotUnavailable(f"the last record ({ends[tps[p]] - 1}) of {self.topic}[{p}] could not be read")
                    continue
                headers = dict(record.headers or ())
                prev = _header_int(headers, "prev", -1)
                if headers.get("kind") == MANIFEST:
                    manifests[p] = record
                elif prev is None:
                    out[p] = SnapshotUnavailable(f"bad prev header at offset {record.offset} of {self.topic}[{p}]")
                elif prev < 0:
                    out[p] = None  # chunks of a first snapshot that was never finished
                else:
                    back[p] = prev
            # 2. the manifests named by ``prev``
            found = await self._read({tps[p]: (prev, prev) for p, prev in back.items()})
            for p, prev in back.items():
                record = found[tps[p]].get(prev)
                if record is None or dict(record.headers or ()).get("kind") != MANIFEST:
                    out[p] = SnapshotUnavailable(f"no manifest at offset {prev} of {self.topic}[{p}]")
                else:
                    manifests[p] = record
            # 3. every snapshot's chunks
            named: dict[int, tuple[str, int, list[int]]] = {}
            for p, record in manifests.items():
                try:
                    manifest = orjson.loads(record.value)
                    offsets = [int(o) for o in manifest["chunk_offsets"]]
                    if any(o < 0 or o >= record.offset for o in offsets):
                        raise ValueError(f"chunk offsets {offsets} not before the manifest")
                    named[p] = (manifest["snapshot_id"], int(manifest["position"]), offsets)
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    out[p] = SnapshotUnavailable(f"undecodable manifest at offset {record.offset} of {self.topic}[{p}]: {exc}")
            found = await self._read({tps[p]: (min(offsets), max(offsets)) for p, (_, _, offsets) in named.items() if offsets})
            for p, (snapshot_id, position, offsets) in named.items():
                chunks = []
                for i, offset in enumerate(offsets):
                    chunk = found[tps[p]].get(offset)
                    h = dict(chunk.headers or ()) if chunk is not None else {}
                    if chunk is None or h.get("snapshot") != str(snapshot_id).encode() or _header_int(h, "chunk", -1) != i:
                        out[p] = SnapshotUnavailable(f"chunk {i} of snapshot {snapshot_id} missing at offset {offset} of {self.topic}[{p}]")
                        break
                    chunks.append(chunk.value or b"")
                else:
                    compressed = b"".join(chunks)
                    out[p] = Stored(p, snapshot_id, position, compressed, len(offsets), manifests[p].offset)
                    self.last_manifest[p] = manifests[p].offset
                    self.last_chunks[p] = len(offsets)
        finally:
            self.reader.unsubscribe()  # nothing left to fetch in the background
        return {p: out[p] for p in partitions}

    async def _read(self, ranges: dict[TopicPartition, tuple[int, int]]) -> dict[TopicPartition, dict[int, object]]:
        """Records ``first..last`` of each partition, by offset (compaction may have removed
        some), all partitions in the same fetches. The reader is assigned all of them."""
        out: dict[TopicPartition, dict[int, object]] = {tp: {} for tp in ranges}
        if not ranges:
            return out
        self.reader.resume(*ranges)
        for tp, (first, _) in ranges.items():
            self.reader.seek(tp, first)
        pending = set(ranges)
        self.reader.pause(*(self.reader.assignment() - pending))  # fetch only what is asked
        idle = 0
        while pending:
            batch = await self.reader.getmany(*pending, timeout_ms=500, max_records=1000)
            for tp, records in batch.items():
                first, last = ranges[tp]
                for record in records:
                    if first <= record.offset <= last:
                        out[tp][record.offset] = record
                if (records and records[-1].offset >= last) or last in out[tp]:
                    pending.discard(tp)
                    self.reader.pause(tp)
            idle = 0 if batch else idle + 1
            if idle >= 10:  # 5 s without a record: what is not here will not come
                break
        return out


def _header_int(headers: dict, key: str, default: int) -> int | None:
    """An integer header; ``default`` when missing, None when it is not an integer."""
    try:
        return int(headers.get(key, str(default).encode()))
    except (TypeError, ValueError):
        return None


def unpack(stored: Stored) -> bytes:
    """The uncompressed snapshot (CPU-bound: run it in a thread)."""
    try:
        return bytes(cramjam.zstd.decompress(stored.compressed))
    except Exception as exc:  # cramjam raises its own DecompressionError
        raise SnapshotUnavailable(f"snapshot {stored.snapshot_id} does not decompress: {exc}") from None
