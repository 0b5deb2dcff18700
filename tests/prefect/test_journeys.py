"""The unmodified Prefect 1.4.1 client and CLI against RunLedger, as a new user would follow the
seeds: ``PREFECT__BACKEND=server`` and ``PREFECT__SERVER__ENDPOINT`` pointed at the ingress.

Each journey runs real ``prefect`` processes (``tests/prefect/env.py``), each bounded by a time
limit. Here runs are executed with ``prefect execute flow-run`` (what an agent starts); the
journeys with ``prefect agent local start``, ``prefect run --watch`` / ``--execute``, logs,
retries, mapping and cancellation are in ``test_agent_journeys.py``.
"""

from __future__ import annotations

import json
import re

import pytest

from runledger.domain.registry import DEFAULT_TENANT
from tests.prefect.conftest import unique, write_flow

CLOUD_RUNNERS = {
    "PREFECT__ENGINE__FLOW_RUNNER__DEFAULT_CLASS": "prefect.engine.cloud.CloudFlowRunner",
    "PREFECT__ENGINE__TASK_RUNNER__DEFAULT_CLASS": "prefect.engine.cloud.CloudTaskRunner",
}


def last_json(result) -> object:
    """A snippet prints its answer as JSON on its last line of stdout."""
    result.check()
    return json.loads(result.stdout.strip().splitlines()[-1])


def register(prefect, flow_file, project: str) -> str:
    """``prefect create project`` + ``prefect register``; the new flow's id."""
    prefect.cli("create", "project", project).check()
    out = prefect.cli("register", "-p", str(flow_file), "--project", project).check().output
    assert "1 registered" in out, out
    return re.search(r"ID: ([0-9a-f-]{36})", out).group(1)


def execute_a_run(prefect, flow_id: str) -> str:
    """``Client.create_flow_run`` (who = marvin), then what an agent's subprocess does, ``prefect
    execute flow-run``, which must end in Success; the run's id."""
    run_id = last_json(
        prefect.python(f'import json, prefect; print(json.dumps(prefect.Client().create_flow_run(flow_id="{flow_id}", parameters={{"who": "marvin"}})))')
    )
    out = prefect.cli("execute", "flow-run", env={**CLOUD_RUNNERS, "PREFECT__CONTEXT__FLOW_RUN_ID": run_id}).check().output
    assert "Flow run SUCCESS: all reference tasks succeeded" in out, out
    return run_id


# -- tenants and projects ------------------------------------------------------------------------
def test_create_tenant_and_the_default_tenant(prefect):
    for _ in range(2):  # the Server set-up step, repeatable
        out = prefect.cli("server", "create-tenant", "--name", "default", "--slug", "default").check().output
        assert f"Tenant created with ID: {DEFAULT_TENANT['id']}" in out
    other = prefect.cli("server", "create-tenant", "--name", "acme")
    assert other.returncode != 0 and "serves a single tenant" in other.output and "'acme'" in other.output

    tenants = last_json(
        prefect.python(
            """
            import json, prefect
            c = prefect.Client()
            by_slug = c.graphql('query($slug: String) { tenant(where: {slug: {_eq: $slug}}) { id } }', variables={"slug": "default"})
            print(json.dumps({
                "tenant_id": c.tenant_id,
                "slug": c.get_default_tenant_slug(),
                "available": c.get_available_tenants(),
                "by_slug": by_slug.data.tenant,
                "url": c.get_cloud_url("flow-run", "abc"),
            }))
            """
        )
    )
    assert tenants["tenant_id"] == DEFAULT_TENANT["id"] and tenants["slug"] == "default"
    assert tenants["available"] == [DEFAULT_TENANT]
    assert tenants["by_slug"] == [{"id": DEFAULT_TENANT["id"]}]
    assert tenants["url"].endswith("/default/flow-run/abc")


def test_create_project_twice_prints_created_both_times(prefect):
    project = unique("demo")
    for _ in range(2):  # the second is a "Uniqueness violation." the client resolves by name
        out = prefect.cli("create", "project", project).check().output
        assert f"{project} created" in out, out


# -- registration ------------------------------------------------------------------------------
def test_register_twice_skips_and_a_change_makes_a_new_version(prefect, flow_file):
    project = unique("demo")
    first_id = register(prefect, flow_file, project)
    again = prefect.cli("register", "-p", str(flow_file), "--project", project).check().output
    assert "Skipped (metadata unchanged)" in again and "0 registered, 1 skipped" in again, again

    changed = write_flow(flow_file.parent, flow_name(prefect, first_id), extra="\n\n@task\ndef tidy_up():\n    pass\n\n\nflow.add_task(tidy_up)\n")
    out = prefect.cli("register", "-p", str(changed), "--project", project).check().output
    assert "1 registered" in out and "Version: 2" in out, out
    second_id = re.search(r"ID: ([0-9a-f-]{36})", out).group(1)

    views = last_json(
        prefect.python(
            f"""
            import json
            from prefect.backend import FlowView
            old, new = FlowView.from_flow_id("{first_id}"), FlowView.from_flow_id("{second_id}")
            latest = FlowView.from_flow_name(new.name, project_name="{project}")
            print(json.dumps({{
                "old": [old.archived, old.flow_group_labels, old.settings, type(old.storage).__name__, old.core_version],
                "new": [new.archived, new.project_name, sorted(t.slug for t in new.flow.tasks)],
                "latest": latest.flow_id,
                "parameters": [p.name for p in new.flow.parameters()],
            }}))
            """
        )
    )
    assert views["old"] == [True, None, {"heartbeat_enabled": True, "lazarus_enabled": True, "version_locking_enabled": False}, "Local", "1.4.1"]
    assert views["new"] == [False, project, ["say_hello-1", "shout-1", "tidy_up-1", "who"]]
    assert views["latest"] == second_id and views["parameters"] == ["who"]


