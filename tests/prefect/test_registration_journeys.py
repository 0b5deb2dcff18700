"""``flow.register()`` (``Client.register()``) with the real prefect 1.4.1 client: the flow without
its tasks, then ``register_tasks`` / ``register_edges`` / ``set_schedule_active``; then a run of it
executed as an agent's subprocess does (``prefect execute flow-run``), with artifacts created by a
task (``prefect.backend.artifacts``)."""

from __future__ import annotations

import json

import pytest

from tests.prefect.conftest import unique, write_flow
from tests.prefect.test_journeys import execute_a_run, last_json

ARTIFACT_TASK = '''

@task
def publish(text):
    from prefect.backend.artifacts import create_link_artifact, create_markdown_artifact, update_markdown_artifact
    create_link_artifact("https://example.com/" + text.lower().replace(" ", "-"))
    md = create_markdown_artifact("# draft")
    update_markdown_artifact(md, "# " + text)


flow.set_dependencies(publish, keyword_tasks={"text": flow.get_tasks(name="shout")[0]})
'''

SCHEDULED = '''
from datetime import timedelta
from prefect.schedules import IntervalSchedule
flow.schedule = IntervalSchedule(interval=timedelta(hours=1))
'''


def flow_register(prefect, flow_file, project: str, **kwargs) -> str:
    """``flow.register(project_name=...)`` in a fresh process; the flow id it returns."""
    args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    return last_json(
        prefect.python(
            f"""
            import json, runpy
            flow = runpy.run_path("{flow_file}")["flow"]
            print(json.dumps(flow.register(project_name="{project}"{args})))
            """
        )
    )


def graphql(prefect, query: str) -> dict:
    return last_json(prefect.python(f"import json, prefect; print(json.dumps(prefect.Client().graphql({query!r}).data.to_dict()))"))


@pytest.mark.slow
def test_flow_register_then_a_run_executed_by_the_cloud_runners_with_artifacts(prefect, tmp_path):
    project = unique("demo")
    prefect.cli("create", "project", project).check()
    flow_file = write_flow(tmp_path / "flows", unique("registered"), extra=ARTIFACT_TASK)
    flow_id = flow_register(prefect, flow_file, project)

    flow = graphql(prefect, '{ flow_by_pk(id: "%s") { version archived tasks { slug mapped } flow_group { schedule_active } } }' % flow_id)
    assert sorted(t["slug"] for t in flow["flow_by_pk"]["tasks"]) == ["publish-1", "say_hello-1", "shout-1", "who"]
    assert flow["flow_by_pk"]["version"] == 1 and flow["flow_by_pk"]["archived"] is False

    run_id = execute_a_run(prefect, flow_id)

    seen = last_json(
        prefect.python(
            f"""
            import json
            from prefect.backend import FlowRunView
            view = FlowRunView.from_flow_run_id("{run_id}")
            print(json.dumps({{
                "states": [type(s).__name__ for s in view.states],
                "result": view.get_task_run(task_slug="shout-1").get_result(),
                "all": sorted((t.task_slug, type(t.state).__name__) for t in view.get_all_task_runs()),
            }}))
            """
        )
    )
    assert seen["states"] == ["Scheduled", "Running", "Success"]
    assert seen["result"] == "HELLO MARVIN"
    assert seen["all"] == [["publish-1", "Success"], ["say_hello-1", "Success"], ["shout-1", "Success"], ["who", "Success"]]

    query = '{ task_run(where: {flow_run_id: {_eq: "%s"}, task: {slug: {_eq: "publish-1"}}}) { artifacts { kind data } } }' % run_id
    artifacts = graphql(prefect, query)["task_run"][0]["artifacts"]
    assert artifacts == [
        {"kind": "link", "data": {"link": "https://example.com/hello-marvin"}},
        {"kind": "markdown", "data": {"markdown": "# HELLO MARVIN"}},
    ]


def test_flow_register_again_makes_a_version_and_the_same_key_returns_the_flow(prefect, flow_file):
    project = unique("demo")
    prefect.cli("create", "project", project).check()
    first = flow_register(prefect, flow_file, project, idempotency_key="k1")
    again = flow_register(prefect, flow_file, project, idempotency_key="k1")  # tasks and edges sent again: no-ops
    second = flow_register(prefect, flow_file, project)
    assert again == first and second != first
    flows = graphql(prefect, '{ flow(where: {id: {_in: ["%s", "%s"]}}, order_by: {version: asc}) { version archived tasks { slug } } }' % (first, second))
    assert [(f["version"], f["archived"], len(f["tasks"])) for f in flows["flow"]] == [(1, True, 3), (2, False, 3)]


def test_flow_register_switches_the_schedule_as_asked(prefect, tmp_path):
    project = unique("demo")
    prefect.cli("create", "project", project).check()
    flow_file = write_flow(tmp_path / "flows", unique("scheduled"), extra=SCHEDULED)
    off = flow_register(prefect, flow_file, project, set_schedule_active=False)
    query = '{ flow_by_pk(id: "%s") { schedule flow_group { schedule_active } } }'
    flow = graphql(prefect, query % off)["flow_by_pk"]
    assert flow["schedule"] and flow["flow_group"] == {"schedule_active": False}
    on = flow_register(prefect, flow_file, project)  # set_schedule_active defaults to true
    assert graphql(prefect, query % on)["flow_by_pk"]["flow_group"] == {"schedule_active": True}
    settings = graphql(prefect, '{ flow_by_pk(id: "%s") { settings } }' % on)["flow_by_pk"]["settings"]
    assert json.dumps(settings, sort_keys=True) == json.dumps({"heartbeat_enabled": True, "lazarus_enabled": True, "version_locking_enabled": False}, sort_keys=True)
