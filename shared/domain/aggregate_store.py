"""A writer partition's aggregates, and one aggregate as bytes and back. Pure: no I/O.

``AggregateStore`` keeps every aggregate as its encoded JSON (``encode_aggregate``, about 1.6 KB
for a flow run with two task runs) and only the ``max_hot`` most recently used ones also as
objects (about 10 KB each): a long-running writer's memory then grows by the encoded size of the
runs it has seen, not by their objects. An aggregate used again is decoded (about 65 µs); one
pushed out of the hot set is encoded if it changed since its last encoding (about 45 µs). The
encodings are also what a snapshot holds (``runledger.domain.snapshots``), so a snapshot costs
the aggregates changed since the previous one plus one join of bytes.

The singletons (registry, limits, agents) are never pushed out: every run's creation reads one.
Every change must go through ``store[id] = aggregate`` (the ledger's ``decide`` and ``replay``
do): that is what marks its encoding as behind.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from datetime import datetime

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from runledger.domain.agents import AGENTS_AGGREGATE, Agent, Agents
from runledger.domain.flow_run import FlowRun, TaskRunRecord
from runledger.domain.limits import LIMITS_AGGREGATE, ConcurrencyLimits, Limit
from runledger.domain.registry import FlowGroup, FlowShape, Registry
from runledger.domain.states import State
from runledger.messages.models import FlowRunSpec
from runledger.topics import REGISTRY_AGGREGATE

Aggregate = FlowRun | Registry | ConcurrencyLimits | Agents

# The aggregates that are one of a kind, by id; any other id is a flow run.
SINGLETONS: dict[str, type] = {REGISTRY_AGGREGATE: Registry, LIMITS_AGGREGATE: ConcurrencyLimits, AGENTS_AGGREGATE: Agents}


def new_aggregate(aggregate_id: str) -> Aggregate:
    kind = SINGLETONS.get(aggregate_id)
    return kind() if kind is not None else FlowRun(id=aggregate_id)


class UndecodableAggregate(ValueError):
    """Stored bytes that are not an aggregate this code can read (a snapshot's shape changed)."""


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
        raise UndecodableAggregate(f"undecodable aggregate {aggregate_id}: {exc.errors()[0]['msg']}") from None


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


class AggregateStore(MutableMapping):
    """Every aggregate encoded, the most recently used also as objects (see the module's doc)."""

    def __init__(self, encoded: dict[str, bytes] | None = None, max_hot: int | None = None) -> None:
        if max_hot is not None and max_hot < 1:
            raise ValueError("max_hot must be at least 1")
        self.encoded: dict[str, bytes] = encoded if encoded is not None else {}
        self.hot: OrderedDict[str, Aggregate] = OrderedDict()
        self.max_hot = max_hot
        # Hot aggregates whose encoding is behind (older, or none yet): a subset of ``hot``.
        self.changed: set[str] = set()

    def __getitem__(self, aggregate_id: str) -> Aggregate:
        agg = self.hot.get(aggregate_id)
        if agg is not None:
            self.hot.move_to_end(aggregate_id)
            return agg
        raw = self.encoded[aggregate_id]  # KeyError: not here
        agg = self.hot[aggregate_id] = decode_aggregate(aggregate_id, raw)
        self._trim()
        return agg

    def __setitem__(self, aggregate_id: str, agg: Aggregate) -> None:
        self.hot[aggregate_id] = agg
        self.hot.move_to_end(aggregate_id)
        self.changed.add(aggregate_id)
        self._trim()

    def __delitem__(self, aggregate_id: str) -> None:
        found = self.hot.pop(aggregate_id, None) is not None
        found = self.encoded.pop(aggregate_id, None) is not None or found
        self.changed.discard(aggregate_id)
        if not found:
            raise KeyError(aggregate_id)

    def __contains__(self, aggregate_id: object) -> bool:
        return aggregate_id in self.hot or aggregate_id in self.encoded

    def __iter__(self) -> Iterator[str]:
        # Listed up front: reading an aggregate while iterating may push another out of ``hot``.
        return iter([*self.encoded, *(k for k in self.changed if k not in self.encoded)])  # the latter: never encoded

    def __len__(self) -> int:
        return len(self.encoded) + sum(1 for k in self.changed if k not in self.encoded)

    def encode_changed(self, limit: int | None = None) -> int:
        """Bring up to ``limit`` changed aggregates' encodings up to date (all if None)."""
        count = len(self.changed) if limit is None else min(limit, len(self.changed))
        for _ in range(count):
            aggregate_id = self.changed.pop()
            self.encoded[aggregate_id] = encode_aggregate(self.hot[aggregate_id])
        return count

    def encodings(self) -> list[tuple[str, bytes]]:
        """Every aggregate's current encoding (by reference: the bytes are immutable)."""
        self.encode_changed()
        return list(self.encoded.items())

    def _trim(self) -> None:
        if self.max_hot is None:
            return
        while len(self.hot) > self.max_hot:
            victim = next((k for k in self.hot if k not in SINGLETONS), None)
            if victim is None:
                return
            agg = self.hot.pop(victim)
            if victim in self.changed:
                self.changed.discard(victim)
                self.encoded[victim] = encode_aggregate(agg)
