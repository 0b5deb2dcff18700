"""Restart safety of the log service, both engines: the log worker is killed with SIGKILL six
times (half of them while it is still starting) while records are produced straight to the
``logs`` topic; afterwards every line of every acknowledged record is stored exactly once.

The loop itself is ``bench/logs_restart.py`` (``python -m bench.logs_restart`` runs more rounds,
SIGTERM, or Faust resuming from its own commits; ``--rounds 3`` gives 30 kills per engine). Six
rather than ten here keeps the suite inside its 15 minutes on 2 cores."""

from __future__ import annotations

import signal

import pytest

from bench.logs_restart import run_restarts


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["faust", "aiokafka"])
def test_repeated_kill_9_of_the_log_worker_loses_and_duplicates_nothing(engine):
    out = run_restarts(engine, restarts=6, sig=signal.SIGKILL, seed=7, log=lambda *_: None)
    assert out["acked_records"] > 1000, out
    assert out["lost_lines"] == 0, f"{out['lost_lines']} acknowledged lines lost (records {out['lost_records'][:20]}); see {out['workdir']}"
    assert out["duplicated_lines"] == 0, out
