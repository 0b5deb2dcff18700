"""Scheduling, pure: the label rule, agent identity, what a run's state means for the queue and
for concurrency slots, the facts the scheduling service keeps per run (rebuilt from events), and
the recovery decisions (Prefect Server's Lazarus and zombie killer).

Nothing here does I/O: ``runledger.services.scheduling`` feeds it events and the clock, and
sends the commands it decides to the single writer with the version it decided them on.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable

from runledger.domain.states import State, StateType, is_finished
from runledger.messages import commands as c
from runledger.messages import events as e

S = StateType

# Prefect 1.x's SCHEDULED_STATES: the states the queue offers runs (and task runs) from.
SCHEDULED_STATES = frozenset({S.SCHEDULED, S.PAUSED, S.QUEUED, S.RESUME, S.RETRYING})
# What holds a concurrency slot (Prefect Cloud: Submitted + Running flow runs; Running task runs).
FLOW_SLOT_STATES = frozenset({S.SUBMITTED, S.RUNNING, S.CANCELLING})
TASK_SLOT_STATES = frozenset({S.RUNNING, S.CANCELLING})
LAZARUS_STATES = frozenset({S.SUBMITTED, S.RUNNING, S.QUEUED})
QUEUE_PAGE = 25  # Prefect Server returns at most 25 runs per get_runs_in_queue
QUEUED_RETRY_SECONDS = 30  # what the Prefect client waits before asking for Running again
LAZARUS_MESSAGE = "Rescheduled by a Lazarus process."
AGENT_NAMESPACE = uuid.UUID("5b1f6a3e-3c0e-4a53-9d36-7c1f0b6d8a11")
SCHEDULE_NAMESPACE = uuid.UUID("0c9d4f1e-8a64-4b8e-b3f4-2f4f5ad3e0c7")


# -- labels and agents --------------------------------------------------------------------------
def labels_match(run_labels: Iterable[str], agent_labels: Iterable[str]) -> bool:
    """Prefect's rule: the run's labels are a subset of the agent's, and an unlabeled run goes
    only to an unlabeled agent."""
    run, agent = set(run_labels), set(agent_labels)
    if not run:
        return not agent
    return run <= agent


def missing_labels(run_labels: Iterable[str], agent_labels: Iterable[str]) -> list[str]:
    return sorted(set(run_labels) - set(agent_labels))


def agent_id_for(agent_type: str, name: str | None, labels: Iterable[str], tenant_id: str | None = None) -> str:
    """The same type, name, sorted labels (and tenant) give the same agent id, as Prefect reuses
    an agent row when they are all equal."""
    key = "\x1f".join([tenant_id or "", agent_type or "", name or "", *sorted(set(labels))])
    return str(uuid.uuid5(AGENT_NAMESPACE, key))


def labelset_id(labels: Iterable[str]) -> str:
    """A short stable id for a set of labels (the queue keeps one due list per label set)."""
    joined = "\x1f".join(sorted(set(labels)))
    return hashlib.sha1(joined.encode()).hexdigest()[:16]


def scheduled_run_id(flow_id: str, start: datetime, clock_index: int = 0, epoch: int = 0) -> str:
    """The run a schedule makes for one start time: the same flow, clock and instant always give
    the same run id, so creating it again (a restart, a redelivery, a second scheduler) is a
    no-op in the writer; the key never expires because it is the run's identity. ``epoch``
    counts the schedule's re-activations (from the log), so runs removed by
    ``set_schedule_inactive`` are made afresh when it is switched on again."""
    return str(uuid.uuid5(SCHEDULE_NAMESPACE, f"{flow_id}|{clock_index}|{start.timestamp():.6f}|{epoch}"))


def scheduled_idempotency_key(flow_id: str, start: datetime, clock_index: int = 0) -> str:
    return f"auto-scheduled:{clock_index}:{start.isoformat()}"


def _clock_of(idempotency_key: str) -> int | None:
    try:
        return int(idempotency_key.split(":")[1])
    except (IndexError, ValueError):
        return None


def made_for_epoch(run: "RunFacts", epoch: int) -> bool:
    """Whether ``run`` is the run its schedule makes for its start time in activation ``epoch``."""
    return (run.auto_scheduled and run.schedule_clock is not None and run.scheduled_start_time is not None
            and run.id == scheduled_run_id(run.flow_id, run.scheduled_start_time, run.schedule_clock, epoch))


# -- what the scheduling service knows per run ---------------------------------------------------
@dataclass
class TaskFacts:
    id: str
    task_id: str
    tags: tuple[str, ...]
    state: StateType = S.PENDING
    version: int = 0
    start_time: datetime | None = None
    retries: int = 0  # Retrying states seen

    @property
    def due_at(self) -> datetime | None:
        return self.start_time if self.state in SCHEDULED_STATES else None


@dataclass
class RunFacts:
    id: str
    flow_id: str = ""
    flow_group_id: str = ""
    labels: tuple[str, ...] = ()
    scheduled_start_time: datetime | None = None
    state: StateType = S.PENDING
    version: int = 0
    state_start_time: datetime | None = None
    state_message: str | None = None
    state_since: datetime | None = None
    last_event: datetime | None = None
    lazarus_attempts: int = 0
    auto_scheduled: bool = False
    schedule_clock: int | None = None  # an auto-scheduled run's clock (from its idempotency key)
    task_runs: dict[str, TaskFacts] = field(default_factory=dict)

    def apply(self, payload: Any, time: datetime) -> None:
        self.last_event = time
        match payload:
            case e.FlowRunCreated(spec=spec):
                self.flow_id, self.flow_group_id = spec.flow_id, spec.version_group_id
                self.labels = tuple(sorted(set(spec.labels)))
                self.scheduled_start_time = spec.scheduled_start_time
                self.auto_scheduled = bool(spec.idempotency_key and spec.idempotency_key.startswith("auto-scheduled:"))
                self.schedule_clock = _clock_of(spec.idempotency_key) if self.auto_scheduled else None
            case e.TaskRunCreated():
                self.task_runs[payload.task_run_id] = TaskFacts(payload.task_run_id, payload.task_id, tuple(payload.tags))
            case e.FlowRunStateSet(state=state, version=version):
                self.state, self.version = state.type, version
                self.state_start_time, self.state_message, self.state_since = state.start_time, state.message, time
                if state.type is S.SCHEDULED and (state.message or "").startswith(LAZARUS_MESSAGE):
                    self.lazarus_attempts += 1
            case e.TaskRunStateSet(task_run_id=tr_id, state=state, version=version):
                task = self.task_runs.get(tr_id)
                if task is not None:
                    task.state, task.version, task.start_time = state.type, version, state.start_time
                    if state.type is S.RETRYING:
                        task.retries += 1
            case _:
                pass

    @property
    def due_at(self) -> datetime | None:
        """When the queue offers this run: a run in a SCHEDULED_STATES state at its state's start
        time (else its scheduled start time); a Running run at its earliest due task run."""
        if self.state in SCHEDULED_STATES:
            return self.state_start_time or self.scheduled_start_time
        if self.state is S.RUNNING:
            times = [t.due_at for t in self.task_runs.values() if t.due_at is not None]
            return min(times) if times else None
        return None

    @property
    def holds_slot(self) -> bool:
        return self.state in FLOW_SLOT_STATES

    def task_slots(self) -> dict[str, tuple[str, ...]]:
        """Task runs holding a slot, with their tags. None once the flow run has finished: a task
        run left Running by a flow run that ended (an operator marked it Failed after its agent
        died) runs no more, and would hold its tag's slot for ever."""
        if is_finished(self.state):
            return {}
        return {t.id: t.tags for t in self.task_runs.values() if t.state in TASK_SLOT_STATES and t.tags}

    def last_activity(self, heartbeat: datetime | None) -> datetime | None:
        times = [t for t in (heartbeat, self.last_event) if t is not None]
        return max(times) if times else None


