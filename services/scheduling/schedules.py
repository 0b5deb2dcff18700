"""Flow schedules: the instance that owns the registry's events partition creates the runs of
every active schedule ahead of time (the next ``scheduling_horizon_runs``, optionally capped at
``scheduling_horizon_seconds``), each with a run id derived from (flow, clock, start time,
activation epoch): sending it again after a restart, a redelivery or a takeover by another
instance is a no-op in the writer, so no run is ever created twice and nothing expires."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from runledger import api_models as api
from runledger.domain.run_requests import RequestError, resolve_flow_run
from runledger.domain.scheduling import scheduled_idempotency_key, scheduled_run_id
from runledger.domain.scheduling_clocks import UnsupportedSchedule, next_occurrences
from runledger.messages import commands as c


class Scheduler:
    def __init__(self, settings, bus, registry, log) -> None:
        self.settings, self.bus, self.registry, self.log = settings, bus, registry, log
        self.created = 0
        self.sent: set[str] = set()  # run ids accepted by the writer (created or already there)
        self.bad: set[str] = set()  # flows whose schedule cannot be evaluated (logged once)

    async def tick(self, now: datetime) -> None:
        n = self.settings.scheduling_horizon_runs
        until = now + timedelta(seconds=self.settings.scheduling_horizon_seconds) if self.settings.scheduling_horizon_seconds else None
        sends = []
        for flow in list(self.registry.flows.values()):
            if not self.registry.schedule_active(flow.id):
                continue
            try:
                occurrences = next_occurrences(flow.schedule, now, n, until)
            except (UnsupportedSchedule, ValueError, KeyError, TypeError) as exc:
                if flow.id not in self.bad:
                    self.bad.add(flow.id)
                    self.log.warning("flow schedule cannot be evaluated", flow_id=flow.id, error=str(exc)[:300])
                continue
            group = self.registry.groups.get(flow.version_group_id) or {}
            epoch = self.registry.epochs.get(flow.version_group_id, 0)
            for o in occurrences:
                run_id = scheduled_run_id(flow.id, o.start, o.clock, epoch)
                if run_id in self.sent:
                    continue
                try:
                    request = api.CreateFlowRunRequest(
                        flow_id=flow.id,
                        parameters=o.parameter_defaults or None,
                        labels=o.labels,
                        scheduled_start_time=o.start,
                        idempotency_key=scheduled_idempotency_key(flow.id, o.start, o.clock),
                    )
                    spec = resolve_flow_run(flow, False, group, request, run_id, now)
                except (RequestError, ValueError) as exc:
                    if flow.id not in self.bad:
                        self.bad.add(flow.id)
                        self.log.warning("scheduled run cannot be made", flow_id=flow.id, error=str(exc)[:300])
                    break
                sends.append((run_id, c.CreateFlowRun(spec=spec)))
        if not sends:
            return
        results = await asyncio.gather(*(self.bus.send(run_id, command) for run_id, command in sends), return_exceptions=True)
        for (run_id, _), result in zip(sends, results):
            if isinstance(result, Exception) or not result.ok:
                continue  # retried on the next tick
            self.sent.add(run_id)
            if (result.outcome or {}).get("created"):
                self.created += 1
        if len(self.sent) > 1_000_000:
            self.sent.clear()
