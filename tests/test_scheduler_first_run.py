"""``first_run="immediately"`` and ``Scheduler.forget`` on the memory backend and a fake clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasker import (
    Context,
    MemoryLockerFactory,
    MemoryStateRepository,
    Scheduler,
    ScheduleState,
    concurrence,
    run,
    scheduled_slot,
)
from tasker.schedule import Cron, Daily, Interval, Schedule
from tasker.testing import FakeClock

pytestmark = pytest.mark.anyio

START = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
BASE = START.replace(second=0)


def memory_scheduler(
    lockers: MemoryLockerFactory | None = None,
    repository: MemoryStateRepository | None = None,
    *,
    lock_retry: float = 1.0,
) -> Scheduler:
    return Scheduler(
        locker_factory=lockers or MemoryLockerFactory(),
        repository=repository or MemoryStateRepository(),
        lock_retry=lock_retry,
    )


async def drive(
    job: Callable[[Context], Awaitable[None]], clock: FakeClock, until: datetime
) -> None:
    """Run ``job`` on ``clock`` until the fake time reaches ``until``, then stop it."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run(job, clock=clock, grace=1))
        await clock.wait_for_sleepers()
        await clock.run_until(until)
        tg.cancel_scope.cancel()


class Slots:
    """A job that records the slot and the fake time of each run."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.runs: list[tuple[datetime | None, datetime]] = []

    async def __call__(self, ctx: Context) -> None:
        self.runs.append((scheduled_slot(), self.clock.now()))

    @property
    def slots(self) -> list[datetime | None]:
        return [slot for slot, _ in self.runs]


async def test_immediately_runs_at_once_then_follows_the_slots() -> None:
    """A stateless name runs at the moment it is seen, with that moment as its slot and
    ``last_slot``; then every slot of the schedule once."""
    clock = FakeClock(START)
    repository = MemoryStateRepository()
    scheduler = memory_scheduler(repository=repository)
    job = Slots(clock)
    scheduled = scheduler.with_schedule("m", Interval(60), job, first_run="immediately")
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run(scheduled, clock=clock, grace=1))
        await clock.wait_for_sleepers()
        assert job.runs == [(START, START)]
        state = await repository.get("m")
        assert state is not None
        assert (state.last_slot, state.run_count, state.next_due) == (
            START,
            1,
            BASE + timedelta(minutes=1),
        )
        await clock.run_until(START + timedelta(minutes=3))
        tg.cancel_scope.cancel()
    expected = [BASE + timedelta(minutes=m) for m in (1, 2, 3)]
    assert job.runs == [(START, START), *((slot, slot) for slot in expected)]
    stats = scheduler.statistics()
    assert (stats.first_runs, stats.runs_started, stats.runs_succeeded) == (1, 4, 4)


async def test_immediately_with_a_stored_state_does_not_run_at_once() -> None:
    """A name that has a state (it ran before, anywhere) follows the schedule from it."""
    clock = FakeClock(START)
    repository = MemoryStateRepository()
    await repository.save(ScheduleState(name="m", last_slot=BASE))
    scheduler = memory_scheduler(repository=repository)
    job = Slots(clock)
    await drive(
        scheduler.with_schedule("m", Interval(60), job, first_run="immediately"),
        clock,
        START + timedelta(minutes=2),
    )
    assert job.slots == [BASE + timedelta(minutes=1), BASE + timedelta(minutes=2)]
    assert scheduler.statistics().first_runs == 0


async def test_next_slot_is_the_default_and_waits() -> None:
    """Without the option a stateless name waits for its first slot after it is seen."""
    clock = FakeClock(datetime(2026, 1, 1, 12, tzinfo=UTC))
    job = Slots(clock)
    await drive(
        memory_scheduler().with_schedule("daily", Daily(3), job),
        clock,
        datetime(2026, 1, 2, 3, tzinfo=UTC),
    )
    assert job.slots == [datetime(2026, 1, 2, 3, tzinfo=UTC)]


class StateAppearsUnderTheLock:
    """Locks from memory; the first ``try_lock`` lets "another replica" finish its first run
    (a state appears) between this replica's plan and its lock."""

    def __init__(self, repository: MemoryStateRepository, state: ScheduleState) -> None:
        self._lockers = MemoryLockerFactory()
        self._repository = repository
        self._state: ScheduleState | None = state

    def locker(self, name: str) -> StateAppearsUnderTheLock._Locker:
        return StateAppearsUnderTheLock._Locker(self, self._lockers.locker(name))

    async def aclose(self) -> None:
        await self._lockers.aclose()

    class _Locker:
        can_be_lost = False

        def __init__(self, owner: StateAppearsUnderTheLock, inner: object) -> None:
            self._owner = owner
            self._inner = inner

        async def try_lock(self) -> bool:
            if self._owner._state is not None:
                state, self._owner._state = self._owner._state, None
                await self._owner._repository.save(state)
            return await self._inner.try_lock()  # type: ignore[attr-defined,no-any-return]

        async def wait_lost(self) -> None:
            await anyio.sleep_forever()

        async def unlock(self) -> None:
            await self._inner.unlock()  # type: ignore[attr-defined]


