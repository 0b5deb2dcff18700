"""The scheduling gate: stands in front of the ingress's command bus and applies what spans runs
(the writer decides one run at a time, partitioned by run id, so it cannot count slots across
runs):

- flow-run label limits: ``Submitted`` and ``Running`` need a free slot on every limited label
  of the run. A ``Submitted`` without one is refused ("State update failed: ..."), so the agent
  skips the run; a ``Running`` without one (an agentless ``--execute`` run) is stored ``Queued``
  and answered with status ``QUEUED``, which the Prefect flow runner retries every 30 s;
- task-run tag limits: ``Running`` without a free slot on every limited tag is stored ``Queued``
  (no start time, so the queue does not redeploy its flow run) and answered ``QUEUED``;
- the 1.4.1 agent's failed deploy (scenario h): see ``_failed_deploy``;
- heartbeats: recorded in Redis (what recovery reads); at most one per run per
  ``scheduling_heartbeat_log_seconds`` still goes to the event log (the read model's
  ``heartbeat`` field), instead of one per run every 30 s.

Limits are the projector's read model of the ``concurrency-limits`` aggregate (set and deleted
through the writer), read once per ``Submitted``/``Running`` together with the limits
partition's ``whole`` marker (one round trip). While the projector replays them after Redis lost
its data (or a rebuild), the marker is missing and the gate answers 503 (``RestoringFromLog``,
retried by clients) instead of granting a slot under a limit that is not back yet.

A slot is granted by an atomic Redis script: holders (derived from run states by the scheduling
service) plus live reservations must be under the limit; the grant adds a reservation that the
scheduling service removes when it applies the run's event (or that expires after
``scheduling_claim_ttl_seconds``; a refused claim releases its own at once).
"""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from datetime import datetime, timedelta, timezone

from runledger.domain.scheduling import FLOW_SLOT_STATES, QUEUED_RETRY_SECONDS, TASK_SLOT_STATES
from runledger.domain.states import State, StateType, is_a
from runledger.messages import commands as c
from runledger.messages.commands import Rejection, Reply
from runledger.services.runtime.stores import RestoringFromLog
from runledger.services.runtime.scheduling_store import Denied, SchedulingStore

S = StateType
current_agent_id: ContextVar[str | None] = ContextVar("current_agent_id", default=None)


def _queued(requested: State, reason: str, start_time: datetime | None) -> State:
    serialized = None
    if requested.serialized:
        serialized = {**requested.serialized, "type": "Queued", "message": reason}
        serialized["start_time"] = start_time.isoformat() if start_time else None
    return State(type=S.QUEUED, message=reason, start_time=start_time, serialized=serialized)


def _reason(denied: Denied) -> str:
    what = "label" if denied.kind == "label" else "tag"
    return f"{what} {denied.name!r} is at its concurrency limit ({denied.used} of {denied.limit} slots in use)"


