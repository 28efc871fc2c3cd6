"""``with_no_overlap``: one holder runs, the others skip; lost locks, errors, processes."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import tasker
from tasker import (
    Context,
    FileLockerFactory,
    MemoryLockerFactory,
    StopReason,
    concurrence,
    run,
    with_no_overlap,
    with_repeat,
)
from tasker.abc import LockerFactory
from tasker.schedule import Interval
from tasker.testing import FakeClock

from .helpers import python_process

pytestmark = pytest.mark.anyio

LockerFactories = Callable[[Path], LockerFactory]

FACTORIES: list[LockerFactories] = [lambda _: MemoryLockerFactory(), FileLockerFactory]


@pytest.fixture(params=FACTORIES, ids=["memory", "file"])
def locks(request: pytest.FixtureRequest, tmp_path: Path) -> LockerFactory:
    """A memory or a file locker factory."""
    factory: LockerFactories = request.param
    return factory(tmp_path)


async def test_a_second_concurrent_call_is_skipped(
    locks: LockerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """While one call runs the job, a second call with the same name returns at once
    without running it (logged at DEBUG on ``tasker``); a call after the first ended runs."""
    events: list[str] = []
    started, release = anyio.Event(), anyio.Event()

    async def job(ctx: Context) -> None:
        events.append("start")
        started.set()
        await release.wait()
        events.append("end")

    guarded = with_no_overlap(locks, "cleanup", job)

    async def call(ctx: Context, label: str) -> None:
        await guarded(ctx)
        events.append(f"{label} returned")

    async def program(ctx: Context) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, ctx, "first")
            await started.wait()
            await call(ctx, "second")
            release.set()
        await call(ctx, "third")

    with caplog.at_level(logging.DEBUG, logger="tasker"), anyio.fail_after(10):
        await run(program)
    assert events == [
        "start",
        "second returned",
        "end",
        "first returned",
        "start",
        "end",
        "third returned",
    ]
    skips = [r for r in caplog.records if "skipping" in r.getMessage()]
    assert [(r.name, r.levelno) for r in skips] == [("tasker", logging.DEBUG)]
    assert "'cleanup'" in skips[0].getMessage()


async def test_two_repeats_never_overlap(locks: LockerFactory) -> None:
    """Two replicas repeating a slow guarded job on one lock: the runs never overlap, and
    each slot runs once (the other replica's call at the same slot is skipped)."""
    clock = FakeClock(datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC))
    running, overlaps, slots = 0, 0, []

    async def slow(ctx: Context) -> None:
        nonlocal running, overlaps
        running += 1
        overlaps += running > 1
        slots.append(ctx.clock.now())
        for _ in range(20):  # the other replica's call at the same slot comes meanwhile
            await anyio.lowlevel.checkpoint()
        running -= 1

    def replica() -> tasker.Job:
        return with_repeat(Interval(60), with_no_overlap(locks, "slow", slow), run_at_start=False)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run(concurrence(replica(), replica()), clock=clock, grace=1))
        await clock.wait_for_sleepers(2)
        await clock.run_until(datetime(2026, 1, 1, 0, 3, 0, tzinfo=UTC))
        tg.cancel_scope.cancel()
    assert overlaps == 0
    assert slots == [datetime(2026, 1, 1, 0, m, tzinfo=UTC) for m in (1, 2, 3)]


async def test_a_failing_job_propagates_and_releases_the_lock(locks: LockerFactory) -> None:
    """The job's exception propagates as it is, and the lock is free afterwards."""

    async def broken(ctx: Context) -> None:
        raise ValueError("bad row")

    with pytest.raises(ValueError, match="bad row"):
        await run(with_no_overlap(locks, "broken", broken))
    locker = locks.locker("broken")
    assert await locker.try_lock()
    await locker.unlock()


async def test_cancellation_releases_the_lock(locks: LockerFactory) -> None:
    """A cancelled call cancels the job and releases the lock (shielded)."""
    started = anyio.Event()
    cancelled = []

    async def forever(ctx: Context) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.append(True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, with_no_overlap(locks, "forever", forever))
        await started.wait()
        tg.cancel_scope.cancel()
    assert cancelled == [True]
    locker = locks.locker("forever")
    assert await locker.try_lock()
    await locker.unlock()


class LosableLocker:
    """A memory lock that the test can declare lost."""

    can_be_lost = True

    def __init__(self, factory: LosableFactory, name: str) -> None:
        self._factory = factory
        self._inner = factory.memory.locker(name)
        self.held = False

    async def try_lock(self) -> bool:
        self.held = await self._inner.try_lock()
        if self.held:
            self._factory.holders.append(self)
        return self.held

    async def wait_lost(self) -> None:
        await self._factory.lost.wait()

    async def unlock(self) -> None:
        await self._inner.unlock()
        self.held = False
        self._factory.unlocked += 1