async def test_a_state_found_under_the_lock_cancels_the_first_run() -> None:
    """The first run is decided on the state read under the lock: when another replica did
    the first run meanwhile, this one does not run, and plans from the stored state."""
    clock = FakeClock(START)
    repository = MemoryStateRepository()
    theirs = ScheduleState(name="m", last_slot=START - timedelta(seconds=5), run_count=1)
    lockers = StateAppearsUnderTheLock(repository, theirs)
    scheduler = Scheduler(locker_factory=lockers, repository=repository)
    job = Slots(clock)
    await drive(
        scheduler.with_schedule("m", Interval(60), job, first_run="immediately"),
        clock,
        START + timedelta(minutes=2),
    )
    assert job.slots == [BASE + timedelta(minutes=1), BASE + timedelta(minutes=2)]
    assert scheduler.statistics().first_runs == 0
    state = await repository.get("m")
    assert state is not None
    assert state.run_count == 3


async def test_replicas_starting_together_make_one_first_run() -> None:
    """Three replicas on one backend, started at the same moment: one first run in total,
    then each slot once."""
    clock = FakeClock(START)
    lockers, repository = MemoryLockerFactory(), MemoryStateRepository()
    jobs = [Slots(clock) for _ in range(3)]
    schedulers = [memory_scheduler(lockers, repository, lock_retry=1) for _ in jobs]
    replicas = [
        scheduler.with_schedule("shared", Interval(60), job, first_run="immediately")
        for scheduler, job in zip(schedulers, jobs, strict=True)
    ]
    await drive(concurrence(*replicas), clock, START + timedelta(minutes=3))
    slots = sorted(slot for job in jobs for slot in job.slots if slot)
    assert slots == [START, *(BASE + timedelta(minutes=m) for m in (1, 2, 3))]
    assert sum(s.statistics().first_runs for s in schedulers) == 1


async def test_a_failed_first_run_stores_nothing_and_is_retried() -> None:
    """A first run that fails leaves the name stateless: it runs at once again after
    ``retry_delay``, and only the run that succeeds is stored."""
    clock = FakeClock(START)
    repository = MemoryStateRepository()
    attempts: list[tuple[datetime | None, datetime]] = []
    states: list[ScheduleState | None] = []

    async def flaky(ctx: Context) -> None:
        states.append(await repository.get("f"))
        attempts.append((scheduled_slot(), clock.now()))
        if len(attempts) == 1:
            raise RuntimeError("not yet")

    scheduler = memory_scheduler(repository=repository)
    await drive(
        scheduler.with_schedule("f", Daily(3), flaky, first_run="immediately", retry_delay=20),
        clock,
        START + timedelta(minutes=1),
    )
    retried = START + timedelta(seconds=20)
    assert attempts == [(START, START), (retried, retried)]
    assert states == [None, None]
    state = await repository.get("f")
    assert state is not None
    assert (state.last_slot, state.run_count, state.failure_count) == (retried, 1, 0)
    stats = scheduler.statistics()
    assert (stats.first_runs, stats.runs_failed, stats.runs_succeeded) == (2, 1, 1)


