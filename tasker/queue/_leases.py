"""How a worker keeps its leases: heartbeats, and fencing when one is lost or overdue.

A mixin of :class:`tasker.queue.Worker` (see ``tasker.queue._worker_state``). Lease *ages*
are measured on the local monotonic clock: ``Attempt.renewed`` is when the last claim or
heartbeat that confirmed the lease was sent. A lease is lost when a heartbeat says so
(another worker took the task), and may be lost when it was not renewed for a whole lease
(a paused process, an unreachable backend): either way the attempt's context is stopped
with ``StopReason.LEASE_LOST`` and cut off after its grace period, and its outcome is
reported only if a heartbeat confirms the lease first (:meth:`Leases._check_overdue`).

Cancels (``QueueCapability.CANCEL``) ride on the same beat: after each heartbeat that went
through, the worker asks which of the tasks it still holds were cancelled meanwhile, and
stops those with ``StopReason.CANCELLED``, cut off after their grace period as a lost lease
is. A cancel therefore reaches its handler within ``lease / 3`` and a round trip. The ask is
its own call (``cancel_requested``), not an answer of ``heartbeat``: the core protocol stays
as every backend implements it, and a backend without cancels pays nothing.
"""

from __future__ import annotations

import logging
import time

import anyio

from .._context import StopReason
from ._attempt import Attempt
from ._records import Outcome
from ._worker_state import WorkerState

__all__ = ["Leases"]

logger = logging.getLogger("tasker.queue")


class Leases(WorkerState):
    """Heartbeats, and what the worker does with a lease it lost or could not renew."""

    async def _heartbeat(self, scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                await anyio.sleep(self.lease / 3)
                await self._renew()

    async def _renew(self) -> None:
        # Not realtime tasks: they are not stored, and have no lease to renew.
        sent_to = {i: a for i, a in self.running.items() if not a.lost and not a.realtime}
        if not sent_to:
            return
        sent = time.monotonic()
        held: set[str] | None = None
        error: object = f"no answer within {self.lease / 3:g} s"
        # A heartbeat that hangs (a connection gone silent) is a failed one: the next check
        # must still find the overdue leases.
        with anyio.move_on_after(self.lease / 3):
            try:
                held = await self.backend.heartbeat(
                    self.worker_id, list(sent_to), lease=self.lease, now=await self._time.now()
                )
            except Exception as exc:
                error = exc
        if held is None:
            self._heartbeat_failures += 1
            if self._heartbeat_failures == 1:  # once per outage, not per heartbeat
                logger.warning("worker %s: heartbeat failed: %s", self.worker_id, error)
            else:
                logger.debug("worker %s: heartbeat failed again: %s", self.worker_id, error)
            self._stop_overdue()
            return
        if self._heartbeat_failures:
            logger.warning(
                "worker %s: heartbeats go through again (after %d failed)",
                self.worker_id,
                self._heartbeat_failures,
            )
            self._heartbeat_failures = 0
        for task_id, attempt in sent_to.items():
            # Only attempts sent and still ours can be lost: one recorded meanwhile has left
            # ``running`` (or is being recorded), one claimed meanwhile was not asked about.
            if self.running.get(task_id) is not attempt or task_id in self.reporting:
                continue
            if task_id in held:
                attempt.renewed = sent
            else:
                self._lose(attempt, confirmed=True)
        self._stop_overdue()
        if self._cancel_requested is not None:
            running = self.running
            await self._ask_cancels(
                [i for i, a in sent_to.items() if i in held and running.get(i) is a]
            )
        if self._progress:  # progress reports kept by the coalescing (``_progress``)
            await self._progress.flush()

    async def _ask_cancels(self, ids: list[str]) -> None:
        """Stop the attempts of ``ids`` whose cancel the backend says was requested (best
        effort: a failed ask waits for the next heartbeat)."""
        if not ids:
            return
        requested: set[str] = set()
        with anyio.move_on_after(self.lease / 3):
            try:
                requested = await self._cancel_requested(self.worker_id, ids)
            except Exception as exc:
                logger.debug("worker %s: asking for cancels failed: %s", self.worker_id, exc)
        for task_id in requested:
            attempt = self.running.get(task_id)
            if attempt is not None and task_id not in self.reporting:
                self._cancel(attempt)

    def _cancel(self, attempt: Attempt) -> None:
        """The task's cancel was requested: stop its handler (or keep it from starting)."""
        if attempt.cancelled or attempt.lost:
            return
        attempt.cancelled = True
        self.cancelled += 1
        if attempt.ctx is None or attempt.scope is None:
            return  # not started (the runner checks ``cancelled`` first), or ended
        record = attempt.record
        logger.info(
            "worker %s: task %s %s (attempt %d) was cancelled; stopping it",
            self.worker_id,
            record.name,
            record.id,
            record.attempts,
        )
        attempt.ctx.stop(StopReason.CANCELLED)
        attempt.scope.deadline = min(
            attempt.scope.deadline, anyio.current_time() + attempt.ctx.grace
        )

    def _stop_overdue(self) -> None:
        """Stop tasks whose lease was not renewed for a whole lease: it may be gone."""
        now = time.monotonic()
        for task_id, attempt in list(self.running.items()):
            if now - attempt.renewed >= self.lease and task_id not in self.reporting:
                self._lose(attempt, confirmed=False)

    def _lose(self, attempt: Attempt, *, confirmed: bool) -> None:
        if confirmed and not attempt.lost:
            attempt.lost = True
            self.leases_lost += 1
        if attempt.stopped or attempt.ctx is None or attempt.scope is None:
            return  # stopped already, or not started: the runner checks ``lost`` first
        attempt.stopped = True
        record = attempt.record
        logger.warning(
            "worker %s: %s the lease on task %s %s (attempt %d); stopping it: another worker"
            " may run it now",
            self.worker_id,
            "lost" if confirmed else "could not renew",
            record.name,
            record.id,
            record.attempts,
        )
        attempt.ctx.stop(StopReason.LEASE_LOST)
        attempt.scope.deadline = min(
            attempt.scope.deadline, anyio.current_time() + attempt.ctx.grace
        )

    async def _check_overdue(
        self, reported: list[tuple[Outcome, Attempt]], now: float
    ) -> list[tuple[Outcome, Attempt]]:
        """Ask about leases not renewed for a whole lease by ``now`` (``time.monotonic()``);
        return the outcomes of those still held, and forget the others.

        A worker that was paused past its lease (SIGSTOP, a long GC pause, a suspended
        machine) may have lost its tasks to another worker while it slept. When the backend
        cannot tell, the outcomes are all kept: its owner check on the report decides.
        """
        overdue = [a for _, a in reported if now - a.renewed >= self.lease]
        if not overdue:
            return reported
        try:
            held = await self.backend.heartbeat(
                self.worker_id,
                [a.record.id for a in overdue],
                lease=self.lease,
                now=await self._time.now(),
            )
        except Exception:
            return reported  # cannot tell: the backend's owner check decides
        kept = []
        for outcome, attempt in reported:
            if attempt in overdue:
                if attempt.record.id not in held:
                    attempt.lost = True
                    self.leases_lost += 1
                    self._forget(attempt, "when it ended")
                    continue
                attempt.renewed = now
            kept.append((outcome, attempt))
        return kept
