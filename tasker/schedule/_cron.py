"""``Cron``: the standard five-field cron expression, zone-aware.

Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or jan-dec), day of
week (0-7 or sun-sat; 0 and 7 are Sunday). Each field is ``*`` or a comma list of values,
ranges ``a-b`` and steps ``*/n``, ``a-b/n``, ``a/n`` (from ``a`` to the field's maximum).
As in Vixie cron, when both day fields are restricted a day matches if *either* does.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from ._base import check_aware, parse_zone
from ._calendar import resolve_local

__all__ = ["Cron"]

# Larger than any real DST or zone shift (Antarctica/Troll moves by two hours).
_MAX_SHIFT = timedelta(hours=3)

_MONTHS = {name: i for i, name in enumerate(calendar.month_abbr) if name}
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# (name, low, high, names)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {k.lower(): v for k, v in _MONTHS.items()}),
    ("day of week", 0, 7, _DAYS),
)


def _value(text: str, name: str, low: int, high: int, names: dict[str, int]) -> int:
    key = text.lower()
    if key in names:
        return names[key]
    if not text.isdigit():
        raise ValueError(f"Cron field {name!r} value {text!r} is not a number or a known name")
    number = int(text)
    if not low <= number <= high:
        raise ValueError(f"Cron field {name!r} value {text!r} is out of range {low}-{high}")
    return number


def _parse_field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ValueError(f"Cron field {name!r} has an empty list item in {text!r}")
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(
                    f"Cron field {name!r} step {step_text!r} must be a positive number"
                )
            step = int(step_text)
        if base == "*":
            start, stop = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start = _value(first, name, low, high, names)
            stop = _value(last, name, low, high, names)
            if start > stop:
                raise ValueError(f"Cron field {name!r} range {base!r} runs backwards")
        else:
            start = _value(base, name, low, high, names)
            stop = high if step_text else start
        values.update(range(start, stop + 1, step))
    return values


@dataclass(frozen=True, slots=True)
class Cron:
    """A five-field cron expression evaluated in ``tz`` (default UTC).

    DST: a time inside a gap fires at the first instant after the gap (several times inside
    the same gap fire once); a time inside an overlap fires once, at its first occurrence.
    Month end keeps cron's rule: ``0 0 31 * *`` fires only in months that have a 31st (use
    :class:`Monthly` to clamp to the last day instead). Aliases: ``@hourly``, ``@daily``
    (``@midnight``), ``@weekly``, ``@monthly``, ``@yearly`` (``@annually``).

    Raises:
        ValueError: for a malformed expression; the message names the field and the value. An
            expression that can never fire (``0 0 30 2 *``) is malformed; one that the
            day-of-week half of the OR rule makes possible (``0 0 30 2 sat``) is not.
    """

    expression: str
    tz: str | tzinfo = field(default="UTC", kw_only=True)
    _minutes: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _hours: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _doms: frozenset[int] = field(init=False, repr=False, compare=False)
    _months: frozenset[int] = field(init=False, repr=False, compare=False)
    _dows: frozenset[int] = field(init=False, repr=False, compare=False)
    _dom_star: bool = field(init=False, repr=False, compare=False)
    _dow_star: bool = field(init=False, repr=False, compare=False)
    _zone: tzinfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.expression, str):
            raise TypeError(f"Cron expression must be a string, got {self.expression!r}")
        text = self.expression.strip()
        text = _ALIASES.get(text.lower(), text)
        parts = text.split()
        if len(parts) != 5:
            raise ValueError(
                f"Cron expression {self.expression!r} must have 5 fields (minute hour"
                f" day-of-month month day-of-week), got {len(parts)}"
            )
        sets = [_parse_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
        minutes, hours, doms, months, dows = sets
        dows = {0 if d == 7 else d for d in dows}
        dom_star, dow_star = parts[2].startswith("*"), parts[4].startswith("*")
        # Only the day of month can make an expression impossible (Feb 30): every month has
        # every weekday. With both day fields restricted the OR rule applies and the weekdays
        # alone make it fire, so the check is for a day of month that decides on its own.
        # 2024 is a leap year: Feb 29 does occur.
        dom_decides = dom_star or dow_star
        longest = max(calendar.monthrange(2024, m)[1] for m in months)
        if dom_decides and not any(d <= longest for d in doms):
            raise ValueError(
                f"Cron field 'day of month' in {self.expression!r} never occurs in the given months"
            )
        object.__setattr__(self, "_minutes", tuple(sorted(minutes)))
        object.__setattr__(self, "_hours", tuple(sorted(hours)))
        object.__setattr__(self, "_doms", frozenset(doms))
        object.__setattr__(self, "_months", frozenset(months))
        object.__setattr__(self, "_dows", frozenset(dows))
        object.__setattr__(self, "_dom_star", dom_star)
        object.__setattr__(self, "_dow_star", dow_star)
        object.__setattr__(self, "_zone", parse_zone(self.tz, "Cron"))

    def _day_matches(self, day: date) -> bool:
        if day.month not in self._months:
            return False
        dom = day.day in self._doms
        dow = (day.weekday() + 1) % 7 in self._dows
        if self._dom_star or self._dow_star:
            return dom and dow
        return dom or dow

    def next_after(self, moment: datetime, /) -> datetime:
        """Return the first slot strictly after ``moment``, in the schedule's zone."""
        check_aware(moment, "Cron.next_after")
        limit = moment.astimezone(UTC)
        local = moment.astimezone(self._zone)
        # Start a day early: a gap shift can carry a slot of the previous date past midnight.
        day = local.date() - timedelta(days=1)
        # Wall times more than the largest DST shift before the moment's own wall time
        # cannot resolve to an instant after it: skip them without resolving.
        # Without a zone transition within that margin, wall time and instants move
        # together and the moment's own wall time is the floor.
        offsets = {
            (limit + delta).astimezone(self._zone).utcoffset()
            for delta in (-_MAX_SHIFT, timedelta(0), _MAX_SHIFT)
        }
        floor = local.replace(tzinfo=None, second=0, microsecond=0)
        if len(offsets) > 1:
            floor -= _MAX_SHIFT
        for _ in range(366 * 30):  # Feb 29 on a given weekday recurs within 28 years
            if not self._day_matches(day):
                if day.month not in self._months:
                    day = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
                else:
                    day += timedelta(days=1)
                continue
            for hour in self._hours:
                if datetime.combine(day, time(hour, 59)) < floor:
                    continue
                for minute in self._minutes:
                    if datetime.combine(day, time(hour, minute)) < floor:
                        continue
                    candidate = resolve_local(day, time(hour, minute), self._zone)
                    if candidate > limit:
                        return candidate.astimezone(self._zone)
            day += timedelta(days=1)
        raise ValueError(f"Cron {self.expression!r} has no slot in 30 years")  # pragma: no cover
