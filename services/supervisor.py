"""Keeps ``runledger dev``'s service processes running: one that exits is restarted with
exponential backoff (logged), instead of the whole stack stopping.

Each service rebuilds its state from the log when it starts, so a restart loses nothing. The
infrastructure is different: the embedded broker keeps its log in memory only, and a restarted
one would be empty, so its exit stops the stack with a message saying why. Redis is restarted in
place by the stack when it can be (the read models are rebuilt from the log).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    stable_after: float = 60.0  # a process that ran this long starts again from ``initial``

    def next_delay(self, previous: float | None, ran_for: float) -> float:
        if previous is None or ran_for >= self.stable_after:
            return self.initial
        return min(previous * 2, self.maximum)


@dataclass
class Supervisor:
    stack: object  # runledger.services.devstack.Stack
    echo: Callable[[str], None]
    backoff: Backoff = field(default_factory=Backoff)
    fatal: tuple[str, ...] = ("broker",)
    restarts: dict[str, int] = field(default_factory=dict)
    _delays: dict[str, float] = field(default_factory=dict)
    _started: dict[str, float] = field(default_factory=dict)
    _due: dict[str, float] = field(default_factory=dict)

    def check(self) -> str | None:
        """Restart what exited and is due; returns why the whole stack must stop, or None."""
        now = time.monotonic()
        for name, process in list(self.stack.processes.items()):
            self._started.setdefault(name, now)
            code = process.poll()
            if code is None or name in self._due:
                continue
            log = self.stack.workdir / f"{name}.log"
            if name in self.fatal:
                return f"{name} exited with {code}; the embedded broker's log is gone with it, so the stack stops (see {log})"
            delay = self.backoff.next_delay(self._delays.get(name), now - self._started[name])
            self._delays[name] = delay
            self._due[name] = now + delay
            self.echo(f"{name} exited with {code}; restarting in {delay:.1f}s (see {log})")
        for name, due in list(self._due.items()):
            if now < due:
                continue
            del self._due[name]
            self.stack.restart(name)
            self._started[name] = time.monotonic()
            self.restarts[name] = self.restarts.get(name, 0) + 1
            self.echo(f"{name} restarted (restart #{self.restarts[name]})")
        return None
