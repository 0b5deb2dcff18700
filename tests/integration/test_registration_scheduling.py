"""``Client.register()`` of a scheduled flow with the scheduling service running: the flow is
registered with its schedule switched off (the client's ``set_schedule_active: false``), so no run
is made before its tasks are in; the ``set_schedule_active`` the client sends last switches it on,
and every scheduled run has a task run for every task."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.integration.test_registration_graphql import SCHEDULE_ON, client_register
from tests.integration.test_scheduling import eventually, scheduling_stack, u

MINUTELY = {
    "type": "Schedule", "__version__": "1.4.1", "filters": [], "or_filters": [], "not_filters": [], "adjustments": [],
    "clocks": [{"type": "IntervalClock", "__version__": "1.4.1", "interval": 60_000_000,
                "start_date": {"dt": "2026-01-01T00:00:00", "tz": "UTC"}, "end_date": None, "parameter_defaults": {}, "labels": None}],
}


@pytest.fixture(scope="module")
def sstack():
    with scheduling_stack() as s:
        yield s


@pytest.fixture(scope="module")
def gql(sstack):
    with httpx.Client(base_url=sstack.api_url, timeout=60) as http:
        def run(query, variables=None, expect_errors=False):
            body = http.post("/graphql", json={"query": query, "variables": variables}).json()
            assert bool(body.get("errors")) == expect_errors, body
            return body

        yield run


def runs_of(gql, flow_id):
    query = '{ flow_run(where: {flow_id: {_eq: "%s"}}) { id task_runs { task { slug } } } }' % flow_id
    return gql(query)["data"]["flow_run"]


def test_no_run_before_the_tasks_are_in_and_every_run_has_them_after(gql):
    project = gql('mutation { create_project(input: {name: "%s"}) { id } }' % u("proj"))["data"]["create_project"]["id"]
    flow_id = client_register(gql, project, u("minutely"), schedule=MINUTELY, set_schedule_active=False)
    time.sleep(1.5)  # several scheduler ticks (0.2 s)
    assert runs_of(gql, flow_id) == []
    gql(SCHEDULE_ON, {"input": {"flow_id": flow_id}})
    runs = eventually(lambda: (rs := runs_of(gql, flow_id)) and len(rs) >= 10 and rs, timeout=30)
    for run in runs:
        assert sorted(t["task"]["slug"] for t in run["task_runs"]) == ["say_hello-1", "shout-1", "who"]
