"""The wheel installs the import name ``runledger`` from the folders ``shared/`` and ``services/``,
with the GraphQL schema files, and its modules import from outside the source tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_runledger_and_its_schema_files(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    wheel = next(tmp_path.glob("runledger-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "runledger/domain/ledger.py" in names
    assert "runledger/services/runtime/consumer.py" in names
    assert "runledger/services/ingress/graphql/base.graphql" in names
    assert not any(n.startswith(("shared/", "services/", "tests/")) for n in names), "the folders must not leak as packages"

    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    probe = (
        "import runledger, runledger.services.ingress.app as app, runledger.services.cli;"
        f"assert runledger.__file__.startswith({str(target)!r}), runledger.__file__;"
        "app.create_app();"
        "print('ok')"
    )
    # From a directory outside the source tree, with the unpacked wheel first on the path.
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
