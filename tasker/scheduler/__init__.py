"""The Scheduler: run a job once per slot of its schedule, across every replica.

:class:`Scheduler` keeps its state and takes its locks through the protocols of
:mod:`tasker.abc`; this package holds it with its in-memory backend (tests, one process) and
its embedded default (lock files and a SQLite file, for one machine). ``tasker_pg`` is the
Postgres backend. The names are re-exported by :mod:`tasker` (``tasker.Scheduler``).
"""

from __future__ import annotations

from ._embedded import FileLockerFactory, SQLiteStateRepository
from ._memory import MemoryLockerFactory, MemoryStateRepository
from ._scheduler import CatchUp, FirstRun, Scheduler, SchedulerStatistics, scheduled_slot
from ._state import ScheduleState

__all__ = [
    "CatchUp",
    "FileLockerFactory",
    "FirstRun",
    "MemoryLockerFactory",
    "MemoryStateRepository",
    "SQLiteStateRepository",
    "ScheduleState",
    "Scheduler",
    "SchedulerStatistics",
    "scheduled_slot",
]
