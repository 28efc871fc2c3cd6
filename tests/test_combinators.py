"""sequence and concurrence: order, failure shapes, stopping, and no leftover tasks."""

from __future__ import annotations

import inspect

import anyio
import pytest

import tasker
from tasker import Context, StopReason, concurrence, run, sequence

from .helpers import Recorder

pytestmark = pytest.mark.anyio


class Boom(Exception):
    """A failure raised by test jobs."""


async def test_sequence_runs_in_order() -> None:
    """Steps run one after another, each after the previous one returned."""
    rec = Recorder()
    await run(sequence(rec.job("a", sleep=0.01), rec.job("b"), rec.job("c")))
    assert rec.events == ["start a", "end a", "start b", "end b", "start c", "end c"]


async def test_empty_sequence_and_concurrence_are_noops() -> None:
    """With no jobs both combinators return at once."""
    await run(sequence())
    await run(concurrence())


async def test_sequence_first_failure_propagates_unwrapped() -> None:
    """The first failure propagates as it is and later steps never start."""
    rec = Recorder()
    error = Boom("step b")
    with pytest.raises(Boom) as info:
        await run(sequence(rec.job("a"), rec.job("b", fail=error), rec.job("c")))
    assert info.value is error
    assert rec.events == ["start a", "end a", "start b", "fail b"]


async def test_sequence_step_after_shutdown_never_starts() -> None:
    """A shutdown during step k means no step after k starts; the sequence returns."""
    rec = Recorder()
    stop = anyio.Event()

    async def step_two(ctx: Context) -> None:
        rec.events.append("start two")
        stop.set()
        await ctx.wait()
        rec.events.append("two saw done")

    job = sequence(rec.job("one"), step_two, rec.job("three"))
    await run(job, shutdown_trigger=stop.wait, grace=5)
    assert rec.events == ["start one", "end one", "start two", "two saw done"]


async def test_concurrence_runs_together() -> None:
    """All jobs start before any of them finishes."""
    rec = Recorder()
    await run(concurrence(rec.job("a", sleep=0.05), rec.job("b", sleep=0.05)))
    assert sorted(rec.events[:2]) == ["start a", "start b"]
    assert sorted(rec.events[2:]) == ["end a", "end b"]


async def test_concurrence_single_failure_is_bare_and_siblings_see_reason() -> None:
    """One failure is raised as it is; siblings see SIBLING_FAILED and return."""
    rec = Recorder()
    error = Boom("x")
    with pytest.raises(Boom) as info:
        await run(
            concurrence(rec.waiter("w1"), rec.job("bad", sleep=0.01, fail=error), rec.waiter("w2"))
        )
    assert info.value is error
    assert "stopped w1: sibling failed" in rec.events
    assert "stopped w2: sibling failed" in rec.events
    assert rec.events.index("fail bad") < rec.events.index("stopped w1: sibling failed")


async def test_concurrence_several_failures_raise_a_group_in_order() -> None:
    """Several failures surface together as an ExceptionGroup, in the order they happened."""
    first, second = Boom("first"), ValueError("second")

    async def fails_when_stopped(ctx: Context) -> None:
        await ctx.wait()
        raise second

    async def fails_first(ctx: Context) -> None:
        await anyio.sleep(0.01)
        raise first

    with pytest.raises(ExceptionGroup) as info:
        await run(concurrence(fails_when_stopped, fails_first))
    assert info.value.exceptions == (first, second)


async def test_concurrence_hard_cancels_after_grace() -> None:
    """A sibling that ignores its context is cancelled once the grace period has passed."""
    rec = Recorder()
    started = anyio.current_time()
    with pytest.raises(Boom):
        await run(concurrence(rec.stubborn("s"), rec.job("bad", fail=Boom())), grace=0.2)
    elapsed = anyio.current_time() - started
    assert rec.events[-1] == "cancelled s"
    assert 0.2 <= elapsed < 2.0


async def test_concurrence_early_return_does_not_stop_others() -> None:
    """A job that returns early leaves its siblings running to completion."""
    rec = Recorder()
    await run(concurrence(rec.job("quick"), rec.job("slow", sleep=0.05)))
    assert rec.events.index("end quick") < rec.events.index("end slow")
    assert "end slow" in rec.events


