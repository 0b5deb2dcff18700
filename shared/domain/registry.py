"""The registry aggregate: projects, flows, version groups (= flow groups).

Registering a flow under a name that already exists in the project makes a new version in the
same version group and archives every other version of it, as Prefect Server does.

A registered flow's definition never changes, with one staged exception: ``Client.register()``
(``flow.register()``) sends the flow without its tasks, then its tasks (``register_tasks``, in
batches), then its edges (``register_edges``). Such a flow is registered *open* (``tasks_follow``)
and its definition grows by ``FlowTasksRegistered`` / ``FlowEdgesRegistered``, append-only: a task
(by its slug, whose id is derived from the flow id and the slug) or an edge, once recorded, is
never changed; sending it again is a no-op (a retried or repeated call, or the idempotency-key
repeat of a whole registration), sending it with another definition is refused. A flow registered
with its tasks (``prefect register``, REST) is closed: it accepts only what it already has.

The registration also sets the flow group's schedule switch (Prefect's ``set_schedule_active``
input) in the same event, when the flow has a schedule and the switch changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from runledger.domain.decisions import Accepted, Decision, Rejected, not_found
from runledger.messages import commands as c
from runledger.messages import events as e
from runledger.messages.commands import Rejection
from runledger.messages.models import EdgeSpec, FlowDefinition, TaskSpec

# Prefect's client recognises a duplicate project only by this exact message (it looks for
# "'Uniqueness violation.'" in the repr of the errors), so the name goes in the details.
UNIQUENESS = "Uniqueness violation."

# RunLedger serves one tenant, which always exists (Prefect Server's ``tenant`` table with one row).
DEFAULT_TENANT = {"id": "00000000-0000-4000-8000-000000000001", "name": "default", "slug": "default"}

# Every flow group's settings, as Prefect Server creates them. Version locking is not a setting
# here: RunLedger always checks a version that is given (``version: null`` skips the check).
FLOW_GROUP_SETTINGS = {"heartbeat_enabled": True, "lazarus_enabled": True, "version_locking_enabled": False}


@dataclass
class FlowGroup:
    id: str
    project_id: str
    name: str
    flow_ids: list[str] = field(default_factory=list)
    max_version: int = 0
    last_idempotency_key: str | None = None
    schedule_active: bool | None = None  # None: never switched (a schedule is active by default)
    default_parameters: list[str] = field(default_factory=list)  # names the group gives a default


def task_fingerprint(task: TaskSpec) -> str:
    """What identifies a task's definition; ``mapped`` is left out: it follows from the edges,
    which ``Client.register()`` sends after the tasks."""
    raw = orjson.dumps(task.model_dump(mode="json", exclude={"mapped"}), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha1(raw).hexdigest()[:16]


def edge_identity(edge: EdgeSpec) -> str:
    return orjson.dumps([edge.upstream_task_id, edge.downstream_task_id, edge.key]).decode()


@dataclass
class FlowShape:
    """What the registry keeps of a flow's definition to decide additions to it."""

    open: bool = False
    tasks: dict[str, str] = field(default_factory=dict)  # task id -> fingerprint
    edges: dict[str, bool] = field(default_factory=dict)  # edge identity -> mapped
    unscheduled: list[str] = field(default_factory=list)  # required parameters its schedule gives no default


def unscheduled_parameters(flow: FlowDefinition) -> list[str]:
    """Required parameters that some clock of the flow's schedule gives no default (Prefect Server
    refuses to switch such a schedule on unless the flow group's default parameters cover them)."""
    required = [p.name for p in flow.parameters if p.required]
    if not flow.schedule or not required:
        return []
    clocks = flow.schedule.get("clocks") or []
    return sorted(n for n in required if not all(n in ((clock or {}).get("parameter_defaults") or {}) for clock in clocks))


def _blocked(shape: "FlowShape | None", group: FlowGroup | None) -> list[str]:
    return sorted(set(shape.unscheduled if shape else []) - set(group.default_parameters if group else []))


