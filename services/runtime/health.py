"""A minimal HTTP health endpoint for the consumer services.

``GET /healthz`` answers 200 while the process runs its loop; ``GET /readyz`` answers 200 once
the service owns its partitions and has rebuilt its state, 503 before. Kubernetes probes both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson


class HealthServer:
    def __init__(self, port: int, ready: Callable[[], bool], details: Callable[[], dict]) -> None:
        self.port, self._ready, self._details = port, ready, details
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if self.port:
            self._server = await asyncio.start_server(self._handle, "0.0.0.0", self.port)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            path = line.split(b" ")[1] if line.count(b" ") >= 2 else b"/"
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            ready = self._ready()
            if path.startswith(b"/readyz"):
                status = 200 if ready else 503
            elif path.startswith(b"/healthz"):
                status = 200
            else:
                status = 404
            body = orjson.dumps({"ready": ready, **self._details()})
            reason = {200: "OK", 503: "Service Unavailable", 404: "Not Found"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()
