"""The contract every Scheduler backend passes: subclass it in your tests.

Example::

    class TestMyBackend(SchedulerBackendContract):
        @pytest.fixture
        def backend(self) -> tuple[LockerFactory, StateRepository]:
            return MyLockerFactory(...), MyStateRepository(...)

The tests are anyio tests: they run on every backend your ``anyio_backend`` fixture names
(override it to ``"asyncio"`` for an asyncio-only driver).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import anyio
import pytest

from ..abc import LockerFactory, StateRepository
from ..scheduler._state import ScheduleState

__all__ = ["SchedulerBackendContract"]

Backend = tuple[LockerFactory, StateRepository]

#: Names that must be stored as data, never interpreted.
HOSTILE_NAMES = [
    "nightly report",
    "O'Reilly; drop table schedule_state; --",
    'quote " and backslash \\',
    "émoji ✓ 日本",
    "x" * 200,
]


@pytest.mark.anyio
class SchedulerBackendContract:
    """Behaviour a (LockerFactory, StateRepository) pair must have."""

    @pytest.fixture
    def backend(self) -> Backend:
        """Return the locker factory and state repository under test."""
        raise NotImplementedError("override the backend fixture")

    async def test_lock_excludes_a_second_locker(self, backend: Backend) -> None:
        """Two lockers for one name: the second cannot lock until the first unlocks."""
        lockers, _ = backend
        first, second = lockers.locker("contract-a"), lockers.locker("contract-a")
        assert await first.try_lock()
        try:
            assert not await second.try_lock()
        finally:
            await first.unlock()
        assert await second.try_lock()
        await second.unlock()

    async def test_lockers_declare_whether_a_lock_can_be_lost(self, backend: Backend) -> None:
        """``can_be_lost`` is declared (a bool); a lock that cannot be lost never reports
        itself lost while held."""
        lockers, _ = backend
        locker = lockers.locker("contract-declared")
        assert isinstance(locker.can_be_lost, bool)
        if locker.can_be_lost:
            return
        assert await locker.try_lock()
        try:
            with anyio.move_on_after(0.1) as scope:
                await locker.wait_lost()
            assert scope.cancelled_caught, "wait_lost returned for a lock that cannot be lost"
        finally:
            await locker.unlock()

    async def test_stores_close_and_close_again(self, backend: Backend) -> None:
        """``aclose()`` on both stores, twice, is fine."""
        lockers, repository = backend
        for _ in range(2):
            await lockers.aclose()
            await repository.aclose()

    async def test_locks_are_per_name(self, backend: Backend) -> None:
        """Holding one name does not block another."""
        lockers, _ = backend
        a, b = lockers.locker("contract-b1"), lockers.locker("contract-b2")
        assert await a.try_lock()
        try:
            assert await b.try_lock()
            await b.unlock()
        finally:
            await a.unlock()

    async def test_unlock_without_lock_is_harmless(self, backend: Backend) -> None:
        """Unlocking a locker that holds nothing does not free somebody else's lock."""
        lockers, _ = backend
        holder, other = lockers.locker("contract-c"), lockers.locker("contract-c")
        assert await holder.try_lock()
        try:
            await other.unlock()
            assert not await lockers.locker("contract-c").try_lock()
        finally:
            await holder.unlock()

    async def test_held_lock_is_not_reported_lost(self, backend: Backend) -> None:
        """wait_lost does not return while the lock is held and healthy."""
        lockers, _ = backend
        locker = lockers.locker("contract-d")
        assert await locker.try_lock()
        try:
            with anyio.move_on_after(0.2) as scope:
                await locker.wait_lost()
            assert scope.cancelled_caught
        finally:
            await locker.unlock()

    @pytest.mark.parametrize("name", HOSTILE_NAMES)
    async def test_hostile_names_are_data(self, backend: Backend, name: str) -> None:
        """Names with quotes, SQL and any characters lock and store as plain data."""
        lockers, repository = backend
        locker = lockers.locker(name)
        assert await locker.try_lock()
        await locker.unlock()
        state = ScheduleState(name=name, last_slot=datetime(2026, 1, 1, tzinfo=UTC))
        await repository.save(state)
        assert await repository.get(name) == state

    async def test_missing_state_is_none(self, backend: Backend) -> None:
        """A name never saved reads as None."""
        _, repository = backend
        assert await repository.get("contract-never-saved") is None

    async def test_state_round_trip_and_replace(self, backend: Backend) -> None:
        """Every field survives a save and get; a second save replaces the first."""
        _, repository = backend
        berlin = timezone(timedelta(hours=1))
        first = ScheduleState(
            name="contract-e",
            last_slot=datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=berlin),
            last_started=datetime(2026, 3, 1, 11, 0, 0, 5, tzinfo=UTC),
            last_finished=datetime(2026, 3, 1, 11, 0, 1, tzinfo=UTC),
            last_error="ValueError: it's broken; 'quoted'",
            run_count=7,
            failure_count=2,
            next_due=datetime(2026, 3, 2, 12, tzinfo=berlin),
        )
        await repository.save(first)
        stored = await repository.get("contract-e")
        assert stored == first  # aware datetimes compare as instants
        second = ScheduleState(
            name="contract-e", last_slot=datetime(2026, 3, 2, tzinfo=UTC), run_count=8
        )
        await repository.save(second)
        assert await repository.get("contract-e") == second

    async def test_delete_then_get_is_none(self, backend: Backend) -> None:
        """A deleted state reads as None; other names keep theirs."""
        _, repository = backend
        slot = datetime(2026, 4, 1, tzinfo=UTC)
        kept = ScheduleState(name="contract-kept", last_slot=slot, run_count=1)
        await repository.save(ScheduleState(name="contract-f", last_slot=slot, run_count=3))
        await repository.save(kept)
        await repository.delete("contract-f")
        assert await repository.get("contract-f") is None
        assert await repository.get("contract-kept") == kept

    async def test_delete_of_a_missing_name_is_fine(self, backend: Backend) -> None:
        """Deleting a name never saved, or one already deleted, is not an error."""
        _, repository = backend
        await repository.delete("contract-never-saved")
        await repository.save(
            ScheduleState(name="contract-g", last_slot=datetime(2026, 4, 1, tzinfo=UTC))
        )
        await repository.delete("contract-g")
        await repository.delete("contract-g")
        assert await repository.get("contract-g") is None

    async def test_save_after_delete_stores_an_older_slot(self, backend: Backend) -> None:
        """After a delete the name is new: a save with an older ``last_slot`` than the
        deleted state's is stored (a backend that saves only forward forgets the slot too)."""
        _, repository = backend
        newer = ScheduleState(name="contract-h", last_slot=datetime(2026, 5, 2, tzinfo=UTC))
        await repository.save(newer)
        await repository.delete("contract-h")
        older = ScheduleState(
            name="contract-h", last_slot=datetime(2026, 5, 1, tzinfo=UTC), run_count=1
        )
        await repository.save(older)
        assert await repository.get("contract-h") == older

    @pytest.mark.parametrize("name", HOSTILE_NAMES)
    async def test_hostile_names_delete_as_data(self, backend: Backend, name: str) -> None:
        """A delete of a name with quotes, SQL or any characters deletes that name only."""
        _, repository = backend
        slot = datetime(2026, 1, 1, tzinfo=UTC)
        bystander = ScheduleState(name=("b-" + name)[:200], last_slot=slot)
        await repository.save(bystander)
        await repository.save(ScheduleState(name=name, last_slot=slot))
        await repository.delete(name)
        assert await repository.get(name) is None
        assert await repository.get(bystander.name) == bystander

    async def test_now_is_aware_or_none(self, backend: Backend) -> None:
        """now() is None (local clock) or an aware datetime close to the real time."""
        _, repository = backend
        now = await repository.now()
        if now is not None:
            assert now.utcoffset() is not None
            assert abs(now - datetime.now(UTC)) < timedelta(minutes=10)
