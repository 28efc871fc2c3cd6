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
- **The hot path.** A no-op task costs tens of microseconds, and anyio's primitives cost
  a few each (a cancel scope or a turn of the loop ~3 us, an event ~2 us), so per attempt
  the worker reads the backend's clock once (at the end; the start is derived from the
  monotonic duration), spawns no task (a fixed pool of runners) and enters no cancel scope
  (one per runner); the reporters that wait for a flush share one event per batch, a
  flush waits a turn of the loop for other reporters only while another handler may still
  finish, and the claim loop is woken only when it has slots to fill. Rejected: reusing
  a clock reading extrapolated by the monotonic clock; a backend's clock may be a test's
  fake one, which does not move with it.

Where each part lives (mixins over ``_worker_state.WorkerState``, which makes the state
they share): the claim loop in ``_claims``, the runners in ``_runners``, heartbeats and
fencing in ``_leases``, the bounded stop and the hand-back in ``_stop``, batched and
poison-proof recording in ``_recording``; this module adds the lifecycle, the retention
runs and the statistics.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Any

import anyio

from .._context import Context
from .._readiness import optional_probe
from ..abc import QueueCapability
from ._attempt import Attempt
from ._claims import Claims
from ._leases import Leases
from ._realtime import Realtime
from ._recording import Recording
from ._records import WorkerInfo
from ._retention import Retention
from ._runners import Runners
from ._stop import Stopping

__all__ = ["Worker", "WorkerStatistics"]

logger = logging.getLogger("tasker.queue")


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
        cancelled: running (or claimed) tasks it stopped because their cancel was requested
            (``Queue.cancel``).
        purged: finished tasks its retention runs deleted.
        realtime: realtime tasks it ran (:meth:`Worker.spawn`), not counted in ``completed``.
        stopping: whether its context is done (it claims nothing more).
    """

    worker_id: str
    queues: tuple[str, ...]
    concurrency: int
    running: int
    completed: int
    leases_lost: int
    discarded: int
    cancelled: int
    purged: int
    stopping: bool
    realtime: int = 0


class Worker(Claims, Runners, Leases, Stopping, Recording, Realtime):
    """A queue worker: a :data:`tasker.Job` (``await worker(ctx)``) with its own id, claims,
    leases and statistics. Made by :meth:`tasker.queue.Queue.worker`; no public constructor."""

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
            cancelled=self.cancelled,
            purged=self.purged,
            stopping=self._ctx is not None and self._ctx.done,
            realtime=self.realtime,
        )

    def __repr__(self) -> str:
        state = "new" if self._ctx is None else "stopping" if self._ctx.done else "running"
        return (
            f"<tasker.queue.Worker {self.worker_id!r} queues={self.queues} {state}"
            f" running={len(self.running)}/{self.concurrency} completed={self.completed}>"
        )

    async def run(self, ctx: Context) -> None:
        self._probe = optional_probe(f"worker {self.worker_id}")
        logger.info(
            "worker %s: started on %s, concurrency %d, lease %gs",
            self.worker_id,
            ", ".join(self.queues),
            self.concurrency,
            self.lease,
        )
        observer = self._registry.observer
        if observer is not None:
            observer.worker_started(self)
        try:
            await self._run(ctx)
        finally:
            if observer is not None:
                observer.worker_stopped(self)
            if self._probe is not None:
                self._probe.close()
            logger.info(
                "worker %s: stopped (%d outcome(s) recorded, %d lease(s) lost)",
                self.worker_id,
                self.completed,
                self.leases_lost,
            )

    async def _run(self, ctx: Context) -> None:
        # A fixed pool of runner tasks reads claimed records from a stream (see _runners).
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
                announce_scope = anyio.CancelScope()
                if QueueCapability.WORKERS in self.backend.capabilities:
                    tasks.start_soon(self._announce, announce_scope)
                # Not for a worker whose context was done before it started (a SIGTERM
                # during a slow start): its stop ran already and cancelled nothing.
                if self._retention is not None and not self._stopping:
                    self._maintenance = anyio.CancelScope()
                    tasks.start_soon(self._maintain, self._retention, self._maintenance)
                for _ in range(self.concurrency):
                    tasks.start_soon(self._runner, ctx, receive.clone())
                receive.close()
                try:
                    async with send:
                        with claims:
                            await self._claim_loop(ctx)
                    # Shutdown: no more claims; runners finish what runs and hand back what
                    # had not started; the heartbeat keeps the leases meanwhile.
                    while self.running:
                        self._slot_freed = anyio.Event()
                        await self._slot_freed.wait()
                except anyio.get_cancelled_exc_class():
                    self._abandon()  # a hard stop: recording in progress gives up now
                    raise
                heartbeat_scope.cancel()
                announce_scope.cancel()
        finally:
            ctx._remove_callback(stopping)
            if self.running:  # cut off by the hard stop (or an error): hand back, uncounted
                await self._release(list(self.running.values()))
            if QueueCapability.WORKERS in self.backend.capabilities:
                await self._goodbye()

    async def _announce(self, scope: anyio.CancelScope) -> None:
        """Tell the worker registry this worker is alive, at start and every ``lease / 3``
        (busy or idle); best effort: a failure waits for the next turn."""
        registry: Any = self.backend
        with scope:
            while True:
                try:
                    now = await self._time.now()
                    if self._started_at is None:
                        self._started_at = now
                    await registry.worker_seen(
                        WorkerInfo(
                            id=self.worker_id,
                            queues=tuple(self.queues),
                            concurrency=self.concurrency,
                            running=len(self.running),
                            started_at=self._started_at,
                            last_seen=now,
                            expires_at=now + self.lease,
                        )
                    )
                except Exception as exc:
                    logger.debug("worker %s: registry update failed: %s", self.worker_id, exc)
                await anyio.sleep(self.lease / 3)

    async def _goodbye(self) -> None:
        registry: Any = self.backend
        with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
            try:
                await registry.worker_gone(self.worker_id)
            except Exception as exc:
                logger.debug("worker %s: registry goodbye failed: %s", self.worker_id, exc)

    async def _maintain(self, retention: Retention, scope: anyio.CancelScope) -> None:
        """Apply the queue's retention every ``retention.every`` seconds (spread out)."""
        with scope:
            while True:
                await anyio.sleep(retention.every * (0.5 + random.random() / 2))
                now = await self._time.now()
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
