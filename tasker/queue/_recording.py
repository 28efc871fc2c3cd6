"""How a worker records outcomes: batched flushes, poison isolation, a bounded stop.

A mixin of :class:`tasker.queue.Worker` (the state it uses is declared below): the worker
runs tasks and holds leases; this part gets their outcomes into the backend. See the design
notes of ``tasker.queue._worker``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import anyio

from .._backoff import Backoff
from .._context import Context
from ..abc import QueueBackend
from ._attempt import Attempt
from ._errors import is_data_error
from ._failures import ERROR_LIMIT
from ._records import Outcome, OutcomeKind, TaskRecord

__all__ = ["BACKEND_BACKOFF", "Recording"]

logger = logging.getLogger("tasker.queue")

BACKEND_BACKOFF = Backoff(initial=0.2, maximum=10.0)


def _ascii(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text.encode("ascii", "backslashreplace").decode("ascii")[:limit]


class Recording:
    """Outcome recording for the worker (a mixin: the worker provides the state below)."""

    backend: QueueBackend
    worker_id: str
    queues: list[str]
    lease: float
    running: dict[str, Attempt]
    reporting: set[str]
    completed: int
    leases_lost: int
    _ctx: Context | None
    _reserved: int
    _finish_and_claim: Any
    _pending_outcomes: list[tuple[Outcome, Attempt, anyio.Event]]
    _flushing: bool
    _shielded: set[anyio.CancelScope]
    _give_up_at: float | None
    _abandoned: bool

    async def _now(self) -> float:
        raise NotImplementedError

    def _free(self) -> int:
        raise NotImplementedError

    def _forget(self, attempt: Attempt, when: str) -> None:
        raise NotImplementedError

    async def _hand_to_runners(self, records: list[TaskRecord], sent: float) -> None:
        raise NotImplementedError

    async def _report(self, outcome: Outcome, attempt: Attempt) -> None:
        """Record an outcome; outcomes reported meanwhile are flushed together.

        The first reporter drains the batch (shielded: it carries the others' outcomes), so
        ten tasks finishing together cost one backend call, not ten. Through a backend
        outage it retries with backoff (the leases keep the tasks meanwhile) until the
        worker stops.
        """
        done = anyio.Event()
        self._pending_outcomes.append((outcome, attempt, done))
        if self._flushing:
            await done.wait()
            return
        self._flushing = True
        scope = anyio.CancelScope(shield=True)
        self._shielded.add(scope)
        if self._give_up_at is not None:
            scope.deadline = self._give_up_at
        if self._abandoned:
            scope.cancel()
        try:
            with scope:
                # One turn of the event loop first: tasks that finish in the same turn (a
                # claimed batch of quick tasks) join this flush instead of waiting for the next.
                await anyio.lowlevel.checkpoint()
                while self._pending_outcomes:
                    batch, self._pending_outcomes = self._pending_outcomes, []
                    try:
                        await self._flush([(outcome, attempt) for outcome, attempt, _ in batch])
                    finally:
                        for _, _, event in batch:
                            event.set()
        finally:
            self._shielded.discard(scope)
            self._flushing = False
            left, self._pending_outcomes = self._pending_outcomes, []
            for _, _, event in left:
                event.set()
            if left:
                logger.warning(
                    "worker %s: stopping with %d outcome(s) not recorded (%s); their leases"
                    " will expire and they will run again",
                    self.worker_id,
                    len(left),
                    ", ".join(outcome.id for outcome, _, _ in left),
                )

    async def _flush(self, reported: list[tuple[Outcome, Attempt]]) -> None:
        reported = [(o, a) for o, a in reported if not self._discarded(a, "when it ended")]
        outcomes = [outcome for outcome, _ in reported]
        claimed: list[TaskRecord] = []
        recorded = False
        sent = time.monotonic()
        try:
            reported = await self._check_overdue(reported)
            outcomes = [outcome for outcome, _ in reported]
            if not outcomes:
                recorded = True
                return
            ctx = self._ctx
            combined = self._finish_and_claim
            free = 0
            if combined is not None and ctx is not None and not ctx.done:
                free = max(0, self._free())
            if free and combined is not None:
                self._reserved += free
                try:
                    claimed = await combined(
                        outcomes,
                        now=await self._now(),
                        queues=self.queues,
                        limit=free,
                        worker=self.worker_id,
                        lease=self.lease,
                        exclude=list(self.running),
                    )
                    recorded = True
                except Exception as exc:
                    # Record alone at once: a backend whose combined call keeps failing
                    # costs no wait, and a poison outcome is isolated below.
                    logger.debug("worker %s: finish_and_claim failed: %s", self.worker_id, exc)
                finally:
                    self._reserved -= free
            if not recorded:
                recorded = await self._record(outcomes)
        finally:
            if recorded:
                self.completed += len(outcomes)
            else:
                logger.warning(
                    "worker %s: stopping with %d outcome(s) not recorded (%s); their leases"
                    " will expire and they will run again",
                    self.worker_id,
                    len(outcomes),
                    ", ".join(o.id for o in outcomes),
                )
            # No longer ours, at once: a heartbeat answered meanwhile no longer lists
            # them, and must not take them for lost before their runners wake up.
            for outcome, attempt in reported:
                if self.running.get(outcome.id) is attempt:  # not a newer claim of the task
                    del self.running[outcome.id]
                    self.reporting.discard(outcome.id)
        if claimed:
            await self._hand_to_runners(claimed, sent)

    def _discarded(self, attempt: Attempt, when: str) -> bool:
        if attempt.lost:
            self._forget(attempt, when)
            return True
        return False

    async def _check_overdue(
        self, reported: list[tuple[Outcome, Attempt]]
    ) -> list[tuple[Outcome, Attempt]]:
        """Ask about leases not renewed for a whole lease: report only those still held.

        A worker that was paused past its lease (SIGSTOP, a long GC pause, a suspended
        machine) may have lost its tasks to another worker while it slept.
        """
        now = time.monotonic()
        overdue = [a for _, a in reported if now - a.renewed >= self.lease]
        if not overdue:
            return reported
        try:
            held = await self.backend.heartbeat(
                self.worker_id,
                [a.record.id for a in overdue],
                lease=self.lease,
                now=await self._now(),
            )
        except Exception:
            return reported  # cannot tell: the backend's owner check decides
        kept = []
        for outcome, attempt in reported:
            if attempt in overdue and attempt.record.id not in held:
                attempt.lost = True
                self.leases_lost += 1
                self._forget(attempt, "when it ended")
            else:
                attempt.renewed = now
                kept.append((outcome, attempt))
        return kept

    async def _record(self, outcomes: list[Outcome]) -> bool:
        """Record ``outcomes``, isolating any the backend cannot store; False if stopped.

        A batch refused for its data (:func:`is_data_error`: the backend raised
        ``UnstorableRecordError`` or a bad-value error) is tried one outcome at a time, and an
        outcome refused alone in ever plainer forms (:meth:`_reduced`). Any other error is an
        outage: the rest is retried with backoff until the backend is back or the worker's
        stop deadline passes; an outage never turns an outcome into its reduced form.
        """
        pending = outcomes
        outage = 0
        while True:
            try:
                await self.backend.finish(pending, now=await self._now())
                break
            except Exception as exc:
                error: Exception = exc
            if is_data_error(error):
                pending = await self._isolate(pending, error)
                if not pending:
                    break
            outage += 1
            if outage == 1:
                logger.warning(
                    "worker %s: cannot record %d task(s) yet (%s: %s); retrying",
                    self.worker_id,
                    len(pending),
                    type(error).__name__,
                    error,
                )
            delay = BACKEND_BACKOFF.delay(outage)
            if self._give_up_at is not None:
                left = self._give_up_at - anyio.current_time()
                if left <= 0:
                    return False
                delay = min(delay, left)
            await anyio.sleep(delay)
        if outage:
            logger.warning("worker %s: recorded the outcomes held back", self.worker_id)
        return True

    async def _isolate(self, pending: list[Outcome], error: Exception) -> list[Outcome]:
        """Record a refused batch one outcome at a time; return what an outage held back."""
        for index, outcome in enumerate(pending):
            forms = self._reduced(outcome, error)
            if len(pending) == 1:
                forms = forms[1:]  # the original was just refused alone
            for form in forms:
                try:
                    await self.backend.finish([form], now=await self._now())
                except Exception as exc:
                    if not is_data_error(exc):
                        return pending[index:]  # an outage: the rest waits for the backend
                    error = exc
                    continue
                if form is not outcome:
                    logger.error(
                        "worker %s: the outcome of task %s could not be stored as it was"
                        " (%s: %s); stored it in a reduced form",
                        self.worker_id,
                        outcome.id,
                        type(error).__name__,
                        error,
                    )
                break
            else:
                logger.error(
                    "worker %s: no form of the outcome of task %s can be stored (%s: %s); its"
                    " lease will expire and it will run again",
                    self.worker_id,
                    outcome.id,
                    type(error).__name__,
                    error,
                )
        return []

    def _reduced(self, outcome: Outcome, error: Exception) -> list[Outcome]:
        """``outcome``, then with its texts in plain ASCII, then a bare dead letter."""
        plain = dataclasses.replace(
            outcome,
            error=_ascii(outcome.error, ERROR_LIMIT),
            traceback=_ascii(outcome.traceback, ERROR_LIMIT),
        )
        reason = _ascii(f"{type(error).__name__}: {error}", 300)
        note = f"tasker could not store this task's outcome ({reason})"
        if outcome.kind is OutcomeKind.SUCCEEDED:
            bare = dataclasses.replace(
                outcome,
                kind=OutcomeKind.DEAD,
                result=None,
                result_expires=None,
                follow_ups=(),
                error=f"{note}; its result was dropped: requeue the task to run it again",
                traceback=None,
            )
        else:
            bare = dataclasses.replace(outcome, error=note, traceback=None, follow_ups=())
        return [outcome, plain, bare]
