"""The worker job: claim, run with leases and heartbeats, report, hand back on shutdown."""

from __future__ import annotations

import inspect
import logging
import math
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._backoff import Backoff
from .._context import Context
from .._job import Job
from ._queue import decode_chain, format_error
from ._records import NewTask, Outcome, OutcomeKind, TaskRecord

if TYPE_CHECKING:
    from ._queue import Queue

__all__ = ["Worker"]

logger = logging.getLogger("tasker.queue")

_BACKEND_BACKOFF = Backoff(initial=0.2, maximum=10.0)
#: How long the shielded hand-back of cut-off tasks may take.
_RELEASE_TIMEOUT = 10.0


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
        self.queues = queues
        self.concurrency = concurrency
        self.lease = lease
        self.poll = poll
        self.worker_id = worker_id
        self._batch = max(1, concurrency // 2)
        self.running: dict[str, TaskRecord] = {}
        self.reporting: set[str] = set()
        self._slot_freed = anyio.Event()
        self._pending_outcomes: list[tuple[Outcome, TaskRecord, anyio.Event]] = []
        self._flushing = False
        self.completed = 0
        # Slots promised to a claim in flight (the claim loop's or a flush's).
        self._reserved = 0
        # A backend that can record outcomes and claim in one round trip: then a flush
        # also fills the slots its tasks freed, and the claim loop leaves that to it.
        self._finish_and_claim = getattr(queue.backend, "finish_and_claim", None)
        self._ctx: Context | None = None
        self._send: MemoryObjectSendStream[TaskRecord] | None = None

    def job(self) -> Job:
        async def worker_job(ctx: Context) -> None:
            await self.run(ctx)

        worker_job.__name__ = worker_job.__qualname__ = f"worker({','.join(self.queues)})"
        return worker_job

    async def run(self, ctx: Context) -> None:
        # A fixed pool of runner tasks reads claimed records from a stream: spawning a task
        # per queue task would cost more than the task itself (anyio's start_soon, ~16 us).
        send, receive = anyio.create_memory_object_stream[TaskRecord](math.inf)
        try:
            async with anyio.create_task_group() as tasks:
                heartbeat_scope = anyio.CancelScope()
                tasks.start_soon(self._heartbeat, heartbeat_scope)
                for _ in range(self.concurrency):
                    tasks.start_soon(self._runner, ctx, receive.clone())
                receive.close()
                self._ctx, self._send = ctx, send
                async with send:
                    await self._claim_loop(ctx, send)
                # Shutdown: no more claims; runners finish what runs and hand back what
                # had not started; the heartbeat keeps the leases meanwhile.
                while self.running:
                    self._slot_freed = anyio.Event()
                    await self._slot_freed.wait()
                heartbeat_scope.cancel()
        finally:
            if self.running:  # cut off by the hard stop (or an error): hand back, uncounted
                await self._release(list(self.running.values()))

    async def _claim_loop(self, ctx: Context, send: MemoryObjectSendStream[TaskRecord]) -> None:
        backend = self.queue.backend
        outage = 0
        while not ctx.done:
            free = self._free()
            # Claim in batches: with tasks running, wait until half the slots are free, so
            # one claim serves several slots (no wait when idle: latency matters then).
            if free <= 0 or (self.running and free < self._batch):
                self._slot_freed = anyio.Event()
                await _wait_either(ctx, self._slot_freed.wait)
                continue
            now = self.queue._now()
            self._reserved += free
            try:
                claimed = await backend.claim(
                    self.queues, free, worker=self.worker_id, lease=self.lease, now=now
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
            await self._hand_to_runners(claimed)

    def _free(self) -> int:
        # A task whose handler returned no longer takes a slot while its outcome is being
        # recorded (it stays in ``running`` for heartbeats and the hand-back).
        return self.concurrency - len(self.running) + len(self.reporting) - self._reserved

    async def _runner(self, ctx: Context, receive: MemoryObjectReceiveStream[TaskRecord]) -> None:
        async with receive:
            async for record in receive:
                if ctx.done:  # claimed but not started: hand it back at once
                    await self._release([record])
                    continue
                await self._run_task(ctx, record)

    async def _release(self, records: list[TaskRecord]) -> None:
        queue = self.queue
        now = queue._now()
        outcomes = [
            Outcome(
                id=r.id,
                worker=self.worker_id,
                kind=OutcomeKind.RELEASED,
                started_at=now,
                finished_at=now,
            )
            for r in records
        ]
        with anyio.CancelScope(shield=True), anyio.move_on_after(_RELEASE_TIMEOUT):
            try:
                await queue.backend.finish(outcomes, now=now)
            except Exception as exc:
                logger.warning(
                    "worker %s: could not hand back %d task(s) (their leases will expire): %s",
                    self.worker_id,
                    len(records),
                    exc,
                )
        for r in records:
            self.running.pop(r.id, None)
        self._slot_freed.set()

    async def _idle(self, ctx: Context, now: float) -> None:
        timeout = self.poll
        try:
            due = await self.queue.backend.next_run_at(self.queues)
        except Exception:
            due = None
        if due is not None:
            timeout = min(timeout, max(0.0, due - now))
        if timeout <= 0:
            await anyio.lowlevel.checkpoint()
            return

        async def wait_for_work() -> None:
            await self.queue.backend.wait_for_work(self.queues, timeout)

        await _wait_either(ctx, wait_for_work)

    async def _heartbeat(self, scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                await anyio.sleep(self.lease / 3)
                if not self.running:
                    continue
                ids = list(self.running)
                try:
                    held = await self.queue.backend.heartbeat(
                        self.worker_id, ids, lease=self.lease, now=self.queue._now()
                    )
                except Exception as exc:
                    logger.warning("worker %s: heartbeat failed: %s", self.worker_id, exc)
                    continue
                # Only the tasks sent and still ours can be lost: tasks claimed during the
                # round trip were not asked about, and recorded ones have left ``running``.
                lost = {i for i in ids if i in self.running} - held
                if lost:
                    logger.warning(
                        "worker %s: lost the lease on %d task(s); they may run elsewhere",
                        self.worker_id,
                        len(lost),
                    )

    async def _run_task(self, ctx: Context, record: TaskRecord) -> None:
        queue = self.queue
        registration = queue._handlers.get(record.name)
        started = queue._now()
        child = ctx.child()
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
            outcome = self._success(record, started, data)
        except Exception as exc:
            backoff = registration.backoff if registration else None
            outcome = self._failure(record, started, exc, backoff)
        self.reporting.add(record.id)
        if self._finish_and_claim is None:
            self._slot_freed.set()  # else the flush refills the slot
        try:
            await self._report(outcome, record)
        finally:
            # Usually the flush took the task out already; and by now the same task may have
            # been claimed again (a retry due at once): only this attempt is ours to remove.
            if self.running.get(record.id) is record:
                del self.running[record.id]
                self.reporting.discard(record.id)
        self._slot_freed.set()
        if outcome.kind is OutcomeKind.DEAD and queue._on_failure is not None:
            info = await queue.get(record.id)
            if info is not None:
                try:
                    value: Any = queue._on_failure(info)
                    if inspect.isawaitable(value):
                        await value
                except Exception:
                    logger.exception("on_failure hook failed for task %s", record.id)

    async def _report(self, outcome: Outcome, record: TaskRecord) -> None:
        """Record an outcome; outcomes reported meanwhile are flushed together.

        The first reporter drains the batch (shielded: it carries the others' outcomes), so
        ten tasks finishing together cost one backend call, not ten. Through a backend
        outage it retries with backoff; the leases keep the tasks meanwhile.
        """
        done = anyio.Event()
        self._pending_outcomes.append((outcome, record, done))
        if self._flushing:
            await done.wait()
            return
        self._flushing = True
        try:
            with anyio.CancelScope(shield=True):
                # One turn of the event loop first: tasks that finish in the same turn (a
                # claimed batch of quick tasks) join this flush instead of waiting for the next.
                await anyio.lowlevel.checkpoint()
                while self._pending_outcomes:
                    batch, self._pending_outcomes = self._pending_outcomes, []
                    await self._flush([(outcome, record) for outcome, record, _ in batch])
                    for _, _, event in batch:
                        event.set()
        finally:
            self._flushing = False

    async def _flush(self, reported: list[tuple[Outcome, TaskRecord]]) -> None:
        outcomes = [outcome for outcome, _ in reported]
        attempt = 0
        combined = self._finish_and_claim is not None
        while True:
            # The first call also claims for the free slots (a retry only records).
            free = 0
            ctx = self._ctx
            if combined and self._finish_and_claim is not None and ctx is not None and not ctx.done:
                free = max(0, self._free())
            self._reserved += free
            try:
                if free:
                    assert self._finish_and_claim is not None
                    claimed: list[TaskRecord] = await self._finish_and_claim(
                        outcomes,
                        now=self.queue._now(),
                        queues=self.queues,
                        limit=free,
                        worker=self.worker_id,
                        lease=self.lease,
                    )
                else:
                    await self.queue.backend.finish(outcomes, now=self.queue._now())
                    claimed = []
            except Exception as exc:
                self._reserved -= free
                combined = False  # a retry only records
                if free:
                    # The combined call failed: record alone at once, so a backend whose
                    # combined call keeps failing costs no wait.
                    logger.debug("worker %s: finish_and_claim failed: %s", self.worker_id, exc)
                    continue
                attempt += 1
                if attempt == 1:
                    logger.warning(
                        "worker %s: cannot record %d task(s) yet (%s); retrying",
                        self.worker_id,
                        len(outcomes),
                        exc,
                    )
                if attempt > 50:
                    logger.error(
                        "worker %s: giving up on recording %d task(s); their leases will"
                        " expire and they will run again",
                        self.worker_id,
                        len(outcomes),
                    )
                    return
                await anyio.sleep(_BACKEND_BACKOFF.delay(attempt))
                continue
            self._reserved -= free
            self.completed += len(outcomes)
            # No longer ours, at once: a heartbeat answered meanwhile no longer lists
            # them, and must not take them for lost before their runners wake up.
            for _, record in reported:
                if self.running.get(record.id) is record:  # not a newer claim of the task
                    del self.running[record.id]
                    self.reporting.discard(record.id)
            if claimed:
                await self._hand_to_runners(claimed)
            return

    async def _hand_to_runners(self, records: list[TaskRecord]) -> None:
        """Queue claimed tasks for the runners; after the claim loop closed, hand them back."""
        for record in records:
            # A new attempt of a task whose previous attempt (recorded, its runner not yet
            # resumed) is still listed replaces it: the old entry no longer holds a slot.
            if record.id in self.running:
                self.reporting.discard(record.id)
            self.running[record.id] = record
        for index, record in enumerate(records):
            try:
                assert self._send is not None
                self._send.send_nowait(record)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                await self._release(records[index:])
                return

    def _success(self, record: TaskRecord, started: float, data: bytes | None) -> Outcome:
        queue = self.queue
        now = queue._now()
        follow_ups: tuple[NewTask, ...] = ()
        if record.chain is not None:
            steps = decode_chain(record.chain)
            head, rest = steps[0], steps[1:]
            from ._queue import _encode_chain

            follow_ups = (
                queue._new_task(
                    head.name,
                    None,
                    now=now,
                    priority=head.priority,
                    queue=head.queue,
                    max_attempts=head.max_attempts,
                    timeout=head.timeout,
                    chain=_encode_chain(rest),
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
        self, record: TaskRecord, started: float, exc: Exception, backoff: Backoff | None
    ) -> Outcome:
        now = self.queue._now()
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
                "task %s %s failed its last attempt (%d): %s",
                record.name,
                record.id,
                record.attempts,
                error,
                exc_info=exc,
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
