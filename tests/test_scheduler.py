"""Scheduler semantics on a fake clock: slots, replicas, failures, catch-up, lost locks."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import pytest

from tasker import (
    Context,
    MemoryLockerFactory,
    MemoryStateRepository,
    Scheduler,
    ScheduleState,
    StopReason,
    concurrence,
    run,
    scheduled_slot,
)
from tasker.schedule import Daily, Interval, Monthly
from tasker.testing import FakeClock

pytestmark = pytest.mark.anyio

START = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)


def memory_scheduler(
    lockers: MemoryLockerFactory | None = None,
    repository: MemoryStateRepository | None = None,
    **kwargs: object,
) -> Scheduler:
    return Scheduler(
        locker_factory=lockers or MemoryLockerFactory(),
        repository=repository or MemoryStateRepository(),
        **kwargs,  # type: ignore[arg-type]
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

    def __init__(self, clock: FakeClock, *, duration: timedelta = timedelta(0)) -> None:
        self.clock = clock
        self.duration = duration
        self.runs: list[tuple[datetime | None, datetime]] = []

    async def __call__(self, ctx: Context) -> None:
        self.runs.append((scheduled_slot(), self.clock.now()))
        if self.duration:
            await ctx.sleep(self.duration)

    @property
    def slots(self) -> list[datetime | None]:
        return [slot for slot, _ in self.runs]


async def test_interval_runs_once_per_slot_at_the_slot() -> None:
    """Ten minutes of a per-minute schedule: ten runs, each at its slot, state counts them."""
    clock = FakeClock(START)
    repository = MemoryStateRepository()
    scheduler = memory_scheduler(repository=repository)
    job = Slots(clock)
    await drive(
        scheduler.with_schedule("minutely", Interval(60), job), clock, START + timedelta(minutes=10)
    )
    expected = [datetime(2026, 1, 1, 0, m, tzinfo=UTC) for m in range(1, 11)]
    assert job.slots == expected
    assert [at for _, at in job.runs] == expected
    state = await repository.get("minutely")
    assert state is not None
    assert (state.last_slot, state.run_count, state.failure_count) == (expected[-1], 10, 0)


async def test_daily_through_three_months_across_dst() -> None:
    """A Berlin 03:00 daily job runs once a day at 03:00 local through a DST change."""
    clock = FakeClock(datetime(2026, 2, 1, tzinfo=UTC))
    job = Slots(clock)
    scheduler = memory_scheduler()
    await drive(
        scheduler.with_schedule("daily", Daily(3, tz="Europe/Berlin"), job),
        clock,
        datetime(2026, 5, 1, tzinfo=UTC),
    )
    berlin = ZoneInfo("Europe/Berlin")
    local = [slot.astimezone(berlin) for slot in job.slots if slot]
    assert len(local) == 89  # 1 Feb .. 30 Apr
    assert all((t.hour, t.minute) == (3, 0) for t in local)
    assert len({t.date() for t in local}) == 89


async def test_monthly_day_31_runs_every_month() -> None:
    """Monthly(31) runs twelve times in a year, on each month's last day."""
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    job = Slots(clock)
    await drive(
        memory_scheduler().with_schedule("monthly", Monthly(31), job),
        clock,
        datetime(2027, 1, 1, 1, tzinfo=UTC),
    )
    assert [(s.month, s.day) for s in job.slots if s] == [
        (1, 31), (2, 28), (3, 31), (4, 30), (5, 31), (6, 30),
        (7, 31), (8, 31), (9, 30), (10, 31), (11, 30), (12, 31),
    ]  # fmt: skip


