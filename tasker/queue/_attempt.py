"""One claimed attempt of a task, as the worker that holds it sees it."""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from .._context import Context
from ._records import TaskRecord

__all__ = ["Attempt"]


@dataclass(slots=True, eq=False)
class Attempt:
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
    #: ``time.monotonic()`` when its handler started (None: never started).
    began: float | None = None
    #: The backend said its cancel was requested (``QueueCapability.CANCEL``): it is stopped
    #: with ``StopReason.CANCELLED``, and reported cancelled unless its handler returns.
    cancelled: bool = False
    #: A realtime task (``Worker.spawn``): not stored, so no lease, no heartbeat, no
    #: outcome recorded; a hand-back drops it.
    realtime: bool = False
