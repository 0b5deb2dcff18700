"""Issue 9's agent journeys with the real, unmodified Prefect 1.4.1 client: ``prefect agent local
start`` (a subprocess, killed at teardown, with everything it started) deploys the runs that
``prefect run``, ``Client.create_flow_run`` and the ``create_flow_run`` task make, against a
RunLedger stack with every service, the scheduling service included.

Every wait is bounded and polls for a condition with a deadline. Output is read as it comes
(``tests/prefect/env.py``: ``Proc``), not by lines: ``prefect run``'s "cancel this flow run?"
prompt has no newline. ``--watch`` prints state lines (from the run's states) and log lines
(from the run's logs); they reach RunLedger through two consumers (projector, log service), so
the tests check the order of the state lines among themselves, never how log lines interleave
with them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

from runledger.services.devstack import ALL_SERVICES, Stack, free_port
from tests.prefect.env import PrefectClient, Proc
from tests.prefect.conftest import unique

pytestmark = pytest.mark.slow

# Every prefect process here (the agent passes its environment on to the flow-run processes it
# starts; ``--execute`` does too): logs go to RunLedger and are flushed every second instead of
# every 5 s, a Cancelling run is noticed within 2 s instead of 15 s, and a running flow run beats
# every 2 s instead of 30 s -- so RunLedger's zombie killer can be given a short timeout
# (journey 7b) without ever mistaking a live run for a dead one.
CLIENT_ENV = {
    "PREFECT__CLOUD__SEND_FLOW_RUN_LOGS": "true",
    "PREFECT__CLOUD__LOGGING_HEARTBEAT": "1",
    "PREFECT__CLOUD__CHECK_CANCELLATION_INTERVAL": "2",
    "PREFECT__CLOUD__HEARTBEAT_INTERVAL": "2",
}
ZOMBIE_SECONDS = 10  # RunLedger: a Running task run of a flow run silent this long is retried
JOURNEY_SECONDS = 60  # every journey, all its waits and processes included, ends within this


class Budget:
    """One journey's time: every wait and every process gets at most what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def within(self, seconds: float) -> float:
        left = self.end - time.monotonic()
        assert left > 0, f"the journey used up its {JOURNEY_SECONDS} s"
        return min(seconds, left)


