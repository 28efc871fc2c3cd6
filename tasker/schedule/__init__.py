"""Schedules: when a job should run.

Every schedule has ``next_after(moment) -> datetime``: the first slot strictly after an
aware ``moment``. Calendar schedules take a zoneinfo name (default ``"UTC"``) and share one
DST policy: a local time inside a gap fires at the first instant after the gap; a local time
inside an overlap fires once, at its first occurrence. ``Interval`` counts elapsed time from
an anchor (the Unix epoch by default) and ignores zones.
"""

from __future__ import annotations

from ._base import Schedule
from ._calendar import Daily, Monthly, Weekly
from ._cron import Cron
from ._interval import Interval

__all__ = ["Cron", "Daily", "Interval", "Monthly", "Schedule", "Weekly"]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
