"""The log index's lexical bounds for a time range (Redis ZRANGE BYLEX), evaluated here as Redis
does, including times past the index's last representable instant (year 2286)."""

from __future__ import annotations

from datetime import datetime, timezone

from runledger.services.runtime.logstore import _bound


def in_range(member: str, lo: str, hi: str) -> bool:
    above = lo == "-" or (member > lo[1:] if lo[0] == "(" else member >= lo[1:])
    below = hi == "+" or (member < hi[1:] if hi[0] == "(" else member <= hi[1:])
    return above and below


def member_at(t: datetime) -> str:
    return f"{int(t.timestamp() * 1_000_000):016d}" + "0001796214265234-000000" + "I"


NOW = datetime(2026, 12, 2, 12, tzinfo=timezone.utc)
FAR = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)


def test_a_far_future_upper_bound_keeps_every_line_and_a_far_future_lower_bound_none():
    line = member_at(NOW)
    assert in_range(line, _bound(None, False, upper=False), _bound(FAR, True, upper=True))  # until 9999: everything
    assert in_range(line, _bound(None, False, upper=False), _bound(FAR, False, upper=True))
    assert not in_range(line, _bound(FAR, False, upper=False), _bound(None, True, upper=True))  # after 9999: nothing
    assert not in_range(line, _bound(FAR, True, upper=False), _bound(None, True, upper=True))


def test_ordinary_bounds_are_exclusive_or_inclusive_as_asked():
    line = member_at(NOW)
    assert in_range(line, _bound(NOW, True, upper=False), _bound(NOW, True, upper=True))
    assert not in_range(line, _bound(NOW, False, upper=False), _bound(None, True, upper=True))
    assert not in_range(line, _bound(None, False, upper=False), _bound(NOW, False, upper=True))
