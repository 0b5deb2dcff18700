"""Layers point one way: pure domain and contracts <- service runtime <- services.

Read from the source (AST), so a new import that breaks the rule fails here, wherever it is.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"runledger": ROOT / "shared", "runledger.services": ROOT / "services"}

# The pure layer: no I/O clients, no web frameworks, nothing from the services.
PURE = ("runledger.domain", "runledger.messages", "runledger.readmodel", "runledger.prefect", "runledger.topics", "runledger.settings", "runledger.api_models")
IO_LIBRARIES = ("aiokafka", "redis", "fastapi", "starlette", "uvicorn", "httpx", "aiohttp", "ariadne", "structlog", "faust", "runledger.client")
SERVICES = ("ingress", "transitions", "projector", "scheduling", "logs")


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            if package == "runledger" and name.startswith("runledger.services"):
                continue
            found[name] = path
    return found


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


MODULES = modules()


def test_the_layout_is_found():
    assert "runledger.domain.ledger" in MODULES
    assert "runledger.services.runtime.consumer" in MODULES
    assert "runledger.services.ingress.app" in MODULES


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not _under(n, "runledger.services")))
def test_the_shared_package_never_imports_the_services(name):
    offending = sorted(i for i in imports_of(MODULES[name]) if _under(i, "runledger.services"))
    assert not offending, f"{name} imports {offending}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if any(_under(n, p) for p in PURE)))
def test_domain_and_contracts_do_no_io(name):
    offending = sorted(i for i in imports_of(MODULES[name]) if any(_under(i, lib) for lib in IO_LIBRARIES))
    assert not offending, f"{name} (pure layer) imports {offending}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _under(n, "runledger.services.runtime")))
def test_the_runtime_imports_no_service(name):
    offending = sorted(
        i for i in imports_of(MODULES[name]) for s in SERVICES if _under(i, f"runledger.services.{s}")
    )
    assert not offending, f"{name} (runtime) imports {offending}"


@pytest.mark.parametrize("service", SERVICES)
def test_services_do_not_import_each_other(service):
    for name, path in MODULES.items():
        if not _under(name, f"runledger.services.{service}"):
            continue
        others = [s for s in SERVICES if s != service]
        offending = sorted(i for i in imports_of(path) for s in others if _under(i, f"runledger.services.{s}"))
        assert not offending, f"{name} imports another service: {offending}"


def test_kafka_clients_are_made_only_by_the_runtime():
    """Services may name aiokafka types (TopicPartition) but build clients through the runtime."""
    for name, path in MODULES.items():
        if _under(name, "runledger.services.runtime"):
            continue
        text = path.read_text()
        assert "AIOKafkaConsumer(" not in text and "AIOKafkaProducer(" not in text, name


def test_every_package_folder_is_installed():
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {n for n, p in MODULES.items() if p.name == "__init__.py"}
    assert packages == declared, f"pyproject.toml packages differ: missing {packages - declared}, extra {declared - packages}"
