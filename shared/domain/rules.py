"""Transition policy as small named rules (pure functions over the state rebuilt from events).

Each rule returns ``None`` when the transition is allowed, or the reason it is not. The rule's
name travels with the rejection so a caller can see exactly which policy refused it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from runledger.domain.states import StateType, is_finished, is_running, is_scheduled
from runledger.messages.commands import Rejection

S = StateType


@dataclass(frozen=True)
class Transition:
    subject: Literal["flow run", "task run"]
    current: StateType
    proposed: StateType
    flow_run_state: StateType  # for a flow run, the same as ``current``


Rule = Callable[[Transition], "str | None"]


def finished_runs_restart_only_through_scheduled(t: Transition) -> str | None:
    """Except a Looped task run: Prefect's LOOP signal runs the task again (Looped, then Pending
    and Running) in the same task run."""
    if t.subject == "task run" and t.current is S.LOOPED and t.proposed in (S.PENDING, S.RUNNING):
        return None
    if is_finished(t.current) and not is_finished(t.proposed) and not is_scheduled(t.proposed):
        return (
            f"a finished {t.subject} ({t.current.value}) can only be restarted through a Scheduled "
            f"state, not {t.proposed.value}"
        )
    return None


def cancelled_runs_move_only_by_restart(t: Transition) -> str | None:
    if t.current is S.CANCELLED and not is_scheduled(t.proposed):
        return f"a Cancelled {t.subject} moves only when restarted through a Scheduled state, not to {t.proposed.value}"
    return None


def cancelling_only_from_running(t: Transition) -> str | None:
    if t.proposed is S.CANCELLING and t.current is not S.RUNNING:
        return f"Cancelling is only reachable from Running; the {t.subject} is {t.current.value}"
    return None


def cancelling_ends_in_a_finished_state(t: Transition) -> str | None:
    if t.current is S.CANCELLING and not is_finished(t.proposed):
        return f"a Cancelling {t.subject} can only move to a Finished state, not {t.proposed.value}"
    return None


def task_runs_do_not_run_in_finished_flow_runs(t: Transition) -> str | None:
    if t.subject == "task run" and is_running(t.proposed) and is_finished(t.flow_run_state):
        return f"the task run cannot enter {t.proposed.value} while its flow run is {t.flow_run_state.value}"
    return None


def runs_are_submitted_once(t: Transition) -> str | None:
    # Prefect Server refuses a second Submitted ("this run has already been submitted"): two agents
    # that both saw the run Scheduled must not both deploy it, whatever version they send.
    if t.current is S.SUBMITTED and t.proposed is S.SUBMITTED:
        return f"this {t.subject} has already been submitted"
    return None


FLOW_RUN_RULES: tuple[Rule, ...] = (
    runs_are_submitted_once,
    cancelled_runs_move_only_by_restart,
    finished_runs_restart_only_through_scheduled,
    cancelling_only_from_running,
    cancelling_ends_in_a_finished_state,
)
TASK_RUN_RULES: tuple[Rule, ...] = (task_runs_do_not_run_in_finished_flow_runs, *FLOW_RUN_RULES)


def check_transition(t: Transition) -> Rejection | None:
    rules = FLOW_RUN_RULES if t.subject == "flow run" else TASK_RUN_RULES
    for rule in rules:
        reason = rule(t)
        if reason is not None:
            return Rejection(
                code="TRANSITION_REJECTED",
                message=f"State update failed: {reason} (rule {rule.__name__})",
                rule=rule.__name__,
                field="state",
                details={"current_state": t.current.value, "proposed_state": t.proposed.value},
            )
    return None
