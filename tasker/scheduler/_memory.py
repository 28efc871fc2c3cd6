"""The in-memory Scheduler backend: for tests and single-process programs."""

from __future__ import annotations

from datetime import datetime

import anyio
import anyio.lowlevel

from ._state import ScheduleState, check_name

__all__ = ["MemoryLockerFactory", "MemoryStateRepository"]


class _MemoryLocker:
    __slots__ = ("_factory", "_held", "_name")

    def __init__(self, factory: MemoryLockerFactory, name: str) -> None:
        self._factory = factory
        self._name = name
        self._held = False

    async def try_lock(self) -> bool:
        await anyio.lowlevel.checkpoint()
        if self._held or self._name in self._factory._held:
            return False
        self._factory._held.add(self._name)
        self._held = True
        return True

    #: A lock in memory cannot be lost: the Scheduler need not watch it.
    can_be_lost = False

    async def wait_lost(self) -> None:
        await anyio.sleep_forever()

    async def unlock(self) -> None:
        if self._held:
            self._factory._held.discard(self._name)
            self._held = False

    def __repr__(self) -> str:
        return f"<MemoryLocker {self._name!r} held={self._held}>"


class MemoryLockerFactory:
    """Locks that exclude the tasks of one process (one event loop), nothing more."""

    def __init__(self) -> None:
        self._held: set[str] = set()

    def locker(self, name: str) -> _MemoryLocker:
        """Return a locker for ``name``."""
        return _MemoryLocker(self, check_name(name, "MemoryLockerFactory.locker"))

    async def aclose(self) -> None:
        """Nothing to release."""
        await anyio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"MemoryLockerFactory(held={sorted(self._held)})"


class MemoryStateRepository:
    """Schedule states in a dict: forgotten when the process exits."""

    def __init__(self) -> None:
        self._states: dict[str, ScheduleState] = {}

    async def now(self) -> datetime | None:
        """None: the local clock decides."""
        return None

    async def get(self, name: str) -> ScheduleState | None:
        """Return the state of ``name``, if any."""
        await anyio.lowlevel.checkpoint()
        return self._states.get(name)

    async def save(self, state: ScheduleState) -> None:
        """Replace the state of ``state.name``."""
        await anyio.lowlevel.checkpoint()
        self._states[state.name] = state

    async def delete(self, name: str) -> None:
        """Drop the state of ``name``, if any."""
        await anyio.lowlevel.checkpoint()
        self._states.pop(name, None)

    async def aclose(self) -> None:
        """Nothing to release (the states stay until the object is dropped)."""
        await anyio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"MemoryStateRepository(names={sorted(self._states)})"
