"""Wall-clock schedules (``Daily``, ``Weekly``, ``Monthly``) and the DST rules they share.

DST policy, shared with :class:`~tasker.schedule.Cron`:

- A local time that does not exist (inside a spring-forward gap) fires at the first instant
  after the gap, e.g. 02:30 on the day Europe/Berlin jumps from 02:00 to 03:00 fires at 03:00.
- A local time that exists twice (inside a fall-back overlap) fires once, at its first
  occurrence (``fold=0``).

Comparisons are made in UTC: Python compares two datetimes of the same zone by wall time
and ignores ``fold``, which would confuse the two occurrences of a repeated hour.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from ._base import check_aware, parse_zone

__all__ = ["Daily", "Monthly", "Weekly", "resolve_local", "zone_name"]

_WEEKDAYS = {
    name: index
    for index, names in enumerate(
        [
            ("mon", "monday"),
            ("tue", "tuesday"),
            ("wed", "wednesday"),
            ("thu", "thursday"),
            ("fri", "friday"),
            ("sat", "saturday"),
            ("sun", "sunday"),
        ]
    )
    for name in names
}


def zone_name(tz: tzinfo) -> str:
    """The zone's name for reprs (``key`` for zoneinfo, else ``str``)."""
    return str(getattr(tz, "key", None) or tz)


def resolve_local(day: date, at: time, tz: tzinfo) -> datetime:
    """The UTC instant at which local ``day at`` fires, per the module's DST policy."""
    naive = datetime.combine(day, at)
    first = naive.replace(tzinfo=tz, fold=0)
    as_utc = first.astimezone(UTC)
    if as_utc.astimezone(tz).replace(tzinfo=None) == naive:
        return as_utc  # exists (the first occurrence if repeated)
    # Inside a gap: the transition instant lies between the two readings of the wall time
    # (fold=1 uses the offset after the transition, fold=0 the one before). Transitions fall
    # on whole seconds, so bisect on POSIX seconds for the first one with the new offset.
    low = int(naive.replace(tzinfo=tz, fold=1).timestamp())
    high = int(as_utc.timestamp()) + 1
    if low > high:
        low, high = high, low
    after = datetime.fromtimestamp(high, UTC).astimezone(tz).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, UTC).astimezone(tz).utcoffset() == after:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _check_int(value: object, name: str, low: int, high: int, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner} {name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{owner} {name} must be from {low} to {high}, got {value!r}")
    return value


def _check_time(owner: str, hour: int, minute: int, second: int) -> time:
    return time(
        _check_int(hour, "hour", 0, 23, owner),
        _check_int(minute, "minute", 0, 59, owner),
        _check_int(second, "second", 0, 59, owner),
    )


def _first_after(moment: datetime, days: Iterator[date], at: time, tz: tzinfo) -> datetime:
    limit = moment.astimezone(UTC)
    for day in days:
        candidate = resolve_local(day, at, tz)
        if candidate > limit:
            return candidate.astimezone(tz)
    raise AssertionError("unreachable: the day iterators are unbounded")  # pragma: no cover


def _days_from(moment: datetime, tz: tzinfo) -> Iterator[date]:
    # Start a day early: a gap shift can move a slot of the previous local date past midnight.
    day = moment.astimezone(tz).date() - timedelta(days=1)
    while True:
        yield day
        day += timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Daily:
    """Every day at ``hour:minute:second`` local time in ``tz`` (default UTC).

    DST: a time inside a gap fires at the first instant after the gap; a time inside an
    overlap fires once, at its first occurrence.

    Raises:
        ValueError: for an hour, minute or second out of range, or an unknown zone.
    """

    hour: int = 0
    minute: int = 0
    second: int = 0
    tz: str | tzinfo = field(default="UTC", kw_only=True)
    _at: time = field(init=False, repr=False, compare=False)
    _zone: tzinfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_at", _check_time("Daily", self.hour, self.minute, self.second))
        object.__setattr__(self, "_zone", parse_zone(self.tz, "Daily"))

    def next_after(self, moment: datetime, /) -> datetime:
        """Return the first slot strictly after ``moment``, in the schedule's zone."""
        check_aware(moment, "Daily.next_after")
        return _first_after(moment, _days_from(moment, self._zone), self._at, self._zone)


@dataclass(frozen=True, slots=True)
class Weekly:
    """Every week on ``weekday`` (0 or "mon" = Monday ... 6 or "sun") at the given local time.

    DST rules as for :class:`Daily`.

    Raises:
        ValueError: for an unknown weekday, a time out of range, or an unknown zone.
    """

    weekday: int | str
    hour: int = 0
    minute: int = 0
    second: int = 0
    tz: str | tzinfo = field(default="UTC", kw_only=True)
    _day: int = field(init=False, repr=False, compare=False)
    _at: time = field(init=False, repr=False, compare=False)
    _zone: tzinfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.weekday, str):
            try:
                day = _WEEKDAYS[self.weekday.strip().lower()]
            except KeyError:
                raise ValueError(
                    f"Weekly weekday must be 0-6 or a day name such as 'mon', got {self.weekday!r}"
                ) from None
        else:
            day = _check_int(self.weekday, "weekday", 0, 6, "Weekly")
        object.__setattr__(self, "_day", day)
        object.__setattr__(self, "_at", _check_time("Weekly", self.hour, self.minute, self.second))
        object.__setattr__(self, "_zone", parse_zone(self.tz, "Weekly"))

    def next_after(self, moment: datetime, /) -> datetime:
        """Return the first slot strictly after ``moment``, in the schedule's zone."""
        check_aware(moment, "Weekly.next_after")
        days = (d for d in _days_from(moment, self._zone) if d.weekday() == self._day)
        return _first_after(moment, days, self._at, self._zone)


@dataclass(frozen=True, slots=True)
class Monthly:
    """Every month on ``day`` at the given local time.

    Month end: in a month shorter than ``day`` the slot is the month's last day, so
    ``Monthly(day=31)`` fires on 30 April and on 28 or 29 February; no month is skipped.
    (:class:`Cron` keeps cron's rule instead: ``0 0 31 * *`` fires only in 31-day months.)
    DST rules as for :class:`Daily`.

    Raises:
        ValueError: for a day outside 1-31, a time out of range, or an unknown zone.
    """

    day: int = 1
    hour: int = 0
    minute: int = 0
    second: int = 0
    tz: str | tzinfo = field(default="UTC", kw_only=True)
    _at: time = field(init=False, repr=False, compare=False)
    _zone: tzinfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_int(self.day, "day", 1, 31, "Monthly")
        object.__setattr__(self, "_at", _check_time("Monthly", self.hour, self.minute, self.second))
        object.__setattr__(self, "_zone", parse_zone(self.tz, "Monthly"))

    def _days(self, moment: datetime) -> Iterator[date]:
        local = moment.astimezone(self._zone).date()
        year, month = local.year, local.month - 1  # from the previous month, as in _days_from
        if month == 0:
            year, month = year - 1, 12
        while True:
            last = calendar.monthrange(year, month)[1]
            yield date(year, month, min(self.day, last))
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)

    def next_after(self, moment: datetime, /) -> datetime:
        """Return the first slot strictly after ``moment``, in the schedule's zone."""
        check_aware(moment, "Monthly.next_after")
        return _first_after(moment, self._days(moment), self._at, self._zone)
