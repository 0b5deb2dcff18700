"""Flow schedules: creates the runs of active schedules ahead of time (see ``tick``)."""

from __future__ import annotations

from datetime import datetime


class Scheduler:
    def __init__(self, settings, bus, registry, log) -> None:
        self.settings, self.bus, self.registry, self.log = settings, bus, registry, log
        self.created = 0

    async def tick(self, now: datetime) -> None:
        return None
