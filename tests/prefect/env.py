"""The real, unmodified Prefect 1.x client in a virtualenv of its own (``.venv-prefect/``).

Prefect 1.4.1's dependencies conflict with ours (marshmallow 3, pendulum, dask, ...), so it cannot
live in ``.venv``. The tests create ``.venv-prefect`` themselves from the hash-locked
``requirements-prefect.lock`` (regenerate with ``python -m tests.prefect.env lock``), and stamp it
with the lock's hash so it is installed once per lock, on a fresh machine or CI as on a laptop.

``PrefectClient`` runs ``prefect`` CLI commands and Python snippets in that venv against one
RunLedger endpoint, each process with its own ``PREFECT__HOME_DIR``/``HOME`` and a time limit.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VENV = ROOT / ".venv-prefect"
REQUIREMENTS_IN = HERE / "requirements-prefect.in"
LOCK = HERE / "requirements-prefect.lock"
INSTALL_TIMEOUT = 600  # seconds; a cold install downloads about 40 wheels


def _stamp() -> Path:
    digest = hashlib.sha256(LOCK.read_bytes() + sys.version.encode()).hexdigest()[:16]
    return VENV / f".installed-{digest}"


def python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> Path:
    """Create or refresh ``.venv-prefect`` from the lock (idempotent; safe across processes)."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(ROOT / ".venv-prefect.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        stamp = _stamp()
        if stamp.exists() and python().exists():
            return VENV
        if VENV.exists():
            shutil.rmtree(VENV)
        # Prefect 1.4.1 runs on the same interpreter version as the tests (3.11).
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(VENV)], check=True, timeout=120)
        pip = [str(python()), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "--require-hashes", "--no-deps", "-r", str(LOCK)], check=True, timeout=INSTALL_TIMEOUT)
        check = [str(python()), "-c", "import prefect, marshmallow; print(prefect.__version__, marshmallow.__version__)"]
        versions = subprocess.run(check, check=True, capture_output=True, text=True, timeout=120).stdout.split()
        assert versions[0] == "1.4.1", versions
        stamp.touch()
        return VENV


def lock() -> None:
    """Regenerate the lock from ``requirements-prefect.in`` (needs uv, as ``./run lock`` uses)."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "uv==0.13.9"], check=True)
        uv = str(Path(sys.executable).parent / "uv")
    subprocess.run(
        [uv, "pip", "compile", str(REQUIREMENTS_IN.relative_to(ROOT)), "--generate-hashes", "--universal",
         "--python-version", "3.11", "-q", "-o", str(LOCK.relative_to(ROOT))],
        check=True,
        cwd=ROOT,
    )


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def check(self) -> "Result":
        assert self.returncode == 0, f"{self.args} exited with {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        return self


class PrefectClient:
    """Runs the Prefect 1.4.1 CLI and Python snippets against ``endpoint`` (RunLedger's root URL)."""

    def __init__(self, endpoint: str, home: Path, send_logs: bool = False, timeout: float = 60) -> None:
        self.endpoint, self.home, self.timeout = endpoint, home, timeout
        home.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PREFECT__HOME_DIR": str(home / ".prefect"),
            "PREFECT__BACKEND": "server",
            "PREFECT__SERVER__ENDPOINT": endpoint,
            "PREFECT__CLOUD__SEND_FLOW_RUN_LOGS": "true" if send_logs else "false",
            "PREFECT__LOGGING__LEVEL": "INFO",
            # Let nothing from the developer's machine in (a user config, a Cloud API key).
            "PREFECT__USER_CONFIG_PATH": str(home / "config.toml"),
        }

    def _run(self, args: list[str], cwd: Path | None, env: dict | None, timeout: float | None, stdin: str | None = None) -> Result:
        full_env = {**self.env, **(env or {})}
        try:
            done = subprocess.run(
                args, cwd=cwd or self.home, env=full_env, input=stdin, capture_output=True, text=True, timeout=timeout or self.timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(
                f"{args} did not finish in {exc.timeout} s\n--- stdout\n{exc.stdout}\n--- stderr\n{exc.stderr}"
            ) from None
        return Result(args, done.returncode, done.stdout, done.stderr)

    def cli(self, *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float | None = None) -> Result:
        """``prefect <args>`` in the Prefect venv."""
        return self._run([str(VENV / "bin" / "prefect"), *args], cwd, env, timeout)

    def python(self, code: str, cwd: Path | None = None, env: dict | None = None, timeout: float | None = None) -> Result:
        """A Python snippet in the Prefect venv (dedented; its stdout is the result)."""
        return self._run([str(python()), "-c", textwrap.dedent(code)], cwd, env, timeout)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "install"
    if command == "lock":
        lock()
    elif command == "install":
        print(ensure_venv())
    else:
        sys.exit("usage: python -m tests.prefect.env [install|lock]")