async def test_concurrence_shutdown_reaches_every_member() -> None:
    """A shutdown makes every member's context done with the SHUTDOWN reason."""
    rec = Recorder()
    stop = anyio.Event()

    async def trigger() -> None:
        await anyio.sleep(0.02)
        stop.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(trigger)
        await run(
            concurrence(rec.waiter("a"), concurrence(rec.waiter("b"), rec.waiter("c"))),
            shutdown_trigger=stop.wait,
        )
    assert sorted(e for e in rec.events if e.startswith("stopped")) == [
        "stopped a: shutdown",
        "stopped b: shutdown",
        "stopped c: shutdown",
    ]


async def test_no_task_left_running_after_failure() -> None:
    """When concurrence raises, none of its tasks is still running."""
    before = len(anyio.get_running_tasks())
    rec = Recorder()
    with pytest.raises(Boom):
        await run(
            concurrence(rec.stubborn("s1"), rec.stubborn("s2"), rec.job("b", fail=Boom())),
            grace=0.01,
        )
    assert len(anyio.get_running_tasks()) == before
    assert rec.events.count("cancelled s1") == 1
    assert rec.events.count("cancelled s2") == 1


async def test_nested_migration_pipeline() -> None:
    """sequence(concurrence(..), concurrence(..)): group 2 starts only after group 1 is done."""
    rec = Recorder()
    pipeline = sequence(
        concurrence(rec.job("m1", sleep=0.02), rec.job("m2")),
        concurrence(rec.job("m3"), rec.job("m4"), rec.job("m5")),
    )
    await run(pipeline)
    last_of_group_one = max(rec.events.index("end m1"), rec.events.index("end m2"))
    first_of_group_two = min(rec.events.index(f"start m{i}") for i in (3, 4, 5))
    assert last_of_group_one < first_of_group_two
    assert len(rec.events) == 10


async def test_failed_group_one_stops_pipeline() -> None:
    """A failing migration in group 1 means group 2 never starts."""
    rec = Recorder()
    pipeline = sequence(
        concurrence(rec.job("m1", fail=Boom()), rec.job("m2")),
        concurrence(rec.job("m3")),
    )
    with pytest.raises(Boom):
        await run(pipeline)
    assert "start m3" not in rec.events


async def test_cancellation_propagates_through_combinators() -> None:
    """Cancelling the caller cancels every running job and is not reported as a failure."""
    rec = Recorder()
    with anyio.move_on_after(0.05) as scope:
        await run(concurrence(rec.stubborn("a"), sequence(rec.stubborn("b"), rec.job("never"))))
    assert scope.cancelled_caught
    assert sorted(rec.events) == ["cancelled a", "cancelled b", "start a", "start b"]


async def test_sibling_failed_reason_does_not_leak_to_parent() -> None:
    """A failing member stops its siblings, not the context it was given."""
    seen: list[StopReason | None] = []

    async def outer(ctx: Context) -> None:
        with pytest.raises(Boom):
            await concurrence(Recorder().job("x", fail=Boom()))(ctx)
        seen.append(ctx.reason)

    await run(outer)
    assert seen == [None]


@pytest.mark.parametrize(
    "bad",
    [None, 42, "job", lambda ctx: None],
)
def test_bad_jobs_are_rejected_at_construction(bad: object) -> None:
    """A non-async callable or a non-callable is a TypeError that names it."""
    with pytest.raises(TypeError, match="sequence"):
        sequence(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="concurrence"):
        concurrence(bad)  # type: ignore[arg-type]


def test_coroutine_object_is_rejected() -> None:
    """Passing job(ctx) instead of job is caught with a hint, and the coroutine is closed."""

    async def job(ctx: Context) -> None:
        pass

    coro = job(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="coroutine object"):
        sequence(coro)  # type: ignore[arg-type]
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # no "never awaited"


def test_async_callable_objects_are_jobs() -> None:
    """An object with an async __call__ is accepted as a job."""

    class Worker:
        async def __call__(self, ctx: Context) -> None:
            pass

    assert callable(sequence(Worker()))
    assert tasker.concurrence(Worker(), Worker()).__name__.startswith("concurrence(")
