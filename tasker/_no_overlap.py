"""``with_no_overlap``: run a job only if no other holder of a named lock runs it now.

The Go original's ``WithNoOverlap``. The lock is taken *without waiting*: a second caller
skips its run instead of queueing behind the first, which is what a repeated job wants
(the next repetition comes soon enough, and waiting would pile runs up). Unlike the
Scheduler there is no state: nothing remembers that a run happened, so a repetition in
another replica runs again at its own next slot. For "once per slot across replicas", use
:meth:`tasker.Scheduler.with_schedule`.
"""

from __future__ import annotations

import logging

import anyio

from ._budget import inherit_budget
from ._context import Context, StopReason
from ._job import Job, check_job, job_name
from ._stopping import Stopper, run_stoppable
from .abc import LockerFactory
from .scheduler._scheduler import _UNLOCK_TIMEOUT  # the Scheduler's bound on a shielded unlock
from .scheduler._state import check_name

__all__ = ["with_no_overlap"]

logger = logging.getLogger("tasker")


def with_no_overlap(locks: LockerFactory, name: str, job: Job) -> Job:
    """Return a job that runs ``job`` unless another holder has the lock ``name``.

    Each call takes ``locks.locker(name)`` without waiting. If somebody else holds it (a
    run of the same job in this process or in another replica sharing ``locks``), the call
    is skipped: it returns None at once and logs at DEBUG on the ``tasker`` logger.
    Otherwise it runs ``job`` with a child of its context and releases the lock when the
    run ends. Typical use, a cleanup every minute that never runs twice at once across
    replicas::

        tasker.with_repeat(Interval(60), tasker.with_no_overlap(locks, "cleanup", cleanup))

    ``locks`` can be a Scheduler's ``scheduler.locker_factory``, the embedded
    :class:`tasker.FileLockerFactory` (processes of one machine), a ``tasker_pg`` locker
    factory (replicas on several machines) or any :class:`tasker.abc.LockerFactory`. A
    name shared with a schedule of a Scheduler on the same locks excludes that schedule's
    runs too.

    If the locker declares ``can_be_lost`` (a database session lock), its ``wait_lost`` is
    watched beside the job: when the lock is lost, the job's context becomes done with
    :attr:`StopReason.LOCK_LOST` (another holder may start meanwhile), it is cancelled if it
    has not returned after the grace period, and the loss is logged at ERROR.

    Args:
        locks: where the lock lives.
        name: the lock's name (a schedule name: at most 200 printable characters).
        job: the job to guard.

    - **On error**: the job's exception propagates as it is, after the lock is released.
      An error taking the lock (the backend is unreachable) propagates too, and the job does
      not run. A lost lock is not an error: the call returns once the job has stopped.
    - **On cancellation**: the job is cancelled, the lock is released in a shielded scope
      (abandoned after 10 seconds) and the cancellation propagates.
    - **On shutdown**: the job sees ``ctx.done``; a call that starts once the context is
      done still takes the lock and runs the job, as a bare job would be run.

    Raises:
        TypeError: at construction, if ``locks`` is not a :class:`tasker.abc.LockerFactory`,
            ``name`` is not a string, or ``job`` is not an async callable.
        ValueError: at construction, for an empty, too long or unprintable ``name``.
    """
    if not isinstance(locks, LockerFactory):
        raise TypeError(
            f"with_no_overlap(): locks must be a tasker.abc.LockerFactory, got {locks!r}"
        )
    check_name(name, "with_no_overlap()")
    job = check_job(job, "with_no_overlap()")

    async def no_overlap_job(ctx: Context) -> None:
        locker = locks.locker(name)
        if not await locker.try_lock():
            logger.debug("with_no_overlap(%r): the lock is held elsewhere; skipping this run", name)
            return
        try:
            if not locker.can_be_lost:  # nothing to watch: no watcher task per run
                await job(ctx.child())
                return

            async def watch_lock(stopper: Stopper) -> None:
                await locker.wait_lost()
                logger.error(
                    "with_no_overlap(%r): lost the lock during a run of %s; stopping it",
                    name,
                    job_name(job),
                )
                stopper.soft_stop(StopReason.LOCK_LOST)

            await run_stoppable(job, ctx.child(), watch_lock)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_UNLOCK_TIMEOUT):
                await locker.unlock()

    no_overlap_job.__name__ = no_overlap_job.__qualname__ = (
        f"with_no_overlap({name!r}, {job_name(job)})"
    )
    inherit_budget(no_overlap_job, job)
    return no_overlap_job