class SchedulingGate:
    def __init__(self, bus, store: SchedulingStore, read, settings) -> None:
        self.bus, self.store, self.read, self.settings = bus, store, read, settings
        self.claim_ttl_ms = int(settings.scheduling_claim_ttl_seconds * 1000)
        self.heartbeat_log_ms = int(settings.scheduling_heartbeat_log_seconds * 1000)

    def __getattr__(self, name):  # everything else is the bus's (tracker, healthy, ...)
        return getattr(self.bus, name)

    async def send(self, aggregate_id: str, payload, *, command_id: str | None = None, correlation_id: str | None = None) -> Reply:
        kwargs = {"command_id": command_id, "correlation_id": correlation_id}
        match payload:
            case c.RecordFlowRunHeartbeat():
                if not await self.store.heartbeat(aggregate_id, self.heartbeat_log_ms):
                    return Reply(command_id=command_id or uuid.uuid4().hex, ok=True, outcome={"flow_run_id": aggregate_id})
            case c.RecordTaskRunHeartbeat(task_run_id=tr_id):
                await self.store.beat(aggregate_id)  # its flow run is alive
                if not await self.store.heartbeat(f"t:{tr_id}", self.heartbeat_log_ms):
                    return Reply(command_id=command_id or uuid.uuid4().hex, ok=True, outcome={"task_run_id": tr_id})
            case c.SetFlowRunState(state=state) if state.type in (S.SUBMITTED, S.RUNNING):
                return await self._flow_slot(aggregate_id, payload, kwargs)
            case c.SetTaskRunState(state=state) if state.type is S.RUNNING:
                return await self._task_slot(aggregate_id, payload, kwargs)
            case c.SetFlowRunState(state=state, version=version) if is_a(state.type, S.FAILED) and version is not None:
                return await self._failed_deploy(aggregate_id, payload, kwargs)
        return await self.bus.send(aggregate_id, payload, **kwargs)

    async def _limited(self, kind: str, names) -> list[tuple[str, int]]:
        if not names:
            return []
        limits = await self.store.enforced_limits(kind)
        return [(n, limits[n]["limit"]) for n in sorted(set(names)) if n in limits]

    async def _flow_slot(self, run_id: str, payload: c.SetFlowRunState, kwargs) -> Reply:
        limits = await self.store.enforced_limits("label")
        if not limits:  # the common case: one small Redis read, no document read
            return await self.bus.send(run_id, payload, **kwargs)
        run = await self.read.flow_run(run_id)
        if run is None:
            await self._not_restoring(run_id)
        labels = sorted(set((run or {}).get("labels") or []))
        limited = [(n, limits[n]["limit"]) for n in labels if n in limits]
        if not limited:
            return await self.bus.send(run_id, payload, **kwargs)
        denied, expiry = await self.store.grant("label", limited, run_id, self.claim_ttl_ms)
        if denied is not None:
            reason = _reason(denied)
            if payload.state.type is S.SUBMITTED:
                return Reply(
                    command_id=kwargs["command_id"] or uuid.uuid4().hex,
                    ok=False,
                    rejection=Rejection(
                        code="CONFLICT",
                        message=f"State update failed: {reason}",
                        rule="flow_run_concurrency_limit",
                        field="state",
                        details={"label": denied.name, "used": denied.used, "limit": denied.limit},
                    ),
                )
            start = datetime.now(timezone.utc) + timedelta(seconds=QUEUED_RETRY_SECONDS)
            queued = c.SetFlowRunState(state=_queued(payload.state, f"Queued: {reason}", start), version=payload.version)
            reply = await self.bus.send(run_id, queued, **kwargs)
            return self._as_queued(reply)
        reply = await self.bus.send(run_id, payload, **kwargs)
        await self._release_if_refused(reply, "label", [n for n, _ in limited], run_id, expiry, FLOW_SLOT_STATES)
        return reply

    async def _task_slot(self, run_id: str, payload: c.SetTaskRunState, kwargs) -> Reply:
        if not await self.store.has_limits("tag"):
            return await self.bus.send(run_id, payload, **kwargs)
        task_run = await self.read.task_run(payload.task_run_id, run_id)
        if task_run is None:
            await self._not_restoring(run_id)
        limited = await self._limited("tag", (task_run or {}).get("tags"))
        if not limited:
            return await self.bus.send(run_id, payload, **kwargs)
        denied, expiry = await self.store.grant("tag", limited, payload.task_run_id, self.claim_ttl_ms)
        if denied is not None:
            queued = c.SetTaskRunState(
                task_run_id=payload.task_run_id, state=_queued(payload.state, f"Queued: {_reason(denied)}", None), version=payload.version
            )
            return self._as_queued(await self.bus.send(run_id, queued, **kwargs))
        reply = await self.bus.send(run_id, payload, **kwargs)
        await self._release_if_refused(reply, "tag", [n for n, _ in limited], payload.task_run_id, expiry, TASK_SLOT_STATES)
        return reply

    async def _not_restoring(self, run_id: str) -> None:
        """A run (or task run) not in the read model: unknown (the writer will say so), unless its
        partition is being replayed after Redis lost its data -- then its labels or tags are not
        known yet, and letting the command through would skip its limits: 503, retried."""
        if not await self.store.redis.exists(self.store.rm.whole(self.store.rm.partition(run_id))):
            raise RestoringFromLog("the run's read model is being restored from the event log")

    @staticmethod
    def _as_queued(reply: Reply) -> Reply:
        if not reply.ok:
            return reply
        return reply.model_copy(update={"outcome": {**(reply.outcome or {}), "status": "QUEUED"}})

    async def _release_if_refused(self, reply: Reply, kind, names, member, expiry, holding) -> None:
        if reply.ok:
            return
        # A lost race for the same run: the winner's event will take the slot over; otherwise the
        # claim failed and its reservation goes now rather than at its expiry.
        current = (reply.rejection.details or {}).get("current_state")
        if reply.rejection.code == "VERSION_MISMATCH" and current in {s.value for s in holding}:
            return
        await self.store.release(kind, names, member, expiry)

    async def _failed_deploy(self, run_id: str, payload: c.SetFlowRunState, kwargs) -> Reply:
        """Scenario (h): the 1.4.1 agent that cannot deploy a run writes ``Failed`` with the version
        it read before its own ``Submitted``. When the request comes from an agent (it carries
        ``X-PREFECT-AGENT-ID``) and the writer's refusal shows exactly that situation (the run is
        Submitted, one version past the one sent), the write is sent again with the current
        version -- still version-checked, so if the run moved on meanwhile (it started Running,
        another agent took it) the retry is refused too. Everyone else keeps strict locking."""
        reply = await self.bus.send(run_id, payload, **kwargs)
        if reply.ok or current_agent_id.get() is None or reply.rejection.code != "VERSION_MISMATCH":
            return reply
        details = reply.rejection.details or {}
        if details.get("current_state") != S.SUBMITTED.value or details.get("current_version") != payload.version + 1:
            return reply
        retry = c.SetFlowRunState(state=payload.state, version=details["current_version"])
        return await self.bus.send(run_id, retry, correlation_id=kwargs["correlation_id"])
