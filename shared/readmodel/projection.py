"""The projection from events to read-model documents. Pure: docs in, changes out.

Applying the whole log in order from an empty model always gives the same documents, which is
what makes "drop the read models and replay" a rebuild rather than an approximation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from runledger.domain.states import StateType, is_finished, is_running
from runledger.messages import events as e
from runledger.messages.events import EventEnvelope
from runledger.readmodel import indexes
from runledger.readmodel.indexes import FLOW_RUN, TASK_RUN
from runledger.readmodel.keys import Keys
from runledger.topics import REGISTRY_AGGREGATE


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _score(t: datetime) -> float:
    return t.timestamp() * 1000.0


def _json(doc: dict[str, Any]) -> str:
    return orjson.dumps(doc).decode()


@dataclass
class Changes:
    """What a batch of events does to Redis: documents to write (whole), and the *net* effect on
    sorted sets, sets and hashes — for each (key, member) the last thing the batch did, an add (a
    score / True / a value) or a removal (None / False / None). Net effects make the order of the
    writes irrelevant, so applying them is deterministic whatever the batch looked like."""

    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    zsets: dict[tuple[str, str], float | None] = field(default_factory=dict)
    sets: dict[tuple[str, str], bool] = field(default_factory=dict)
    hashes: dict[tuple[str, str], str | None] = field(default_factory=dict)

    def z_add(self, key: str, score: float, member: str) -> None:
        self.zsets[(key, member)] = score

    def z_rem(self, key: str, member: str) -> None:
        self.zsets[(key, member)] = None

    def s_add(self, key: str, member: str) -> None:
        self.sets[(key, member)] = True

    def s_rem(self, key: str, member: str) -> None:
        self.sets[(key, member)] = False

    def h_set(self, key: str, name: str, value: str) -> None:
        self.hashes[(key, name)] = value

    def h_del(self, key: str, name: str) -> None:
        self.hashes[(key, name)] = None

    # views by kind of write, in first-touched order
    @property
    def zadd(self) -> list[tuple[str, float, str]]:
        return [(k, s, m) for (k, m), s in self.zsets.items() if s is not None]

    @property
    def zrem(self) -> list[tuple[str, str]]:
        return [(k, m) for (k, m), s in self.zsets.items() if s is None]

    @property
    def sadd(self) -> list[tuple[str, str]]:
        return [(k, m) for (k, m), present in self.sets.items() if present]

    @property
    def srem(self) -> list[tuple[str, str]]:
        return [(k, m) for (k, m), present in self.sets.items() if not present]

    @property
    def hset(self) -> list[tuple[str, str, str]]:
        return [(k, f, v) for (k, f), v in self.hashes.items() if v is not None]

    @property
    def hdel(self) -> list[tuple[str, str]]:
        return [(k, f) for (k, f), v in self.hashes.items() if v is None]

    def copy(self) -> "Changes":
        return Changes(dict(self.docs), dict(self.zsets), dict(self.sets), dict(self.hashes))


class Projection:
    def __init__(self, keys: Keys) -> None:
        self.k = keys

    def partition(self, env: EventEnvelope) -> int:
        """The events partition (and Redis slot) of the event's aggregate."""
        return self.k.partition(env.flow_run_id if env.flow_run_id is not None else env.aggregate_id)

    def aggregate_key(self, env: EventEnvelope) -> str:
        """The document that records how far an aggregate's events have been applied."""
        if env.flow_run_id is not None:
            return self.k.flow_run(env.flow_run_id)
        return self.k.registry if env.aggregate_id == REGISTRY_AGGREGATE else self.k.aggregate(env.aggregate_id)

    def keys_needed(self, env: EventEnvelope) -> list[str]:
        p = env.payload
        needed = [self.aggregate_key(env)]
        task_run_id = getattr(p, "task_run_id", None)
        if task_run_id is not None:
            needed.append(self.k.task_run(task_run_id, env.flow_run_id))
        if isinstance(p, e.FlowRegistered):
            needed.append(self.k.flow_group(p.flow.version_group_id))
            needed += [self.k.flow(fid) for fid in p.archived_flow_ids]
        if isinstance(p, e.FlowGroupUpdated):
            needed.append(self.k.flow_group(p.flow_group_id))
        if isinstance(p, (e.FlowTasksRegistered, e.FlowEdgesRegistered)):
            needed.append(self.k.flow(p.flow_id))
        if isinstance(p, (e.TaskRunArtifactCreated, e.TaskRunArtifactUpdated, e.TaskRunArtifactDeleted)):
            needed.append(self.k.task_run_artifact(p.artifact_id, env.flow_run_id))
        return needed

    def apply(self, env: EventEnvelope, docs: dict[str, dict[str, Any] | None], changes: Changes) -> bool:
        """Apply one event; ``docs`` holds the current documents (loaded or already changed).

        Returns False for an event already applied: the log may hold a record twice (a producer
        retry), and the aggregate's ``seq`` tells which copy is new.
        """
        agg_key = self.aggregate_key(env)
        applied_seq = (docs.get(agg_key) or {}).get("seq", 0)
        if env.seq <= applied_seq:
            return False

        def put(key: str, doc: dict[str, Any], entity: str | None = None) -> None:
            if entity is not None:
                self._reindex(env, entity, docs.get(key), doc, changes)
            docs[key] = doc
            changes.docs[key] = doc

        self._apply(env, docs, put, changes)
        put(agg_key, {**(docs.get(agg_key) or {}), "seq": env.seq})
        return True

    def _reindex(self, env: EventEnvelope, entity: str, old: dict | None, new: dict, changes: Changes) -> None:
        """Move the document's index entries from what ``old`` was in to what ``new`` is in."""
        if old is not None and all(old.get(f) is new.get(f) for f in indexes.STATIC_FIELDS[entity]):
            if old.get("state") is new.get("state"):
                return  # nothing an index depends on changed
            before, after = indexes.state_entries(entity, old), indexes.state_entries(entity, new)
        else:
            before, after = indexes.entries(entity, old), indexes.entries(entity, new)
        if before == after:
            return
        p, member = self.partition(env), new["id"]
        for (name, value), score in before.items():
            if (name, value) not in after:
                changes.z_rem(self.k.index(p, name, value), member)
        for (name, value), score in after.items():
            if before.get((name, value)) != score:
                changes.z_add(self.k.index(p, name, value), score, member)

    def _apply(self, env: EventEnvelope, docs, put, changes: Changes) -> None:
        p, k, t = env.payload, self.k, env.time
        match p:
            case e.FlowRunCreated(spec=spec):
                doc = spec.model_dump(mode="json", exclude={"task_runs"})
                doc.update(
                    id=spec.flow_run_id,
                    flow_group_id=spec.version_group_id,
                    created=_iso(t),
                    updated=_iso(t),
                    state=None,
                    version=0,
                    states=[],
                    start_time=None,
                    end_time=None,
                    duration_seconds=None,
                    heartbeat=None,
                    task_run_ids=[],
                )
                doc.pop("flow_run_id")
                put(k.flow_run(spec.flow_run_id), doc, FLOW_RUN)
            case e.TaskRunCreated():
                run = dict(docs[k.flow_run(env.flow_run_id)])
                run["task_run_ids"] = [*run["task_run_ids"], p.task_run_id]
                put(k.flow_run(env.flow_run_id), run)
                put(
                    k.task_run(p.task_run_id, env.flow_run_id),
                    {
                        "id": p.task_run_id,
                        "flow_run_id": env.flow_run_id,
                        "task_id": p.task_id,
                        "task_slug": p.task_slug,
                        "task_name": p.task_name,
                        "tags": p.tags,
                        "map_index": p.map_index,
                        "name": p.task_name,
                        "created": _iso(t),
                        "updated": _iso(t),
                        "state": _state_entry(StateType.PENDING, t, 0),
                        "version": 0,
                        "states": [],
                        "start_time": None,
                        "end_time": None,
                        "duration_seconds": None,
                        "heartbeat": None,
                    },
                    TASK_RUN,
                )
            case e.FlowRunStateSet(state=state, version=version):
                key = k.flow_run(env.flow_run_id)
                put(key, _with_state(docs[key], state, version, t), FLOW_RUN)
            case e.TaskRunStateSet(task_run_id=tr_id, state=state, version=version):
                key = k.task_run(tr_id, env.flow_run_id)
                put(key, _with_state(docs[key], state, version, t), TASK_RUN)
            case e.FlowRunRenamed(name=name):
                key = k.flow_run(env.flow_run_id)
                put(key, {**docs[key], "name": name, "updated": _iso(t)})
            case e.TaskRunRenamed(task_run_id=tr_id, name=name):
                key = k.task_run(tr_id, env.flow_run_id)
                put(key, {**docs[key], "name": name, "updated": _iso(t)})
            case e.FlowRunHeartbeatRecorded():
                key = k.flow_run(env.flow_run_id)
                put(key, {**docs[key], "heartbeat": _iso(t)})
            case e.TaskRunHeartbeatRecorded(task_run_id=tr_id):
                key = k.task_run(tr_id, env.flow_run_id)
                put(key, {**docs[key], "heartbeat": _iso(t)})
            # -- Client.register()'s tasks and edges; task-run artifacts (issue 9) ----------------
            case e.FlowTasksRegistered(flow_id=fid, tasks=tasks):
                key = k.flow(fid)
                put(key, {**docs[key], "tasks": [*docs[key]["tasks"], *(x.model_dump(mode="json") for x in tasks)]})
            case e.FlowEdgesRegistered(flow_id=fid, edges=edges):
                key = k.flow(fid)
                mapped = {x.downstream_task_id for x in edges if x.mapped}
                tasks = [{**x, "mapped": True} if x["id"] in mapped else x for x in docs[key]["tasks"]]
                put(key, {**docs[key], "tasks": tasks, "edges": [*docs[key]["edges"], *(x.model_dump(mode="json") for x in edges)]})
            case e.TaskRunArtifactCreated(artifact_id=aid, task_run_id=tr_id):
                doc = {
                    "id": aid, "task_run_id": tr_id, "flow_run_id": env.flow_run_id, "kind": p.kind, "data": p.data,
                    "created": _iso(t), "updated": _iso(t),
                }
                put(k.task_run_artifact(aid, env.flow_run_id), doc)
                tr_key = k.task_run(tr_id, env.flow_run_id)
                put(tr_key, {**docs[tr_key], "artifact_ids": [*docs[tr_key].get("artifact_ids", []), aid]})
            case e.TaskRunArtifactUpdated(artifact_id=aid):
                key = k.task_run_artifact(aid, env.flow_run_id)
                put(key, {**docs[key], "data": p.data, "updated": _iso(t)})
            case e.TaskRunArtifactDeleted(artifact_id=aid, task_run_id=tr_id):
                key = k.task_run_artifact(aid, env.flow_run_id)
                put(key, {**docs[key], "deleted": True, "updated": _iso(t)})
                tr_key = k.task_run(tr_id, env.flow_run_id)
                put(tr_key, {**docs[tr_key], "artifact_ids": [a for a in docs[tr_key].get("artifact_ids", []) if a != aid]})
            case e.ProjectCreated():
                put(k.project(p.project_id), {"id": p.project_id, "name": p.name, "description": p.description, "created": _iso(t)})
                changes.z_add(k.projects, _score(t), p.project_id)
                changes.h_set(k.project_by_name, p.name, p.project_id)
            case e.FlowRegistered(flow=flow, archived_flow_ids=archived):
                doc = flow.model_dump(mode="json")
                doc.update(flow_group_id=flow.version_group_id, archived=False, created=_iso(t))
                put(k.flow(flow.id), doc)
                changes.z_add(k.flows, _score(t), flow.id)
                changes.s_add(k.flows_by_name(flow.name), flow.id)
                for fid in archived:
                    put(k.flow(fid), {**docs[k.flow(fid)], "archived": True})
                gkey = k.flow_group(flow.version_group_id)
                group = docs.get(gkey) or {
                    "id": flow.version_group_id,
                    "project_id": flow.project_id,
                    "name": flow.name,
                    "flow_ids": [],
                    "labels": None,
                    "run_config": None,
                    "default_parameters": None,
                    "created": _iso(t),
                }
                group = {**group, "flow_ids": [*group["flow_ids"], flow.id], "updated": _iso(t)}
                if p.schedule_active is not None:
                    group["schedule_active"] = p.schedule_active
                put(gkey, group)
            case e.FlowGroupUpdated(flow_group_id=gid, changes=updates):
                gkey = k.flow_group(gid)
                put(gkey, {**docs[gkey], **updates, "updated": _iso(t)})
            case e.ConcurrencyLimitSet(limit_id=lid, kind=kind, name=name, limit=limit):
                doc = {"id": lid, "name": name, "limit": limit, "kind": kind, "updated_ms": int(_score(t))}
                changes.h_set(k.limits(kind), name, _json(doc))
                changes.h_set(k.limit_ids, lid, f"{kind}\x1f{name}")
            case e.ConcurrencyLimitDeleted(limit_id=lid, kind=kind, name=name):
                changes.h_del(k.limits(kind), name)
                changes.h_del(k.limit_ids, lid)
            case e.AgentRegistered():
                doc = {
                    "id": p.agent_id,
                    "type": p.agent_type,
                    "name": p.name,
                    "labels": p.labels,
                    "tenant_id": p.tenant_id,
                    "agent_config_id": p.agent_config_id,
                    "core_version": p.core_version,
                    "created": _iso(p.created),
                }
                changes.h_set(k.agents, p.agent_id, _json(doc))
            case e.VerdictRecorded():
                pass  # an audit record: no read model shows it
            case _:
                raise TypeError(f"no projection for {p!r}")


def _state_entry(state_type: StateType, t: datetime, version: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": state_type.value,
        "message": None,
        "timestamp": _iso(t),
        "start_time": None,
        "result_location": None,
        "serialized": None,
        "version": version,
        **extra,
    }


def _with_state(doc: dict[str, Any], state, version: int, t: datetime) -> dict[str, Any]:
    stamp = state.timestamp or t
    entry = _state_entry(
        state.type,
        stamp,
        version,
        message=state.message,
        start_time=_iso(state.start_time),
        result_location=state.result_location,
        serialized=state.serialized,
    )
    new = {**doc, "state": entry, "version": version, "states": [*doc["states"], entry], "updated": _iso(t)}
    if is_running(state.type) and state.type is StateType.RUNNING and doc["start_time"] is None:
        new["start_time"] = _iso(stamp)
    if is_finished(state.type):
        new["end_time"] = _iso(stamp)
    elif doc["end_time"] is not None:
        new["end_time"] = None  # restarted
    if new["start_time"] and new["end_time"]:
        new["duration_seconds"] = (
            datetime.fromisoformat(new["end_time"]) - datetime.fromisoformat(new["start_time"])
        ).total_seconds()
    else:
        new["duration_seconds"] = None
    return new
