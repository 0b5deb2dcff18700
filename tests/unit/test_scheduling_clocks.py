"""Prefect 1.x serialized schedules: interval, cron with a timezone (across DST), dates, clock
parameter defaults and labels, bounds; deterministic run ids."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from runledger.domain.scheduling import scheduled_run_id
from runledger.domain.scheduling_clocks import UnsupportedSchedule, next_occurrences, parse_datetime

UTC = timezone.utc


def schedule(*clocks, **extra):
    return {"type": "Schedule", "__version__": "1.4.1", "clocks": list(clocks), "filters": [], "or_filters": [],
            "not_filters": [], "adjustments": [], **extra}


def test_interval_clock_from_its_anchor_with_defaults_and_labels():
    clock = {"type": "IntervalClock", "interval": 3_600_000_000, "start_date": {"dt": "2026-01-01T00:30:00", "tz": "UTC"},
             "parameter_defaults": {"x": 1}, "labels": ["a"]}
    got = next_occurrences(schedule(clock), datetime(2026, 5, 1, 10, 30, tzinfo=UTC), 3)
    assert [o.start.isoformat() for o in got] == ["2026-05-01T11:30:00+00:00", "2026-05-01T12:30:00+00:00", "2026-05-01T13:30:00+00:00"]
    assert got[0].parameter_defaults == {"x": 1} and got[0].labels == ["a"] and got[0].clock == 0


def test_cron_clock_keeps_local_time_across_dst():
    clock = {"type": "CronClock", "cron": "0 9 * * *", "start_date": {"dt": "2026-01-01T00:00:00", "tz": "Europe/Paris"}}
    got = next_occurrences(schedule(clock), datetime(2026, 3, 27, 12, tzinfo=UTC), 4)
    assert [o.start.isoformat() for o in got] == [
        "2026-03-28T08:00:00+00:00", "2026-03-29T07:00:00+00:00", "2026-03-30T07:00:00+00:00", "2026-03-31T07:00:00+00:00"]


def test_clocks_merge_in_order_and_respect_bounds_and_until():
    a = {"type": "IntervalClock", "interval": 60_000_000, "start_date": "2026-01-01T00:00:00Z", "end_date": "2026-01-01T00:03:00Z"}
    b = {"type": "DatesClock", "dates": [{"dt": "2026-01-01T00:01:30", "tz": "UTC"}], "labels": ["b"]}
    got = next_occurrences(schedule(a, b), datetime(2026, 1, 1, tzinfo=UTC), 10)
    assert [(o.start.strftime("%M:%S"), o.clock) for o in got] == [("01:00", 0), ("01:30", 1), ("02:00", 0), ("03:00", 0)]
    until = next_occurrences(schedule(a), datetime(2026, 1, 1, tzinfo=UTC), 10, until=datetime(2026, 1, 1, 0, 2, tzinfo=UTC))
    assert len(until) == 2


def test_old_style_schedules_and_unsupported_parts():
    old = {"type": "IntervalSchedule", "interval": 60_000_000, "start_date": "2026-01-01T00:00:00+00:00"}
    assert len(next_occurrences(old, datetime(2026, 1, 1, tzinfo=UTC), 2)) == 2
    with pytest.raises(UnsupportedSchedule):
        next_occurrences(schedule(filters=[{"fn": "prefect.schedules.filters.is_weekday"}]), datetime(2026, 1, 1, tzinfo=UTC), 2)
    with pytest.raises(UnsupportedSchedule):
        next_occurrences(schedule({"type": "RRuleClock"}), datetime(2026, 1, 1, tzinfo=UTC), 2)


def test_run_ids_are_deterministic_per_flow_clock_instant_and_epoch():
    t = parse_datetime({"dt": "2026-01-01T09:00:00", "tz": "Europe/Paris"})
    same = parse_datetime("2026-01-01T08:00:00Z")
    assert scheduled_run_id("f", t) == scheduled_run_id("f", same)
    assert len({scheduled_run_id("f", t), scheduled_run_id("f", t, 1), scheduled_run_id("f", t, 0, 1), scheduled_run_id("g", t)}) == 4


RECORDED = json.loads((Path(__file__).parent.parent / "fixtures" / "prefect_clocks.json").read_text())


def _recorded(kind: str):
    return list(zip(RECORDED[kind]["cases"], RECORDED[kind]["expected"]))


def _check_against_prefect(clock: dict, zone: str, start: str, after: str, expected: list[str]) -> None:
    schedule = {"type": "Schedule", "clocks": [{**clock, "start_date": {"dt": start, "tz": zone}}]}
    strictly_after = [e for e in expected if datetime.fromisoformat(e) > datetime.fromisoformat(after)]  # Prefect may give one at `after`
    got = [o.start.isoformat() for o in next_occurrences(schedule, datetime.fromisoformat(after), len(strictly_after))]
    assert got == strictly_after


# Recorded from Prefect's own clocks (tests/fixtures/record_prefect_clocks.py): anchors and dates
# around DST changes in four zones with DST and UTC.
@pytest.mark.parametrize("case, expected", _recorded("interval"), ids=lambda v: str(v)[:60])
def test_interval_clocks_give_what_prefect_1_4_1_gives_across_dst(case, expected):
    zone, start, seconds, after = case
    _check_against_prefect({"type": "IntervalClock", "interval": seconds * 1_000_000}, zone, start, after, expected)


# A daily cron time that does not exist on the day clocks go forward (02:30 in New York on
# 2024-03-10): Prefect (croniter 7 with pytz) runs it at 03:00, RunLedger at 03:30 (02:30 moved
# forward by the gap, as for interval clocks). Kept as a known difference; strict, so a change
# either way is noticed.
GAP_DIFFERENCES = {("America/New_York", "2024-03-07T00:00:00", "30 2 * * *")}


def _cron_cases():
    for case, expected in _recorded("cron"):
        known = tuple(case[:3]) in GAP_DIFFERENCES
        yield pytest.param(case, expected, marks=[pytest.mark.xfail(strict=True, reason="a nonexistent local time")] if known else [])


@pytest.mark.parametrize("case, expected", list(_cron_cases()), ids=lambda v: str(v)[:60])
def test_cron_clocks_give_what_prefect_1_4_1_gives_across_dst(case, expected):
    zone, start, cron, after = case
    _check_against_prefect({"type": "CronClock", "cron": cron}, zone, start, after, expected)
