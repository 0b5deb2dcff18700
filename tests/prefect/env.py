"""The real, unmodified Prefect 1.x client in a virtualenv of its own (``.venv-prefect/``).

Prefect 1.4.1's dependencies conflict with ours (marshmallow 3, pendulum, dask, ...), so it cannot
live in ``.venv``. The tests create ``.venv-prefect`` themselves from the hash-locked
``requirements-prefect.lock`` (regenerate with ``python -m tests.prefect.env lock``), and stamp it
with the lock's hash so it is installed once per lock, on a fresh machine or CI as on a laptop.

``PrefectClient`` runs ``prefect`` CLI commands and Python snippets in that venv against one
RunLedger endpoint, each process with its own ``PREFECT__HOME_DIR``/``HOME`` and a time limit;
``PrefectClient.spawn`` starts a long-lived one (an agent, ``prefect run --watch``) as a
``Proc`` whose output is read as it comes.
"""

from __future__ import annotations

import codecs
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
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


def _default_interrupt() -> None:
    """In the child: SIGINT back to its default. A test run started in the background of a
    non-interactive shell (as a CI runner may) inherits SIGINT ignored, and Python then installs
    no KeyboardInterrupt handler, so the Ctrl-C journeys would see nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Proc:
    """A running process (in a session of its own) whose merged stdout and stderr are read as they
    come: raw ``os.read`` chunks on a thread, never lines, since a click prompt ends without a
    newline. Every wait has a deadline; ``stop`` ends the process and everything it started."""

    def __init__(self, args: list[str], env: dict, cwd: Path) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            args, env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_default_interrupt,
        )
        self._text = ""
        self._eof = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"read-{self.popen.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = self.popen.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            with self._changed:
                self._text += decoder.decode(chunk, final=not chunk)
                self._eof = not chunk
                self._changed.notify_all()
            if not chunk:
                return

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def output(self) -> str:
        with self._changed:
            return self._text

    def _describe(self) -> str:
        return f"{self.args[:4]}... (pid {self.pid}, exit code {self.popen.poll()})\n--- output\n{self.output[-6000:]}"

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match:
        """The first match of regex ``pattern`` in the output (from offset ``start``), waiting for
        it at most ``timeout`` seconds; fails if the process ends first or the time runs out."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = regex.search(self._text, start)
                if found:
                    return found
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    break
                self._changed.wait(min(left, 1.0))
        why = "exited" if self._eof else f"printed nothing matching in {timeout} s"
        raise AssertionError(f"{pattern!r} not seen: the process {why}: {self._describe()}")

    def send(self, text: str) -> None:
        self.popen.stdin.write(text.encode())
        self.popen.stdin.flush()

    def interrupt(self) -> None:
        """What Ctrl-C does: SIGINT to the process."""
        self.popen.send_signal(signal.SIGINT)

    def wait(self, timeout: float) -> int:
        """The exit code, waiting at most ``timeout`` seconds (then the process is stopped and the
        wait fails), once the whole output is read."""
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"did not exit within {timeout} s: {self._describe()}") from None
        self._reader.join(timeout=10)
        return code

    def _family(self) -> list[int]:
        """This process, its descendants (from /proc, whatever session they moved to) and what is
        left in its process group (orphans whose parent exited: they are reparented, but keep the
        group of the session it started, ``start_new_session``)."""
        children: dict[int, list[int]] = {}
        group: list[int] = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid = int(stat.parent.name)
            children.setdefault(int(fields[1]), []).append(pid)
            if int(fields[2]) == self.pid:
                group.append(pid)
        family, todo = [], [self.pid, *group] if self.popen.poll() is None else group
        while todo:
            pid = todo.pop()
            if pid not in family:
                family.append(pid)
                todo += children.get(pid, [])
        return family

    def descendants_with_env(self, name: str, value: str) -> list[int]:
        """Descendants whose environment has ``name=value`` (the processes of one flow run under
        an agent: the flow-run process and its heartbeat process)."""
        wanted = f"{name}={value}".encode()
        found = []
        for pid in self._family():
            if pid == self.pid:
                continue
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if wanted in environ:
                found.append(pid)
        return found

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the process and everything it started, SIGKILL to whatever is left after
        ``grace``. Signals go to pids just read from /proc, never to a process group id that may
        have been reused since the process exited."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            family = self._family()
            for pid in family:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(_alive(p) for p in family):
                try:
                    self.popen.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    pass
            if not any(_alive(p) for p in family):
                break
        self.popen.wait(timeout=10)
        self._reader.join(timeout=10)
        if self.popen.stdin:
            try:
                self.popen.stdin.close()
            except OSError:
                pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


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

    def spawn(self, *args: str, cwd: Path | None = None, env: dict | None = None) -> Proc:
        """``prefect <args>`` left running: a ``Proc`` to read, signal and stop (the caller stops it)."""
        full_env = {**self.env, "PYTHONUNBUFFERED": "1", **(env or {})}
        return Proc([str(VENV / "bin" / "prefect"), *args], full_env, cwd or self.home)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "install"
    if command == "lock":
        lock()
    elif command == "install":
        print(ensure_venv())
    else:
        sys.exit("usage: python -m tests.prefect.env [install|lock]")
