"""Shared fixtures. Integration tests start their own Tansu broker and redis-server on free
ports and the real service processes; nothing of Kafka or Redis is mocked."""

from __future__ import annotations

import uuid

import httpx
import pytest
import redis as redis_sync

from runledger.services.devstack import Stack


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
