"""``main``: the program entrypoint that owns the event loop."""

from __future__ import annotations

import logging
import signal
from datetime import timedelta
from typing import Literal

import anyio

from ._clock import SYSTEM_CLOCK
from ._combinators import concurrence
from ._context import DEFAULT_GRACE, Context, to_seconds
from ._job import Job, check_jobs
from ._signals import SignalOutcome, check_signals, run_with_signals

__all__ = ["main"]

logger = logging.getLogger("tasker")

#: Exit status when a job failed.
EXIT_FAILURE = 1


def main(
    *jobs: Job,
    grace: float | timedelta = DEFAULT_GRACE,
    backend: Literal["asyncio", "trio"] = "asyncio",
    uvloop: bool = False,
    signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
) -> None:
    """Run ``jobs`` concurrently as a program: start the loop, handle signals, exit cleanly.

    The jobs run as :func:`tasker.concurrence` under :func:`tasker.with_signal_notify`: the
    first SIGINT or SIGTERM starts a graceful shutdown, a second one (or the end of the grace
    period) stops the jobs hard. With no jobs, ``main`` returns at once.

    Exit status: ``main`` returns normally (status 0) when every job returned, including after
    a graceful shutdown. It raises ``SystemExit(1)`` after logging the failure with its
    traceback on the ``tasker`` logger when a job failed, and ``SystemExit(128 + signal)``
    when the jobs had to be stopped hard. Ctrl-C never shows a traceback.

    Args:
        jobs: the program's long-lived jobs.
        grace: seconds the jobs have after a shutdown signal before they are cancelled.
        backend: ``"asyncio"`` (default) or ``"trio"``.
        uvloop: on asyncio, run on uvloop (needs the ``uvloop`` extra).
        signals: the signals that start a shutdown.

    Raises:
        TypeError: if a job is not an async callable.
        ValueError: for a bad ``grace``, ``backend`` or signal, or uvloop on trio.
        SystemExit: with a non-zero status on failure or a forced stop.
    """
    program = concurrence(*check_jobs(jobs, "main()"))
    grace_s = to_seconds(grace, "grace")
    wanted = check_signals(signals, "main()")
    if backend not in ("asyncio", "trio"):
        raise ValueError(f"main(): backend must be 'asyncio' or 'trio', got {backend!r}")
    if uvloop and backend != "asyncio":
        raise ValueError("main(): uvloop=True needs backend='asyncio'")
    if not jobs:
        return

    async def entry() -> SignalOutcome:
        ctx = Context._create(grace=grace_s, clock=SYSTEM_CLOCK)
        return await run_with_signals(program, ctx, wanted)

    options = {"use_uvloop": True} if uvloop else {}
    try:
        outcome = anyio.run(entry, backend=backend, backend_options=options)
    except KeyboardInterrupt:
        # A Ctrl-C before the handlers were installed or after they were removed.
        logger.info("interrupted")
        raise SystemExit(128 + signal.SIGINT) from None
    except Exception as exc:
        logger.error("program failed: %s", _summary(exc), exc_info=exc)
        raise SystemExit(EXIT_FAILURE) from None
    if outcome.forced and outcome.first_signal is not None:
        raise SystemExit(128 + outcome.first_signal)
    logger.debug("program stopped cleanly")


def _summary(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return f"{len(exc.exceptions)} jobs failed"
    return f"{type(exc).__name__}: {exc}"
