"""What the ingress calls for scheduling (REST and GraphQL both): agents, the queue, ``why``,
late runs, concurrency limits, schedule switches and flow-group recovery settings. Reads come
from Redis (``store``); every change -- a limit set or deleted, an agent registered, a schedule
switched -- is a command through the ingress's command bus to the single writer, answered once
the writer's verdict is durable and the projection includes it (read-your-writes)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from runledger.domain.run_requests import FieldError, RequestError
from runledger.domain.agents import AGENTS_AGGREGATE
from runledger.domain.limits import LIMITS_AGGREGATE, limit_id_for
from runledger.domain.scheduling import QUEUE_PAGE, explain
from runledger.domain.times import assume_utc
from runledger.messages import commands as c
from runledger.messages.commands import Reply
from runledger.services.runtime.scheduling_store import SchedulingStore, now_ms
from runledger.topics import REGISTRY_AGGREGATE


def _utc(value: Any, loc: tuple) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise RequestError(422, [FieldError(loc, f"not an ISO-8601 time: {value!r}", "datetime_parsing")]) from None
    return assume_utc(parsed)


def _iso_ms(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat() if ms is not None else None


def _bad(loc: tuple, message: str, kind: str = "value_error") -> RequestError:
    return RequestError(422, [FieldError(loc, message, kind)])


class SchedulingUnavailable(Exception):
    pass


def _ok(reply: Reply) -> dict[str, Any]:
    if not reply.ok:
        from runledger.services.ingress.application import CommandRejected

        raise CommandRejected(reply.rejection)
    return reply.outcome or {}


class SchedulingFrontend:
    def __init__(self, application, store: SchedulingStore, settings) -> None:
        self.app, self.store, self.settings = application, store, settings

    # -- agents -------------------------------------------------------------------------------------
    async def register_agent(self, data: dict[str, Any]) -> dict[str, Any]:
        command = c.RegisterAgent(
            agent_type=data.get("type") or "",
            name=data.get("name"),
            labels=sorted(set(map(str, data.get("labels") or []))),
            tenant_id=data.get("tenant_id"),
            agent_config_id=data.get("agent_config_id"),
            core_version=data.get("core_version"),
        )
        agent_id = _ok(await self.app.bus.send(AGENTS_AGGREGATE, command))["agent_id"]
        await self.store.touch_agent(agent_id)  # registering is a contact (the agent is readable now)
        return {"id": agent_id}

    async def agents(self) -> list[dict[str, Any]]:
        out = []
        for a in await self.store.agents():
            ms = a.pop("last_queried_ms")
            out.append({**a, "last_queried": _iso_ms(ms)})
        return out

    # -- the queue ----------------------------------------------------------------------------------
    async def runs_in_queue(
        self, labels: list[str] | None, before: Any, agent_id: str | None = None, limit: int = QUEUE_PAGE, touch: bool = True
    ) -> list[str]:
        if agent_id and touch:
            await self.store.touch_agent(agent_id)
        cutoff = _utc(before, ("body", "before")) or datetime.now(timezone.utc)
        offer_ms = int(self.settings.scheduling_offer_lease_seconds * 1000)
        return await self.store.runs_in_queue(sorted(set(labels or [])), int(cutoff.timestamp() * 1000), limit, agent_id, offer_ms)

    async def why(self, run_id: str) -> dict[str, Any]:
        run = await self.app.get_flow_run(run_id)
        if not await self.store.service_alive():
            # Slot use and the queue are the scheduling service's: without it there is no diagnosis.
            raise SchedulingUnavailable("no scheduling service is running; start it (runledger service scheduling) for a diagnosis")
        now = datetime.now(timezone.utc)
        agents = [
            {**a, "last_queried": datetime.fromtimestamp(a["last_queried_ms"] / 1000, timezone.utc) if a["last_queried_ms"] else None}
            for a in await self.store.agents()
        ]
        limits = await self.store.limits("label")
        mine = [label for label in run.get("labels") or [] if label in limits]
        usage = await self.store.usage("label", mine)
        return explain(
            run,
            agents,
            {label: limits[label]["limit"] for label in mine},
            usage,
            now,
            timedelta(seconds=self.settings.scheduling_agent_healthy_seconds),
        )

    async def late_runs(self, threshold_seconds: float | None, limit: int = 100) -> dict[str, Any]:
        threshold = self.settings.scheduling_late_seconds if threshold_seconds is None else threshold_seconds
        runs, total = await self.store.late_runs(now_ms() - int(threshold * 1000), limit)
        return {"count": total, "threshold_seconds": threshold, "runs": runs}

    # -- concurrency limits -------------------------------------------------------------------------
    async def set_limit(self, kind: str, name: str | None, limit: Any) -> dict[str, Any]:
        what = "label" if kind == "label" else "tag"
        if not name:
            raise _bad(("body", what), f"a {what} is required", "missing")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise _bad(("body", "limit"), "limit must be an integer >= 0")
        _ok(await self.app.bus.send(LIMITS_AGGREGATE, c.SetConcurrencyLimit(kind=kind, name=name, limit=limit)))
        # Answered once the projection includes it: the limit is readable (and enforced) now.
        doc = (await self.store.limits(kind)).get(name)
        if doc is None:  # deleted again meanwhile by someone else: answer what was set
            doc = {"id": limit_id_for(kind, name), "name": name, "limit": limit, "kind": kind}
        return self._limit_view(doc, None)

    async def delete_limit(self, limit_id: str) -> bool:
        reply = await self.app.bus.send(LIMITS_AGGREGATE, c.DeleteConcurrencyLimit(limit_id=limit_id))
        if not reply.ok and reply.rejection.code == "NOT_FOUND":
            return False
        _ok(reply)
        return True

    async def limits(self, kind: str) -> list[dict[str, Any]]:
        limits = await self.store.limits(kind)
        usage = await self.store.usage(kind, sorted(limits))
        return [self._limit_view(doc, usage.get(name)) for name, doc in sorted(limits.items())]

    async def import_legacy(self) -> dict[str, int]:
        """Upgrade: limits and agents that an older RunLedger wrote straight into Redis (not in the
        log) are sent to the writer as commands, then their old keys are dropped. Idempotent: a
        second ingress doing the same at once sets the same values (no-ops in the writer)."""
        k, redis = self.store.k, self.store.redis
        legacy = [k.legacy_limits("label"), k.legacy_limits("tag"), k.legacy_limit_ids, k.legacy_agents]
        if not await redis.exists(*legacy):
            return {"limits": 0, "agents": 0}
        imported = {"limits": 0, "agents": 0}
        for kind in ("label", "tag"):
            for raw in (await redis.hgetall(k.legacy_limits(kind))).values():
                doc = orjson.loads(raw)
                await self.set_limit(kind, doc["name"], int(doc["limit"]))
                imported["limits"] += 1
        for raw in (await redis.hgetall(k.legacy_agents)).values():
            doc = orjson.loads(raw)
            await self.register_agent(doc)
            imported["agents"] += 1
        await redis.delete(*legacy)
        return imported

    @staticmethod
    def _limit_view(doc: dict[str, Any], used: int | None) -> dict[str, Any]:
        key = "label" if doc["kind"] == "label" else "tag"
        return {"id": doc["id"], "name": doc["name"], key: doc["name"], "limit": doc["limit"], "used": used, "updated": _iso_ms(doc.get("updated_ms"))}

    # -- schedules and recovery settings (flow-group changes through the writer) --------------------------
    async def _group_of_flow(self, flow_id: str) -> str:
        flow = await self.app.get_flow(flow_id)
        return flow["version_group_id"]

    async def set_schedule_active(self, flow_id: str, active: bool) -> bool:
        group_id = await self._group_of_flow(flow_id)
        await self._group_change(group_id, {"schedule_active": active})
        return True

    async def set_group_settings(self, group_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        allowed = {"lazarus_enabled", "heartbeat_enabled"}
        unknown = set(changes) - allowed
        if unknown:
            raise _bad(("body",), f"unknown settings {sorted(unknown)}; allowed: {sorted(allowed)}")
        for k, v in changes.items():
            if not isinstance(v, bool):
                raise _bad(("body", k), "must be true or false")
        group = await self.app.read.flow_group(group_id)
        if group is None:
            raise RequestError(404, [FieldError(("path", "flow_group_id"), f"no flow group with id {group_id}", "not_found")])
        settings = {**(group.get("settings") or {}), **changes}
        await self._group_change(group_id, {"settings": settings})
        return settings

    async def _group_change(self, group_id: str, changes: dict[str, Any]) -> None:
        reply = await self.app.bus.send(REGISTRY_AGGREGATE, c.UpdateFlowGroup(flow_group_id=group_id, changes=changes))
        if not reply.ok:
            from runledger.services.ingress.application import CommandRejected

            raise CommandRejected(reply.rejection)
