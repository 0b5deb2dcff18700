"""Every Redis key RunLedger uses, named in one place.

``{prefix}:rm:*`` are read models (rebuildable from the log); ``{prefix}:idem:*`` are
idempotency keys (their TTL refreshes are not events; after Redis loses them the projector restores
them from the log, see ``runledger.domain.idempotency``).

Redis Cluster: every read-model key carries the hash tag ``{p<N>}`` of the events partition its
aggregate's events are on (``runledger.partitioning.partition_for`` of the aggregate id, as the
Kafka producer's default partitioner). So everything one projector batch touches — the documents,
their indexes, the partition's checkpoint and its rebuild fence — is in ONE hash slot, and one
Lua script per batch is cluster-safe. A flow run and its task runs are in their run's partition;
projects, flows and flow groups belong to the registry aggregate (key ``"registry"``) and are in
that aggregate's partition. Indexes are per partition (``rl:rm:{p3}:idx:...``); a query over all
runs asks every partition and merges.
"""

from __future__ import annotations

from runledger.domain.agents import AGENTS_AGGREGATE
from runledger.domain.idempotency import KEY_GROUPS, key_group
from runledger.domain.limits import LIMITS_AGGREGATE
from runledger.partitioning import partition_for

from runledger.topics import REGISTRY_AGGREGATE


class Keys:
    def __init__(self, prefix: str, partitions: int) -> None:  # no default: a wrong partition count misplaces every key
        self.prefix = prefix
        self.partitions = partitions
        self.rm = f"{prefix}:rm"
        self._tags = [f"{self.rm}:{{p{p}}}" for p in range(partitions)]
        self.registry_partition = partition_for(REGISTRY_AGGREGATE, partitions)
        self._reg = self._tags[self.registry_partition]
        self.limits_partition = partition_for(LIMITS_AGGREGATE, partitions)
        self.agents_partition = partition_for(AGENTS_AGGREGATE, partitions)

    # -- partitions ---------------------------------------------------------------------------
    def partition(self, aggregate_id: str) -> int:
        return partition_for(aggregate_id, self.partitions)

    def tag(self, partition: int) -> str:
        """``rl:rm:{p3}``: the prefix of every read-model key of partition 3."""
        return self._tags[partition]

    def partition_pattern(self, partition: int) -> str:
        return f"{self._tags[partition]}:*"

    # -- the flow-run aggregate (its partition's slot) ------------------------------------------
    def flow_run(self, run_id: str) -> str:
        return f"{self._tags[self.partition(run_id)]}:flow_run:{run_id}"

    def task_run(self, task_run_id: str, flow_run_id: str) -> str:
        """A task run lives in its flow run's slot (its events are its flow run's)."""
        return self.task_run_in(self.partition(flow_run_id), task_run_id)

    def task_run_in(self, partition: int, task_run_id: str) -> str:
        return f"{self._tags[partition]}:task_run:{task_run_id}"

    def task_run_artifact(self, artifact_id: str, flow_run_id: str) -> str:
        """An artifact lives in its task run's flow run's slot (its events are that run's)."""
        return self.task_run_artifact_in(self.partition(flow_run_id), artifact_id)

    def task_run_artifact_in(self, partition: int, artifact_id: str) -> str:
        return f"{self._tags[partition]}:task_run_artifact:{artifact_id}"

    # -- the registry aggregate (one slot) -----------------------------------------------------
    def project(self, project_id: str) -> str:
        return f"{self._reg}:project:{project_id}"

    @property
    def projects(self) -> str:
        return f"{self._reg}:projects"

    @property
    def project_by_name(self) -> str:
        return f"{self._reg}:project_by_name"

    def flow(self, flow_id: str) -> str:
        return f"{self._reg}:flow:{flow_id}"

    @property
    def flows(self) -> str:
        return f"{self._reg}:flows"

    def flows_by_name(self, name: str) -> str:
        return f"{self._reg}:flows_by_name:{name}"

    def flow_group(self, group_id: str) -> str:
        return f"{self._reg}:flow_group:{group_id}"

    def flow_group_prefix(self) -> str:
        return f"{self._reg}:flow_group:"

    @property
    def registry(self) -> str:
        return f"{self._reg}:registry"

    # -- other one-of-a-kind aggregates (each in its own partition's slot) ----------------------
    def aggregate(self, aggregate_id: str) -> str:
        """How far an aggregate other than a flow run or the registry has been projected."""
        return f"{self._tags[self.partition(aggregate_id)]}:aggregate:{aggregate_id}"

    def limits(self, kind: str) -> str:
        """Hash: label (``kind="label"``) or tag (``"tag"``) -> JSON {id, name, limit, kind, updated_ms}."""
        return f"{self._tags[self.limits_partition]}:limits:{kind}"

    @property
    def limit_ids(self) -> str:
        """Hash: limit id -> ``kind \\x1f name``."""
        return f"{self._tags[self.limits_partition]}:limit_ids"

    @property
    def agents(self) -> str:
        """Hash: agent id -> JSON {id, type, name, labels, ..., created}."""
        return f"{self._tags[self.agents_partition]}:agents"

    @property
    def agent_seen(self) -> str:
        """Hash: agent id -> last contact (ms). Not a read model (liveness, never in the log): outside
        ``rm``, so a rebuild keeps it, but in the agents' slot (one script checks both)."""
        return f"{self.prefix}:{{p{self.agents_partition}}}:agent_seen"

    # -- secondary indexes (per partition; see runledger.readmodel.indexes) ---------------------
    def index(self, partition: int, name: str, value: str | None = None) -> str:
        base = f"{self._tags[partition]}:idx:{name}"
        return base if value is None else f"{base}:{value}"

    # -- projector bookkeeping (part of the read model: dropped together with it) -------------
    def checkpoint(self, partition: int) -> str:
        return f"{self._tags[partition]}:checkpoint"

    def whole(self, partition: int) -> str:
        """Present once the partition's read model holds every event its log had when the read model
        was last found dropped (Redis lost its data, a rebuild): the projector writes it, and it
        goes with the read model. Readers that must not act on a half-replayed model (the gate's
        concurrency limits) check it."""
        return f"{self._tags[partition]}:whole"

    @property
    def read_model_pattern(self) -> str:
        return f"{self.rm}:*"

    def rebuild_fence(self, partition: int) -> str:
        """Outside ``rm`` (a rebuild does not drop it) but in the partition's slot."""
        return f"{self.prefix}:{{p{partition}}}:rebuild_fence"

    @property
    def progress_channel(self) -> str:
        return f"{self.prefix}:projection_progress"

    # idempotency: one key per use, in one of KEY_GROUPS slots, each slot with the sentinel that
    # says its keys are whole (present, or restored from the log after Redis lost them)
    def idempotency(self, scoped: str) -> str:
        return f"{self.prefix}:idem:{{i{key_group(scoped)}}}:{scoped}"

    def idempotency_sentinel(self, group: int) -> str:
        return f"{self.prefix}:idem:{{i{group}}}:restored"

    @property
    def idempotency_sentinels(self) -> list[str]:
        return [self.idempotency_sentinel(g) for g in range(KEY_GROUPS)]