class LosableFactory:
    def __init__(self) -> None:
        self.memory = MemoryLockerFactory()
        self.lost = anyio.Event()
        self.holders: list[LosableLocker] = []
        self.unlocked = 0

    def locker(self, name: str) -> LosableLocker:
        return LosableLocker(self, name)

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("behaviour", ["returns", "ignores"])
async def test_a_lost_lock_stops_the_job_with_lock_lost(
    behaviour: str, caplog: pytest.LogCaptureFixture
) -> None:
    """When a lock that can be lost is lost mid-run, the job's context is done with
    LOCK_LOST (a job that ignores it is cancelled after the grace); the call returns, logs
    the loss at ERROR, and releases the locker; the caller's context is not stopped."""
    factory = LosableFactory()
    reasons: list[StopReason | None] = []
    outer: list[bool] = []

    async def job(ctx: Context) -> None:
        factory.lost.set()
        if behaviour == "returns":
            await ctx.wait()
            reasons.append(ctx.reason)
        else:
            try:
                await anyio.sleep_forever()
            finally:
                reasons.append(ctx.reason)

    guarded = with_no_overlap(factory, "lossy", job)

    async def caller(ctx: Context) -> None:
        await guarded(ctx)
        outer.append(ctx.done)

    with caplog.at_level(logging.ERROR, logger="tasker"), anyio.fail_after(10):
        await run(caller, grace=0.05)
    assert reasons == [StopReason.LOCK_LOST]
    assert outer == [False]
    assert factory.unlocked == 1
    assert [h.held for h in factory.holders] == [False]
    assert "with_no_overlap('lossy'): lost the lock" in caplog.text


async def test_a_lock_that_cannot_be_lost_is_not_watched(locks: LockerFactory) -> None:
    """Memory and file locks declare can_be_lost False: the job runs in a child context
    and no watcher task runs beside it."""
    seen: list[int] = []

    async def job(ctx: Context) -> None:
        seen.append(len(anyio.get_running_tasks()))

    async def bare(ctx: Context) -> None:
        seen.append(len(anyio.get_running_tasks()))

    await run(bare)
    await run(with_no_overlap(locks, "plain", job))
    assert seen[0] == seen[1]


def test_arguments_are_checked_at_construction() -> None:
    """A non-factory, a bad name and a non-async job fail when the job is built."""

    async def job(ctx: Context) -> None:
        pass

    locks = MemoryLockerFactory()
    with pytest.raises(TypeError, match=r"locks must be a tasker.abc.LockerFactory, got 'x'"):
        with_no_overlap("x", "n", job)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        with_no_overlap(locks, "", job)
    with pytest.raises(ValueError, match="longer than 200"):
        with_no_overlap(locks, "x" * 201, job)
    with pytest.raises(ValueError, match="control characters"):
        with_no_overlap(locks, "a\nb", job)
    with pytest.raises(TypeError, match="not an async function"):
        with_no_overlap(locks, "n", print)  # type: ignore[arg-type]
    guarded = with_no_overlap(locks, "cleanup", job)
    assert guarded.__name__.startswith("with_no_overlap('cleanup', ")
    assert guarded.__name__.endswith("<locals>.job)")
    assert with_no_overlap.__module__ == "tasker"


@pytest.mark.slow
def test_two_processes_on_one_lock_directory_one_skips(tmp_path: Path) -> None:
    """Two processes guard one job with FileLockerFactory on one directory: while the first
    runs it, the second skips (it never prints "running"); the first then finishes."""
    release = tmp_path / "release"
    args = ["tests/no_overlap_process.py", "--dir", str(tmp_path / "locks")]
    args += ["--release", str(release)]
    holder = python_process(args)
    other: subprocess.Popen[str] | None = None
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "running"
        other = python_process(args)
        other_out, other_err = other.communicate(timeout=30)
        release.touch()
        holder_out, holder_err = holder.communicate(timeout=30)
    finally:
        for proc in (holder, other):
            if proc is not None:
                proc.kill()
    assert other.returncode == 0, other_err
    assert holder.returncode == 0, holder_err
    assert "running" not in other_out
    assert "tasker with_no_overlap('guarded'): the lock is held elsewhere" in other_out
    assert other_out.splitlines()[-1] == "returned"
    assert holder_out.split() == ["ran", "returned"]  # "running" was read above
