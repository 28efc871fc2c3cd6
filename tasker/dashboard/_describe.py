"""Schedules in words: ``Interval(300)`` is "every 5 minutes", ``Daily(9, tz="Europe/Berlin")``
"daily at 09:00 Europe/Berlin".

Only tasker's own schedule values are described; any other schedule (a user's class with
``next_after``) is shown by its ``repr``, which the page escapes. Cron expressions get words
for the common shapes (every N minutes, hourly, daily, weekly at a time) and are shown as
written otherwise: a full cron-to-English translation is a library of its own
(cron-descriptor), not worth a dependency for a status line.
"""

from __future__ import annotations

from datetime import timedelta, tzinfo

from ..schedule import Cron, Daily, Interval, Monthly, Schedule, Weekly

__all__ = ["describe_schedule"]

_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_UNITS = [("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)]
#: cron's day-of-week numbers (0 and 7 are Sunday) to names.
_CRON_DAYS = {str((i + 1) % 7): name for i, name in enumerate(_DAYS)} | {"7": "Sunday"}
#: cron's aliases, as tasker.schedule.Cron expands them.
_CRON_ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
}


def describe_schedule(schedule: Schedule) -> str:
    """A short description of ``schedule`` in words, or its ``repr`` for an unknown kind."""
    if isinstance(schedule, Interval):
        return _interval(schedule)
    if isinstance(schedule, Daily):
        at = _clock(schedule.hour, schedule.minute, schedule.second)
        return f"daily at {at}{_zone(schedule.tz)}"
    if isinstance(schedule, Weekly):
        return (
            f"weekly on {_weekday(schedule.weekday)} at"
            f" {_clock(schedule.hour, schedule.minute, schedule.second)}{_zone(schedule.tz)}"
        )
    if isinstance(schedule, Monthly):
        clamp = " (or the month's last day)" if schedule.day > 28 else ""
        return (
            f"monthly on day {schedule.day}{clamp} at"
            f" {_clock(schedule.hour, schedule.minute, schedule.second)}{_zone(schedule.tz)}"
        )
    if isinstance(schedule, Cron):
        return _cron(schedule)
    return repr(schedule)


def _interval(schedule: Interval) -> str:
    if schedule.every % timedelta(seconds=1):
        text = f"every {schedule.every.total_seconds():g} seconds"
    else:
        text = f"every {_duration(schedule.every)}"
    if schedule.anchor.timestamp() == 0:
        return text
    return f"{text} from {schedule.anchor:%Y-%m-%d %H:%M:%S %Z}"


def _duration(every: timedelta) -> str:
    seconds = int(every.total_seconds())
    for unit, size in _UNITS:
        if seconds % size == 0:
            count = seconds // size
            return unit if count == 1 else f"{count} {unit}s"
    raise AssertionError("unreachable: whole seconds are a count of seconds")  # pragma: no cover


def _clock(hour: int, minute: int, second: int = 0) -> str:
    return f"{hour:02d}:{minute:02d}" + (f":{second:02d}" if second else "")


def _zone(tz: str | tzinfo) -> str:
    return f" {tz}"


def _weekday(weekday: int | str) -> str:
    if isinstance(weekday, int):
        return _DAYS[weekday]
    prefix = weekday.strip().lower()[:3]
    return next((day for day in _DAYS if day.lower().startswith(prefix)), weekday)


def _cron(schedule: Cron) -> str:
    expression = schedule.expression.strip()
    fields = _CRON_ALIASES.get(expression.lower(), expression).split()
    zone = _zone(schedule.tz)
    written = f"cron {expression!r}{zone}"
    if len(fields) != 5:
        return written
    minute, hour, dom, month, dow = fields
    if hour == "*" and dom == month == dow == "*":
        # Minute patterns: the zone changes nothing but for zones off by a part of an hour.
        local = "" if str(schedule.tz) == "UTC" else zone
        if minute == "*":
            return f"every minute{local}"
        if minute.startswith("*/") and minute[2:].isdigit():
            return f"every {int(minute[2:])} minutes{local}"
        if minute.isdigit():
            return f"hourly at minute {int(minute)}{local}"
        return written
    if not (minute.isdigit() and hour.isdigit()) or month != "*":
        return written
    at = f"{_clock(int(hour), int(minute))}{zone}"
    if dom == "*" and dow == "*":
        return f"daily at {at}"
    if dom == "*" and dow in _CRON_DAYS:
        return f"weekly on {_CRON_DAYS[dow]} at {at}"
    if dom == "*" and dow == "1-5":
        return f"weekdays at {at}"
    if dom.isdigit() and dow == "*":
        return f"monthly on day {int(dom)} at {at}"
    return written
