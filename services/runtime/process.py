"""Running a consumer service as a process: signals stop it cleanly, a crash exits non-zero."""

from __future__ import annotations

import asyncio
import os
import signal

import uvloop


def run_until_stopped(service) -> None:
    """``service`` has ``run()``, a ``stopping`` event and a ``log``."""

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stopping.set)
        await service.run()

    try:
        uvloop.run(runner())  # the same loop uvicorn gives the ingress: cheaper socket writes
    except Exception:
        service.log.exception("service failed")
        os._exit(1)  # let the supervisor restart us; state is rebuilt from the log