def test_first_run_is_validated() -> None:
    """An unknown first_run is a ValueError naming the parameter and the value."""

    async def job(ctx: Context) -> None:
        pass

    with pytest.raises(ValueError, match=r"first_run must be .* got 'at_once'"):
        memory_scheduler().with_schedule(
            "a",
            Interval(1),
            job,
            first_run="at_once",  # type: ignore[arg-type]
        )


schedules = st.one_of(
    st.builds(
        Interval,
        st.floats(min_value=0.5, max_value=7 * 86400, allow_nan=False, allow_infinity=False),
    ),
    st.sampled_from(
        [
            Cron("*/5 * * * *"),
            Cron("0 3 * * *", tz="Europe/Berlin"),
            Cron("30 2 * * sun", tz="America/New_York"),
            Daily(3, tz="Europe/Berlin"),
            Cron("0 0 29 2 *"),
        ]
    ),
)
moments = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(schedule=schedules, start=moments)
async def test_the_first_run_is_at_the_start_and_the_next_at_the_schedules_next_slot(
    schedule: Schedule, start: datetime
) -> None:
    """For any schedule and start moment: the first run is at the start moment (its slot),
    and the second at ``schedule.next_after(start)``."""
    clock = FakeClock(start)
    job = Slots(clock)
    second = schedule.next_after(start)
    await drive(
        memory_scheduler().with_schedule("p", schedule, job, first_run="immediately"),
        clock,
        second,
    )
    assert job.runs == [(start, start), (second, second)]


# -- forget ------------------------------------------------------------------------------


async def test_forget_runs_an_immediate_name_at_once_again() -> None:
    """After forget, a sleeping loop of the name wakes, finds no state, and runs at once;
    then it follows the slots again, with a fresh state."""
    clock = FakeClock(START)
    repository = MemoryStateRepository()
    scheduler = memory_scheduler(repository=repository)
    job = Slots(clock)
    scheduled = scheduler.with_schedule("m", Interval(60), job, first_run="immediately")
    forgotten = BASE + timedelta(minutes=1, seconds=40)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run(scheduled, clock=clock, grace=1))
        await clock.wait_for_sleepers()
        await clock.run_until(forgotten)
        await scheduler.forget("m")
        await clock.run_until(BASE + timedelta(minutes=3))
        tg.cancel_scope.cancel()
    assert job.slots == [
        START,
        BASE + timedelta(minutes=1),
        forgotten,
        BASE + timedelta(minutes=2),
        BASE + timedelta(minutes=3),
    ]
    assert job.runs[2] == (forgotten, forgotten)  # at once, not at the 02:00 slot it slept for
    state = await repository.get("m")
    assert state is not None
    assert state.run_count == 3  # counted from the forget on


async def test_forget_makes_a_next_slot_name_wait_for_its_next_slot() -> None:
    """With the default first_run, a forgotten name starts over from the forget moment."""
    clock = FakeClock(START)
    repository = MemoryStateRepository()
    scheduler = memory_scheduler(repository=repository)
    job = Slots(clock)
    scheduled = scheduler.with_schedule("d", Interval(60), job)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run(scheduled, clock=clock, grace=1))
        await clock.wait_for_sleepers()
        await clock.run_until(BASE + timedelta(minutes=2, seconds=10))
        await scheduler.forget("d")
        assert await repository.get("d") is None
        await clock.run_until(BASE + timedelta(minutes=3))
        tg.cancel_scope.cancel()
    assert job.slots == [BASE + timedelta(minutes=m) for m in (1, 2, 3)]
    state = await repository.get("d")
    assert state is not None
    assert (state.last_slot, state.run_count) == (BASE + timedelta(minutes=3), 1)


