"""Fixtures for the journeys of the real Prefect 1.4.1 client against a RunLedger stack.

``prefect_env`` installs ``.venv-prefect`` once (see ``env.py``); ``prefect`` gives a
``PrefectClient`` pointed at the session's stack with a private home directory; ``flow_file``
writes a small flow script (``Local`` storage stored as a script, results in the tmp dir) whose
flow has a unique name, so journeys never see each other's flows.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.prefect.env import PrefectClient, ensure_venv

FLOW_SCRIPT = '''\
import prefect
from prefect import Flow, Parameter, task
from prefect.engine.results import LocalResult
from prefect.storage import Local


@task
def say_hello(who):
    prefect.context.get("logger").info("hello %s", who)
    return f"hello {{who}}"


@task
def shout(text):
    return text.upper()

with Flow(
    "{name}",
    storage=Local(path=__file__, stored_as_script=True),
    result=LocalResult(dir="{results}"),
) as flow:
    who = Parameter("who", default="world")
    shout(say_hello(who))
{extra}'''


@pytest.fixture(scope="session")
def prefect_env():
    return ensure_venv()


@pytest.fixture
def prefect(prefect_env, stack, tmp_path) -> PrefectClient:
    return PrefectClient(stack.api_url, tmp_path / "home")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def write_flow(directory: Path, name: str, extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "flow.py"
    path.write_text(FLOW_SCRIPT.format(name=name, results=directory / "results", extra=extra))
    return path


@pytest.fixture
def flow_file(tmp_path) -> Path:
    return write_flow(tmp_path / "flows", unique("hello-world"))
