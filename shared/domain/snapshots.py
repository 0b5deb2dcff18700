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

Each aggregate and each verdict is its own small JSON document, so restoring is cheap: the
aggregates stay encoded (``ColdAggregates``) until a command or an event touches them, and the
verdicts stay encoded in the ledger anyway. Encoding is incremental (``SnapshotEncoder``): an
aggregate is re-encoded only when the ledger says it was touched, so a snapshot of a large
partition costs about the aggregates changed since the previous one plus one join of bytes.
A reader refuses what it cannot restore (``SnapshotError``); the writer then replays in full.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from itertools import accumulate

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from runledger.domain.agents import AGENTS_AGGREGATE, Agent, Agents
from runledger.domain.flow_run import FlowRun, TaskRunRecord
from runledger.domain.ledger import Aggregate, Ledger
from runledger.domain.limits import LIMITS_AGGREGATE, ConcurrencyLimits, Limit
from runledger.domain.registry import FlowGroup, Registry
from runledger.domain.states import State
from runledger.messages.models import FlowRunSpec
from runledger.domain.registry import FlowShape
from runledger.topics import REGISTRY_AGGREGATE

SCHEMA_VERSION = 1
MAGIC = b"RLSNAP\x00"


class SnapshotError(ValueError):
    """The bytes are not a snapshot this code can restore (corrupt, or an unknown schema)."""


# -- the document (what is validated on the way in) -----------------------------------------------
class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskRunDoc(_Doc):
    id: str
    task_id: str
    map_index: int
    state: State
    version: int
    name: str


class FlowRunDoc(_Doc):
    id: str
    seq: int
    spec: FlowRunSpec | None
    state: State | None
    version: int
    name: str
    task_runs: list[TaskRunDoc]
    task_run_by_key: list[tuple[str, int, str]]  # task id, map index, task run id
    artifacts: dict[str, str] = {}  # artifact id -> task run id (absent from older snapshots)


class FlowGroupDoc(_Doc):
    id: str
    project_id: str
    name: str
    flow_ids: list[str]
    max_version: int
    last_idempotency_key: str | None
    schedule_active: bool | None = None
    default_parameters: list[str] = []


class FlowShapeDoc(_Doc):
    open: bool
    tasks: dict[str, str]
    edges: dict[str, bool]
    unscheduled: list[str] = []


class RegistryDoc(_Doc):
    seq: int
    project_names: dict[str, str]
    project_by_name: dict[str, str]
    archived: dict[str, bool]
    groups: list[FlowGroupDoc]
    group_by_name: list[tuple[str, str, str]]  # project id, flow name, group id
    shapes: dict[str, FlowShapeDoc] = {}  # absent from snapshots made before flows had shapes


# Added without a new schema version: a snapshot without these aggregates reads as before.
class LimitDoc(_Doc):
    id: str
    kind: str
    name: str
    limit: int


class LimitsDoc(_Doc):
    seq: int
    limits: list[LimitDoc]


class AgentDoc(_Doc):
    id: str
    agent_type: str
    name: str | None
    labels: list[str]
    tenant_id: str | None
    agent_config_id: str | None
    core_version: str | None
    created: datetime


class AgentsDoc(_Doc):
    seq: int
    agents: list[AgentDoc]


# -- one aggregate ------------------------------------------------------------------------------
def _model(value: BaseModel) -> dict:
    return value.model_dump(mode="json")


def _state(state: State | None) -> dict | None:
    return None if state is None else state.model_dump(mode="json")


def encode_aggregate(agg: Aggregate) -> bytes:
    # Kept for a long time: a right-sized copy (orjson's own bytes keep a ~4 KiB buffer).
    return memoryview(_encode_aggregate(agg)).tobytes()


def _encode_aggregate(agg: Aggregate) -> bytes:
    if isinstance(agg, ConcurrencyLimits):
        return orjson.dumps({"seq": agg.seq, "limits": [vars(x) for x in agg.limits.values()]})
    if isinstance(agg, Agents):
        return orjson.dumps({"seq": agg.seq, "agents": [vars(a) for a in agg.agents.values()]})
    if isinstance(agg, Registry):
        return orjson.dumps(
            {
                "seq": agg.seq,
                "project_names": agg.project_names,
                "project_by_name": agg.project_by_name,
                "archived": agg.archived,
                "groups": [vars(g) for g in agg.groups.values()],
                "group_by_name": [[p, n, g] for (p, n), g in agg.group_by_name.items()],
                "shapes": {fid: vars(shape) for fid, shape in agg.shapes.items()},
            }
        )
    return orjson.dumps(
        {
            "id": agg.id,
            "seq": agg.seq,
            "spec": None if agg.spec is None else _model(agg.spec),
            "state": _state(agg.state),
            "version": agg.version,
            "name": agg.name,
            "task_runs": [
                {
                    "id": r.id,
                    "task_id": r.task_id,
                    "map_index": r.map_index,
                    "state": _state(r.state),
                    "version": r.version,
                    "name": r.name,
                }
                for r in agg.task_runs.values()
            ],
            "task_run_by_key": [[t, i, r] for (t, i), r in agg.task_run_by_key.items()],
            **({"artifacts": agg.artifacts} if agg.artifacts else {}),
        }
    )


