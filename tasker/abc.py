"""The protocols a Scheduler backend implements.

A backend is two small objects: a :class:`LockerFactory`, whose locks make sure at most one
replica runs a schedule at a time, and a :class:`StateRepository`, which remembers the last
slot each schedule completed. tasker ships an in-memory pair, an embedded pair (lock files and
SQLite, for one machine) and ``tasker_pg`` (Postgres advisory locks and a table); a backend of
your own implements the same protocols and runs the contract suite in :mod:`tasker.testing`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from .scheduler._state import ScheduleState

__all__ = ["Locker", "LockerFactory", "ScheduleState", "StateRepository"]


@runtime_checkable
class Locker(Protocol):
    """A named, non-blocking, exclusive lock across every replica sharing the backend.

    One ``Locker`` is used by one task at a time: ``try_lock``, then ``wait_lost`` while the
    work runs, then ``unlock``.

    Optional: a class attribute ``can_be_lost = False`` says that a held lock cannot be lost
    while its process lives (a lock file, memory); the Scheduler then runs the job without a
    task watching ``wait_lost``. Without the attribute, locks are watched.
    """

    async def try_lock(self) -> bool:
        """Take the lock if it is free, without waiting.

        Returns:
            True if this locker now holds the lock, False if somebody else holds it.

        Raises:
            Exception: when the backend cannot be reached; nothing is held then.
        """
        ...

    async def wait_lost(self) -> None:
        """Return only if the held lock was lost (its session died); otherwise never return.

        The Scheduler runs this beside the job: when it returns the job is stopped, because
        another replica may already hold the lock. Backends whose locks cannot be lost (a lock
        file, memory) simply sleep forever.
        """
        ...

    async def unlock(self) -> None:
        """Release the lock. Releasing a lock that was lost is not an error.

        Called in a shielded scope, so it must finish by itself (with a timeout of its own when
        it does I/O).
        """
        ...


@runtime_checkable
class LockerFactory(Protocol):
    """Makes the :class:`Locker` for a schedule's name."""

    def locker(self, name: str) -> Locker:
        """Return a locker for ``name``; two lockers for the same name exclude each other."""
        ...


@runtime_checkable
class StateRepository(Protocol):
    """Stores one :class:`ScheduleState` per schedule name."""

    async def now(self) -> datetime | None:
        """The backend's clock, or None to use the local one.

        A shared database answers with its own ``now()``, so replicas whose clocks disagree
        still agree on which slot is due.
        """
        ...

    async def get(self, name: str) -> ScheduleState | None:
        """Return the stored state of ``name``, or None if it was never saved."""
        ...

    async def save(self, state: ScheduleState) -> None:
        """Store ``state``, replacing the previous state of the same name."""
        ...
