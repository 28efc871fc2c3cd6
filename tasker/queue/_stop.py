"""How a worker stops within its grace period: the deadlines, the shielded budgets, the hand-back.

A mixin of :class:`tasker.queue.Worker` (see ``tasker.queue._worker_state``). When the
worker's context is done, running tasks keep their grace period less a margin (at most a
second) that the worker keeps for recording their outcomes and handing back what had not
started: at the *cut* their handlers are cancelled, and at the *give-up* every shielded
recording gives up, whatever the backend is doing, and says so in the log. A hard stop (a
second signal) gives up at once.
"""

from __future__ import annotations

import logging
import time

import anyio

from .._budget import grace_margin
from .._context import Context
from ._attempt import Attempt
from ._records import Outcome, OutcomeKind
from ._worker_state import WorkerState

__all__ = ["Stopping"]

logger = logging.getLogger("tasker.queue")

#: How long the shielded hand-back of tasks that never started may take.
_RELEASE_TIMEOUT = 2.0
#: After a hard stop: the last hand-back's budget.
_HARD_RELEASE_TIMEOUT = 0.5


class Stopping(WorkerState):
    """The bounded stop: deadlines armed when the context is done, and the hand-back."""

    def _on_stop(self, ctx: Context) -> None:
        """The worker's context is done: arm the deadlines that end it within its grace."""
        self._stopping = True
        if self._spawn_wake is not None:  # spawns waiting for a slot: none will come
            self._spawn_wake.set()
            self._spawn_wake = None
        now = anyio.current_time()
        # The same margin a server keeps to close what is left itself (tasker._budget).
        margin = grace_margin(ctx.grace)
        if self._maintenance is not None:
            self._maintenance.cancel()  # no purge delays a stop
        self._cut_at = now + ctx.grace - margin
        self._give_up_at = now + ctx.grace - margin * 0.25
        # A claim (or a wait) still held up by the backend when running tasks are cut: give
        # it up too (what it claims after all is handed back, or expires, uncounted or not).
        if self._claims is not None:
            self._claims.deadline = min(self._claims.deadline, self._cut_at)
        for attempt in self.running.values():
            if attempt.scope is not None:
                attempt.scope.deadline = min(attempt.scope.deadline, self._cut_at)
        for scope in self._shielded:
            scope.deadline = min(scope.deadline, self._give_up_at)

    def _abandon(self) -> None:
        """A hard stop: shielded recording in progress gives up now."""
        self._abandoned = True
        for scope in self._shielded:
            scope.cancel()

    def _shield(self, budget: float) -> anyio.CancelScope:
        """A shielded scope for recording, bounded by ``budget`` and the stop deadlines."""
        if self._abandoned:
            budget = min(budget, _HARD_RELEASE_TIMEOUT)
        deadline = anyio.current_time() + budget
        if self._give_up_at is not None:
            deadline = min(deadline, self._give_up_at)
        return anyio.CancelScope(shield=True, deadline=deadline)

    def _handed_back(self, attempt: Attempt, now: float) -> Outcome:
        """The outcome that hands ``attempt`` back: RELEASED if its handler never started,
        else INTERRUPTED (a history row), logged by name."""
        if attempt.began is None:
            return Outcome(
                id=attempt.record.id,
                worker=self.worker_id,
                kind=OutcomeKind.RELEASED,
                started_at=now,
                finished_at=now,
            )
        ran = max(0.0, time.monotonic() - attempt.began)
        record = attempt.record
        why = "its lease could not be renewed" if attempt.stopped else "the shutdown"
        logger.warning(
            "worker %s: task %s %s (attempt %d) was cut off by %s after %.1fs; it goes back"
            " to the queue, uncounted, and runs again",
            self.worker_id,
            record.name,
            record.id,
            record.attempts,
            why,
            ran,
        )
        return Outcome(
            id=record.id,
            worker=self.worker_id,
            kind=OutcomeKind.INTERRUPTED,
            started_at=now - ran,
            finished_at=now,
            error=f"interrupted: cut off by {why} after {ran:.1f}s",
        )

    async def _release(self, attempts: list[Attempt]) -> None:
        """Hand tasks back uncounted (shielded, bounded); their leases expire otherwise.
        Realtime tasks, which are not stored, are dropped (and logged)."""
        realtime = [a for a in attempts if a.realtime]
        if realtime:
            self._drop_realtime(realtime, "the worker stopped")
            attempts = [a for a in attempts if not a.realtime]
        mine = [a for a in attempts if not a.lost]
        if mine:
            with self._shield(_RELEASE_TIMEOUT) as scope:
                self._shielded.add(scope)
                try:
                    now = await self._time.now()
                    outcomes = [self._handed_back(a, now) for a in mine]
                    observer = self._registry.observer
                    if observer is not None:
                        for attempt, outcome in zip(mine, outcomes, strict=True):
                            observer.finished(attempt.record, outcome)
                    await self.backend.finish(outcomes, now=now)
                except Exception as exc:
                    logger.warning(
                        "worker %s: could not hand back %d task(s) (their leases will expire"
                        " and they will run again): %s",
                        self.worker_id,
                        len(mine),
                        exc,
                    )
                finally:
                    self._shielded.discard(scope)
            if scope.cancelled_caught:
                logger.warning(
                    "worker %s: stopping before %d task(s) were handed back (%s); their"
                    " leases will expire and they will run again",
                    self.worker_id,
                    len(mine),
                    ", ".join(a.record.id for a in mine),
                )
        for attempt in attempts:
            if self.running.get(attempt.record.id) is attempt:
                del self.running[attempt.record.id]
                self.reporting.discard(attempt.record.id)
        self._freed()
