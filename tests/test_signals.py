"""with_signal_notify, in this process: real signals sent with os.kill."""

from __future__ import annotations

import os
import signal
import threading

import anyio
import anyio.lowlevel
import pytest

from tasker import Context, SignalInstallError, StopReason, run, with_signal_notify

from .helpers import Recorder

pytestmark = pytest.mark.anyio


async def _send_later(signum: int, delay: float = 0.05) -> None:
    await anyio.sleep(delay)
    os.kill(os.getpid(), signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_first_signal_is_a_graceful_shutdown(signum: int) -> None:
    """The first signal makes the job's context done with SHUTDOWN; the job returns."""
    rec = Recorder()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_send_later, signum)
        await run(with_signal_notify(rec.waiter("w")))
    assert rec.events == ["start w", "stopped w: shutdown"]


async def test_second_signal_stops_hard_at_once() -> None:
    """A second signal during the grace period cancels the job immediately."""
    rec = Recorder()

    async def send_twice() -> None:
        await _send_later(signal.SIGTERM)
        await _send_later(signal.SIGINT)

    started = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(send_twice)
        await run(with_signal_notify(rec.stubborn("s")), grace=30)
    assert rec.events == ["start s", "cancelled s"]
    assert anyio.current_time() - started < 5


async def test_previous_handlers_are_restored() -> None:
    """After the job returns, the handlers installed before are back in place."""
    calls: list[int] = []

    def mine(signum: int, frame: object) -> None:
        calls.append(signum)

    before = signal.signal(signal.SIGTERM, mine)
    loop_sigint = signal.getsignal(signal.SIGINT)  # trio installs its own KeyboardInterrupt handler
    try:

        async def job(ctx: Context) -> None:
            await anyio.lowlevel.checkpoint()

        await run(with_signal_notify(job, signal.SIGTERM))
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is loop_sigint
    finally:
        signal.signal(signal.SIGTERM, before)


async def test_handlers_restored_after_failure() -> None:
    """A failing job still puts the previous handlers back, and its error propagates."""
    loop_sigint = signal.getsignal(signal.SIGINT)
    with pytest.raises(ZeroDivisionError):
        await run(with_signal_notify(Recorder().job("bad", fail=ZeroDivisionError())))
    assert signal.getsignal(signal.SIGINT) is loop_sigint


def test_not_main_thread_is_a_clear_error(anyio_backend: str) -> None:
    """Outside the main thread, running the job raises SignalInstallError."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            anyio.run(run, with_signal_notify(Recorder().job("x")), backend=anyio_backend)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(10)
    assert len(errors) == 1
    assert isinstance(errors[0], SignalInstallError)
    assert isinstance(errors[0], RuntimeError)
    assert "main thread" in str(errors[0])


@pytest.mark.parametrize("bad", [signal.SIGKILL, 10_000, "TERM"])
def test_bad_signals_are_rejected(bad: object) -> None:
    """Uncatchable or unknown signals are a ValueError at construction."""
    with pytest.raises(ValueError, match="with_signal_notify"):
        with_signal_notify(Recorder().job("x"), bad)  # type: ignore[arg-type]


async def test_reason_is_shutdown_deep_in_tree() -> None:
    """A job nested under the signal handler sees SHUTDOWN as the reason."""
    reasons: list[StopReason | None] = []

    async def deep(ctx: Context) -> None:
        await ctx.child().child().wait()
        reasons.append(ctx.reason)

    async with anyio.create_task_group() as tg:
        tg.start_soon(_send_later, signal.SIGINT)
        await run(with_signal_notify(deep))
    assert reasons == [StopReason.SHUTDOWN]
