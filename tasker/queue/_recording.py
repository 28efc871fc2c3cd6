"""How a worker records outcomes: batched flushes, poison isolation, a bounded stop.

A mixin of :class:`tasker.queue.Worker` (see ``tasker.queue._worker_state``): the other
parts run tasks and hold leases; this one gets their outcomes into the backend. See the
design notes of ``tasker.queue._worker``.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import anyio

from ._attempt import Attempt
from ._errors import is_data_error
from ._failures import ERROR_LIMIT
from ._records import Outcome, OutcomeKind, TaskRecord
from ._worker_state import BACKEND_BACKOFF, WorkerState

__all__ = ["Recording"]

logger = logging.getLogger("tasker.queue")


def _ascii(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text.encode("ascii", "backslashreplace").decode("ascii")[:limit]


class Recording(WorkerState):
    """Outcome recording: one flush at a time carries every outcome reported meanwhile."""

    async def _report(self, outcome: Outcome, attempt: Attempt) -> None:
        """Record an outcome; outcomes reported meanwhile are flushed together.

        The first reporter drains the batch (shielded: it carries the others' outcomes), so
        ten tasks finishing together cost one backend call, not ten. Through a backend
        outage it retries with backoff (the leases keep the tasks meanwhile) until the
        worker stops.
        """
        self._pending_outcomes.append((outcome, attempt))
        if self._flushing:
            # One event per batch, not per reporter: it is set when the flush of the
            # outcomes pending now ends.
            done = self._pending_done
            if done is None:
                done = self._pending_done = anyio.Event()
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
                # One turn of the event loop first, while another handler may finish in it
                # (a claimed batch of quick tasks): it joins this flush instead of waiting
                # for the next. When every attempt held is being recorded, none can.
                if len(self.running) > len(self.reporting):
                    await anyio.lowlevel.checkpoint()
                while self._pending_outcomes:
                    batch, self._pending_outcomes = self._pending_outcomes, []
                    done, self._pending_done = self._pending_done, None
                    try:
                        await self._flush(batch)
                    finally:
                        if done is not None:
                            done.set()
        finally:
            self._shielded.discard(scope)
            self._flushing = False
            left, self._pending_outcomes = self._pending_outcomes, []
            done, self._pending_done = self._pending_done, None
            if done is not None:
                done.set()
            if left:
                logger.warning(
                    "worker %s: stopping with %d outcome(s) not recorded (%s); their leases"
                    " will expire and they will run again",
                    self.worker_id,
                    len(left),
                    ", ".join(outcome.id for outcome, _ in left),
                )

    async def _flush(self, batch: list[tuple[Outcome, Attempt]]) -> None:
        # One monotonic reading serves the overdue check and the claim's lease age: nothing
        # awaits between them.
        sent = time.monotonic()
        lease = self.lease
        reported: list[tuple[Outcome, Attempt]] = []
        overdue = False
        for outcome, attempt in batch:
            if attempt.lost:
                self._forget(attempt, "when it ended")
                continue
            reported.append((outcome, attempt))
            if sent - attempt.renewed >= lease:
                overdue = True
        outcomes = [outcome for outcome, _ in reported]
        claimed: list[TaskRecord] = []
        recorded = False
        try:
            if overdue:
                reported = await self._check_overdue(reported, sent)
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
                        now=await self._time.now(),
                        queues=self.queues,
                        limit=free,
                        worker=self.worker_id,
                        lease=lease,
                        exclude=list(self.running),
                    )
                    recorded = True
                except Exception as exc:
                    # Record alone at once: a backend whose combined call keeps failing
                    # costs no wait, and a poison outcome is isolated below.
                    logger.debug("worker %s: finish_and_claim failed: %s", self.worker_id, exc)
                finally:
                    self._reserved -= free
                    if self._spawn_wake is not None:  # a spawn waited for these slots
                        self._freed()
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
            running = self.running
            for outcome, attempt in reported:
                if running.get(outcome.id) is attempt:  # not a newer claim of the task
                    del running[outcome.id]
                    self.reporting.discard(outcome.id)
        if claimed:
            await self._hand_to_runners(claimed, sent)

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
                await self.backend.finish(pending, now=await self._time.now())
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
                    await self.backend.finish([form], now=await self._time.now())
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
