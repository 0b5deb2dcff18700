"""Every Redis key RunLedger uses, named in one place.

``{prefix}:rm:*`` are read models (rebuildable from the log); ``{prefix}:idem:*`` are
idempotency keys (not derivable from the log: their TTL refreshes are not events).
"""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str = "rl") -> None:
        self.prefix = prefix
        self.rm = f"{prefix}:rm"

    # read models
    def flow_run(self, run_id: str) -> str:
        return f"{self.rm}:flow_run:{run_id}"

    def task_run(self, task_run_id: str) -> str:
        return f"{self.rm}:task_run:{task_run_id}"

    def runs_of_flow(self, flow_id: str) -> str:
        return f"{self.rm}:runs_of_flow:{flow_id}"

    @property
    def flow_runs(self) -> str:
        return f"{self.rm}:flow_runs"

    def project(self, project_id: str) -> str:
        return f"{self.rm}:project:{project_id}"

    @property
    def projects(self) -> str:
        return f"{self.rm}:projects"

    @property
    def project_by_name(self) -> str:
        return f"{self.rm}:project_by_name"

    def flow(self, flow_id: str) -> str:
        return f"{self.rm}:flow:{flow_id}"

    @property
    def flows(self) -> str:
        return f"{self.rm}:flows"

    def flows_by_name(self, name: str) -> str:
        return f"{self.rm}:flows_by_name:{name}"

    def flow_group(self, group_id: str) -> str:
        return f"{self.rm}:flow_group:{group_id}"

    @property
    def registry(self) -> str:
        return f"{self.rm}:registry"

    # projector bookkeeping (also part of the read model: dropped together with it)
    def checkpoint(self, partition: int) -> str:
        return f"{self.rm}:checkpoint:{partition}"

    @property
    def read_model_pattern(self) -> str:
        return f"{self.rm}:*"

    @property
    def rebuild_fence(self) -> str:
        return f"{self.prefix}:rebuild_fence"

    @property
    def progress_channel(self) -> str:
        return f"{self.prefix}:projection_progress"

    # idempotency
    def idempotency(self, scoped: str) -> str:
        return f"{self.prefix}:idem:{scoped}"
