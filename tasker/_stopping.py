"""The two-phase stop shared by run(), with_signal_notify() and with_timeout().

A job runs in its own cancel scope beside one *watcher* task. The watcher decides when to
stop the job: ``soft_stop`` makes the job's context done and arms a timer that cancels the
scope after the grace period; ``hard_stop`` cancels at once. The job's own exception is
re-raised bare (not inside an ``ExceptionGroup``, which an anyio task group would add), so
the combinators built on this keep "a failure propagates as it is".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

from ._context import Context, StopReason
from ._job import Job, job_name

__all__ = ["Stopper", "run_stoppable"]

logger = logging.getLogger("tasker")


class Stopper:
    """Handed to a watcher: stops the job softly, then hard after the grace period."""

    __slots__ = ("_armed", "_ctx", "_job", "_scope", "_tg", "forced")

    def __init__(
        self, ctx: Context, scope: anyio.CancelScope, tg: anyio.abc.TaskGroup, job: Job
    ) -> None:
        self._ctx = ctx
        self._scope = scope
        self._tg = tg
        self._job = job
        self._armed = False
        #: True once the job was cancelled instead of returning by itself.
        self.forced = False

    @property
    def ctx(self) -> Context:
        return self._ctx

    def soft_stop(self, reason: StopReason) -> None:
        """Make the context done and cancel the job if it is still running after the grace."""
        self._ctx.stop(reason)
        if not self._armed:
            self._armed = True
            self._tg.start_soon(self._cancel_after_grace)

    def hard_stop(self) -> None:
        """Cancel the job now."""
        if not self._scope.cancel_called:
            self.forced = True
            self._scope.cancel()

    async def _cancel_after_grace(self) -> None:
        await anyio.sleep(self._ctx.grace)
        if not self._scope.cancel_called:
            logger.warning(
                "job %s did not stop within its %gs grace period; cancelling it",
                job_name(self._job),
                self._ctx.grace,
            )
            self.hard_stop()


async def run_stoppable(
    job: Job, ctx: Context, watcher: Callable[[Stopper], Coroutine[Any, Any, object]]
) -> Stopper:
    """Run ``job(ctx)`` while ``watcher`` may stop it; return the stopper to inspect.

    The job's exception propagates bare. The watcher is cancelled when the job ends; an
    exception from the watcher propagates (inside the task group's ExceptionGroup).
    """
    scope = anyio.CancelScope()
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        stopper = Stopper(ctx, scope, tg, job)
        tg.start_soon(watcher, stopper)
        try:
            with scope:
                await job(ctx)
        except Exception as exc:
            error = exc
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
    return stopper
