"""The runledger CLI: client commands against the test stack, and `runledger dev` start/stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from runledger.services.devstack import free_port
from tests.conftest import unique


def cli(stack, *args, check=True):
    env = {**os.environ, "RUNLEDGER_URL": stack.api_url}
    result = subprocess.run([sys.executable, "-m", "runledger.services.cli", *args], env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_client_commands(stack, tmp_path):
    project = unique("cli")
    project_id = cli(stack, "create-project", project).stdout.strip()
    flow_file = tmp_path / "flow.json"
    flow_file.write_text(json.dumps({"name": "hello-world", "project_name": project, "parameters": [{"name": "who", "required": True}]}))
    assert "version 1" in cli(stack, "register", str(flow_file)).stdout
    assert "version 2" in cli(stack, "register", str(flow_file)).stdout
    out = cli(stack, "run", "--name", "hello-world", "--project", project, "--param", "who=marvin", "--label", "a", "--idempotency-key", "ck").stdout
    assert out.startswith("Created run") and "'who': 'marvin'" in out
    run_id = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("└── id:"))
    assert cli(stack, "run", "--name", "hello-world", "--project", project, "--param", "who=marvin", "--idempotency-key", "ck").stdout.startswith("Found existing")
    assert cli(stack, "set-state", run_id, "Running", "--version", "1").stdout.strip() == "Running at version 2"
    stale = cli(stack, "set-state", run_id, "Success", "--version", "1", check=False)
    assert stale.returncode == 1 and "VERSION_MISMATCH" in stale.stderr
    assert json.loads(cli(stack, "get-run", run_id).stdout)["project_id"] == project_id
    missing = cli(stack, "run", "--name", "hello-world", "--project", project, check=False)
    assert missing.returncode == 1 and "who" in missing.stderr and "required parameter is missing" in missing.stderr


@pytest.mark.slow
def test_dev_starts_everything_restarts_a_dead_service_and_ctrl_c_stops_it(tmp_path):
    port = free_port()
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nothing there: it starts its own
    process = subprocess.Popen(
        [sys.executable, "-m", "runledger.services.cli", "dev", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "Ctrl-C stops everything" in line or process.poll() is not None:
                break
        text = "".join(lines)
        assert f"http://127.0.0.1:{port}/docs" in text, text
        assert httpx.get(f"http://127.0.0.1:{port}/health/ready").json() == {"ready": True}
        created = httpx.post(f"http://127.0.0.1:{port}/api/v1/projects", json={"name": "dev"})
        assert created.status_code == 201
        # A service that dies is restarted (with backoff, said on stderr), not the end of the stack.
        projector = subprocess.run(["pgrep", "-P", str(process.pid), "-f", "runledger.services.projector"],
                                   capture_output=True, text=True).stdout.split()
        assert len(projector) == 1, projector
        os.kill(int(projector[0]), signal.SIGKILL)
        while "projector restarted" not in (line := process.stdout.readline()):
            lines.append(line)
            assert line and process.poll() is None, "".join(lines)
        assert any("projector exited with -9; restarting in" in line for line in lines), "".join(lines)
        second = httpx.post(f"http://127.0.0.1:{port}/api/v1/projects", json={"name": "dev-again"}, timeout=60)
        assert second.status_code == 201, second.text  # answered only once the restarted projector applied it
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        rest = process.stdout.read()
        assert "stopped" in rest
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health/live")
    finally:
        if process.poll() is None:
            process.kill()


# -- watch, run --watch, and one-line errors (on the log stack: it runs the log service) ---------
import re  # noqa: E402
from datetime import datetime, timedelta, timezone  # noqa: E402

from tests.integration.test_logs import lapi, logs_stack, new_run  # noqa: E402,F401  (fixtures)

SEED_LINE = re.compile(r"^└── \d\d:\d\d:\d\d \| (DEBUG|INFO|WARNING|ERROR|CRITICAL) *\| .+$")


def _spawn(stack, *args) -> subprocess.Popen:
    env = {**os.environ, "RUNLEDGER_URL": stack.api_url}
    return subprocess.Popen([sys.executable, "-m", "runledger.services.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_line(process, needle: str, seen: list, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        seen.append(line.rstrip("\n"))
        if needle in line:
            return
    raise AssertionError(f"{needle!r} not printed; got {seen}")


def test_watch_prints_the_seed_format_and_exits_with_the_final_state(logs_stack, lapi):
    run = new_run(lapi, parameters={}, labels=["dev"])
    rid = run["id"]
    process = _spawn(logs_stack, "watch", rid)
    seen: list[str] = []
    _wait_for_line(process, "Entered state <Scheduled>", seen)
    lapi.post(f"/flow_runs/{rid}/state", json={"state": {"type": "Running", "message": "Running flow."}, "version": None})
    lapi.post("/logs", json={"logs": [{"flow_run_id": rid, "name": "prefect", "message": "Hello World"},
                                      {"flow_run_id": rid, "level": "WARNING", "message": "careful"}]})
    lapi.post(f"/flow_runs/{rid}/state", json={"state": {"type": "Success", "message": "All reference tasks succeeded."}, "version": None})
    out, err = process.communicate(timeout=60)
    lines = seen + out.splitlines()
    assert process.returncode == 0, err
    assert err == ""
    assert f"└── id: {rid}" in lines and "└── labels: ['dev']" in lines and "└── parameters: {}" in lines
    watched = [line for line in lines if line.startswith("└── ") and " | " in line]
    assert all(SEED_LINE.match(line) for line in watched), watched
    assert [line.split(" | ", 2)[1:] for line in watched] == [
        ["INFO   ", "Entered state <Scheduled>: Flow run scheduled."],
        ["INFO   ", "Entered state <Running>: Running flow."],
        ["INFO   ", "Hello World"],
        ["WARNING", "careful"],
        ["INFO   ", "Entered state <Success>: All reference tasks succeeded."],
    ]
    assert lines[-1] == "Flow run succeeded!"


def test_watch_follows_a_run_restarted_after_it_failed_to_its_last_state(logs_stack, lapi):
    """Failed (and its end marker), then Scheduled again, Running, Success: the first end is not
    the end of the watch, and the exit code is the last state's. Its start time is long past, yet
    no "still Scheduled" diagnosis is printed: the history shows it moved on."""
    from tests.integration.test_watch import read_events, set_state

    long_ago = (datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat()
    rid = new_run(lapi, parameters={}, labels=["dev"], scheduled_start_time=long_ago)["id"]
    set_state(lapi, rid, "Failed", "boom")
    assert read_events(logs_stack, rid)[-1]["event"] == "end"  # the first end marker is stored
    for state in ("Scheduled", "Running", "Success"):
        set_state(lapi, rid, state)
    assert [e["event"] for e in read_events(logs_stack, rid)].count("end") == 2
    process = _spawn(logs_stack, "watch", rid)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, (out, err)
    entered = [line.split(" | ", 2)[2].split(">")[0] for line in out.splitlines() if "| Entered state <" in line]
    assert entered == [f"Entered state <{s}" for s in ("Scheduled", "Failed", "Scheduled", "Running", "Success")]
    assert "WARNING" not in out
    assert out.splitlines()[-1] == "Flow run succeeded!"


def test_run_watch_diagnoses_a_run_still_scheduled_and_exits_1_when_it_fails(logs_stack, lapi):
    project = lapi.post("/projects", json={"name": unique("cliw")}).json()
    flow = lapi.post("/flows", json={"name": unique("late"), "project_id": project["id"]}).json()
    start = (datetime.now(timezone.utc) - timedelta(seconds=20)).isoformat()
    process = _spawn(logs_stack, "run", "--id", flow["id"], "--start-time", start, "--label", "nowhere", "--watch")
    seen: list[str] = []
    _wait_for_line(process, "no scheduling diagnosis available", seen)
    diagnosis = seen[-1]
    assert SEED_LINE.match(diagnosis) and "| WARNING | Flow run still Scheduled" in diagnosis
    rid = next(line.split(": ", 1)[1] for line in seen if line.startswith("└── id:"))
    lapi.post(f"/flow_runs/{rid}/state", json={"state": {"type": "Failed", "message": "boom"}, "version": None})
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert out.splitlines()[-1] == "Flow run failed!"


def test_errors_are_one_line(logs_stack):
    port = free_port()
    env = {**os.environ, "RUNLEDGER_URL": f"http://127.0.0.1:{port}"}
    result = subprocess.run([sys.executable, "-m", "runledger.services.cli", "watch", "abc"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"http://127.0.0.1:{port}" in result.stderr and "RUNLEDGER_URL" in result.stderr
    missing = cli(logs_stack, "get-run", "00000000-0000-0000-0000-000000000000", check=False)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert missing.stderr.strip() == "error: HTTP 404: flow_run_id: no flow run with id 00000000-0000-0000-0000-000000000000"
    # the scheduling commands too
    unreachable = subprocess.run([sys.executable, "-m", "runledger.services.cli", "late-runs"], env=env, capture_output=True, text=True, timeout=60)
    assert unreachable.returncode == 1 and unreachable.stderr.count("\n") == 1, unreachable.stderr
    assert f"http://127.0.0.1:{port}" in unreachable.stderr and "RUNLEDGER_URL" in unreachable.stderr
    unknown = cli(logs_stack, "why", "nope", check=False)
    assert unknown.returncode == 1 and unknown.stderr.strip() == "error: HTTP 404: flow_run_id: no flow run with id nope", unknown.stderr
