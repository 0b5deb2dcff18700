"""`runledger dev`'s supervisor: restarts with backoff, resets after a stable run, stops on the
memory-only broker. Real child processes stand in for the services (pure process handling)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from runledger.services.supervisor import Backoff, Supervisor


def test_backoff_doubles_up_to_the_maximum_and_resets_after_a_stable_run():
    b = Backoff(initial=0.5, maximum=4, stable_after=60)
    delays, previous = [], None
    for _ in range(6):
        previous = b.next_delay(previous, ran_for=1)
        delays.append(previous)
    assert delays == [0.5, 1, 2, 4, 4, 4]
    assert b.next_delay(4, ran_for=61) == 0.5


class ProcessStack:
    """The two things the supervisor uses of a Stack: its processes and restart()."""

    def __init__(self, workdir: Path, code: int) -> None:
        self.workdir, self.code = workdir, code
        self.processes: dict[str, subprocess.Popen] = {}
        self.started: list[str] = []

    def spawn(self, name: str) -> None:
        self.processes[name] = subprocess.Popen([sys.executable, "-c", f"import sys; sys.exit({self.code})"])
        self.started.append(name)

    def restart(self, name: str) -> None:
        self.spawn(name)


def _run_until(supervisor, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert supervisor.check() is None
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("not reached")


def test_an_exited_service_is_restarted_with_growing_delays(tmp_path):
    stack = ProcessStack(tmp_path, code=3)
    stack.spawn("projector")
    said: list[str] = []
    supervisor = Supervisor(stack, said.append, Backoff(initial=0.05, maximum=0.2, stable_after=60))
    _run_until(supervisor, lambda: supervisor.restarts.get("projector", 0) >= 3)
    assert stack.started[:4] == ["projector"] * 4
    exits = [line for line in said if "exited with 3" in line]
    assert exits[:3] == [
        f"projector exited with 3; restarting in {d:.1f}s (see {tmp_path / 'projector.log'})" for d in (0.05, 0.1, 0.2)
    ]
    assert "projector restarted (restart #1)" in said


def test_the_memory_only_broker_exiting_stops_the_stack(tmp_path):
    stack = ProcessStack(tmp_path, code=1)
    stack.spawn("broker")
    stack.processes["broker"].wait()
    supervisor = Supervisor(stack, print)
    reason = supervisor.check()
    assert reason is not None and reason.startswith("broker exited with 1; the embedded broker's log is gone")
    assert stack.started == ["broker"]