async def test_two_replicas_share_each_slot_once() -> None:
    """Two schedulers on one backend (two replicas): every slot runs exactly once in total."""
    clock = FakeClock(START)
    lockers, repository = MemoryLockerFactory(), MemoryStateRepository()
    job_a, job_b = Slots(clock), Slots(clock)
    replica_a = memory_scheduler(lockers, repository).with_schedule("shared", Interval(10), job_a)
    replica_b = memory_scheduler(lockers, repository).with_schedule("shared", Interval(10), job_b)
    await drive(concurrence(replica_a, replica_b), clock, START + timedelta(minutes=5))
    all_slots = sorted(s for s in job_a.slots + job_b.slots if s)
    expected = [START.replace(second=0) + timedelta(seconds=10 * k) for k in range(4, 34)]
    assert all_slots == expected
    state = await repository.get("shared")
    assert state is not None
    assert state.run_count == len(expected)


async def test_run_outliving_its_slot_has_no_second_copy_and_no_burst() -> None:
    """A run lasting 2.5 slots blocks the other replica; then one run for the latest slot."""
    clock = FakeClock(START)
    lockers, repository = MemoryLockerFactory(), MemoryStateRepository()
    running = 0
    overlaps = 0
    slots: list[datetime | None] = []

    async def slow_once(ctx: Context) -> None:
        nonlocal running, overlaps
        running += 1
        overlaps += running > 1
        slots.append(scheduled_slot())
        if len(slots) == 1:
            await ctx.sleep(25)
        running -= 1

    a = memory_scheduler(lockers, repository, lock_retry=1).with_schedule(
        "slow", Interval(10), slow_once
    )
    b = memory_scheduler(lockers, repository, lock_retry=1).with_schedule(
        "slow", Interval(10), slow_once
    )
    await drive(concurrence(a, b), clock, START + timedelta(seconds=75))
    base = START.replace(second=0)
    assert overlaps == 0
    # 00:40 runs until 01:05; then one run for the latest due slot 01:00; then every slot.
    assert slots == [base + timedelta(seconds=s) for s in (40, 60, 70, 80, 90, 100)]


async def test_first_sight_waits_for_next_slot() -> None:
    """A never-seen name does not run at start-up; it waits for its first slot."""
    clock = FakeClock(datetime(2026, 1, 1, 12, tzinfo=UTC))
    job = Slots(clock)
    await drive(
        memory_scheduler().with_schedule("new", Daily(3), job),
        clock,
        datetime(2026, 1, 2, 2, 59, tzinfo=UTC),
    )
    assert job.runs == []


async def test_failed_run_is_retried_after_delay(caplog: pytest.LogCaptureFixture) -> None:
    """A failing run leaves its slot due, logs the traceback, and is retried after retry_delay."""
    clock = FakeClock(START)
    repository = MemoryStateRepository()
    attempts: list[tuple[datetime | None, datetime]] = []

    async def flaky(ctx: Context) -> None:
        attempts.append((scheduled_slot(), clock.now()))
        if len(attempts) < 3:
            raise RuntimeError("database is busy")

    scheduler = memory_scheduler(repository=repository)
    with caplog.at_level(logging.ERROR, logger="tasker.scheduler"):
        await drive(
            scheduler.with_schedule("flaky", Daily(1), flaky, retry_delay=60),
            clock,
            datetime(2026, 1, 1, 1, 5, tzinfo=UTC),
        )
    slot = datetime(2026, 1, 1, 1, tzinfo=UTC)
    assert attempts == [
        (slot, slot),
        (slot, slot + timedelta(minutes=1)),
        (slot, slot + timedelta(minutes=2)),
    ]
    state = await repository.get("flaky")
    assert state is not None
    assert (state.last_slot, state.run_count, state.failure_count, state.last_error) == (
        slot,
        1,
        2,
        None,
    )
    assert caplog.text.count("RuntimeError: database is busy") == 2
    assert scheduler.statistics().runs_failed == 2


