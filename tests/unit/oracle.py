"""An independent restatement of the Prefect 1.x state hierarchy and of RunLedger's transition
policy, with literal sets rather than ``runledger.domain`` helpers: the reference the tests check
the production rules and aggregates against."""

from __future__ import annotations

# prefect.engine.state, Prefect 1.x: class name -> base class name (None: derives from State).
PREFECT_1_BASES = {
    "Pending": None, "Scheduled": "Pending", "Paused": "Scheduled", "Resume": "Scheduled", "Retrying": "Scheduled",
    "Submitted": None, "Queued": "Submitted", "ClientFailed": None, "Running": None, "Cancelling": "Running",
    "Finished": None, "Looped": "Finished", "Success": "Finished", "Cached": "Success", "Mapped": "Success",
    "Skipped": "Success", "Failed": "Finished", "TimedOut": "Failed", "TriggerFailed": "Failed",
    "ValidationFailed": "Failed", "Cancelled": "Finished",
}  # fmt: skip
FINISHED = {"Finished", "Looped", "Success", "Cached", "Mapped", "Skipped", "Failed", "TimedOut", "TriggerFailed",
            "ValidationFailed", "Cancelled"}  # fmt: skip
SCHEDULED = {"Scheduled", "Paused", "Resume", "Retrying"}
RUNNING = {"Running", "Cancelling"}


def violated(subject: str, current: str, proposed: str, flow_state: str) -> set[str]:
    out = set()
    if subject == "task run" and proposed in RUNNING and flow_state in FINISHED:
        out.add("task_runs_do_not_run_in_finished_flow_runs")
    if current == "Submitted" and proposed == "Submitted":
        out.add("runs_are_submitted_once")
    if current == "Cancelled" and proposed not in SCHEDULED:
        out.add("cancelled_runs_move_only_by_restart")
    looping = subject == "task run" and current == "Looped" and proposed in ("Pending", "Running")  # Prefect's LOOP signal
    if current in FINISHED and proposed not in FINISHED | SCHEDULED and not looping:
        out.add("finished_runs_restart_only_through_scheduled")
    if proposed == "Cancelling" and current != "Running":
        out.add("cancelling_only_from_running")
    if current == "Cancelling" and proposed not in FINISHED:
        out.add("cancelling_ends_in_a_finished_state")
    return out