def decode_aggregate(aggregate_id: str, raw: bytes) -> Aggregate:
    try:
        if aggregate_id == REGISTRY_AGGREGATE:
            return _registry(RegistryDoc.model_validate_json(raw))
        if aggregate_id == LIMITS_AGGREGATE:
            doc = LimitsDoc.model_validate_json(raw)
            return ConcurrencyLimits(doc.seq, {x.id: Limit(x.id, x.kind, x.name, x.limit) for x in doc.limits})
        if aggregate_id == AGENTS_AGGREGATE:
            doc = AgentsDoc.model_validate_json(raw)
            return Agents(doc.seq, {a.id: Agent(**a.model_dump()) for a in doc.agents})
        return _flow_run(FlowRunDoc.model_validate_json(raw))
    except ValidationError as exc:
        raise SnapshotError(f"undecodable aggregate {aggregate_id} in a snapshot: {exc.errors()[0]['msg']}") from None


class ColdAggregates(MutableMapping):
    """A ledger's aggregates after a restore: each stays encoded until it is first used."""

    def __init__(self, cold: dict[str, bytes]) -> None:
        self.cold = cold
        self.hot: dict[str, Aggregate] = {}

    def __getitem__(self, aggregate_id: str) -> Aggregate:
        agg = self.hot.get(aggregate_id)
        if agg is None:
            raw = self.cold.pop(aggregate_id)  # KeyError: not here
            agg = self.hot[aggregate_id] = decode_aggregate(aggregate_id, raw)
        return agg

    def __setitem__(self, aggregate_id: str, agg: Aggregate) -> None:
        self.cold.pop(aggregate_id, None)
        self.hot[aggregate_id] = agg

    def __delitem__(self, aggregate_id: str) -> None:
        if self.cold.pop(aggregate_id, None) is None:
            del self.hot[aggregate_id]

    def __contains__(self, aggregate_id: object) -> bool:
        return aggregate_id in self.hot or aggregate_id in self.cold

    def __iter__(self) -> Iterator[str]:
        yield from list(self.hot)
        yield from list(self.cold)

    def __len__(self) -> int:
        return len(self.hot) + len(self.cold)


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


class SnapshotEncoder:
    """Encodes one ledger again and again, re-encoding only what changed since the last time.

    It consumes ``ledger.touched``: use one encoder per ledger. ``refresh`` may run between
    command batches to spread the work; ``capture`` must see the ledger at a consistent point
    (every event it reflects acknowledged) and is cheap: references, no copying of bytes.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._cache: dict[str, bytes] = {}
        if isinstance(ledger.aggregates, ColdAggregates):
            self._cache.update(ledger.aggregates.cold)
            ledger.touched |= set(ledger.aggregates.hot)
        else:
            ledger.touched |= set(ledger.aggregates)

    @property
    def pending(self) -> int:
        return len(self.ledger.touched)

    def refresh(self, limit: int | None = None) -> int:
        """Re-encode up to ``limit`` touched aggregates (all if None); returns how many."""
        ledger = self.ledger
        if limit is None or limit >= len(ledger.touched):
            touched, ledger.touched = ledger.touched, set()
        else:
            touched = {ledger.touched.pop() for _ in range(limit)}
        for aggregate_id in touched:
            agg = ledger.aggregates.get(aggregate_id)
            if agg is None:
                self._cache.pop(aggregate_id, None)
            else:
                self._cache[aggregate_id] = encode_aggregate(agg)
        return len(touched)

    def capture(self, position: int) -> Captured:
        self.refresh()
        return Captured(position, list(self._cache.items()), self.ledger.verdicts())

    def encode(self, position: int) -> bytes:
        return self.capture(position).to_bytes()


def encode(ledger: Ledger, position: int) -> bytes:
    """One snapshot of ``ledger`` (a fresh encoder; the writer keeps one per ledger instead)."""
    touched = set(ledger.touched)
    try:
        return SnapshotEncoder(ledger).encode(position)
    finally:
        ledger.touched |= touched  # leave the ledger's own record of changes as it was


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


def decode(raw: bytes, dedup_window: int = 200_000, **ledger_options) -> tuple[Ledger, int]:
    """The ledger a snapshot holds (aggregates still encoded) and its position.

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
            decode_aggregate(aggregate_id, cold[aggregate_id])
    ledger = Ledger.restore(ColdAggregates(cold), verdicts, dedup_window, **ledger_options)
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


def _flow_run(doc: FlowRunDoc) -> FlowRun:
    run = FlowRun(id=doc.id, seq=doc.seq, spec=doc.spec, state=doc.state, version=doc.version, name=doc.name)
    for r in doc.task_runs:
        run.task_runs[r.id] = TaskRunRecord(r.id, r.task_id, r.map_index, r.state, r.version, r.name)
    run.task_run_by_key = {(t, i): r for t, i, r in doc.task_run_by_key}
    run.artifacts = dict(doc.artifacts)
    return run


def _registry(doc: RegistryDoc) -> Registry:
    return Registry(
        seq=doc.seq,
        project_names=doc.project_names,
        project_by_name=doc.project_by_name,
        archived=doc.archived,
        groups={
            g.id: FlowGroup(g.id, g.project_id, g.name, g.flow_ids, g.max_version, g.last_idempotency_key, g.schedule_active, g.default_parameters)
            for g in doc.groups
        },
        group_by_name={(p, n): g for p, n, g in doc.group_by_name},
        shapes={fid: FlowShape(d.open, d.tasks, d.edges, d.unscheduled) for fid, d in doc.shapes.items()},
    )
