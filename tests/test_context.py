"""Context: the soft stop signal, its reasons, the tree, and the sleeps that honour it."""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest

from tasker import Context, StopReason, run
from tasker.testing import FakeClock

pytestmark = pytest.mark.anyio


def test_context_has_no_public_constructor() -> None:
    """Users get contexts from tasker; constructing one directly is a TypeError."""
    with pytest.raises(TypeError, match="no public constructor"):
        Context()


async def test_root_context_starts_running() -> None:
    """The root context run() hands out is not done and has the configured grace."""
    seen: list[tuple[bool, StopReason | None, float]] = []

    async def job(ctx: Context) -> None:
        seen.append((ctx.done, ctx.reason, ctx.grace))

    await run(job, grace=timedelta(seconds=2))
    assert seen == [(False, None, 2.0)]


async def test_child_is_done_when_parent_stops_and_inherits_reason() -> None:
    """Stopping a parent makes every descendant done with the parent's reason."""

    async def job(ctx: Context) -> None:
        child = ctx.child()
        grandchild = child.child()
        assert not grandchild.done
        ctx.stop(StopReason.SHUTDOWN)
        assert (child.done, grandchild.done) == (True, True)
        assert grandchild.reason is StopReason.SHUTDOWN

    await run(job)


async def test_child_stops_alone() -> None:
    """Stopping a child leaves its parent and siblings running."""

    async def job(ctx: Context) -> None:
        first, second = ctx.child(), ctx.child()
        first.stop()
        assert first.reason is StopReason.PARENT_STOPPED
        assert not ctx.done
        assert not second.done

    await run(job)


async def test_first_reason_wins() -> None:
    """A second stop does not change the reason of a context that is already done."""

    async def job(ctx: Context) -> None:
        child = ctx.child()
        child.stop(StopReason.TIMEOUT)
        child.stop(StopReason.SHUTDOWN)
        assert child.reason is StopReason.TIMEOUT

    await run(job)


async def test_wait_wakes_on_ancestor_stop_and_cleans_up() -> None:
    """wait() on a grandchild returns when the root stops, and leaves no listener behind."""
    order: list[str] = []

    async def job(ctx: Context) -> None:
        grandchild = ctx.child().child()

        async def waiter() -> None:
            await grandchild.wait()
            order.append("woke")

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            order.append("stopping")
            ctx.stop(StopReason.SHUTDOWN)
        assert ctx._callbacks is None  # the link made for the waiter is gone

    await run(job)
    assert order == ["stopping", "woke"]


async def test_cancelled_wait_leaves_no_listener() -> None:
    """A wait() cancelled from outside unregisters itself."""

    async def job(ctx: Context) -> None:
        child = ctx.child()
        with anyio.move_on_after(0.01):
            await child.wait()
        assert ctx._callbacks is None
        assert child._callbacks is None

    await run(job)


async def test_wait_on_done_context_returns_at_once() -> None:
    """wait() on a context that is already done returns without blocking."""

    async def job(ctx: Context) -> None:
        ctx.stop()
        with anyio.fail_after(1):
            await ctx.wait()

    await run(job)


async def test_sleep_returns_false_when_stopped() -> None:
    """ctx.sleep() ends early with False when the context becomes done."""
    results: list[bool] = []

    async def job(ctx: Context) -> None:
        async with anyio.create_task_group() as tg:

            async def stopper() -> None:
                await anyio.sleep(0.02)
                ctx.stop()

            tg.start_soon(stopper)
            started = anyio.current_time()
            results.append(await ctx.sleep(30))
            assert anyio.current_time() - started < 5

    await run(job)
    assert results == [False]


async def test_sleep_until_on_fake_clock() -> None:
    """sleep_until follows the injected clock: it returns True once time is advanced."""
    clock = FakeClock()
    results: list[bool] = []

    async def job(ctx: Context) -> None:
        results.append(await ctx.sleep(timedelta(hours=5)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run(job, clock=clock))
        await anyio.wait_all_tasks_blocked()
        assert results == []
        clock.advance(timedelta(hours=4, minutes=59))
        await anyio.wait_all_tasks_blocked()
        assert results == []
        clock.advance(60)
    assert results == [True]


async def test_sleep_rejects_negative() -> None:
    """A negative sleep is a ValueError that names the parameter."""

    async def job(ctx: Context) -> None:
        with pytest.raises(ValueError, match="seconds"):
            await ctx.sleep(-1)

    await run(job)


def test_repr_shows_state() -> None:
    """The repr says whether the context is running or done, and why."""
    ctx = Context._create(grace=3)
    assert repr(ctx) == "<tasker.Context running grace=3s>"
    ctx.stop(StopReason.SHUTDOWN)
    assert repr(ctx) == "<tasker.Context done (shutdown) grace=3s>"


def test_listener_on_done_context_is_called_at_once() -> None:
    """A listener added to a context that is already done runs at once and stays unregistered."""
    ctx = Context._create()
    child = ctx.child()
    ctx.stop(StopReason.SHUTDOWN)
    heard: list[str] = []
    child._add_callback(lambda: heard.append("child"))
    ctx._add_callback(lambda: heard.append("root"))
    assert heard == ["child", "root"]
    assert ctx._callbacks is None
    assert child._callbacks is None


def test_listener_hears_done_once() -> None:
    """A listener fires on the first stop of its context or an ancestor, never again."""
    root = Context._create()
    middle = root.child()
    leaf = middle.child()
    heard: list[str] = []
    leaf._add_callback(lambda: heard.append("leaf"))
    middle._add_callback(lambda: heard.append("middle"))
    leaf.stop()
    assert heard == ["leaf"]
    middle.stop()
    assert heard == ["leaf", "middle"]
    root.stop(StopReason.SHUTDOWN)
    assert heard == ["leaf", "middle"]
