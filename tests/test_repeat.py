"""with_repeat: runs at the schedule's slots, no drift, no catch-up burst, Go's error rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from tasker import Context, run, with_repeat
from tasker.schedule import Interval
from tasker.testing import FakeClock

pytestmark = pytest.mark.anyio

START = datetime(2026, 3, 1, tzinfo=UTC)


class Boom(Exception):
    """A failing run."""


async def test_runs_at_slots_without_drift() -> None:
    """Runs that take time still start exactly on the interval's slots."""
    clock = FakeClock(START)
    starts: list[datetime] = []

    async def job(ctx: Context) -> None:
        starts.append(clock.now())
        clock.advance(0.3)  # the run "takes" 0.3 s of wall-clock time

    async def scenario() -> None:
        await clock.run_until(START + timedelta(seconds=5, milliseconds=500))

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run(with_repeat(Interval(1), job, run_at_start=False), clock=clock))
        await scenario()
        tg.cancel_scope.cancel()
    assert starts == [START + timedelta(seconds=s) for s in range(1, 6)]


async def test_interval_runs_at_start_by_default() -> None:
    """With an Interval the first run is immediate, as 'every N seconds' reads."""
    clock = FakeClock(START + timedelta(milliseconds=250))
    starts: list[datetime] = []

    async def job(ctx: Context) -> None:
        starts.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run(with_repeat(Interval(1), job), clock=clock))
        await clock.run_until(START + timedelta(seconds=2, milliseconds=100))
        tg.cancel_scope.cancel()
    assert starts == [
        START + timedelta(milliseconds=250),
        START + timedelta(seconds=1),
        START + timedelta(seconds=2),
    ]


async def test_overrun_skips_covered_slots_without_burst() -> None:
    """A run that lasts 3.5 slots is followed by the next future slot, not 3 catch-up runs."""
    clock = FakeClock(START)
    starts: list[datetime] = []

    async def job(ctx: Context) -> None:
        starts.append(clock.now())
        if len(starts) == 1:
            clock.advance(3.5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run(with_repeat(Interval(1), job), clock=clock))
        await clock.run_until(START + timedelta(seconds=6))
        tg.cancel_scope.cancel()
    assert starts == [START + timedelta(seconds=s) for s in (0, 4, 5, 6)]


async def test_first_failure_ends_the_loop() -> None:
    """A failing run ends the repetition and its exception propagates as it is."""
    clock = FakeClock(START)
    runs: list[int] = []
    error = Boom()

    async def job(ctx: Context) -> None:
        runs.append(1)
        if len(runs) == 3:
            raise error

    async def drive() -> None:
        await clock.run_until(START + timedelta(seconds=10))

    caught: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(drive)
        try:
            await run(with_repeat(Interval(1), job), clock=clock)
        except Boom as exc:
            caught.append(exc)
        tg.cancel_scope.cancel()
    assert caught == [error]
    assert len(runs) == 3


async def test_shutdown_stops_waiting_loop_promptly() -> None:
    """A shutdown while waiting for the next slot ends the job without another run."""
    runs: list[int] = []

    async def job(ctx: Context) -> None:
        runs.append(1)

    with anyio.fail_after(5):
        await run(
            with_repeat(Interval(3600), job),
            shutdown_trigger=lambda: anyio.sleep(0.05),
        )
    assert runs == [1]


async def test_shutdown_during_run_is_seen_by_the_job() -> None:
    """The running run sees ctx.done on shutdown and no further run starts."""
    events: list[str] = []

    async def job(ctx: Context) -> None:
        events.append("run")
        await ctx.wait()
        events.append("saw done")

    await run(with_repeat(Interval(0.01), job), shutdown_trigger=lambda: anyio.sleep(0.05))
    assert events == ["run", "saw done"]


async def test_any_schedule_with_next_after_works() -> None:
    """A user's own schedule only needs next_after(moment)."""

    class EveryTenSeconds:
        def next_after(self, moment: datetime) -> datetime:
            return moment.replace(microsecond=0) + timedelta(seconds=10 - moment.second % 10)

    clock = FakeClock(START)
    starts: list[datetime] = []

    async def job(ctx: Context) -> None:
        starts.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run(with_repeat(EveryTenSeconds(), job), clock=clock))
        await clock.run_until(START + timedelta(seconds=35))
        tg.cancel_scope.cancel()
    assert starts == [START + timedelta(seconds=s) for s in (10, 20, 30)]


def test_bad_arguments_fail_at_construction() -> None:
    """A schedule without next_after, or a non-async job, is a TypeError."""

    async def job(ctx: Context) -> None:
        pass

    with pytest.raises(TypeError, match="next_after"):
        with_repeat(60, job)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="with_repeat"):
        with_repeat(Interval(1), print)  # type: ignore[arg-type]
