"""The worker job: claim, run with leases and heartbeats, report, hand back on shutdown.

Design notes:

- **Time** is the backend's (``QueueBackend.time()``), never this process's wall clock.
  Lease *ages* are measured on the local monotonic clock: ``_Attempt.renewed`` is when the
  last claim or heartbeat that confirmed the lease was sent.
- **Fencing.** A lease is lost when a heartbeat says so (another worker took the task) or
  when it could not be renewed for a whole lease (a paused process, an unreachable
  backend): then the task's context is stopped with ``StopReason.LEASE_LOST`` and it is
  cancelled after its grace period. An outcome is reported only for a lease still held:
  one whose lease is overdue is checked with a heartbeat first, and a lost one is
  discarded and logged. The backend's owner check is the last line: a report from a
  worker that no longer holds the lease is ignored.
- **Poison outcomes.** Outcomes are recorded in batches. When a batch fails, each outcome
  is tried alone, and one that fails alone is tried in reduced forms (its texts escaped to
  ASCII, then a bare dead letter that says why), so one unstorable outcome never holds the
  others back. Only when even the bare form fails is the backend taken to be down, and the
  batch retried with backoff.
- **Stopping within the grace period.** When the worker's context is done, running tasks
  keep their grace period less a margin (at most a second) that the worker keeps for
  recording their outcomes and handing back what had not started; recording gives up at
  the end of that margin, whatever the backend is doing, and says so in the log. A hard
  stop (a second signal) gives up at once.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._backoff import Backoff
from .._context import Context, StopReason
from .._job import Job
from ..abc import QueueCapability
from ._queue import (
    ERROR_LIMIT,
    TaskInfo,
    decode_chain,
    encode_chain,
    format_error,
    is_data_error,
)
from ._records import NewTask, Outcome, OutcomeKind, TaskRecord, TaskState

if TYPE_CHECKING:
    from ._queue import Queue

__all__ = ["Worker"]

logger = logging.getLogger("tasker.queue")

_BACKEND_BACKOFF = Backoff(initial=0.2, maximum=10.0)
#: How long the shielded hand-back of tasks that never started may take.
_RELEASE_TIMEOUT = 2.0
#: The share of the grace period (at most this many seconds) kept for recording outcomes.
_STOP_MARGIN = 1.0
#: After a hard stop: the last hand-back's budget.
_HARD_RELEASE_TIMEOUT = 0.5


@dataclass(slots=True, eq=False)
class _Attempt:
    """One claimed attempt of a task, as this worker holds it."""

    record: TaskRecord
    #: ``time.monotonic()`` when the last claim or heartbeat confirming the lease was sent.
    renewed: float
    ctx: Context | None = None
    scope: anyio.CancelScope | None = None
    #: A heartbeat said the lease is gone: the outcome is discarded.
    lost: bool = False
    #: The context was stopped with LEASE_LOST (confirmed, or not renewed in time).
    stopped: bool = False


def _ascii(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text.encode("ascii", "backslashreplace").decode("ascii")[:limit]


class Worker:
    """One worker: its own id, claims and leases."""

    def __init__(
        self,
        queue: Queue,
        queues: list[str],
        *,
        concurrency: int,
        lease: float,
        poll: float,
        worker_id: str,
    ) -> None:
        self.queue = queue
        self.backend = queue.backend
        self.queues = queues
        self.concurrency = concurrency
        self.lease = lease
        self.poll = poll
        self.worker_id = worker_id
        self._batch = max(1, concurrency // 2)
        self.running: dict[str, _Attempt] = {}
        self.reporting: set[str] = set()
        self._slot_freed = anyio.Event()
        self._pending_outcomes: list[tuple[Outcome, _Attempt, anyio.Event]] = []
        self._flushing = False
        self.completed = 0
        self.leases_lost = 0
        self.discarded = 0
        # Slots promised to a claim in flight (the claim loop's or a flush's).
        self._reserved = 0
        # A backend that can record outcomes and claim in one round trip: then a flush
        # also fills the slots its tasks freed, and the claim loop leaves that to it.
        self._finish_and_claim = (
            queue.backend.finish_and_claim  # type: ignore[attr-defined]
            if QueueCapability.FINISH_AND_CLAIM in queue.backend.capabilities
            else None
        )
        self._ctx: Context | None = None
        self._send: MemoryObjectSendStream[_Attempt] | None = None
        # Shutdown deadlines (anyio time), set when the worker's context is done.
        self._cut_at: float | None = None
        self._give_up_at: float | None = None
        self._abandoned = False
        self._shielded: set[anyio.CancelScope] = set()
        # The claim loop's scope (made in the event loop, by ``run``): cut at the stop
        # deadline if a backend call holds it up.
        self._claims: anyio.CancelScope | None = None

    async def _now(self) -> float:
        return await self.queue._now()

    def job(self) -> Job:
        async def worker_job(ctx: Context) -> None:
            await self.run(ctx)

        worker_job.__name__ = worker_job.__qualname__ = f"worker({','.join(self.queues)})"
        return worker_job

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, ctx: Context) -> None:
        # A fixed pool of runner tasks reads claimed records from a stream: spawning a task
        # per queue task would cost more than the task itself (anyio's start_soon, ~16 us).
        send, receive = anyio.create_memory_object_stream[_Attempt](math.inf)
        self._ctx, self._send = ctx, send
        self._claims = claims = anyio.CancelScope()
        stopping = lambda: self._on_stop(ctx)  # noqa: E731
        if ctx.done:
            self._on_stop(ctx)
        else:
            ctx._add_callback(stopping)
        try:
            async with anyio.create_task_group() as tasks:
                heartbeat_scope = anyio.CancelScope()
                tasks.start_soon(self._heartbeat, heartbeat_scope)
                for _ in range(self.concurrency):
                    tasks.start_soon(self._runner, ctx, receive.clone())
                receive.close()
                try:
                    async with send:
                        with claims:
                            await self._claim_loop(ctx, send)
                    # Shutdown: no more claims; runners finish what runs and hand back what
                    # had not started; the heartbeat keeps the leases meanwhile.
                    while self.running:
                        self._slot_freed = anyio.Event()
                        await self._slot_freed.wait()
                except anyio.get_cancelled_exc_class():
                    self._abandon()  # a hard stop: recording in progress gives up now
                    raise
                heartbeat_scope.cancel()
        finally:
            ctx._remove_callback(stopping)
            if self.running:  # cut off by the hard stop (or an error): hand back, uncounted
                await self._release(list(self.running.values()))

    def _on_stop(self, ctx: Context) -> None:
        """The worker's context is done: arm the deadlines that end it within its grace."""
        now = anyio.current_time()
        margin = min(_STOP_MARGIN, ctx.grace * 0.2)
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

    # -- claiming --------------------------------------------------------------------------

    async def _claim_loop(self, ctx: Context, send: MemoryObjectSendStream[_Attempt]) -> None:
        backend = self.backend
        outage = 0
        while not ctx.done:
            free = self._free()
            # Claim in batches: with tasks running, wait until half the slots are free, so
            # one claim serves several slots (no wait when idle: latency matters then).
            if free <= 0 or (self.running and free < self._batch):
                self._slot_freed = anyio.Event()
                await _wait_either(ctx, self._slot_freed.wait)
                continue
            self._reserved += free
            try:
                now = await self._now()
                sent = time.monotonic()
                # Never our own tasks: a lease of ours that expired while its attempt still
                # runs (a paused loop) must not start a second attempt beside it.
                claimed = await backend.claim(
                    self.queues,
                    free,
                    worker=self.worker_id,
                    lease=self.lease,
                    now=now,
                    exclude=list(self.running),
                )
                if outage:
                    logger.warning("worker %s: backend reachable again", self.worker_id)
                    outage = 0
            except Exception as exc:
                outage += 1
                if outage == 1:
                    logger.warning(
                        "worker %s: backend unavailable (%s: %s); pausing claims",
                        self.worker_id,
                        type(exc).__name__,
                        exc,
                    )
                await ctx.sleep(_BACKEND_BACKOFF.delay(outage))
                continue
            finally:
                self._reserved -= free
            if not claimed:
                await self._idle(ctx, now)
                continue
            await self._hand_to_runners(claimed, sent)

    def _free(self) -> int:
        # A task whose handler returned no longer takes a slot while its outcome is being
        # recorded (it stays in ``running`` for heartbeats and the hand-back).
        return self.concurrency - len(self.running) + len(self.reporting) - self._reserved

    async def _idle(self, ctx: Context, now: float) -> None:
        # The backend returns early for new work and for its next due time (a delayed task,
        # a lease that expires): ``poll`` only bounds how long a missed wake-up can last.
        async def wait_for_work() -> None:
            try:
                await self.backend.wait_for_work(self.queues, self.poll)
            except Exception as exc:
                logger.debug("worker %s: wait_for_work failed: %s", self.worker_id, exc)
                await anyio.sleep(min(self.poll, 1.0))

        await _wait_either(ctx, wait_for_work)

    async def _hand_to_runners(self, records: list[TaskRecord], sent: float) -> None:
        """Queue claimed tasks for the runners; after the claim loop closed, hand them back."""
        attempts = [_Attempt(record, sent) for record in records]
        for attempt in attempts:
            # A new attempt of a task whose previous attempt (recorded, its runner not yet
            # resumed) is still listed replaces it: the old entry no longer holds a slot.
            if attempt.record.id in self.running:
                self.reporting.discard(attempt.record.id)
            self.running[attempt.record.id] = attempt
        for index, attempt in enumerate(attempts):
            try:
                assert self._send is not None
                self._send.send_nowait(attempt)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                await self._release(attempts[index:])
                return

    async def _release(self, attempts: list[_Attempt]) -> None:
        """Hand tasks back uncounted (shielded, bounded); their leases expire otherwise."""
        outcomes = []
        mine = [a for a in attempts if not a.lost]
        if mine:
            with self._shield(_RELEASE_TIMEOUT) as scope:
                self._shielded.add(scope)
                try:
                    now = await self._now()
                    outcomes = [
                        Outcome(
                            id=a.record.id,
                            worker=self.worker_id,
                            kind=OutcomeKind.RELEASED,
                            started_at=now,
                            finished_at=now,
                        )
                        for a in mine
                    ]
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
        self._slot_freed.set()

    # -- leases ----------------------------------------------------------------------------

    async def _heartbeat(self, scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                await anyio.sleep(self.lease / 3)
                await self._renew()

    async def _renew(self) -> None:
        sent_to = {i: a for i, a in self.running.items() if not a.lost}
        if not sent_to:
            return
        sent = time.monotonic()
        held: set[str] | None = None
        # A heartbeat that hangs (a connection gone silent) is a failed one: the next check
        # must still find the overdue leases.
        with anyio.move_on_after(self.lease / 3):
            try:
                held = await self.backend.heartbeat(
                    self.worker_id, list(sent_to), lease=self.lease, now=await self._now()
                )
            except Exception as exc:
                logger.warning("worker %s: heartbeat failed: %s", self.worker_id, exc)
        if held is None:
            self._stop_overdue()
            return
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

    def _stop_overdue(self) -> None:
        """Stop tasks whose lease was not renewed for a whole lease: it may be gone."""
        now = time.monotonic()
        for task_id, attempt in list(self.running.items()):
            if now - attempt.renewed >= self.lease and task_id not in self.reporting:
                self._lose(attempt, confirmed=False)

    def _lose(self, attempt: _Attempt, *, confirmed: bool) -> None:
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

    # -- running ---------------------------------------------------------------------------

    async def _runner(self, ctx: Context, receive: MemoryObjectReceiveStream[_Attempt]) -> None:
        async with receive:
            async for attempt in receive:
                if ctx.done:  # claimed but not started: hand it back at once
                    await self._release([attempt])
                elif attempt.lost:
                    self._forget(attempt, "before it started")
                else:
                    await self._run_task(ctx, attempt)

    def _forget(self, attempt: _Attempt, when: str) -> None:
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
        self._slot_freed.set()

    async def _run_task(self, ctx: Context, attempt: _Attempt) -> None:
        queue = self.queue
        record = attempt.record
        registration = queue._handlers.get(record.name)
        # One reading of the backend's clock per task, at its end; the start is that reading
        # less the monotonic duration.
        began = time.monotonic()
        child = ctx.child()
        scope = anyio.CancelScope()
        if self._cut_at is not None:
            scope.deadline = self._cut_at
        attempt.ctx, attempt.scope = child, scope
        outcome: Outcome | None = None
        with scope:
            try:
                if registration is None:
                    raise LookupError(f"no handler is registered for task {record.name!r}")
                payload = queue._serializer.loads(record.payload)
                if record.timeout is not None:
                    with anyio.fail_after(record.timeout):
                        result = await registration.handler(child, payload)
                else:
                    result = await registration.handler(child, payload)
                data = None if result is None else queue._serialize(record.name, result)
                now = await self._now()
                outcome = self._success(record, now - (time.monotonic() - began), data, now)
            except Exception as exc:
                backoff = registration.backoff if registration else None
                now = await self._now()
                started = now - (time.monotonic() - began)
                outcome = self._failure(record, started, exc, backoff, now)
        if outcome is None:  # cut off by our own deadline
            if attempt.lost:
                self._forget(attempt, "after it was cancelled")
            else:  # the shutdown's, or a lease not renewed in time: hand it back, uncounted
                await self._release([attempt])
            return
        if attempt.lost:
            self._forget(attempt, "when it ended")
            return
        self.reporting.add(record.id)
        if self._finish_and_claim is None:
            self._slot_freed.set()  # else the flush refills the slot
        try:
            await self._report(outcome, attempt)
        finally:
            # Usually the flush took the task out already; and by now the same task may have
            # been claimed again (a retry due at once): only this attempt is ours to remove.
            if self.running.get(record.id) is attempt:
                del self.running[record.id]
                self.reporting.discard(record.id)
        self._slot_freed.set()
        if outcome.kind is OutcomeKind.DEAD and queue._on_failure is not None:
            # Built from what the worker knows, not read back: a backend without
            # INSPECTION has no ``get``, and this costs no round trip.
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
                value: Any = queue._on_failure(info)
                if inspect.isawaitable(value):
                    await value
            except Exception:
                logger.exception("on_failure hook failed for task %s", record.id)

    # -- recording -------------------------------------------------------------------------

    async def _report(self, outcome: Outcome, attempt: _Attempt) -> None:
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

    async def _flush(self, reported: list[tuple[Outcome, _Attempt]]) -> None:
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

    def _discarded(self, attempt: _Attempt, when: str) -> bool:
        if attempt.lost:
            self._forget(attempt, when)
            return True
        return False

    async def _check_overdue(
        self, reported: list[tuple[Outcome, _Attempt]]
    ) -> list[tuple[Outcome, _Attempt]]:
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
            delay = _BACKEND_BACKOFF.delay(outage)
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

    # -- outcomes --------------------------------------------------------------------------

    def _success(
        self, record: TaskRecord, started: float, data: bytes | None, now: float
    ) -> Outcome:
        queue = self.queue
        follow_ups: tuple[NewTask, ...] = ()
        if record.chain is not None:
            steps = decode_chain(record.chain)
            head, rest = steps[0], steps[1:]
            follow_ups = (
                queue._new_task(
                    head.name,
                    None,
                    now=now,
                    priority=head.priority,
                    queue=head.queue,
                    max_attempts=head.max_attempts,
                    timeout=head.timeout,
                    chain=encode_chain(rest),
                    raw_payload=data if data is not None else queue._serialize(head.name, None),
                ),
            )
        return Outcome(
            id=record.id,
            worker=self.worker_id,
            kind=OutcomeKind.SUCCEEDED,
            started_at=started,
            finished_at=now,
            result=data,
            result_expires=now + queue._result_ttl,
            follow_ups=follow_ups,
        )

    def _failure(
        self,
        record: TaskRecord,
        started: float,
        exc: Exception,
        backoff: Backoff | None,
        now: float,
    ) -> Outcome:
        error, trace = format_error(exc)
        retry_at: float | None = None
        if record.attempts < record.max_attempts and backoff is not None:
            delay = backoff.delay(record.attempts)
            retry_at = now + delay
            logger.warning(
                "task %s %s failed (attempt %d of %d), retrying in %.3gs: %s",
                record.name,
                record.id,
                record.attempts,
                record.max_attempts,
                delay,
                error,
            )
        else:
            logger.error(
                "task %s %s failed its last attempt (%d): %s\n%s",
                record.name,
                record.id,
                record.attempts,
                error,
                trace,
            )
        return Outcome(
            id=record.id,
            worker=self.worker_id,
            kind=OutcomeKind.DEAD if retry_at is None else OutcomeKind.RETRY,
            started_at=started,
            finished_at=now,
            error=error,
            traceback=trace,
            retry_at=retry_at,
        )


async def _wait_either(ctx: Context, wait: Any) -> None:
    """Run ``wait()`` until it returns or ``ctx`` is done."""
    if ctx.done:
        return
    with anyio.CancelScope() as scope:
        ctx._add_callback(scope.cancel)
        try:
            await wait()
        finally:
            ctx._remove_callback(scope.cancel)