@pytest.mark.parametrize(("catch_up", "expected_runs"), [("once", 1), ("skip", 0)])
async def test_missed_slots_catch_up_once_or_skip(catch_up: str, expected_runs: int) -> None:
    """After a long outage: one run covering every missed slot, or none with skip."""
    clock = FakeClock(datetime(2026, 1, 10, 12, tzinfo=UTC))
    repository = MemoryStateRepository()
    await repository.save(ScheduleState(name="hourly", last_slot=datetime(2026, 1, 1, tzinfo=UTC)))
    job = Slots(clock)
    await drive(
        memory_scheduler(repository=repository).with_schedule(
            "hourly",
            Interval(3600),
            job,
            catch_up=catch_up,  # type: ignore[arg-type]
        ),
        clock,
        datetime(2026, 1, 10, 12, 30, tzinfo=UTC),
    )
    assert len(job.runs) == expected_runs
    if expected_runs:
        assert job.slots == [datetime(2026, 1, 10, 12, tzinfo=UTC)]
    state = await repository.get("hourly")
    assert state is not None
    assert state.last_slot == datetime(2026, 1, 10, 12, tzinfo=UTC)


class LosableLocker:
    """A memory locker whose lock can be 'lost' from the test."""

    can_be_lost = True

    def __init__(self, lost: anyio.Event) -> None:
        self.lost = lost

    async def try_lock(self) -> bool:
        return True

    async def wait_lost(self) -> None:
        await self.lost.wait()

    async def unlock(self) -> None:
        pass


class LosableFactory:
    def __init__(self) -> None:
        self.lost = anyio.Event()

    def locker(self, name: str) -> LosableLocker:
        return LosableLocker(self.lost)

    async def aclose(self) -> None:
        pass


async def test_lost_lock_stops_the_run_and_keeps_slot_due() -> None:
    """When the lock is lost mid-run the job sees LOCK_LOST and its slot is not recorded."""
    clock = FakeClock(START)
    factory = LosableFactory()
    repository = MemoryStateRepository()
    reasons: list[StopReason | None] = []

    async def long_job(ctx: Context) -> None:
        factory.lost.set()
        await ctx.wait()
        reasons.append(ctx.reason)

    scheduler = Scheduler(locker_factory=factory, repository=repository)
    await drive(
        scheduler.with_schedule("lossy", Interval(60), long_job),
        clock,
        START + timedelta(seconds=40),
    )
    assert reasons[0] is StopReason.LOCK_LOST
    state = await repository.get("lossy")
    assert state is None or state.run_count == 0
    assert scheduler.statistics().runs_interrupted >= 1


@pytest.mark.parametrize("behaviour", ["raise", "ignore"])
async def test_run_stopped_by_shutdown_keeps_slot_due(behaviour: str) -> None:
    """A run that raises on shutdown, or is cancelled after the grace, leaves its slot due."""
    clock = FakeClock(START)
    repository = MemoryStateRepository()
    started = anyio.Event()

    async def job(ctx: Context) -> None:
        started.set()
        if behaviour == "raise":
            await ctx.wait()
            raise RuntimeError("stopped before the work was done")
        await anyio.sleep_forever()

    scheduled = memory_scheduler(repository=repository).with_schedule("s", Interval(60), job)
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: run(scheduled, clock=clock, shutdown_trigger=started.wait, grace=0.05)
        )
        await clock.run_until(START + timedelta(seconds=31))
    state = await repository.get("s")
    assert state is None or state.run_count == 0


async def test_run_returning_during_shutdown_is_done() -> None:
    """A run that finishes its work and returns while the program shuts down counts as done."""
    clock = FakeClock(START)
    repository = MemoryStateRepository()
    started = anyio.Event()

    async def job(ctx: Context) -> None:
        started.set()
        await ctx.wait()

    scheduled = memory_scheduler(repository=repository).with_schedule("s", Interval(60), job)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run(scheduled, clock=clock, shutdown_trigger=started.wait))
        await clock.run_until(START + timedelta(seconds=31))
    state = await repository.get("s")
    assert state is not None
    assert state.run_count == 1


