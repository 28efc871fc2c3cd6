"""run(): the root context, the shutdown trigger and the two-phase stop."""

from __future__ import annotations

import logging

import anyio
import pytest

from tasker import Context, run

from .helpers import Recorder

pytestmark = pytest.mark.anyio


async def test_shutdown_trigger_soft_stops() -> None:
    """When the trigger returns, the job sees SHUTDOWN and returns; run returns normally."""
    rec = Recorder()
    stop = anyio.Event()

    async def trigger() -> None:
        await stop.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run(rec.waiter("w"), shutdown_trigger=trigger))
        await anyio.wait_all_tasks_blocked()
        stop.set()
    assert rec.events == ["start w", "stopped w: shutdown"]


async def test_hard_stop_after_grace_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A job that ignores its context is cancelled after the grace period, with a warning."""
    rec = Recorder()
    started = anyio.current_time()
    with caplog.at_level(logging.WARNING, logger="tasker"):
        await run(rec.stubborn("s"), shutdown_trigger=anyio.lowlevel.checkpoint, grace=0.1)
    elapsed = anyio.current_time() - started
    assert rec.events == ["start s", "cancelled s"]
    assert 0.1 <= elapsed < 2
    assert "did not stop within its 0.1s grace period" in caplog.text


async def test_job_finishing_before_trigger_ends_run() -> None:
    """A job that returns by itself ends run() even though the trigger never fired."""
    rec = Recorder()
    with anyio.fail_after(2):
        await run(rec.job("quick"), shutdown_trigger=anyio.sleep_forever)
    assert rec.events == ["start quick", "end quick"]


async def test_failure_propagates_bare_through_run() -> None:
    """An exception from the job comes out of run() as it is, not in a group."""
    error = KeyError("k")

    async def job(ctx: Context) -> None:
        raise error

    with pytest.raises(KeyError) as info:
        await run(job, shutdown_trigger=anyio.sleep_forever)
    assert info.value is error


@pytest.mark.parametrize("grace", [-1, float("nan"), float("inf"), "5"])
async def test_bad_grace_is_rejected(grace: object) -> None:
    """A negative, non-finite or non-numeric grace is rejected before anything runs."""
    rec = Recorder()
    with pytest.raises((ValueError, TypeError), match="grace"):
        await run(rec.job("x"), grace=grace)  # type: ignore[arg-type]
    assert rec.events == []


async def test_bad_clock_is_rejected() -> None:
    """A clock without now()/sleep_until() is a TypeError."""
    with pytest.raises(TypeError, match="clock"):
        await run(Recorder().job("x"), clock=object())  # type: ignore[arg-type]
