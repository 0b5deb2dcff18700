"""Scheduling commands of the ``runledger`` CLI: ``why RUN_ID`` (why is my run stuck),
``late-runs``, ``agents`` and ``limits``. ``register(app)`` adds them to the main typer app."""

from __future__ import annotations

import json

import typer

API_URL = typer.Option("http://127.0.0.1:4200", envvar="RUNLEDGER_URL", help="RunLedger API base URL.")


def _get(url: str, path: str, **params):
    """The API's answer, or one line on stderr (the message and the field; for no answer at all,
    the URL and how to set it) and exit 1: the same errors as the other commands."""
    from runledger.client import Client, RunLedgerError

    try:
        with Client(url, timeout=30) as client:
            return client.get(path, **params)
    except RunLedgerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)


def why(flow_run_id: str = typer.Argument(..., help="The flow run's id."), url: str = API_URL, as_json: bool = typer.Option(False, "--json")) -> None:
    """Why is this flow run not running yet? (agents, labels, health, concurrency limits, start time)"""
    answer = _get(url, f"/flow_runs/{flow_run_id}/why")
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    late = f", {answer['late_seconds']:.0f} s late" if answer.get("stuck") else ""
    typer.echo(f"Flow run {flow_run_id}: {answer['state']} (labels {answer['labels']}, start {answer['start_time']}{late})")
    for reason in answer["reasons"]:
        typer.echo(f"- {reason['message']}")
        for agent in reason.get("agents", []):
            if reason["code"] == "no_matching_agent":
                typer.echo(f"    agent {agent['name'] or agent['id']} {agent['labels']}: missing {agent['missing_labels']}")
            else:
                typer.echo(f"    agent {agent['name'] or agent['id']} {agent['labels']}: last seen {agent['last_queried'] or 'never'}")


def late_runs(
    threshold: float = typer.Option(None, help="Seconds past the start time (default: the server's setting)."),
    limit: int = typer.Option(20),
    url: str = API_URL,
) -> None:
    """Count and list runs still waiting past their start time."""
    answer = _get(url, "/late_runs", threshold_seconds=threshold, limit=limit)
    typer.echo(f"{answer['count']} late run(s) (more than {answer['threshold_seconds']} s past their start)")
    for run in answer["runs"]:
        typer.echo(f"  {run['id']}  {run['state']}  labels {run['labels']}  due {run.get('state_start_time') or run.get('scheduled_start_time')}")


def agents(url: str = API_URL) -> None:
    """Registered agents with their labels and last contact."""
    for agent in _get(url, "/agents"):
        typer.echo(f"{agent['id']}  {agent['type']}  {agent['name']}  labels {agent['labels']}  last seen {agent['last_queried']}")


def limits(url: str = API_URL) -> None:
    """Concurrency limits (flow runs by label, task runs by tag) and their use."""
    for kind, path in (("label", "/concurrency_limits/flow_runs"), ("tag", "/concurrency_limits/task_runs")):
        for row in _get(url, path):
            typer.echo(f"{kind} {row['name']}: {row['used']} of {row['limit']} in use  (id {row['id']})")


def register(app: typer.Typer) -> None:
    app.command("why")(why)
    app.command("late-runs")(late_runs)
    app.command("agents")(agents)
    app.command("limits")(limits)