class BudgetedClient(PrefectClient):
    """A ``PrefectClient`` whose every process is bounded by the journey's budget too."""

    def __init__(self, *args, budget: Budget, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.budget = budget

    def _run(self, args, cwd, env, timeout, stdin=None):
        return super()._run(args, cwd, env, self.budget.within(timeout or self.timeout), stdin)

HELLO = '''\
import time

import prefect
from prefect import Flow, Parameter, task
from prefect.engine.results import LocalResult
from prefect.storage import Local


@task
def say_hello(who):
    prefect.context.get("logger").info("hello %s", who)
    return "hello " + who


@task
def shout(text):
    time.sleep(3)  # the run's log lines are flushed (every second) well before it ends
    return text.upper()


with Flow("@NAME@", storage=Local(path=__file__, stored_as_script=True), result=LocalResult(dir="@RESULTS@")) as flow:
    who = Parameter("who", default="world")
    shout(say_hello(who))
'''

PARENT_CHILD = '''\
import prefect
from prefect import Flow, Parameter, task
from prefect.engine.results import LocalResult
from prefect.storage import Local
from prefect.tasks.prefect import create_flow_run, get_task_run_result, wait_for_flow_run


@task(result=LocalResult(dir="@RESULTS@"))
def create_some_data(length: int):
    prefect.context.get("logger").info("making %s numbers", length)
    return list(range(length))


with Flow("@CHILD@", storage=Local(path=__file__, stored_as_script=True)) as child_flow:
    data_size = Parameter("data_size", default=5)
    data = create_some_data(data_size)


@task(log_stdout=True)
def transform_and_show(data):
    print(f"Got: {data!r}")
    new_data = [x + 1 for x in data]
    print(f"Created: {new_data!r}")
    return new_data


with Flow("@PARENT@", storage=Local(path=__file__, stored_as_script=True)) as parent_flow:
    child_run_id = create_flow_run(flow_name="@CHILD@", project_name="@PROJECT@", parameters=dict(data_size=10))
    child_done = wait_for_flow_run(child_run_id, stream_logs=True, raise_final_state=True)
    child_data = get_task_run_result(child_run_id, "create_some_data-1", upstream_tasks=[child_done])
    transform_and_show(child_data)
'''

RETRIES_AND_MAPS = '''\
import datetime
import pathlib

import prefect
from prefect import Flow, Parameter, task
from prefect.engine.results import LocalResult
from prefect.storage import Local

MARKER = pathlib.Path("@RESULTS@") / "first-attempt-made"


@task(task_run_name="double-{x}")
def double(x):
    return 2 * x


@task(max_retries=1, retry_delay=datetime.timedelta(seconds=2))
def flaky(values):
    if not MARKER.exists():
        MARKER.parent.mkdir(parents=True, exist_ok=True)
        MARKER.touch()
        raise RuntimeError("the first attempt fails")
    prefect.context.get("logger").info("second attempt: %s", sum(values))
    return sum(values)


with Flow("@NAME@", storage=Local(path=__file__, stored_as_script=True), result=LocalResult(dir="@RESULTS@")) as flow:
    xs = Parameter("xs", default=[1, 2, 3])
    flaky(double.map(xs))
'''

# The first attempt's process is killed while the task runs (the test does it: a lost machine);
# the second attempt, in the process the agent deploys again, finds the marker and finishes.
CRASHING = '''\
import datetime
import pathlib
import time

import prefect
from prefect import Flow, task
from prefect.engine.results import LocalResult
from prefect.storage import Local

MARKER = pathlib.Path("@RESULTS@") / "first-attempt-started"


@task(max_retries=1, retry_delay=datetime.timedelta(seconds=1))
def lose_the_machine():
    if not MARKER.exists():
        MARKER.parent.mkdir(parents=True, exist_ok=True)
        MARKER.touch()
        time.sleep(60)  # killed here
    prefect.context.get("logger").info("attempt after the crash")
    return "survived"


with Flow("@NAME@", storage=Local(path=__file__, stored_as_script=True), result=LocalResult(dir="@RESULTS@")) as flow:
    lose_the_machine()
'''

SLOW = '''\
import time

import prefect
from prefect import Flow, task
from prefect.storage import Local


@task
def take_a_while():
    prefect.context.get("logger").info("started the long task")
    time.sleep(60)


with Flow("@NAME@", storage=Local(path=__file__, stored_as_script=True)) as flow:
    take_a_while()
'''


# -- the stack, the agent, the client ---------------------------------------------------------------
@pytest.fixture(scope="module")
def rl():
    """A RunLedger stack with every service (the scheduling service serves the agent's queue)."""
    with Stack(own_redis=True, partitions=4, services=ALL_SERVICES,
               extra_env={"RUNLEDGER_SCHEDULING_ZOMBIE_SECONDS": str(ZOMBIE_SECONDS)}) as stack:
        yield stack


@pytest.fixture(scope="module")
def http(rl):
    with httpx.Client(base_url=rl.api_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def agent(prefect_env, rl, tmp_path_factory) -> Proc:
    """``prefect agent local start`` with its default labels (this host's name, which ``Local``
    storage also gives every flow registered here), stopped with its flow-run processes at the end.

    An idle 1.4.1 agent backs off to one query every 10 s; its own ``/api/poke`` endpoint (the
    ``--agent-address`` API) is called every second instead, so a journey waits about a second,
    not up to ten, for its run to be picked up."""
    client = PrefectClient(rl.api_url, tmp_path_factory.mktemp("agent-home"), send_logs=True)
    client.env.update(CLIENT_ENV)
    address = f"http://127.0.0.1:{free_port()}"
    # --show-flow-logs: the flow-run processes write to the agent's output (kept in agent.log)
    proc = client.spawn("agent", "local", "start", "--name", "journeys-agent", "--agent-address", address, "--show-flow-logs")
    stop = threading.Event()

    def poke() -> None:
        while not stop.wait(1.0):
            try:
                urllib.request.urlopen(address + "/api/poke", timeout=2).close()
            except OSError:
                pass

    poker = threading.Thread(target=poke, name="agent-poker", daemon=True)
    try:
        proc.wait_for(r"Waiting for flow runs", timeout=60)
        poker.start()
        yield proc
    finally:
        stop.set()
        proc.stop()
        (rl.workdir / "agent.log").write_text(proc.output)  # beside the services' logs, for a post-mortem


@pytest.fixture
def budget() -> Budget:
    return Budget(JOURNEY_SECONDS)


@pytest.fixture
def pf(prefect_env, rl, tmp_path, budget) -> PrefectClient:
    client = BudgetedClient(rl.api_url, tmp_path / "home", send_logs=True, timeout=JOURNEY_SECONDS, budget=budget)
    client.env.update(CLIENT_ENV)
    return client


def write(tmp_path: Path, script: str, **names: str) -> Path:
    directory = tmp_path / "flows"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "flow.py"
    text = script.replace("@RESULTS@", str(tmp_path / "results"))
    for key, value in names.items():
        text = text.replace(f"@{key.upper()}@", value)
    path.write_text(text)
    return path


def register(pf: PrefectClient, path: Path, project: str, count: int = 1) -> list[str]:
    """``prefect register`` into a new project (made over REST: one prefect process less per
    journey; ``prefect create project`` has its own journey in ``test_journeys.py``)."""
    r = httpx.post(pf.endpoint + "/api/v1/projects", json={"name": project}, timeout=30)
    assert r.status_code == 201, r.text
    out = pf.cli("register", "-p", str(path), "--project", project).check().output
    assert f"{count} registered" in out, out
    return re.findall(r"ID: ([0-9a-f-]{36})", out)


def last_json(result):
    result.check()
    return json.loads(result.stdout.strip().splitlines()[-1])


def gql(http: httpx.Client, query: str) -> dict:
    r = http.post("/graphql", json={"query": query})
    assert r.status_code == 200, r.text
    body = r.json()
    assert not body.get("errors"), body
    return body["data"]


def run_doc(http: httpx.Client, run_id: str) -> dict:
    query = (
        '{ flow_run_by_pk(id: "%s") { id state state_message state_start_time labels states { state message } '
        "task_runs { id name map_index state state_start_time task { slug } states { state } } } }"
    )
    return gql(http, query % run_id)["flow_run_by_pk"]


def wait_for_state(http: httpx.Client, run_id: str, states: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        doc = run_doc(http, run_id)
        if doc["state"] in states:
            return doc
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} not in {states} after {timeout} s: {doc}")
        time.sleep(0.5)


def states_of(doc: dict) -> list[str]:
    return [s["state"] for s in doc["states"]]


def ordered(text: str, *patterns: str) -> list[int]:
    """Where each pattern first matches, failing unless they appear in this order."""
    at, out = 0, []
    for pattern in patterns:
        found = re.compile(pattern).search(text, at)
        assert found, f"{pattern!r} not found after offset {at} in:\n{text}"
        out.append(found.start())
        at = found.end()
    return out


def run_id_of(output: str) -> str:
    return re.search(r"UUID: ([0-9a-f-]{36})", output).group(1)


# -- 1. the agent deploys a run that `prefect run --watch` follows ------------------------------------
def test_prefect_run_watch_with_a_local_agent(pf, agent, http, tmp_path, budget):
    name = unique("hello-world")
    register(pf, write(tmp_path, HELLO, name=name), unique("demo"))

    run = pf.spawn("run", "--name", name, "--param", 'who="marvin"', "--watch")
    try:
        code = run.wait(timeout=budget.within(JOURNEY_SECONDS))
    finally:
        run.stop()
    out = run.output
    assert code == 0, out
    run_id = run_id_of(out)
    # The seed's lines: state lines in order, the run's own log lines, the verdict last.
    ordered(
        out,
        rf"Creating run for flow '{name}'\.\.\. Done",
        r"Watching flow run execution\.\.\.",
        r"└── \d\d:\d\d:\d\d \| INFO    \| Entered state <Scheduled>: Flow run scheduled\.",
        r"\| INFO    \| Entered state <Submitted>: Submitted for execution",
        r"\| INFO    \| Entered state <Running>: Running flow\.",
        r"\| INFO    \| Entered state <Success>: All reference tasks succeeded\.",
        r"Flow run succeeded!\s*$",
    )
    for line in (r"Submitted for execution: PID: \d+", rf"Beginning Flow run for '{name}'", r"hello marvin", r"Task 'say_hello': Starting task run\.\.\."):
        assert len(re.findall(r"└── \d\d:\d\d:\d\d \| INFO    \| " + line, out)) == 1, (line, out)  # once, none repeated
    for state in ("Scheduled", "Submitted", "Running", "Success"):
        assert out.count(f"Entered state <{state}>") == 1, (state, out)
    doc = run_doc(http, run_id)
    assert states_of(doc) == ["Scheduled", "Submitted", "Running", "Success"]
    agent.wait_for(re.escape(run_id), timeout=budget.within(5))  # the agent says which run it deployed


def ctrl_c_and_cancel(run, budget) -> None:
    """Ctrl-C on ``prefect run --watch``, answer "y" to its question; it cancels the run and exits 0."""
    run.interrupt()
    run.wait_for(r"Keyboard interrupt detected!", timeout=budget.within(20))
    run.wait_for(r"Do you want to cancel this flow run\? \[Y/n\]: ", timeout=budget.within(20))
    run.send("y\n")
    run.wait_for(r"Cancelled flow run\.", timeout=budget.within(20))
    assert run.wait(timeout=budget.within(20)) == 0


# -- 2. no agent has the run's labels: the client's warning ------------------------------------------
def test_prefect_run_watch_warns_when_no_agent_has_the_labels(pf, agent, http, tmp_path, budget):
    name = unique("hello-world")
    register(pf, write(tmp_path, HELLO, name=name), unique("demo"))

    run = pf.spawn("run", "--name", name, "--label", "nobody", "--watch")
    try:
        warning = run.wait_for(r"has not been submitted by an agent\. ([^\n]*)\n", timeout=budget.within(45))
        assert re.fullmatch(
            r"You have [1-9]\d* healthy agents in your tenant but do not have an agent with labels \{'nobody'\}\. "
            r"Start an agent with matching labels to deploy your flow run\.",
            warning.group(1),
        ), warning.group(0)
        run_id = run_id_of(run.output)
        assert states_of(run_doc(http, run_id)) == ["Scheduled"]  # the agent never took it
        ctrl_c_and_cancel(run, budget)  # cancelled from Scheduled, straight to Cancelled
    finally:
        run.stop()
    assert states_of(run_doc(http, run_id)) == ["Scheduled", "Cancelled"]


# -- 3. agentless: prefect run --execute ----------------------------------------------------------------
def test_prefect_run_execute_without_an_agent(pf, agent, http, tmp_path, budget):
    name = unique("hello-world")
    register(pf, write(tmp_path, HELLO, name=name), unique("demo"))

    result = pf.cli("run", "--name", name, "--param", 'who="trillian"', "--execute").check()
    out = result.output
    assert re.search(r"Labels: \['agentless-run-[0-9a-f]{8}'\]", out), out
    ordered(out, r"Executing flow run\.\.\.", r"hello trillian", r"Flow run succeeded!")
    doc = run_doc(http, run_id_of(out))
    assert doc["state"] == "Success"
    assert states_of(doc) == ["Scheduled", "Running", "Success"]  # no agent submitted it


# -- 4. FlowRunView of a run the agent executed ----------------------------------------------------------
def test_flow_run_view_of_an_agent_run_holds_its_logs(pf, agent, http, tmp_path, budget):
    name = unique("hello-world")
    [flow_id] = register(pf, write(tmp_path, HELLO, name=name), unique("demo"))
    run_id = last_json(
        pf.python(f'import json, prefect; print(json.dumps(prefect.Client().create_flow_run(flow_id="{flow_id}", parameters={{"who": "arthur"}})))')
    )
    wait_for_state(http, run_id, {"Success", "Failed"}, timeout=budget.within(45))

    seen = last_json(
        pf.python(
            f"""
            import json, time
            from prefect.backend import FlowRunView
            deadline = time.monotonic() + 20
            while True:  # the last lines are flushed when the flow-run process exits
                view = FlowRunView.from_flow_run_id("{run_id}")
                logs = view.get_logs()
                if any("Flow run SUCCESS" in log.message for log in logs) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            print(json.dumps({{
                "state": type(view.state).__name__,
                "states": [type(s).__name__ for s in view.states],
                "messages": [log.message for log in logs],
                "levels": sorted({{log.level for log in logs}}),
                "result": view.get_task_run(task_slug="shout-1").get_result(),
                "task_runs": sorted((t.task_slug, type(t.state).__name__) for t in view.get_all_task_runs()),
            }}))
            """
        )
    )
    assert seen["state"] == "Success" and seen["states"] == ["Scheduled", "Submitted", "Running", "Success"]
    messages = seen["messages"]
    for expected in ("Submitted for execution: PID", f"Beginning Flow run for '{name}'", "hello arthur", "Flow run SUCCESS: all reference tasks succeeded"):
        assert any(m.startswith(expected) for m in messages), (expected, messages)
    assert messages.count("hello arthur") == 1  # each line stored once
    assert seen["levels"] == [20]  # INFO
    assert seen["result"] == "HELLO ARTHUR"
    assert seen["task_runs"] == [["say_hello-1", "Success"], ["shout-1", "Success"], ["who", "Success"]]


# -- 5. a parent flow creates, waits for and reads a child run the agent executes -------------------------
def test_parent_flow_with_create_flow_run_wait_and_get_task_run_result(pf, agent, http, tmp_path, budget):
    project, parent, child = unique("demo"), unique("parent"), unique("child")
    register(pf, write(tmp_path, PARENT_CHILD, parent=parent, child=child, project=project), project, count=2)

    result = pf.cli("run", "--name", parent, "--execute").check()
    out = result.output
    child_id = re.search(r"Created flow run '[^']+': \S+/flow-run/([0-9a-f-]{36})", out).group(1)
    ordered(out, rf"Creating flow run '[^']+' for flow '{child}'", r"Got: \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]", r"Created: \[1, 2, 3, 4, 5, 6, 7, 8, 9, 10\]", r"Flow run succeeded!")
    # wait_for_flow_run(stream_logs=True) relays the child's states and lines into the parent's log
    # (each line prefixed with the child run's name)
    assert re.search(r"Flow '[^']+': Entered state <Success>: All reference tasks succeeded\.", out), out
    assert re.search(rf"Flow '[^']+': Beginning Flow run for '{child}'", out), out
    assert re.search(r"Flow '[^']+': making 10 numbers", out), out
    child_doc = run_doc(http, child_id)
    assert states_of(child_doc) == ["Scheduled", "Submitted", "Running", "Success"]  # the agent ran it
    assert states_of(run_doc(http, run_id_of(out)))[-1] == "Success"


# -- 6. the agent cannot deploy the run --------------------------------------------------------------------
def test_a_run_the_agent_cannot_deploy_ends_failed_with_its_message(pf, agent, http, tmp_path, budget):
    name = unique("hello-world")
    [flow_id] = register(pf, write(tmp_path, HELLO, name=name), unique("demo"))
    run_id = last_json(
        pf.python(
            f"""
            import json, prefect, socket
            from prefect.run_configs import DockerRun
            # A run config's labels are the run's labels: this host's, so the local agent takes it.
            run_config = DockerRun(image="nowhere:latest", labels=[socket.gethostname()])
            print(json.dumps(prefect.Client().create_flow_run(flow_id="{flow_id}", run_config=run_config)))
            """
        )
    )
    doc = wait_for_state(http, run_id, {"Failed", "Success"}, timeout=budget.within(45))
    assert doc["state"] == "Failed" and states_of(doc) == ["Scheduled", "Submitted", "Failed"], doc
    reason = f"Flow run {run_id} has a `run_config` of type `DockerRun`, only `LocalRun` is supported"
    assert doc["state_message"] == reason, doc
    deadline = time.monotonic() + budget.within(15)  # the agent also logs it to the run, at ERROR
    while True:
        data = gql(http, '{ flow_run(where: {id: {_eq: "%s"}}) { logs { level message } } }' % run_id)
        if {"level": "ERROR", "message": reason} in data["flow_run"][0]["logs"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {"level": "ERROR", "message": reason} in data["flow_run"][0]["logs"], data


# -- 7. retries, mapped tasks, task run names ---------------------------------------------------------------
def task_runs_by_slug(doc: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for task_run in doc["task_runs"]:
        out.setdefault(task_run["task"]["slug"], []).append(task_run)
    return out


def log_messages(http: httpx.Client, run_id: str) -> list[str]:
    data = gql(http, '{ flow_run(where: {id: {_eq: "%s"}}) { logs(order_by: {timestamp: asc}) { message } } }' % run_id)
    return [line["message"] for line in data["flow_run"][0]["logs"]]


def test_a_retried_task_a_mapped_task_and_task_run_names(pf, agent, http, tmp_path, budget):
    """A short retry is taken in the flow-run process itself (the 1.4.1 task runner sleeps until
    a retry due within 10 minutes); mapped children are created on the fly, each named."""
    name = unique("retries")
    [flow_id] = register(pf, write(tmp_path, RETRIES_AND_MAPS, name=name), unique("demo"))
    run_id = last_json(pf.python(f'import json, prefect; print(json.dumps(prefect.Client().create_flow_run(flow_id="{flow_id}")))'))
    doc = wait_for_state(http, run_id, {"Success", "Failed", "Cancelled"}, timeout=budget.within(50))
    assert doc["state"] == "Success", doc

    by_slug = task_runs_by_slug(doc)
    doubles = sorted(by_slug["double-1"], key=lambda t: t["map_index"])
    assert [(t["map_index"], t["state"]) for t in doubles] == [(-1, "Mapped"), (0, "Success"), (1, "Success"), (2, "Success")], doubles
    assert [t["name"] for t in doubles[1:]] == ["double-1", "double-2", "double-3"], doubles
    [flaky] = by_slug["flaky-1"]
    assert states_of(flaky) == ["Running", "Failed", "Retrying", "Running", "Success"], states_of(flaky)
    # A state's start time is a Scheduled-like state's own (Prefect Server's column): none once
    # finished. The agent's redeploy rule reads it (see the deploy count below).
    assert doc["state_start_time"] is None and all(t["state_start_time"] is None for t in doc["task_runs"]), doc

    result = last_json(
        pf.python(f'import json; from prefect.backend import FlowRunView; print(json.dumps(FlowRunView.from_flow_run_id("{run_id}").get_task_run(task_slug="flaky-1").get_result()))')
    )
    assert result == 12
    deadline = time.monotonic() + budget.within(15)
    while "second attempt: 12" not in (messages := log_messages(http, run_id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "second attempt: 12" in messages, messages
    # Deployed once: the retry was taken in the process (the agent, asked every second, never
    # redeployed the Running run, as its metadata query keeps one only if a task run's start
    # time passed 3 s ago).
    assert sum(m.startswith("Submitted for execution: PID") for m in messages) == 1, messages


def test_a_task_whose_process_died_is_retried_and_the_run_redeployed(pf, agent, http, tmp_path, budget):
    """Retrying, then redeployed, then Success: the flow-run process (and its heartbeat process)
    is killed mid-task; RunLedger's zombie killer finds the flow run silent and puts the task run
    in Retrying; the due retry puts the Running flow run back in the agent's queue, and the agent
    deploys it again (the 1.4.1 agent's metadata query keeps a Running run that has a due task run)."""
    name = unique("crash")
    [flow_id] = register(pf, write(tmp_path, CRASHING, name=name), unique("demo"))
    run_id = last_json(pf.python(f'import json, prefect; print(json.dumps(prefect.Client().create_flow_run(flow_id="{flow_id}")))'))

    marker = tmp_path / "results" / "first-attempt-started"
    deadline = time.monotonic() + budget.within(30)
    while not marker.exists():
        assert time.monotonic() < deadline, f"the first attempt did not start in time: {run_doc(http, run_id)}"
        time.sleep(0.2)
    victims = agent.descendants_with_env("PREFECT__CONTEXT__FLOW_RUN_ID", run_id)
    assert victims, "no process of the run found under the agent"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)

    doc = wait_for_state(http, run_id, {"Success", "Failed", "Cancelled"}, timeout=budget.within(ZOMBIE_SECONDS + 40))
    assert doc["state"] == "Success", doc
    assert states_of(doc) == ["Scheduled", "Submitted", "Running", "Success"], doc
    [task_run] = task_runs_by_slug(doc)["lose_the_machine-1"]
    assert states_of(task_run) == ["Running", "Retrying", "Submitted", "Running", "Success"], states_of(task_run)
    deadline = time.monotonic() + budget.within(15)
    while "attempt after the crash" not in (messages := log_messages(http, run_id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "attempt after the crash" in messages, messages
    assert sum(m.startswith("Submitted for execution: PID") for m in messages) == 2, messages  # deployed twice


# -- 8. Ctrl-C during prefect run --watch cancels the run -------------------------------------------------
def test_ctrl_c_during_watch_cancels_the_run(pf, agent, http, tmp_path, budget):
    name = unique("slow")
    register(pf, write(tmp_path, SLOW, name=name), unique("demo"))

    run = pf.spawn("run", "--name", name, "--watch")
    try:
        run.wait_for(r"started the long task", timeout=budget.within(45))
        run_id = run_id_of(run.output)
        ctrl_c_and_cancel(run, budget)
    finally:
        run.stop()
    doc = wait_for_state(http, run_id, {"Cancelled", "Success", "Failed"}, timeout=budget.within(30))
    states = states_of(doc)
    assert states[-2:] == ["Cancelling", "Cancelled"] and "Running" in states, states
    [task_run] = doc["task_runs"]
    assert task_run["state"] == "Cancelled" and states_of(task_run)[-2:] == ["Cancelling", "Cancelled"], task_run


# -- the agent's metadata query (R15), exactly as 1.4.1 sends it, without the client -----------------------
def test_the_agents_metadata_query_keeps_a_running_run_only_for_a_due_task_run(http):
    """``_get_flow_run_metadata``: of the runs the queue offered, keep the Scheduled ones and the
    Running ones with a task run whose start time passed 3 s ago (a due retry). A finished task
    run has no start time (Prefect Server's ``state_start_time``), so it never counts as due."""
    r = http.post("/api/v1/projects", json={"name": unique("proj")})
    assert r.status_code == 201, r.text
    tasks = [{"id": "a", "slug": "a-1", "name": "a"}, {"id": "b", "slug": "b-1", "name": "b"}]
    r = http.post("/api/v1/flows", json={"name": unique("flow"), "project_id": r.json()["id"], "tasks": tasks})
    assert r.status_code == 201, r.text
    flow_id = r.json()["id"]

    def new_run() -> tuple[str, dict[str, str]]:
        r = http.post("/api/v1/flow_runs", json={"flow_id": flow_id})
        assert r.status_code in (200, 201), r.text
        run_id = r.json()["id"]
        r = http.get(f"/api/v1/flow_runs/{run_id}/task_runs")
        assert r.status_code == 200, r.text
        body = r.json()
        task_runs = body["task_runs"] if isinstance(body, dict) else body
        return run_id, {t["task_slug"]: t["id"] for t in task_runs}

    def set_states(kind: str, key: str, target: str, *states: dict) -> None:
        for state in states:
            items = json.dumps([{key: target, "version": None, "state": state}])
            gql(http, "mutation { set_%s_run_states(input: {states: %s}) { states { status } } }" % (kind, re.sub(r'"(\w+)":', r"\1:", items)))

    scheduled, _ = new_run()
    retrying, retrying_tasks = new_run()
    finished_tasks_run, done_tasks = new_run()
    past = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 10))
    for run_id, task_ids in ((retrying, retrying_tasks), (finished_tasks_run, done_tasks)):
        set_states("flow", "flow_run_id", run_id, {"type": "Running"})
        set_states("task", "task_run_id", task_ids["a-1"], {"type": "Running"}, {"type": "Success"})
    set_states("task", "task_run_id", retrying_tasks["b-1"], {"type": "Running"}, {"type": "Failed"},
               {"type": "Retrying", "start_time": past, "message": "Retrying Task (after attempt 1 of 2)"})

    buffer = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 3))
    ids = json.dumps([scheduled, retrying, finished_tasks_run])
    query = (
        '{ flow_run(where: {id: {_in: %s}, _or: [{state: {_eq: "Scheduled"}}, '
        '{state: {_eq: "Running"}, task_runs: {state_start_time: {_lte: "%s"}}}]}) '
        '{ id state task_runs(where: {state_start_time: {_lte: "%s"}}) { id state state_start_time } } }'
    ) % (ids, buffer, buffer)
    runs = {run["id"]: run for run in gql(http, query)["flow_run"]}
    assert set(runs) == {scheduled, retrying}, runs
    assert [(t["id"], t["state"]) for t in runs[retrying]["task_runs"]] == [(retrying_tasks["b-1"], "Retrying")], runs
    assert runs[scheduled]["task_runs"] == []  # Pending task runs have no start time either

    # The relation filter needs the runs' ids (it loads their task runs): refused without them.
    r = http.post("/graphql", json={"query": '{ flow_run(where: {task_runs: {state: {_eq: "Retrying"}}}) { id } }'})
    assert r.status_code == 200 and r.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", r.text
    assert "needs the runs' ids" in r.json()["errors"][0]["message"], r.text