def flow_name(prefect, flow_id: str) -> str:
    return last_json(prefect.python(f'import json; from prefect.backend import FlowView; print(json.dumps(FlowView.from_flow_id("{flow_id}").name))'))


# -- flow runs ---------------------------------------------------------------------------------
def test_idempotent_create_flow_run_and_flow_run_view(prefect, flow_file):
    flow_id = register(prefect, flow_file, unique("demo"))
    seen = last_json(
        prefect.python(
            f"""
            import json
            from prefect import Client
            from prefect.backend import FlowRunView
            c = Client()
            a = c.create_flow_run(flow_id="{flow_id}", idempotency_key="K", parameters={{"who": "marvin"}})
            b = c.create_flow_run(flow_id="{flow_id}", idempotency_key="K", parameters={{"who": "marvin"}})
            other = c.create_flow_run(flow_id="{flow_id}", idempotency_key="K2")
            view = FlowRunView.from_flow_run_id(a)
            info = c.get_flow_run_info(a)
            print(json.dumps({{
                "ids": [a, b, other],
                "state": type(view.state).__name__,
                "states": [type(s).__name__ for s in view.states],
                "parameters": view.parameters,
                "labels": view.labels,
                "flow": [view.get_flow_metadata().flow_id, view.get_flow_metadata().name],
                "version": info.version,
                "task_runs": sorted((t.task_slug, type(t.state).__name__, t.version) for t in info.task_runs),
            }}))
            """
        )
    )
    a, b, other = seen["ids"]
    assert a == b and other != a
    assert seen["state"] == "Scheduled" and seen["states"] == ["Scheduled"] and seen["version"] == 1
    assert seen["parameters"] == {"who": "marvin"}
    assert seen["labels"] and all(isinstance(label, str) for label in seen["labels"])  # Local storage adds the host
    assert seen["flow"][0] == flow_id
    assert seen["task_runs"] == [["say_hello-1", "Pending", 0], ["shout-1", "Pending", 0], ["who", "Pending", 0]]


def test_a_stale_version_raises_version_lock_mismatch(prefect, flow_file):
    flow_id = register(prefect, flow_file, unique("demo"))
    seen = last_json(
        prefect.python(
            f"""
            import json
            from prefect import Client
            from prefect.engine.state import Running, Success
            from prefect.exceptions import VersionLockMismatchSignal
            c = Client()
            run = c.create_flow_run(flow_id="{flow_id}")
            old = c.get_flow_run_info(run).version
            c.set_flow_run_state(run, Running(), version=old)
            try:
                c.set_flow_run_state(run, Running(), version=old)
                stale = "accepted"
            except VersionLockMismatchSignal as exc:
                stale = "VersionLockMismatchSignal"
            c.set_flow_run_state(run, Success(), version=None)  # no version: no check
            print(json.dumps([old, stale, type(c.get_flow_run_state(run)).__name__, c.get_flow_run_info(run).version]))
            """
        )
    )
    assert seen == [1, "VersionLockMismatchSignal", "Success", 3]


@pytest.mark.slow
def test_a_flow_run_executed_by_the_cloud_flow_runner(prefect, flow_file):
    """What an agent's subprocess does: ``prefect execute flow-run`` with the run id in context."""
    flow_id = register(prefect, flow_file, unique("demo"))
    run_id = execute_a_run(prefect, flow_id)

    seen = last_json(
        prefect.python(
            f"""
            import json
            from prefect.backend import FlowRunView, TaskRunView
            view = FlowRunView.from_flow_run_id("{run_id}")
            shout = view.get_task_run(task_slug="shout-1")
            print(json.dumps({{
                "states": [type(s).__name__ for s in view.states],
                "result": shout.get_result(),
                "again": TaskRunView.from_task_run_id(shout.task_run_id).get_result(),
                "all": sorted((t.task_slug, type(t.state).__name__) for t in view.get_all_task_runs()),
            }}))
            """
        )
    )
    assert seen["states"] == ["Scheduled", "Running", "Success"]
    assert seen["result"] == seen["again"] == "HELLO MARVIN"
    assert seen["all"] == [["say_hello-1", "Success"], ["shout-1", "Success"], ["who", "Success"]]


LOOPING_TASK = '''
from prefect.engine import signals


@task
def count_to_three():
    n = (prefect.context.get("task_loop_result") or 0) + 1
    if n < 3:
        raise signals.LOOP(result=n)
    return n


flow.add_task(count_to_three)
'''


def test_a_looping_task_runs_again_in_its_task_run(prefect, tmp_path):
    """Prefect's LOOP signal: the task run goes Looped, then Running again, in the same task run
    (the writer refused Looped -> Running as a finished run moving on, and the task ended ClientFailed)."""
    flow_file = write_flow(tmp_path / "flows", unique("looping"), extra=LOOPING_TASK)
    flow_id = register(prefect, flow_file, unique("loops"))
    run_id = execute_a_run(prefect, flow_id)
    seen = last_json(
        prefect.python(
            f"""
            import json
            from prefect.backend import FlowRunView
            task = FlowRunView.from_flow_run_id("{run_id}").get_task_run(task_slug="count_to_three-1")
            print(json.dumps({{"state": type(task.state).__name__, "result": task.get_result()}}))
            """
        )
    )
    assert seen == {"state": "Success", "result": 3}