class FlakyRepository(MemoryStateRepository):
    """A repository that fails while ``down`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.calls_while_down = 0

    async def get(self, name: str) -> ScheduleState | None:
        if self.down:
            self.calls_while_down += 1
            raise ConnectionError("connection refused")
        return await super().get(name)


async def test_backend_outage_is_logged_once_and_survived(caplog: pytest.LogCaptureFixture) -> None:
    """An outage of several slots is logged once; afterwards one run catches up, none doubles."""
    clock = FakeClock(START)
    repository = FlakyRepository()
    job = Slots(clock)
    scheduler = memory_scheduler(repository=repository)
    scheduled = scheduler.with_schedule("o", Interval(60), job)

    async def outage() -> None:
        await clock.run_until(START + timedelta(minutes=2))
        repository.down = True
        await clock.run_until(START + timedelta(minutes=6))
        repository.down = False

    with caplog.at_level(logging.WARNING, logger="tasker.scheduler"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: run(scheduled, clock=clock))
            await outage()
            await clock.run_until(START + timedelta(minutes=8))
            tg.cancel_scope.cancel()
    base = START.replace(second=0)
    assert job.slots[:2] == [base + timedelta(minutes=1), base + timedelta(minutes=2)]
    assert len(job.slots) == len(set(job.slots))
    assert job.slots[-1] == base + timedelta(minutes=8)
    assert repository.calls_while_down > 1
    assert caplog.text.count("backend unavailable") == 1
    assert "backend reachable again" in caplog.text


async def test_embedded_state_survives_restart(tmp_path: Path) -> None:
    """With the embedded default, a monthly job does not run again after a restart."""
    clock = FakeClock(datetime(2026, 1, 31, 23, 59, tzinfo=UTC))
    first = Slots(clock)
    await drive(
        Scheduler(state_dir=tmp_path).with_schedule("m", Monthly(1), first),
        clock,
        datetime(2026, 2, 1, 0, 1, tzinfo=UTC),
    )
    second = Slots(clock)
    await drive(
        Scheduler(state_dir=tmp_path).with_schedule("m", Monthly(1), second),
        clock,
        datetime(2026, 2, 1, 0, 2, tzinfo=UTC),
    )
    assert first.slots == [datetime(2026, 2, 1, tzinfo=UTC)]
    assert second.runs == []
    assert (tmp_path / "state.sqlite3").exists()


def test_with_schedule_validates_at_construction() -> None:
    """Duplicate names, bad names, non-async jobs and unknown options fail at once."""
    scheduler = memory_scheduler()

    async def job(ctx: Context) -> None:
        pass

    scheduler.with_schedule("a", Interval(1), job)
    with pytest.raises(ValueError, match="already used"):
        scheduler.with_schedule("a", Interval(1), job)
    with pytest.raises(ValueError, match="empty"):
        scheduler.with_schedule(" ", Interval(1), job)
    with pytest.raises(ValueError, match="longer than 200"):
        scheduler.with_schedule("x" * 201, Interval(1), job)
    with pytest.raises(TypeError, match="not an async function"):
        scheduler.with_schedule("b", Interval(1), print)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="next_after"):
        scheduler.with_schedule("c", 60, job)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="catch_up"):
        scheduler.with_schedule("d", Interval(1), job, catch_up="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retry_delay"):
        scheduler.with_schedule("e", Interval(1), job, retry_delay=-1)


def test_scheduler_validates_backends() -> None:
    """Half a backend, or objects that are not backends, are rejected."""
    with pytest.raises(ValueError, match="both"):
        Scheduler(locker_factory=MemoryLockerFactory())
    with pytest.raises(TypeError, match="LockerFactory"):
        Scheduler(locker_factory=object(), repository=MemoryStateRepository())  # type: ignore[arg-type]


def test_repr_and_statistics() -> None:
    """The repr shows the schedules and backends; statistics start at zero."""
    scheduler = memory_scheduler()

    async def job(ctx: Context) -> None:
        pass

    scheduler.with_schedule("report", Daily(3), job)
    assert "schedules=['report']" in repr(scheduler)
    stats = scheduler.statistics()
    assert (stats.schedules, stats.runs_started, stats.backend_errors) == (1, 0, 0)
