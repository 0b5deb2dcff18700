"""The short chaos run (``bench/chaos.py``) in CI: sustained creates with repeated keys, state
updates and log writes while every service is killed -9 and restarted, the broker is paused and
Redis restarts empty, each once; then every invariant is checked from the event log. Asserts the
invariants, not speed: the timeouts are generous for a loaded 2-core machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_chaos_short(tmp_path):
    out = tmp_path / "chaos.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--seconds", "45", "--rounds", "1", "--conc", "8", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    report = result.stdout[-12000:] + result.stderr[-4000:]
    assert out.exists(), report
    data = json.loads(out.read_text())
    faults = {f["name"] for f in data["faults"]}
    expected = {"ingress", "transitions", "projector", "scheduling", "logs", "broker-pause", "redis-empty"}
    assert expected <= faults, faults
    assert all(f["ready_after"] is not None for f in data["faults"]), report
    assert [c for c in data["checks"] if not c["ok"]] == [], report
    totals = data["totals"]
    assert all(totals[kind]["acknowledged"] > 0 for kind in ("create", "state", "logs")), totals
    assert result.returncode == 0, report
