"""Times as the API reads them: a time without a zone is UTC. Pure."""

from __future__ import annotations

from datetime import datetime, timezone


def assume_utc(t: datetime) -> datetime:
    """``t`` with UTC as its zone if it has none; an aware time as it is."""
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """A time without a zone is UTC; every time is stored in UTC."""
    if value is None:
        return None
    try:
        return assume_utc(value).astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:30+01:00 is before the year 1 in UTC
        raise ValueError("out of range: in UTC it falls outside the years 1 to 9999") from None
