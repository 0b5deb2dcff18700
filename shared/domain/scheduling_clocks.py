"""Prefect 1.x schedules, pure: the serialized ``Schedule`` a flow is registered with (as
``prefect register`` sends it: ``{"type": "Schedule", "clocks": [...], ...}``), and the next start
times of its clocks.

Clocks: ``IntervalClock`` (``interval`` in microseconds, as Prefect's marshmallow ``TimeDelta``
serializes it; ``start_date`` anchors it), ``CronClock`` (``cron``, ``day_or``, evaluated in the
timezone of its ``start_date``, so "0 9 * * *" in Europe/Paris stays 9:00 across DST), and
``DatesClock`` (``dates``). Each may carry ``parameter_defaults`` and ``labels`` for its runs, and
``start_date`` / ``end_date``. Datetimes come as Prefect's ``DateTimeTZ`` ``{"dt": naive ISO,
"tz": name}`` or as ISO strings. The pre-clock ``IntervalSchedule`` / ``CronSchedule`` forms are
read as a single clock. Filters and adjustments are not applied (a schedule that has any is
refused at evaluation with ``UnsupportedSchedule``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from runledger.domain.times import assume_utc

DEFAULT_INTERVAL_ANCHOR = datetime(2019, 1, 1, tzinfo=timezone.utc)  # Prefect's IntervalClock default


class UnsupportedSchedule(ValueError):
    pass


@dataclass(frozen=True)
class Occurrence:
    start: datetime
    clock: int
    parameter_defaults: dict[str, Any] = field(default_factory=dict)
    labels: list[str] | None = None


def parse_datetime(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, dict):
        dt = datetime.fromisoformat(str(value["dt"]).replace("Z", "+00:00"))
        tz = ZoneInfo(value.get("tz") or "UTC")
        return dt.replace(tzinfo=tz) if dt.tzinfo is None else dt.astimezone(tz)
    return assume_utc(datetime.fromisoformat(str(value).replace("Z", "+00:00")))


def clocks_of(schedule: dict[str, Any]) -> list[dict[str, Any]]:
    kind = schedule.get("type")
    if kind in ("IntervalSchedule", "CronSchedule"):
        return [{**schedule, "type": kind.replace("Schedule", "Clock")}]
    if any(schedule.get(k) for k in ("filters", "or_filters", "not_filters", "adjustments")):
        raise UnsupportedSchedule("schedule filters and adjustments are not supported")
    clocks = schedule.get("clocks") or []
    bounds = {k: schedule.get(k) for k in ("start_date", "end_date") if schedule.get(k)}
    return [{**bounds, **c} if bounds else c for c in clocks]


def _interval_events(clock: dict, after: datetime, n: int) -> list[datetime]:
    """As Prefect 1.x's IntervalClock computes them (pendulum): the k-th start is the anchor plus
    k intervals, added on the anchor's wall clock once the span holds whole days (a daily clock
    at 9:00 stays at 9:00 across DST), in absolute time below a day; k begins at the first span
    that ends after ``after`` (counted in absolute time), and starts before ``after`` are skipped."""
    interval = timedelta(microseconds=int(clock["interval"]))
    if interval <= timedelta(0):
        raise UnsupportedSchedule("an IntervalClock needs a positive interval")
    anchor = parse_datetime(clock.get("start_date")) or DEFAULT_INTERVAL_ANCHOR
    k = 0 if after < anchor else (after - anchor) // interval + 1
    out: list[datetime] = []
    while len(out) < n:
        span = interval * k
        k += 1
        # pendulum's add(days=, seconds=): with whole days, all of it on the wall clock; without, in absolute time
        start = _on_wall_clock(anchor, span).astimezone(timezone.utc) if span.days else anchor.astimezone(timezone.utc) + span
        if start >= after:
            out.append(start)
    return out


def _on_wall_clock(t: datetime, span: timedelta) -> datetime:
    """``t`` plus ``span`` on its zone's wall clock, as pendulum resolves the result: a wall time
    that happens twice (clocks set back) is the later one; one that never happens (clocks set
    forward) moves forward by the gap."""
    wall = t + span  # the same tzinfo: wall-clock arithmetic; fold=0 moves a gap forward
    later = wall.replace(fold=1)
    if later.utcoffset() != wall.utcoffset():
        back = later.astimezone(timezone.utc).astimezone(wall.tzinfo)
        if back.replace(tzinfo=None, fold=0) == wall.replace(tzinfo=None):  # happens twice, not a gap
            return later
    return wall


def _cron_events(clock: dict, after: datetime, n: int) -> list[datetime]:
    start = parse_datetime(clock.get("start_date"))
    tz = start.tzinfo if start is not None else timezone.utc
    base = max(after, start - timedelta(microseconds=1)) if start is not None else after
    # Iterate in naive local wall time and attach the zone afterwards: croniter's own handling of
    # aware datetimes across a DST change repeats or skips runs.
    it = croniter(clock["cron"], base.astimezone(tz).replace(tzinfo=None), day_or=clock.get("day_or", True))
    out = []
    while len(out) < n:
        local = it.get_next(datetime).replace(tzinfo=tz)
        if local > after:
            out.append(local)
    return out


def _dates_events(clock: dict, after: datetime, n: int) -> list[datetime]:
    dates = sorted(d for d in (parse_datetime(x) for x in clock.get("dates") or []) if d and d > after)
    return dates[:n]


EVENTS = {"IntervalClock": _interval_events, "CronClock": _cron_events, "DatesClock": _dates_events}


def next_occurrences(schedule: dict[str, Any], after: datetime, n: int, until: datetime | None = None) -> list[Occurrence]:
    """The next ``n`` start times strictly after ``after`` over all clocks (merged, in order;
    the same instant from two clocks gives two runs, as in Prefect), none past ``until``."""
    out: list[Occurrence] = []
    for index, clock in enumerate(clocks_of(schedule)):
        events = EVENTS.get(clock.get("type"))
        if events is None:
            raise UnsupportedSchedule(f"unsupported clock type {clock.get('type')!r}")
        end = parse_datetime(clock.get("end_date"))
        for start in events(clock, after, n):
            if start <= after or (end is not None and start > end) or (until is not None and start > until):
                continue
            out.append(Occurrence(start.astimezone(timezone.utc), index, dict(clock.get("parameter_defaults") or {}), clock.get("labels")))
    out.sort(key=lambda o: (o.start, o.clock))
    return out[:n]
