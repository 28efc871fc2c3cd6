"""``main``: the program entrypoint that owns the event loop."""

from __future__ import annotations

import gc
import logging
import signal
from datetime import timedelta
from typing import Literal

import anyio

from ._budget import check_budget
from ._clock import SYSTEM_CLOCK
from ._combinators import concurrence
from ._context import DEFAULT_GRACE, Context, to_seconds
from ._job import Job, check_jobs, job_name
from ._logging import configure_logging, resolve_log_level
from ._readiness import use_readiness
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
    log_level: str | int | None = None,
) -> None:
    """Run ``jobs`` concurrently as a program: start the loop, handle signals, exit cleanly.

    The jobs run as :func:`tasker.concurrence` under :func:`tasker.with_signal_notify`: the
    first SIGINT or SIGTERM starts a graceful shutdown, a second one (or the end of the grace
    period) stops the jobs hard. With no jobs, ``main`` returns at once.

    One stop budget: the grace (25 s by default, which fits Kubernetes' default
    ``terminationGracePeriodSeconds`` of 30 s) is what every part of the program has once a
    shutdown starts. A server's drain defaults to it (see :func:`tasker.with_shutdown`); one
    whose ``timeout`` exceeds it is rejected here, naming both values.

    Logging: unless the application configured logging itself (the root logger has a
    handler), ``main`` adds one that writes the time, level and logger name of each record
    to stderr, at ``log_level`` (else ``$TASKER_LOG_LEVEL``, else INFO). With logging
    configured, only a level asked for (``log_level`` or the variable) is applied, to the
    ``tasker`` loggers.

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
        log_level: a level name (``"DEBUG"``, ``"INFO"``, ...) or number; see above.

    Raises:
        TypeError: if a job is not an async callable.
        ValueError: for a bad ``grace``, ``backend``, signal or log level, uvloop on trio,
            or a server whose shutdown timeout exceeds ``grace``.
        SystemExit: with a non-zero status on failure or a forced stop.
    """
    program = concurrence(*check_jobs(jobs, "main()"))
    grace_s = to_seconds(grace, "grace")
    check_budget(program, grace_s, "main()")
    wanted = check_signals(signals, "main()")
    if backend not in ("asyncio", "trio"):
        raise ValueError(f"main(): backend must be 'asyncio' or 'trio', got {backend!r}")
    if uvloop and backend != "asyncio":
        raise ValueError("main(): uvloop=True needs backend='asyncio'")
    level = resolve_log_level(log_level, "main()")
    if not jobs:
        return
    configure_logging(level)
    logger.info(
        "starting %s on %s (grace %gs)",
        ", ".join(job_name(job) for job in jobs),
        "uvloop" if uvloop else backend,
        grace_s,
    )

    async def entry() -> SignalOutcome:
        ctx = Context._create(grace=grace_s, clock=SYSTEM_CLOCK)
        use_readiness(ctx)
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
    if outcome.first_signal is not None:
        _prepare_exit()
    if outcome.forced and outcome.first_signal is not None:
        logger.warning("stopped hard: exiting with status %d", 128 + outcome.first_signal)
        raise SystemExit(128 + outcome.first_signal)
    logger.info("stopped cleanly")


def _prepare_exit() -> None:
    """Make the interpreter's exit after a signal cheap: freeze the objects alive now.

    A program stopped by SIGTERM is about to exit, and the deployment waits for that exit
    (Kubernetes counts it against ``terminationGracePeriodSeconds``). The interpreter's
    finalisation runs the cyclic collector over every object still alive, several times:
    with trio and 1,000 jobs that was about 28 of the 38 ms from SIGTERM to exit (measured
    with ``benchmarks/bench_core.py``), against 9 ms for the stop itself. ``gc.freeze()``
    moves those objects to the permanent generation, which the collector skips; it cut the
    exit to 14 ms. The cost, for a program that goes on after ``main`` returned from a
    signal: cycles among the objects alive at this moment are never collected
    (``gc.unfreeze()`` undoes it). Only a signal's shutdown does this, not a ``main`` whose
    jobs returned by themselves.
    """
    gc.freeze()


def _summary(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return f"{len(exc.exceptions)} jobs failed"
    return f"{type(exc).__name__}: {exc}"
