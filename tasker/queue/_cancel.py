"""Cancelling a task: the Queue's passthrough to ``QueueCapability.CANCEL``.

Design notes:

- **Two halves, one call.** A task that has not started is the store's to cancel, at once
  and atomically (it is never claimed). A running one is its worker's to stop: the store
  records the request, and the worker holding the lease learns it at its next heartbeat
  (``lease / 3``), so the call never waits for the handler. Rejected: a wake-up channel per
  backend (LISTEN, pub/sub) to reach the worker sooner; the heartbeat already crosses every
  backend, and a shorter lease makes it more frequent where latency matters.
- **What a handler's ending records** once its cancel was requested: a raise (what a handler
  stopping early on ``ctx.done`` should do, as with the Scheduler) or the hard cut after the
  grace period records it ``CANCELLED``; a return records the success, since its work is
  done, but never enqueues the rest of its chain. The store applies that rule whatever the
  worker reports, so a worker that had not heard of the cancel yet (its failure would be a
  retry) still never puts the task back in its queue.
"""

from __future__ import annotations

from typing import Any

from ..abc import QueueCapability
from ._core import QueueCore
from ._info import Enqueued
from ._records import CancelResult

__all__ = ["CancelMethods"]


class CancelMethods(QueueCore):
    """The Queue's cancellation: :meth:`cancel`."""

    async def cancel(self, task: str | Enqueued[Any]) -> CancelResult:
        """Cancel a task, by id (or the :class:`Enqueued` an enqueue returned).

        - **Held, queued or delayed** (or waiting for a retry): it never runs; its state is
          ``TaskState.CANCELLED`` at once (:attr:`CancelStatus.CANCELLED`).
        - **Running**, on whichever worker: the cancel is recorded
          (``TaskInfo.cancel_requested``; :attr:`CancelStatus.REQUESTED`) and the worker
          holding the task learns it at its next heartbeat, within ``lease / 3`` (10 s with
          the default 30 s lease) plus a round trip. The handler's context is then done with
          ``StopReason.CANCELLED`` (``ctx.done``, ``ctx.reason``), and the handler is
          cancelled after its grace period, as for a lost lease. The task ends
          ``CANCELLED`` (a history row ``"cancelled"``, the attempt counted), is never
          retried, and ``on_failure`` is not called; a handler that returns anyway is
          recorded as succeeded, with its result. Should its worker die first, the next
          claim after its lease expires makes it ``CANCELLED`` instead of running it again.
        - **Finished** (succeeded, dead, cancelled) or **unknown** (never enqueued, or
          purged): nothing changes (:attr:`CancelStatus.FINISHED`,
          :attr:`CancelStatus.UNKNOWN`). Cancelling twice is harmless.

        **Chains**: a cancelled step ends its chain: the later steps are never enqueued
        (even when a running step's handler returns). **Groups**: only the member named is
        cancelled; it counts as not succeeded, as a dead member does: once every member has
        finished, the callback runs with ``None`` in the cancelled member's place. A
        cancelled task is purged with the dead ones (``Retention(dead=)``) and frees its
        unique key as a finished task does (a ``unique_for`` window still applies). It
        cannot be requeued: enqueue it again.

        Returns:
            A :class:`CancelResult`: true when the task was cancelled or its cancel
            requested, with what happened (``status``) and the task's state now.

        Raises:
            MissingCapabilityError: the backend lacks ``QueueCapability.CANCEL``.
            ValueError: ``task`` is not a task id (a non-empty ``str``) or an ``Enqueued``.
        """
        backend = self._require(QueueCapability.CANCEL, "Queue.cancel()")
        task_id = task.id if isinstance(task, Enqueued) else task
        if not isinstance(task_id, str) or not task_id:
            raise ValueError(
                f"Queue.cancel(): task must be a task id (a non-empty str) or an Enqueued,"
                f" got {task!r}"
            )
        result: CancelResult = await backend.cancel(task_id, now=await self._now())
        return result
