"""The worker job: claim, run with leases and heartbeats, report, hand back on shutdown.

Design notes:

- **Time** is the backend's (``QueueBackend.time()``), never this process's wall clock.
  Lease *ages* are measured on the local monotonic clock: ``Attempt.renewed`` is when the
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

import inspect
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._context import Context, StopReason
from ..abc import QueueBackend, QueueCapability
from ._attempt import Attempt
from ._current import _current
from ._errors import UnknownTaskError
from ._info import TaskInfo
from ._outcomes import failure, success
from ._recording import BACKEND_BACKOFF, Recording
from ._records import Outcome, OutcomeKind, TaskRecord, TaskState
from ._registry import Registry
from ._retention import Retention
from ._time import BackendClock

__all__ = ["Worker", "WorkerStatistics"]

logger = logging.getLogger("tasker.queue")

#: How long the shielded hand-back of tasks that never started may take.
_RELEASE_TIMEOUT = 2.0
#: The share of the grace period (at most this many seconds) kept for recording outcomes.
_STOP_MARGIN = 1.0
#: After a hard stop: the last hand-back's budget.
_HARD_RELEASE_TIMEOUT = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerStatistics:
    """What a :class:`Worker` has done since it started (see :meth:`Worker.statistics`).

    Attributes:
        worker_id: the id its leases are held under.
        queues: the queues it claims from.
        concurrency: its limit of tasks running at once.
        running: tasks it holds now (running, or their outcome being recorded).
        completed: outcomes it recorded.
        leases_lost: leases a heartbeat (or an overdue check) said were gone.
        discarded: outcomes discarded because their lease was lost.
        purged: finished tasks its retention runs deleted.
        stopping: whether its context is done (it claims nothing more).
    """

    worker_id: str
    queues: tuple[str, ...]
    concurrency: int
    running: int
    completed: int
    leases_lost: int
    discarded: int
    purged: int
    stopping: bool


class Worker(Recording):
    """A queue worker: a :data:`tasker.Job` (``await worker(ctx)``) with its own id, claims,
    leases and statistics. Made by :meth:`tasker.queue.Queue.worker`; no public constructor."""

    def __init__(
        self,
        backend: QueueBackend,
        registry: Registry,
        clock: BackendClock,
        queues: list[str],
        *,
        concurrency: int,
        lease: float,
        poll: float,
        worker_id: str,
        on_failure: Callable[[TaskInfo], object] | None,
        retention: Retention | None = None,
    ) -> None:
        self.backend = backend
        self._registry = registry
        self._time = clock
        self._on_failure = on_failure
        self._retention = retention
        self.purged = 0
        self._maintenance: anyio.CancelScope | None = None
        self.queues = queues
        # What log lines call this job (tasker's job_name reads __qualname__).
        self.__qualname__ = self.__name__ = f"worker({','.join(queues)})"
        self.concurrency = concurrency
        self.lease = lease
        self.poll = poll
        self.worker_id = worker_id
        self._batch = max(1, concurrency // 2)
        self.running: dict[str, Attempt] = {}
        self.reporting: set[str] = set()
        self._slot_freed = anyio.Event()
        self._pending_outcomes: list[tuple[Outcome, Attempt, anyio.Event]] = []
        self._flushing = False
        self.completed = 0
        self.leases_lost = 0
        self.discarded = 0
        # Slots promised to a claim in flight (the claim loop's or a flush's).
        self._reserved = 0
        # A backend that can record outcomes and claim in one round trip: then a flush
        # also fills the slots its tasks freed, and the claim loop leaves that to it.
        self._finish_and_claim = (
            backend.finish_and_claim  # type: ignore[attr-defined]
            if QueueCapability.FINISH_AND_CLAIM in backend.capabilities
            else None
        )
        self._ctx: Context | None = None
        self._send: MemoryObjectSendStream[Attempt] | None = None
        # Shutdown deadlines (anyio time), set when the worker's context is done.
        self._cut_at: float | None = None
        self._give_up_at: float | None = None
        self._abandoned = False
        self._shielded: set[anyio.CancelScope] = set()
        # The claim loop's scope (made in the event loop, by ``run``): cut at the stop
        # deadline if a backend call holds it up.
        self._claims: anyio.CancelScope | None = None

    async def _now(self) -> float:
        return await self._time.now()

    async def __call__(self, ctx: Context) -> None:
        """Run the worker until ``ctx`` is done (see :meth:`tasker.queue.Queue.worker`)."""
        await self.run(ctx)

    def statistics(self) -> WorkerStatistics:
        """A snapshot of the worker's counters."""
        return WorkerStatistics(
            worker_id=self.worker_id,
            queues=tuple(self.queues),
            concurrency=self.concurrency,
            running=len(self.running),
            completed=self.completed,
            leases_lost=self.leases_lost,
            discarded=self.discarded,
            purged=self.purged,
            stopping=self._ctx is not None and self._ctx.done,
        )

    def __repr__(self) -> str:
        state = "new" if self._ctx is None else "stopping" if self._ctx.done else "running"
        return (
            f"<tasker.queue.Worker {self.worker_id!r} queues={self.queues} {state}"
            f" running={len(self.running)}/{self.concurrency} completed={self.completed}>"
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, ctx: Context) -> None:
        # A fixed pool of runner tasks reads claimed records from a stream: spawning a task
        # per queue task would cost more than the task itself (anyio's start_soon, ~16 us).
        send, receive = anyio.create_memory_object_stream[Attempt](math.inf)
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
                if self._retention is not None:
                    self._maintenance = anyio.CancelScope()
                    tasks.start_soon(self._maintain, self._retention, self._maintenance)
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

    async def _claim_loop(self, ctx: Context, send: MemoryObjectSendStream[Attempt]) -> None:
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
                await ctx.sleep(BACKEND_BACKOFF.delay(outage))
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
        attempts = [Attempt(record, sent) for record in records]
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

    async def _release(self, attempts: list[Attempt]) -> None:
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

    async def _maintain(self, retention: Retention, scope: anyio.CancelScope) -> None:
        """Apply the queue's retention every ``retention.every`` seconds (spread out)."""
        with scope:
            while True:
                await anyio.sleep(retention.every * (0.5 + random.random() / 2))
                now = await self._now()
                try:
                    deleted = await self.backend.purge(  # type: ignore[attr-defined]
                        now=now,
                        history_before=None
                        if retention.history is None
                        else now - retention.history,
                        dead_before=None if retention.dead is None else now - retention.dead,
                    )
                except Exception as exc:
                    logger.warning("worker %s: purge failed (will retry): %s", self.worker_id, exc)
                    continue
                self.purged += int(deleted)
                if deleted:
                    logger.debug("worker %s: purged %d finished task(s)", self.worker_id, deleted)

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

    # -- running ---------------------------------------------------------------------------

    async def _runner(self, ctx: Context, receive: MemoryObjectReceiveStream[Attempt]) -> None:
        # One cancel scope per runner, not per attempt (entering one costs more than a
        # no-op task): a cut or a lost lease sets its deadline while a handler runs; once
        # it has fired, the runner settles the attempt it cut and starts a fresh scope.
        running: list[Attempt] = []  # the attempt whose handler runs, if any
        async with receive:
            while True:
                with anyio.CancelScope() as scope:
                    async for attempt in receive:
                        if ctx.done:  # claimed but not started: hand it back at once
                            await self._release([attempt])
                        elif attempt.lost:
                            self._forget(attempt, "before it started")
                        else:
                            await self._run_task(ctx, attempt, scope, running)
                    return  # the stream is closed: the worker is stopping
                if running:  # its handler was cut off by the deadline set on the scope
                    cut = running.pop()
                    if cut.lost:
                        self._forget(cut, "after it was cancelled")
                    else:  # the shutdown's, or a lease not renewed in time: hand it back
                        await self._release([cut])
                self._slot_freed.set()

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
        self._slot_freed.set()

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
        attempt.ctx, attempt.scope = child, scope
        running.append(attempt)
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
                now = await self._now()
                outcome = success(
                    registry, self.worker_id, record, now - (time.monotonic() - began), data, now
                )
            except Exception as exc:
                backoff = registration.backoff if registration else None
                now = await self._now()
                started = now - (time.monotonic() - began)
                outcome = failure(self.worker_id, record, started, exc, backoff, now)
        finally:
            _current.reset(token)
            attempt.scope = None  # no deadline is set for this attempt any more
        # The handler is done: nothing of it is left to cut (a deadline that fired just now
        # cancels the scope anyway, and the runner then starts a fresh one).
        running.clear()
        scope.deadline = math.inf
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
        if outcome.kind is OutcomeKind.DEAD and self._on_failure is not None:
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
                value: Any = self._on_failure(info)
                if inspect.isawaitable(value):
                    await value
            except Exception:
                logger.exception("on_failure hook failed for task %s", record.id)

    # -- recording -------------------------------------------------------------------------


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