# -- recovery (Lazarus, zombie killer) -------------------------------------------------------------
@dataclass(frozen=True)
class RecoveryPolicy:
    lazarus_after: timedelta = timedelta(minutes=10)
    zombie_after: timedelta = timedelta(minutes=10)
    cancelling_after: timedelta = timedelta(minutes=10)
    max_lazarus_attempts: int = 3


@dataclass(frozen=True)
class GroupSettings:
    lazarus_enabled: bool = True
    heartbeat_enabled: bool = True


@dataclass(frozen=True)
class Recovery:
    """A command decided on what the service saw; the version makes the writer refuse it if the
    run moved on since (a run that did make progress is never reaped by a stale decision)."""

    kind: str  # "lazarus" | "lazarus_failed" | "zombie_retry" | "zombie_failed" | "cancelling"
    run_id: str
    command: Any


def recovery_for(
    run: RunFacts,
    heartbeat: datetime | None,
    now: datetime,
    policy: RecoveryPolicy,
    settings: GroupSettings,
    max_retries: dict[str, int] | None = None,
    retry_delay: dict[str, float | None] | None = None,
) -> list[Recovery]:
    activity = run.last_activity(heartbeat)
    if activity is None:
        return []
    idle = now - activity
    out: list[Recovery] = []
    if run.state is S.CANCELLING and idle >= policy.cancelling_after:
        state = State(type=S.CANCELLED, message="Cancelled: the run stopped reporting while Cancelling.")
        return [Recovery("cancelling", run.id, c.SetFlowRunState(state=state, version=run.version))]
    if run.state is S.RUNNING and settings.heartbeat_enabled and idle >= policy.zombie_after:
        for task in run.task_runs.values():
            if task.state is not S.RUNNING:
                continue
            allowed = (max_retries or {}).get(task.task_id, 0)
            if task.retries < allowed:
                delay = (retry_delay or {}).get(task.task_id) or 0
                state = State(
                    type=S.RETRYING,
                    message="No heartbeat detected from the remote task; retrying the run.",
                    start_time=now + timedelta(seconds=delay),
                )
                kind = "zombie_retry"
            else:
                state = State(type=S.FAILED, message="No heartbeat detected from the remote task; marking the run as failed.")
                kind = "zombie_failed"
            out.append(Recovery(kind, run.id, c.SetTaskRunState(task_run_id=task.id, state=state, version=task.version)))
        if out:
            return out  # the task runs first; Lazarus looks at the flow run on a later pass
    if run.state in LAZARUS_STATES and settings.lazarus_enabled and idle >= policy.lazarus_after:
        if any(t.state is S.RUNNING or t.due_at is not None for t in run.task_runs.values()):
            return []  # a task run will be retried through the queue, or the zombie killer acts first
        if run.lazarus_attempts >= policy.max_lazarus_attempts:
            state = State(
                type=S.FAILED,
                message=f"A Lazarus process attempted to reschedule this run {run.lazarus_attempts} times without success. Marking as failed.",
            )
            return [Recovery("lazarus_failed", run.id, c.SetFlowRunState(state=state, version=run.version))]
        attempt = run.lazarus_attempts + 1
        state = State(type=S.SCHEDULED, message=f"{LAZARUS_MESSAGE} This is attempt {attempt}.", start_time=now)
        return [Recovery("lazarus", run.id, c.SetFlowRunState(state=state, version=run.version))]
    return out


