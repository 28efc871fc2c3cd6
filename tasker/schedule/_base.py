"""The ``Schedule`` protocol and the checks every schedule shares."""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Protocol, runtime_checkable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["Schedule", "check_aware", "parse_zone"]


@runtime_checkable
class Schedule(Protocol):
    """A rule that yields run times ("slots").

    ``next_after(moment)`` returns the first slot strictly after ``moment``. ``moment`` must
    be timezone-aware; the result is aware. Implementations are pure and deterministic, so
    every replica of a service computes the same slots.
    """

    def next_after(self, moment: datetime, /) -> datetime:
        """Return the first slot strictly after ``moment``."""
        ...


def check_aware(moment: datetime, where: str) -> datetime:
    """Reject naive datetimes with a message that names the caller."""
    if not isinstance(moment, datetime):
        raise TypeError(f"{where}: expected an aware datetime, got {moment!r}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(
            f"{where}: {moment!r} is a naive datetime; pass an aware one (e.g. tzinfo=UTC)"
        )
    return moment


def parse_zone(tz: str | tzinfo, where: str) -> tzinfo:
    """Turn a zoneinfo name (or a tzinfo) into a tzinfo; unknown names raise ValueError."""
    if isinstance(tz, tzinfo):
        return tz
    if not isinstance(tz, str) or not tz:
        raise ValueError(f"{where}: tz must be a zone name such as 'Europe/Berlin', got {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{where}: tz {tz!r} is not a known time zone") from None
