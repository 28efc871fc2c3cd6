"""How a worker claims tasks: in batches as its slots free up, and waits while idle.

A mixin of :class:`tasker.queue.Worker` (see ``tasker.queue._worker_state``). The claim
loop sleeps on ``_slot_freed`` while the worker is full, and each part that frees a slot
calls :meth:`Claims._freed`, which wakes it only when it has something to claim for: with a
backend that records and claims in one call, the flush refills the slot it freed, and a
wake-up per task (a cancel scope, an event and a turn of the loop) would cost more than the
no-op task itself.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio

from .._context import Context
from .._faults import raise_if_permanent
from ._attempt import Attempt
from ._records import TaskRecord
from ._worker_state import BACKEND_BACKOFF, WorkerState

__all__ = ["Claims", "wait_either"]

logger = logging.getLogger("tasker.queue")


class Claims(WorkerState):
    """The claim loop and the hand-off of claimed tasks to the runners."""

    async def _claim_loop(self, ctx: Context) -> None:
        backend = self.backend
        outage = 0
        while not ctx.done:
            # Claim in batches: with tasks running, wait until half the slots are free, so
            # one claim serves several slots (no wait when idle: latency matters then).
            if self._full():
                self._slot_freed = anyio.Event()
                await wait_either(ctx, self._slot_freed.wait)
                continue
            free = self._free() - self._spawners
            self._reserved += free
            try:
                now = await self._time.now()
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
                if self._probe is not None and not self._probe.ready:
                    self._probe.set(True)  # it claims
            except Exception as exc:
                # Missing tables, a refused login: retrying cannot help.
                raise_if_permanent(exc, f"worker {self.worker_id} on {self.backend!r}")
                if self._probe is not None:
                    self._probe.set(False, f"backend unavailable ({type(exc).__name__})")
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
                if self._spawn_wake is not None:  # a spawn waited for the claim's slots
                    self._freed()
            if not claimed:
                await self._idle(ctx)
                continue
            await self._hand_to_runners(claimed, sent)

    def _free(self) -> int:
        # A task whose handler returned no longer takes a slot while its outcome is being
        # recorded (it stays in ``running`` for heartbeats and the hand-back).
        return self.concurrency - len(self.running) + len(self.reporting) - self._reserved

    def _full(self) -> bool:
        """Whether the claim loop waits: no slot free, or, with tasks running, under a batch.
        Slots that spawns wait for (``Worker.spawn``) are theirs, not the claim loop's."""
        free = self._free() - self._spawners
        return free <= 0 or (free < self._batch and bool(self.running))

    def _freed(self) -> None:
        """A slot may be free, or an attempt has left ``running``: wake whoever needs to know.

        The claim loop, if it has something to claim for (it checks :meth:`_full` before each
        wait, so no wake-up it needs is skipped), and, once stopping, the worker's wait for
        ``running`` to empty.
        """
        if self._stopping or not self._full():
            self._slot_freed.set()
        spawners = self._spawn_wake
        if spawners is not None and (self._stopping or self._free() > 0):
            self._spawn_wake = None
            spawners.set()

    async def _idle(self, ctx: Context) -> None:
        # The backend returns early for new work and for its next due time (a delayed task,
        # a lease that expires): ``poll`` only bounds how long a missed wake-up can last.
        async def wait_for_work() -> None:
            try:
                await self.backend.wait_for_work(self.queues, self.poll)
            except Exception as exc:
                # A fault retrying cannot fix (a user not allowed the wait's command) stops
                # the worker; an outage is the claim loop's to report, and is waited out.
                raise_if_permanent(exc, f"worker {self.worker_id} on {self.backend!r}")
                logger.debug("worker %s: wait_for_work failed: %s", self.worker_id, exc)
                await anyio.sleep(min(self.poll, 1.0))

        await wait_either(ctx, wait_for_work)

    async def _hand_to_runners(self, records: list[TaskRecord], sent: float) -> None:
        """Queue claimed tasks for the runners; after the claim loop closed, hand them back."""
        running = self.running
        attempts = [Attempt(record, sent) for record in records]
        for attempt in attempts:
            task_id = attempt.record.id
            # A new attempt of a task whose previous attempt (recorded, its runner not yet
            # resumed) is still listed replaces it: the old entry no longer holds a slot.
            if task_id in running:
                self.reporting.discard(task_id)
            running[task_id] = attempt
        send = self._send
        assert send is not None
        for index, attempt in enumerate(attempts):
            try:
                send.send_nowait(attempt)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                await self._release(attempts[index:])
                return


async def wait_either(ctx: Context, wait: Any) -> None:
    """Run ``wait()`` until it returns or ``ctx`` is done."""
    if ctx.done:
        return
    with anyio.CancelScope() as scope:
        ctx._add_callback(scope.cancel)
        try:
            await wait()
        finally:
            ctx._remove_callback(scope.cancel)
