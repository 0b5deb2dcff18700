"""Snapshots of a writer partition's ledger: ``Ledger`` -> bytes -> ``Ledger``, pure.

A snapshot holds everything the ledger decides with: every aggregate (flow runs with their task
runs, the registry, the concurrency limits, the agents) and the verdict window (command id -> outcome or rejection, oldest first),
so a ledger restored from it and fed the events after ``position`` decides every later command
exactly as the ledger that never stopped, a redelivered command included. ``position`` is
opaque here: the writer stores the next event offset to replay.

Format (``schema_version`` 1)::

    MAGIC, u32 header length, header JSON {"schema_version", "position", "aggregates", "verdicts"},
    then six sections, each a u64 length and its bytes:
      aggregate ids (JSON list), aggregate lengths (u32 each), the aggregates' JSON, back to back,
      verdict command ids (JSON list, oldest first), verdict lengths, the verdicts' JSON,
    and a CRC-32 of everything before it.

Each aggregate and each verdict is its own small JSON document: the ledger's ``AggregateStore``
keeps every aggregate in that encoding already (and re-encodes only the ones changed since), so
a snapshot costs about the aggregates changed since the previous one plus one join of bytes, and
a restored ledger starts with its aggregates encoded, decoded when first used. The verdicts
stay encoded in the ledger anyway. A reader refuses what it cannot restore (``SnapshotError``);
the writer then replays in full.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from itertools import accumulate

import orjson

from runledger.domain.agents import AGENTS_AGGREGATE
from runledger.domain.aggregate_store import AggregateStore, UndecodableAggregate, decode_aggregate
from runledger.domain.ledger import Ledger
from runledger.domain.limits import LIMITS_AGGREGATE
from runledger.topics import REGISTRY_AGGREGATE

SCHEMA_VERSION = 1
MAGIC = b"RLSNAP\x00"


class SnapshotError(ValueError):
    """The bytes are not a snapshot this code can restore (corrupt, or an unknown schema)."""


# -- the whole ledger -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Captured:
    """A snapshot's content at one consistent point, by reference (immutable bytes): turning it
    into bytes (``to_bytes``) can happen later, off the command path."""

    position: int
    aggregates: list[tuple[str, bytes]]
    verdicts: list[tuple[str, bytes]]

    def to_bytes(self) -> bytes:
        return _frame(self.position, self.aggregates, self.verdicts)


def _frame(position: int, aggregates: list[tuple[str, bytes]], verdicts: list[tuple[str, bytes]]) -> bytes:
    header = orjson.dumps(
        {"schema_version": SCHEMA_VERSION, "position": position, "aggregates": len(aggregates), "verdicts": len(verdicts)}
    )
    parts = [MAGIC, struct.pack("<I", len(header)), header]
    for items in (aggregates, verdicts):
        ids = orjson.dumps([k for k, _ in items])
        lengths = struct.pack(f"<{len(items)}I", *(len(v) for _, v in items))
        blob = b"".join(v for _, v in items)
        for section in (ids, lengths, blob):
            parts += [struct.pack("<Q", len(section)), section]
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


def capture(ledger: Ledger, position: int) -> Captured:
    """The ledger's snapshot content now: it must be at a consistent point (every event it
    reflects acknowledged). Encodes only the aggregates changed since their last encoding."""
    return Captured(position, ledger.aggregates.encodings(), ledger.verdicts())


def encode(ledger: Ledger, position: int) -> bytes:
    """One snapshot of ``ledger``."""
    return capture(ledger, position).to_bytes()


def read_header(raw: bytes) -> dict:
    if raw[: len(MAGIC)] != MAGIC:
        raise SnapshotError("not a ledger snapshot (bad magic)")
    try:
        (size,) = struct.unpack_from("<I", raw, len(MAGIC))
        header = orjson.loads(raw[len(MAGIC) + 4 : len(MAGIC) + 4 + size])
    except (struct.error, orjson.JSONDecodeError) as exc:
        raise SnapshotError(f"undecodable ledger snapshot header: {exc}") from None
    if not isinstance(header, dict) or header.get("schema_version") != SCHEMA_VERSION:
        found = header.get("schema_version") if isinstance(header, dict) else None
        raise SnapshotError(f"ledger snapshot of schema version {found!r}; this code reads {SCHEMA_VERSION}")
    return header


def decode(raw: bytes, dedup_window: int = 200_000, max_hot: int | None = None, **ledger_options) -> tuple[Ledger, int]:
    """The ledger a snapshot holds (aggregates still encoded, at most ``max_hot`` of them kept
    decoded once used) and its position.

    ``SnapshotError`` if the bytes cannot be restored: bad magic or checksum, unknown schema
    version, malformed sections. An aggregate is fully validated only when first used.
    """
    header = read_header(raw)
    if len(raw) < len(MAGIC) + 8 or struct.unpack_from("<I", raw, len(raw) - 4)[0] != zlib.crc32(memoryview(raw)[:-4]):
        raise SnapshotError("ledger snapshot checksum mismatch (truncated or corrupt)")
    try:
        at = len(MAGIC) + 4 + struct.unpack_from("<I", raw, len(MAGIC))[0]
        sections = []
        for _ in range(6):
            (size,) = struct.unpack_from("<Q", raw, at)
            sections.append(raw[at + 8 : at + 8 + size])
            at += 8 + size
        aggregates = _split(*sections[0:3], header["aggregates"])
        verdicts = _split(*sections[3:6], header["verdicts"])
        position = int(header["position"])
    except (struct.error, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"malformed ledger snapshot: {exc}") from None
    cold = dict(aggregates)
    # Aggregates are validated when first used; one of each kind now, so a snapshot this code
    # cannot read (a shape changed without a new schema version) is refused here, not later.
    singletons = (REGISTRY_AGGREGATE, LIMITS_AGGREGATE, AGENTS_AGGREGATE)
    for aggregate_id in (*singletons, next((k for k in cold if k not in singletons), None)):
        if aggregate_id in cold:
            try:
                decode_aggregate(aggregate_id, cold[aggregate_id])
            except UndecodableAggregate as exc:
                raise SnapshotError(f"{exc} (in a snapshot)") from None
    ledger = Ledger.restore(AggregateStore(cold, max_hot), verdicts, dedup_window, **ledger_options)
    if verdicts:
        try:
            ledger.verdict(verdicts[-1][0])  # and one verdict
        except (ValueError, TypeError) as exc:  # orjson's and pydantic's errors are ValueErrors
            raise SnapshotError(f"undecodable verdict in a snapshot: {exc}") from None
    return ledger, position


def _split(ids_json: bytes, lengths_raw: bytes, blob: bytes, count: int) -> list[tuple[str, bytes]]:
    ids = orjson.loads(ids_json)
    lengths = struct.unpack(f"<{count}I", lengths_raw)
    if len(ids) != count or sum(lengths) != len(blob):
        raise ValueError("section sizes disagree")
    ends = list(accumulate(lengths))
    return list(zip(ids, (blob[end - n : end] for end, n in zip(ends, lengths))))
