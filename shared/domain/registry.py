"""The registry aggregate: projects, flows, version groups (= flow groups).

Registering a flow under a name that already exists in the project makes a new version in the
same version group and archives every other version of it, as Prefect Server does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from runledger.domain.decisions import Accepted, Decision, Rejected, not_found
from runledger.messages import commands as c
from runledger.messages import events as e
from runledger.messages.commands import Rejection

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


@dataclass
class Registry:
    seq: int = 0
    project_names: dict[str, str] = field(default_factory=dict)  # id -> name
    project_by_name: dict[str, str] = field(default_factory=dict)
    archived: dict[str, bool] = field(default_factory=dict)  # flow id -> archived
    groups: dict[str, FlowGroup] = field(default_factory=dict)
    group_by_name: dict[tuple[str, str], str] = field(default_factory=dict)

    def apply(self, event: object) -> None:
        match event:
            case e.ProjectCreated(project_id=pid, name=name):
                self.project_names[pid] = name
                self.project_by_name[name] = pid
            case e.FlowRegistered(flow=flow, archived_flow_ids=archived):
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
            case e.FlowGroupUpdated() | e.VerdictRecorded():
                pass
            case _:
                raise TypeError(f"not a registry event: {event!r}")

    def handle(self, command: object, now: datetime) -> Decision:
        match command:
            case c.CreateProject():
                return self._create_project(command)
            case c.RegisterFlow():
                return self._register_flow(command)
            case c.UpdateFlowGroup(flow_group_id=gid, changes=changes):
                if gid not in self.groups:
                    return not_found("flow group", gid, "flow_group_id")
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
        return Accepted(
            [e.FlowRegistered(flow=registered, archived_flow_ids=to_archive)],
            {"flow_id": flow.id, "created": True, "version": version, "version_group_id": group_id},
        )
