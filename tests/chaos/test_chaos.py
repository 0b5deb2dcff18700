"""The short chaos run (``bench/chaos.py``) in CI: sustained creates with repeated keys, state
updates and log writes while every service is killed -9 and restarted, the broker is paused and
Redis restarts empty, each once; then every invariant is checked from the event log. Asserts the
invariants, not speed: the timeouts are generous for a loaded 2-core machine."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Checks that fail when a Redis restart is not followed by a restart of the scheduling service
# (whether it is depends on timing): reported, not yet fixed (services/scheduling is in progress).
KNOWN_SCHEDULING = ("concurrency-slot holders", "scheduling keys")


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
    expected = {"ingress", "transitions", "projector", "logs", "broker-pause", "redis-empty"}
    if importlib.util.find_spec("runledger.services.scheduling") is not None:
        expected.add("scheduling")
    assert expected <= faults, faults
    assert all(f["ready_after"] is not None for f in data["faults"]), report
    failed = [c for c in data["checks"] if not c["ok"]]
    known = [c for c in failed if c["name"].startswith(KNOWN_SCHEDULING)]
    assert [c for c in failed if c not in known] == [], report
    totals = data["totals"]
    assert all(totals[kind]["acknowledged"] > 0 for kind in ("create", "state", "logs")), totals
    if known:
        pytest.xfail("known: the scheduling service does not rewrite its derived keys (slot holders, due queue, run "
                     "facts) after Redis restarts empty; only runs that change again are rewritten: " + known[0]["detail"])
    assert result.returncode == 0, report
