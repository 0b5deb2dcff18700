"""Shared fixtures. Integration tests start their own Tansu broker and redis-server on free
ports and the real service processes; nothing of Kafka or Redis is mocked."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import httpx
import pytest
import redis as redis_sync

from runledger.services.devstack import Stack
from tests.prefect.env import ensure_venv as ensure_prefect_venv


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """pytest-xdist tracks tests by node id: of several with one id, it would run only the first."""
    repeated = sorted(nodeid for nodeid, n in Counter(item.nodeid for item in items).items() if n > 1)
    if repeated:
        raise pytest.UsageError(f"tests share a node id (pytest-xdist would run only one of each): {repeated[:5]}")


def pytest_collection_finish(session):
    """Start installing the Prefect client's virtualenv while the first tests run, when any test
    needs it: a cold install takes about half a minute, most of it waiting on pip. The
    ``prefect_env`` fixture calls ``ensure_venv`` again, which waits for this one (a file lock)
    and, should it have failed, installs again and raises the real error."""
    if not session.config.option.collectonly and any(item.nodeid.startswith("tests/prefect/") for item in session.items):
        threading.Thread(target=_install_quietly, name="prefect-venv", daemon=True).start()


def _install_quietly() -> None:
    try:
        ensure_prefect_venv()
    except Exception:  # reported by the fixture's own call
        pass


@pytest.fixture(scope="session")
def stack():
    with Stack(own_redis=True, partitions=4) as s:
        yield s


@pytest.fixture(scope="session")
def api(stack):
    with httpx.Client(base_url=stack.api_url + "/api/v1", timeout=60) as client:
        yield client


@pytest.fixture
async def aapi(stack):
    async with httpx.AsyncClient(
        base_url=stack.api_url + "/api/v1", timeout=60, limits=httpx.Limits(max_connections=200)
    ) as client:
        yield client


@pytest.fixture(scope="session")
def redis_client(stack):
    client = redis_sync.Redis.from_url(stack.redis_url)
    yield client
    client.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def project(api):
    r = api.post("/projects", json={"name": unique("proj")})
    assert r.status_code == 201, r.text
    return r.json()


def register(api, project, **overrides):
    body = {"name": unique("flow"), "project_id": project["id"], **overrides}
    r = api.post("/flows", json=body)
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture
def flow(api, project):
    return register(
        api,
        project,
        parameters=[{"name": "x", "default": 1}, {"name": "who", "required": True}],
        labels=["docker"],
        tasks=[{"id": "t1", "slug": "extract-1", "name": "extract", "tags": ["db"]}, {"id": "t2", "slug": "load-1", "name": "load"}],
        edges=[{"upstream_task_id": "t1", "downstream_task_id": "t2"}],
    )