def is_over(state: StateType) -> bool:
    return is_finished(state)


# -- why is my run stuck ---------------------------------------------------------------------------
def _parse(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def explain(
    run: dict[str, Any],
    agents: list[dict[str, Any]],
    label_limits: dict[str, int],
    label_usage: dict[str, int],
    now: datetime,
    healthy_within: timedelta,
) -> dict[str, Any]:
    """Which of Prefect's "why is my flow run stuck" answers hold for ``run`` (a read-model
    document: ``state`` {type, start_time}, ``labels``, ``scheduled_start_time``). ``agents``
    carry ``labels`` and ``last_queried`` (a datetime or None)."""
    state = run.get("state") or {}
    state_type = state.get("type") if isinstance(state, dict) else state
    labels = sorted(run.get("labels") or [])
    start = _parse((state.get("start_time") if isinstance(state, dict) else None) or run.get("scheduled_start_time"))
    out: dict[str, Any] = {"flow_run_id": run.get("id"), "state": state_type, "labels": labels, "start_time": start.isoformat() if start else None}
    reasons: list[dict[str, Any]] = []
    if state_type not in {s.value for s in SCHEDULED_STATES}:
        reasons.append({"code": "not_waiting", "message": f"the run is {state_type}, not waiting for an agent"})
        return {**out, "stuck": False, "reasons": reasons, "summary": reasons[0]["message"]}
    if start is not None and start > now:
        reasons.append({"code": "not_due", "message": f"not due yet: it starts at {start.isoformat()}", "due_in_seconds": round((start - now).total_seconds(), 3)})
    matching = [a for a in agents if labels_match(labels, a.get("labels") or [])]
    if not matching:
        closest = sorted(agents, key=lambda a: len(missing_labels(labels, a.get("labels") or [])))
        reasons.append({
            "code": "no_matching_agent",
            "message": (
                f"no registered agent has labels {labels}" if labels else "no registered agent is unlabeled (an unlabeled run goes only to an unlabeled agent)"
            ),
            "required_labels": labels,
            "agents": [
                {"id": a["id"], "name": a.get("name"), "labels": a.get("labels") or [], "missing_labels": missing_labels(labels, a.get("labels") or []),
                 "extra_labels": sorted(set(a.get("labels") or []) - set(labels)) if not labels else []}
                for a in closest[:10]
            ],
        })
    else:
        def seen(a):
            return a.get("last_queried")
        healthy = [a for a in matching if seen(a) is not None and now - seen(a) <= healthy_within]
        if not healthy:
            reasons.append({
                "code": "no_healthy_agent",
                "message": f"{len(matching)} agent(s) match, but none was seen in the last {int(healthy_within.total_seconds())} s",
                "agents": [
                    {"id": a["id"], "name": a.get("name"), "labels": a.get("labels") or [],
                     "last_queried": seen(a).isoformat() if seen(a) else None,
                     "seconds_ago": round((now - seen(a)).total_seconds(), 1) if seen(a) else None}
                    for a in matching
                ],
            })
    for label in labels:
        if label in label_limits and label_usage.get(label, 0) >= label_limits[label]:
            reasons.append({
                "code": "concurrency_limit",
                "message": f"waiting on the concurrency limit of label {label!r}: {label_usage.get(label, 0)} of {label_limits[label]} in use",
                "label": label, "used": label_usage.get(label, 0), "limit": label_limits[label],
            })
    late = start is not None and start <= now
    if not reasons:
        reasons.append({"code": "waiting_for_poll", "message": "a healthy matching agent should take it at its next poll"})
    return {**out, "stuck": late, "late_seconds": round((now - start).total_seconds(), 3) if late else 0.0,
            "reasons": reasons, "summary": "; ".join(r["message"] for r in reasons)}