@dataclass
class Registry:
    seq: int = 0
    project_names: dict[str, str] = field(default_factory=dict)  # id -> name
    project_by_name: dict[str, str] = field(default_factory=dict)
    archived: dict[str, bool] = field(default_factory=dict)  # flow id -> archived
    groups: dict[str, FlowGroup] = field(default_factory=dict)
    group_by_name: dict[tuple[str, str], str] = field(default_factory=dict)
    shapes: dict[str, FlowShape] = field(default_factory=dict)  # flow id -> its tasks and edges

    def apply(self, event: object) -> None:
        match event:
            case e.ProjectCreated(project_id=pid, name=name):
                self.project_names[pid] = name
                self.project_by_name[name] = pid
            case e.FlowRegistered(flow=flow, archived_flow_ids=archived):
                self.shapes[flow.id] = FlowShape(
                    open=event.tasks_follow,
                    tasks={t.id: task_fingerprint(t) for t in flow.tasks},
                    edges={edge_identity(x): x.mapped for x in flow.edges},
                    unscheduled=unscheduled_parameters(flow),
                )
                group = self.groups.get(flow.version_group_id)
                if group is None:
                    group = FlowGroup(flow.version_group_id, flow.project_id, flow.name)
                    self.groups[group.id] = group
                self.group_by_name.setdefault((flow.project_id, flow.name), group.id)
                group.flow_ids.append(flow.id)
                group.max_version = max(group.max_version, flow.version)
                group.last_idempotency_key = flow.idempotency_key
                self.archived[flow.id] = False
                for fid in archived:
                    self.archived[fid] = True
                if event.schedule_active is not None:
                    group.schedule_active = event.schedule_active
            case e.FlowTasksRegistered(flow_id=fid, tasks=tasks):
                self.shapes[fid].tasks.update((t.id, task_fingerprint(t)) for t in tasks)
            case e.FlowEdgesRegistered(flow_id=fid, edges=edges):
                self.shapes[fid].edges.update((edge_identity(x), x.mapped) for x in edges)
            case e.FlowGroupUpdated(flow_group_id=gid, changes=changes):
                if gid in self.groups and "schedule_active" in changes:
                    self.groups[gid].schedule_active = changes["schedule_active"]
                if gid in self.groups and "default_parameters" in changes:
                    self.groups[gid].default_parameters = sorted(changes["default_parameters"] or {})
            case e.VerdictRecorded():
                pass
            case _:
                raise TypeError(f"not a registry event: {event!r}")

    def handle(self, command: object, now: datetime) -> Decision:
        match command:
            case c.CreateProject():
                return self._create_project(command)
            case c.RegisterFlow():
                return self._register_flow(command)
            case c.RegisterTasks():
                return self._register_tasks(command)
            case c.RegisterEdges():
                return self._register_edges(command)
            case c.UpdateFlowGroup(flow_group_id=gid, changes=changes):
                if gid not in self.groups:
                    return not_found("flow group", gid, "flow_group_id")
                if changes.get("schedule_active") is True and (refusal := self._cannot_schedule(gid)):
                    return refusal
                return Accepted([e.FlowGroupUpdated(flow_group_id=gid, changes=changes)], {"flow_group_id": gid})
        raise TypeError(f"not a registry command: {command!r}")

    def _create_project(self, command: c.CreateProject) -> Decision:
        existing = self.project_by_name.get(command.name)
        if existing == command.project_id:  # a retried command
            return Accepted([], {"project_id": existing, "created": False})
        if existing is not None:
            return Rejected(
                Rejection(
                    code="CONFLICT",
                    message=UNIQUENESS,
                    field="name",
                    details={"project_id": existing},
                )
            )
        event = e.ProjectCreated(project_id=command.project_id, name=command.name, description=command.description)
        return Accepted([event], {"project_id": command.project_id, "created": True})

    def _register_flow(self, command: c.RegisterFlow) -> Decision:
        flow = command.flow
        if flow.project_id not in self.project_names:
            return not_found("project", flow.project_id, "project_id")
        if flow.id in self.archived:  # a retried command
            return Accepted([], {"flow_id": flow.id, "created": False})
        group_id = flow.version_group_id if command.explicit_version_group else self.group_by_name.get(
            (flow.project_id, flow.name), flow.version_group_id
        )
        group = self.groups.get(group_id)
        if group is not None:
            live = [fid for fid in group.flow_ids if not self.archived[fid]]
            if flow.idempotency_key and flow.idempotency_key == group.last_idempotency_key and live:
                return Accepted([], {"flow_id": live[-1], "created": False, "version_group_id": group_id})
            to_archive, version = live, group.max_version + 1
        else:
            to_archive, version = [], 1
        registered = flow.model_copy(update={"version": version, "version_group_id": group_id})
        switch = command.schedule_active
        if switch and _blocked(FlowShape(unscheduled=unscheduled_parameters(flow)), group):
            switch = False  # as Prefect Server: registered, its schedule left off
        if switch is not None and (not flow.schedule or switch == _active(group)):
            switch = None  # nothing to switch: no schedule, or already so
        event = e.FlowRegistered(flow=registered, archived_flow_ids=to_archive, tasks_follow=command.tasks_follow, schedule_active=switch)
        return Accepted(
            [event],
            {"flow_id": flow.id, "created": True, "version": version, "version_group_id": group_id},
        )

    def _cannot_schedule(self, group_id: str) -> Rejected | None:
        group = self.groups[group_id]
        for fid in group.flow_ids:
            missing = [] if self.archived.get(fid) else _blocked(self.shapes.get(fid), group)
            if missing:
                return Rejected(
                    Rejection(
                        code="INVALID",
                        message=f"Can not schedule a flow that has required parameters: flow {fid} needs {missing}, which neither "
                        "every clock of its schedule nor the flow group's default_parameters give",
                        field="schedule_active",
                        details={"flow_id": fid, "parameters": missing},
                    )
                )
        return None

    # -- Client.register(): tasks and edges after the flow ---------------------------------------
    def _shape(self, flow_id: str) -> FlowShape | None:
        shape = self.shapes.get(flow_id)
        if shape is None and flow_id in self.archived:
            return FlowShape()  # registered before shapes were kept: closed, its tasks unknown here
        return shape

    def _register_tasks(self, command: c.RegisterTasks) -> Decision:
        fid = command.flow_id
        shape = self._shape(fid)
        if shape is None:
            return not_found("flow", fid, "flow_id")
        added: dict[str, TaskSpec] = {}
        for i, task in enumerate(command.tasks):
            known = shape.tasks.get(task.id) or (task_fingerprint(added[task.id]) if task.id in added else None)
            if known is not None:
                if known != task_fingerprint(task):
                    return _conflict(
                        f"task {task.slug!r} is already registered in flow {fid} with another definition; a registered task never changes",
                        f"serialized_tasks.{i}",
                    )
                continue
            if not shape.open:
                return _closed(fid, f"task {task.slug!r}", f"serialized_tasks.{i}")
            added[task.id] = task
        outcome = {"flow_id": fid, "added": len(added)}
        return Accepted([e.FlowTasksRegistered(flow_id=fid, tasks=list(added.values()))] if added else [], outcome)

    def _register_edges(self, command: c.RegisterEdges) -> Decision:
        fid = command.flow_id
        shape = self._shape(fid)
        if shape is None:
            return not_found("flow", fid, "flow_id")
        added: dict[str, EdgeSpec] = {}
        for i, edge in enumerate(command.edges):
            for end, task_id in (("upstream_task", edge.upstream_task_id), ("downstream_task", edge.downstream_task_id)):
                if task_id not in shape.tasks:
                    return Rejected(
                        Rejection(
                            code="INVALID",
                            message=f"serialized_edges.{i}.{end}: no such task in flow {fid} (task id {task_id}); register its task first (register_tasks)",
                            field=f"serialized_edges.{i}.{end}",
                        )
                    )
            key = edge_identity(edge)
            known = shape.edges.get(key, added[key].mapped if key in added else None)
            if known is not None:
                if known != edge.mapped:
                    return _conflict(f"edge {i} is already registered in flow {fid} with mapped={known}; a registered edge never changes", f"serialized_edges.{i}")
                continue
            if not shape.open:
                return _closed(fid, f"edge {i}", f"serialized_edges.{i}")
            added[key] = edge
        outcome = {"flow_id": fid, "added": len(added)}
        return Accepted([e.FlowEdgesRegistered(flow_id=fid, edges=list(added.values()))] if added else [], outcome)


def extended(flow: FlowDefinition, event: e.FlowTasksRegistered | e.FlowEdgesRegistered) -> FlowDefinition:
    """An open flow's definition with the tasks or edges an event adds (what the projection does
    to the flow's document, for readers that keep definitions in memory)."""
    if isinstance(event, e.FlowTasksRegistered):
        return flow.model_copy(update={"tasks": [*flow.tasks, *event.tasks]})
    mapped = {x.downstream_task_id for x in event.edges if x.mapped}
    tasks = [t.model_copy(update={"mapped": True}) if t.id in mapped else t for t in flow.tasks]
    return flow.model_copy(update={"tasks": tasks, "edges": [*flow.edges, *event.edges]})


def _active(group: FlowGroup | None) -> bool:
    return group is None or group.schedule_active is not False


def _conflict(message: str, field_name: str) -> Rejected:
    return Rejected(Rejection(code="CONFLICT", message=message, field=field_name))


def _closed(flow_id: str, what: str, field_name: str) -> Rejected:
    return _conflict(
        f"flow {flow_id} was registered with its tasks and edges and never changes: {what} cannot be added; "
        "register a new version instead",
        field_name,
    )
