"""``with_signal_notify``: turn SIGINT/SIGTERM into a graceful shutdown.

anyio's ``open_signal_receiver`` works on asyncio and trio, but on asyncio it leaves the
signal at its *default* disposition when it closes (``loop.remove_signal_handler``) rather
than at the handler that was installed before, so the previous Python-level handlers are
saved and put back explicitly. Signals are handled in a task, never in the raw handler, so
nothing here runs in a signal or loop-callback context (see FIELD_NOTES on anyio 4.14).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import anyio

from ._budget import inherit_budget
from ._context import Context, StopReason
from ._errors import SignalInstallError
from ._job import Job, check_job
from ._readiness import watch_shutdown
from ._stopping import Stopper, run_stoppable

__all__ = ["DEFAULT_SIGNALS", "SignalOutcome", "run_with_signals", "with_signal_notify"]

logger = logging.getLogger("tasker")

DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


def check_signals(signals: Iterable[int], where: str) -> tuple[signal.Signals, ...]:
    """Validate and normalise signal numbers."""
    result = []
    for number in signals:
        try:
            result.append(signal.Signals(number))
        except (ValueError, TypeError):
            raise ValueError(f"{where}: {number!r} is not a signal number") from None
        if result[-1] in (signal.SIGKILL, signal.SIGSTOP):
            raise ValueError(f"{where}: {result[-1].name} cannot be caught")
    return tuple(result) or DEFAULT_SIGNALS


@dataclass(slots=True)
class SignalOutcome:
    """What happened while a job ran under signal handlers (for ``main``'s exit status)."""

    first_signal: signal.Signals | None = None
    forced: bool = False


async def run_with_signals(
    job: Job, ctx: Context, signals: tuple[signal.Signals, ...]
) -> SignalOutcome:
    """Run ``job`` in a child of ``ctx``; the first signal stops it softly, the second hard."""
    if threading.current_thread() is not threading.main_thread():
        raise SignalInstallError(
            f"not the main thread ({threading.current_thread().name!r}); Python delivers"
            " signals to the main thread only"
        )
    outcome = SignalOutcome()
    previous = {signum: signal.getsignal(signum) for signum in signals}
    try:
        with anyio.open_signal_receiver(*signals) as receiver:

            async def watch(stopper: Stopper) -> None:
                async for signum in receiver:
                    received = signal.Signals(signum)
                    if outcome.first_signal is None:
                        outcome.first_signal = received
                        logger.info(
                            "received %s: shutting down (grace %gs)", received.name, ctx.grace
                        )
                        stopper.soft_stop(StopReason.SHUTDOWN)
                    else:
                        logger.warning("received %s again: stopping now", received.name)
                        stopper.hard_stop()

            child = ctx.child()
            watch_shutdown(child)  # readiness turns false at the first signal
            stopper = await run_stoppable(job, child, watch)
            outcome.forced = stopper.forced
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)
    return outcome


def with_signal_notify(job: Job, *signals: int) -> Job:
    """Return a job that runs ``job`` and turns OS signals into a graceful shutdown.

    The first of ``signals`` (default SIGINT and SIGTERM) makes ``job``'s context done with
    :attr:`StopReason.SHUTDOWN`; the job is cancelled if it has not returned within the grace
    period, or at once when a second signal arrives. The handlers that were installed before
    are restored when the job returns. Works on asyncio and trio, in the main thread only.

    - **On error**: the job's exception propagates as it is; handlers are restored.
    - **On cancellation**: the job is cancelled; handlers are restored.
    - **On shutdown**: a hard stop after the grace period or a second signal is logged as a
      warning and the job returns normally.

    Raises:
        TypeError: at construction, if ``job`` is not an async callable.
        ValueError: at construction, for a number that is not a catchable signal.
        tasker.SignalInstallError: when run outside the main thread.
    """
    job = check_job(job, "with_signal_notify()")
    wanted = check_signals(signals, "with_signal_notify()")

    async def signal_notify_job(ctx: Context) -> None:
        await run_with_signals(job, ctx, wanted)

    inherit_budget(signal_notify_job, job)
    return signal_notify_job
