"""How a worker runs what it claimed: a fixed pool of runners, one attempt at a time each.

A mixin of :class:`tasker.queue.Worker` (see ``tasker.queue._worker_state``). Spawning a
task per queue task would cost more than the task itself (anyio's ``start_soon``, ~16 us),
so ``concurrency`` runners read claimed attempts from one memory stream.

An attempt whose cancel was requested (``Attempt.cancelled``, set by ``_leases``) is
reported ``OutcomeKind.CANCELLED`` however it ends but by returning: not started, raising
(whatever it raised: a handler that stops early on ``ctx.done`` raises), or cut off after
its grace period. A return is a success: the work is done (the backend drops its chain's
next step). ``on_failure`` is never called for it.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .._context import Context
from ._attempt import Attempt
from ._current import _current
from ._errors import UnknownTaskError
from ._info import TaskInfo
from ._outcomes import cancelled, failure, success
from ._progress import progress_reports
from ._records import Outcome, OutcomeKind, TaskRecord, TaskState
from ._worker_state import WorkerState

__all__ = ["Runners"]

logger = logging.getLogger("tasker.queue")


class Runners(WorkerState):
    """The runners: each runs an attempt's handler, then reports its outcome."""

    async def _runner(self, ctx: Context, receive: MemoryObjectReceiveStream[Attempt]) -> None:
        # One cancel scope per runner, not per attempt (entering one costs more than a
        # no-op task): a cut or a lost lease sets its deadline while a handler runs; once
        # it has fired, the runner settles the attempt it cut and starts a fresh scope.
        running: list[Attempt] = []  # the attempt whose handler runs, if any
        # What current_task().report_progress() writes through, for every attempt here.
        progress_reports.set(self._progress)
        async with receive:
            while True:
                with anyio.CancelScope() as scope:
                    async for attempt in receive:
                        if ctx.done:  # claimed but not started: hand it back at once
                            await self._release([attempt])
                        elif attempt.lost:
                            self._forget(attempt, "before it started")
                        elif attempt.cancelled:  # cancelled before it started
                            await self._report_cancelled(attempt, why="cancelled before it ran")
                        else:
                            await self._run_task(ctx, attempt, scope, running)
                    return  # the stream is closed: the worker is stopping
                if running:  # its handler was cut off by the deadline set on the scope
                    cut = running.pop()
                    if cut.lost:
                        self._forget(cut, "after it was cancelled")
                    elif cut.cancelled:  # its cancel's grace period ran out (or the shutdown's)
                        grace = cut.ctx.grace if cut.ctx is not None else 0.0
                        await self._report_cancelled(
                            cut, why=f"cancelled: cut off after its grace period ({grace:g} s)"
                        )
                    else:  # the shutdown's, or a lease not renewed in time: hand it back
                        await self._release([cut])
                self._freed()

    def _forget(self, attempt: Attempt, when: str) -> None:
        """Drop an attempt whose lease is lost: no outcome is reported for it."""
        self.discarded += 1
        record = attempt.record
        logger.warning(
            "worker %s: discarded the outcome of task %s %s (attempt %d) %s: its lease was"
            " lost or could not be renewed, so another worker may own the task",
            self.worker_id,
            record.name,
            record.id,
            record.attempts,
            when,
        )
        if self.running.get(record.id) is attempt:
            del self.running[record.id]
            self.reporting.discard(record.id)
        self._freed()

    async def _run_task(
        self, ctx: Context, attempt: Attempt, scope: anyio.CancelScope, running: list[Attempt]
    ) -> None:
        registry = self._registry
        record = attempt.record
        registration = registry.handlers.get(record.name)
        # One reading of the backend's clock per task, at its end; the start is that reading
        # less the monotonic duration.
        began = time.monotonic()
        child = ctx.child()
        if self._cut_at is not None:
            scope.deadline = self._cut_at
        attempt.ctx = child
        attempt.scope = scope
        attempt.began = began
        running.append(attempt)
        observer = registry.observer
        if observer is not None and not attempt.realtime:
            observer.started(record)
        # The attempt's span (tasker.tracing), current while the handler runs: one read.
        tracer = registry.tracer
        span = (
            None if tracer is None or attempt.realtime else tracer.attempt(record, self.worker_id)
        )
        # What current_task() reports, built only when a handler asks (hot path).
        token = _current.set((record, self.worker_id, child))
        try:
            try:
                if registration is None:
                    raise UnknownTaskError(record.name)
                payload = registry.serializer.loads(record.payload)
                if record.timeout is not None:
                    with anyio.fail_after(record.timeout):
                        result = await registration.handler(child, payload)
                else:
                    result = await registration.handler(child, payload)
                data = None if result is None else registry.serialize(record.name, result)
                now = await self._time.now()
                outcome = success(
                    registry, self.worker_id, record, now - (time.monotonic() - began), data, now
                )
            except Exception as exc:
                now = await self._time.now()
                started = now - (time.monotonic() - began)
                if attempt.cancelled:  # it stopped as asked: no retry, no on_failure
                    outcome = cancelled(self.worker_id, record, started, now, exc=exc)
                else:
                    backoff = registration.backoff if registration else None
                    outcome = failure(self.worker_id, record, started, exc, backoff, now)
        except BaseException:  # cut off (the runner's scope) or the worker's cancellation
            if span is not None:
                span.cut()
            raise
        finally:
            if span is not None:
                span.detach()
            _current.reset(token)
            progress = self._progress.end(record.id)  # a report it kept, if any
            attempt.scope = None  # no deadline is set for this attempt any more
        # The handler is done: nothing of it is left to cut (a deadline that fired just now
        # cancels the scope anyway, and the runner then starts a fresh one). Set only when
        # changed: the setter reschedules the scope's timeout.
        running.clear()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "worker %s: task %s %s (attempt %d): %s in %.3fs",
                self.worker_id,
                record.name,
                record.id,
                record.attempts,
                outcome.kind.value,
                time.monotonic() - began,
            )
        if scope.deadline != math.inf:
            scope.deadline = math.inf
        if attempt.realtime:  # not stored: nothing to record
            self._end_realtime(attempt, outcome)
            return
        if observer is not None:
            observer.finished(record, outcome)
        if span is not None:
            span.end(outcome)
        if attempt.lost:
            self._forget(attempt, "when it ended")
            return
        if progress is not None:  # its last report is stored before its outcome
            await self._progress.write_last(record.id, progress)
        await self._settle(attempt, outcome)
        if outcome.kind is OutcomeKind.DEAD and self._on_failure is not None:
            await self._tell_failure(record, outcome)

    async def _settle(self, attempt: Attempt, outcome: Outcome) -> None:
        """Report the outcome of an attempt still ours; its slot is free meanwhile."""
        task_id = attempt.record.id
        self.reporting.add(task_id)
        if self._finish_and_claim is None:
            self._freed()  # else the flush refills the slot
        try:
            await self._report(outcome, attempt)
        finally:
            # Usually the flush took the task out already; and by now the same task may have
            # been claimed again (a retry due at once): only this attempt is ours to remove.
            if self.running.get(task_id) is attempt:
                del self.running[task_id]
                self.reporting.discard(task_id)
        self._freed()

    async def _report_cancelled(self, attempt: Attempt, *, why: str) -> None:
        """Report an attempt that ended cancelled without an outcome of its handler's: it
        never started, or it was cut off after its grace period."""
        now = await self._time.now()
        began = attempt.began
        started = now if began is None else now - max(0.0, time.monotonic() - began)
        outcome = cancelled(self.worker_id, attempt.record, started, now, why=why)
        observer = self._registry.observer
        if observer is not None:
            observer.finished(attempt.record, outcome)
        await self._settle(attempt, outcome)

    async def _tell_failure(self, record: TaskRecord, outcome: Outcome) -> None:
        """Call the ``on_failure`` hook for a task that just died (its errors are logged)."""
        assert self._on_failure is not None
        # Built from what the worker knows, not read back: a backend without INSPECTION
        # has no ``get``, and this costs no round trip.
        info = TaskInfo(
            id=record.id,
            name=record.name,
            queue=record.queue,
            state=TaskState.DEAD,
            attempts=record.attempts,
            max_attempts=record.max_attempts,
            result=None,
            error=outcome.error,
            traceback=outcome.traceback,
            created_at=record.created_at,
            finished_at=outcome.finished_at,
        )
        try:
            value: Any = self._on_failure(info)
            if inspect.isawaitable(value):
                await value
        except Exception:
            logger.exception("on_failure hook failed for task %s", record.id)