async def test_forget_waits_for_a_running_run_then_deletes() -> None:
    """While a run holds the name's lock, forget retries the lock; it deletes only after the
    run saved its state (so the state does not come back), and the name then starts over."""
    clock = FakeClock(START)
    repository = MemoryStateRepository()
    scheduler = memory_scheduler(repository=repository, lock_retry=0.01)
    events: list[str] = []
    started, release = anyio.Event(), anyio.Event()

    async def slow(ctx: Context) -> None:
        events.append(f"run {scheduled_slot():%H:%M}")
        started.set()
        await release.wait()

    async def forget() -> None:
        await scheduler.forget("s", timeout=10)
        events.append("forgotten")

    scheduled = scheduler.with_schedule("s", Interval(60), slow)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run(scheduled, clock=clock, grace=1))
        await clock.wait_for_sleepers()
        clock.set(BASE + timedelta(minutes=1))
        await started.wait()
        tg.start_soon(forget)
        await anyio.sleep(0.1)
        assert events == ["run 00:01"]  # forget is still waiting for the lock
        events.append("released")
        release.set()
        with anyio.fail_after(5):
            while "forgotten" not in events:  # noqa: ASYNC110 - set by the other task
                await anyio.sleep(0.005)
        assert await repository.get("s") is None
        await clock.run_until(BASE + timedelta(minutes=2))
        tg.cancel_scope.cancel()
    assert events == ["run 00:01", "released", "forgotten", "run 00:02"]
    state = await repository.get("s")
    assert state is not None
    assert (state.last_slot, state.run_count) == (BASE + timedelta(minutes=2), 1)


async def test_forget_raises_timeout_error_while_the_lock_stays_held() -> None:
    """A lock held past ``timeout`` makes forget raise TimeoutError naming the schedule,
    after about ``timeout``; nothing is deleted."""
    lockers, repository = MemoryLockerFactory(), MemoryStateRepository()
    state = ScheduleState(name="busy", last_slot=BASE)
    await repository.save(state)
    scheduler = memory_scheduler(lockers, repository, lock_retry=0.02)
    holder = lockers.locker("busy")
    assert await holder.try_lock()
    try:
        began = anyio.current_time()
        with pytest.raises(TimeoutError, match=r"'busy' was still locked after 0\.15s"):
            await scheduler.forget("busy", timeout=timedelta(seconds=0.15))
        assert 0.15 <= anyio.current_time() - began < 2
        with pytest.raises(TimeoutError, match="'busy'"):
            await scheduler.forget("busy", timeout=0)
    finally:
        await holder.unlock()
    assert await repository.get("busy") == state
    await scheduler.forget("busy", timeout=0)
    assert await repository.get("busy") is None


async def test_forget_takes_unregistered_names_and_validates() -> None:
    """A name this Scheduler does not run can be forgotten (a removed schedule's leftover);
    a bad name or timeout fails before anything is touched."""
    repository = MemoryStateRepository()
    await repository.save(ScheduleState(name="removed", last_slot=BASE))
    scheduler = memory_scheduler(repository=repository)
    await scheduler.forget("removed")
    await scheduler.forget("never-existed")
    assert await repository.get("removed") is None
    with pytest.raises(ValueError, match="empty"):
        await scheduler.forget(" ")
    with pytest.raises(ValueError, match="longer than 200"):
        await scheduler.forget("x" * 201)
    with pytest.raises(ValueError, match=r"timeout must be non-negative, got -1"):
        await scheduler.forget("removed", timeout=-1)
    with pytest.raises(TypeError, match="name must be a string"):
        await scheduler.forget(3)  # type: ignore[arg-type]


def test_a_repository_without_delete_is_refused_by_name() -> None:
    """A state repository written before ``delete`` joined the protocol is refused, and the
    error names the missing method."""

    class OldRepository:
        async def now(self) -> datetime | None:
            return None

        async def get(self, name: str) -> ScheduleState | None:
            return None

        async def save(self, state: ScheduleState) -> None:
            pass

        async def aclose(self) -> None:
            pass

    with pytest.raises(TypeError, match=r"not a tasker.abc.StateRepository \(it has no delete\)"):
        Scheduler(locker_factory=MemoryLockerFactory(), repository=OldRepository())  # type: ignore[arg-type]
