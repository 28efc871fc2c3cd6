"""The parts of a Scheduler's runs: the current slot, the statistics, catch-up, the next state."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from .._job import Job
from .._redact import redact_dsn
from ..schedule import Schedule
from ._state import ScheduleState

__all__ = [
    "CatchUp",
    "Counters",
    "Entry",
    "FirstRun",
    "SchedulerStatistics",
    "current_slot",
    "latest_due",
    "next_state",
    "scheduled_slot",
]

CatchUp = Literal["once", "skip"]

#: When a name with no stored state runs first: at its next slot, or at once.
FirstRun = Literal["next_slot", "immediately"]

current_slot: ContextVar[datetime | None] = ContextVar("tasker_scheduled_slot", default=None)


def scheduled_slot() -> datetime | None:
    """The slot the current scheduled run is for, or None outside a scheduled run.

    A job run by :meth:`Scheduler.with_schedule` can use it to name the period it covers
    (a nightly report for the slot's date, say).
    """
    return current_slot.get()


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerStatistics:
    """Counters of a :class:`Scheduler` since it was created (all replicas count their own).

    Attributes:
        schedules: how many names are registered.
        runs_started: runs this replica started.
        runs_succeeded: runs that returned and were recorded as done.
        runs_failed: runs that raised (their slot stays due and is retried).
        runs_interrupted: runs stopped by a shutdown or a lost lock (their slot stays due).
        first_runs: runs started at once for a name with no stored state
            (``first_run="immediately"``); also counted in ``runs_started``.
        lock_busy: times a due slot found another replica holding the lock.
        slots_skipped: catch-ups dropped by ``catch_up="skip"``.
        backend_errors: failed calls to the lock or state backend.
    """

    schedules: int
    runs_started: int
    runs_succeeded: int
    runs_failed: int
    runs_interrupted: int
    first_runs: int
    lock_busy: int
    slots_skipped: int
    backend_errors: int


def latest_due(schedule: Schedule, first: datetime, now: datetime) -> tuple[datetime, bool]:
    """The latest slot at or before ``now``, given the first due one; and whether any was missed.

    Walking slot by slot after a long outage of a per-second schedule would take millions of
    steps, so look back from ``now`` with a doubling window first.
    """
    if schedule.next_after(first) > now:
        return first, False
    back = timedelta(seconds=1)
    while True:
        start = now - back
        if start <= first:
            candidate = first
            break
        candidate = schedule.next_after(start)
        if candidate <= now:
            break
        back *= 2
    while (following := schedule.next_after(candidate)) <= now:
        candidate = following
    return candidate, True


@dataclass(slots=True)
class Counters:
    runs_started: int = 0
    runs_succeeded: int = 0
    runs_failed: int = 0
    runs_interrupted: int = 0
    first_runs: int = 0
    lock_busy: int = 0
    slots_skipped: int = 0
    backend_errors: int = 0


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    schedule: Schedule
    job: Job
    catch_up: CatchUp
    retry_delay: float
    first_run: FirstRun = "next_slot"


def next_state(
    entry: Entry,
    first_seen: datetime | None,
    state: ScheduleState | None,
    started: datetime,
    *,
    slot: datetime | None,
    finished: datetime | None = None,
    error: Exception | None = None,
) -> ScheduleState:
    name = entry.name
    if state is None:
        assert first_seen is not None  # a name without state was first seen by this replica
        state = ScheduleState(name=name, last_slot=first_seen)
    base = state
    last_slot = slot or base.last_slot
    next_due = entry.schedule.next_after(last_slot)
    if finished is None:  # a skip: no run happened
        return ScheduleState(
            name=name,
            last_slot=last_slot,
            next_due=next_due,
            last_started=base.last_started,
            last_finished=base.last_finished,
            last_error=base.last_error,
            run_count=base.run_count,
            failure_count=base.failure_count,
        )
    return ScheduleState(
        name=name,
        last_slot=last_slot,
        next_due=next_due,
        last_started=started,
        last_finished=finished,
        # Redacted before it is cut: a cut-off URL no longer shows where its password ends.
        last_error=None if error is None else redact_dsn(f"{type(error).__name__}: {error}")[:2000],
        run_count=base.run_count + (error is None),
        failure_count=base.failure_count + (error is not None),
    )
