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
def test_dev_starts_everything_and_ctrl_c_stops_it(tmp_path):
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
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        rest = process.stdout.read()
        assert "stopped" in rest
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health/live")
    finally:
        if process.poll() is None:
            process.kill()
