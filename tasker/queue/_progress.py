"""A handler's progress reports (``current_task().report_progress``): checked, coalesced, and
written by the worker that runs the handler (``QueueCapability.PROGRESS``).

Design notes:

- **Coalesced per attempt, so that a tight loop is cheap.** The first report of an attempt
  is written at once; a report less than :data:`PROGRESS_INTERVAL` (0.5 s) after the last
  write is kept instead (the latest replaces the one before), and the kept one is written
  by whichever comes first: the attempt's next report after the interval, the worker's next
  heartbeat (every ``lease / 3``), or the end of the attempt, before its outcome is
  recorded. A handler reporting a million times a second costs at most two writes a second
  and one at its end, and its last report is stored before its outcome. Rejected: a timer
  task per attempt for the trailing write; spawning one costs more than most tasks do
  (``_runners`` explains why the worker has no task per attempt).
- **Fails fast where it cannot work:** on a backend without ``PROGRESS`` the first report
  raises :class:`MissingCapabilityError` (a logged no-op would hide a deployment that never
  shows progress), as a bad value raises ``ValueError`` at once.
- **Best effort where it can:** a write that fails (an outage) is logged and its report kept
  for the next chance; the handler is not failed for it. A write the backend refuses (the
  worker no longer holds the task: its lease was lost) changes nothing.
- Found through a context variable set once per runner (not per attempt: the hot path), so
  the handler's child tasks, which copy the context, can report too.
"""

from __future__ import annotations

import logging
import math
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import anyio

from ..abc import QueueBackend, QueueCapability
from ._errors import MissingCapabilityError
from ._records import check_progress
from ._time import BackendClock

__all__ = ["PROGRESS_INTERVAL", "ProgressReports", "progress_reports"]

logger = logging.getLogger("tasker.queue")

#: The least time between two writes of one attempt's progress, in seconds.
PROGRESS_INTERVAL = 0.5

#: The progress reports of the worker whose runner runs the current handler.
progress_reports: ContextVar[ProgressReports | None] = ContextVar(
    "tasker_queue_progress", default=None
)


@dataclass(slots=True, eq=False)
class _Slot:
    """One attempt's progress as the worker holds it."""

    #: The report not written yet, (value, text), if any.
    pending: tuple[float, str] | None = None
    #: ``time.monotonic()`` of the last write's start.
    written: float = -math.inf
    writing: bool = False


class ProgressReports:
    """The progress of the attempts one worker runs, and its writes to the backend.

    Args:
        backend: the worker's backend.
        clock: the worker's reading of the backend's clock (``updated_at``).
        worker_id: the lease owner whose tasks these are.
        timeout: how long one write may take before it is given up (and kept).
    """

    def __init__(
        self, backend: QueueBackend, clock: BackendClock, worker_id: str, *, timeout: float
    ) -> None:
        self._backend = backend
        self._write: Any = (
            backend.report_progress  # type: ignore[attr-defined]
            if QueueCapability.PROGRESS in backend.capabilities
            else None
        )
        self._clock = clock
        self._worker_id = worker_id
        self._timeout = timeout
        self._slots: dict[str, _Slot] = {}
        self._failures = 0

    def __bool__(self) -> bool:
        """Whether a report is kept for a later write."""
        return any(slot.pending is not None for slot in self._slots.values())

    async def report(self, task_id: str, value: float, text: str) -> None:
        """Report the progress of ``task_id`` (see :meth:`RunningTask.report_progress`)."""
        if self._write is None:
            raise MissingCapabilityError(
                self._backend, QueueCapability.PROGRESS, "current_task().report_progress()"
            )
        checked = check_progress(value, text, "report_progress()")
        slot = self._slots.get(task_id)
        if slot is None:
            slot = self._slots[task_id] = _Slot()
        slot.pending = (checked, text)
        if not slot.writing and time.monotonic() - slot.written >= PROGRESS_INTERVAL:
            await self._flush(task_id, slot)

    def end(self, task_id: str) -> _Slot | None:
        """The attempt of ``task_id`` ended: its slot, taken out (its report kept, if any,
        is for :meth:`write_last`)."""
        return self._slots.pop(task_id, None) if self._slots else None

    async def write_last(self, task_id: str, slot: _Slot | None) -> None:
        """Write the kept report of an attempt that ended, before its outcome is recorded."""
        if slot is not None and slot.pending is not None:
            await self._flush(task_id, slot)

    async def flush(self) -> None:
        """Write every kept report (the worker calls it at each heartbeat)."""
        for task_id, slot in list(self._slots.items()):
            if slot.pending is not None and not slot.writing:
                await self._flush(task_id, slot)

    async def _flush(self, task_id: str, slot: _Slot) -> None:
        pending = slot.pending
        if pending is None:
            return
        slot.pending, slot.writing, slot.written = None, True, time.monotonic()
        value, text = pending
        error: object = f"no answer within {self._timeout:g} s"
        done = False
        try:
            with anyio.move_on_after(self._timeout):
                try:
                    now = await self._clock.now()
                    await self._write(self._worker_id, task_id, value, text, now=now)
                    done = True
                except Exception as exc:
                    error = exc
        finally:
            slot.writing = False
        if done:
            if self._failures:
                logger.info("worker %s: progress writes go through again", self._worker_id)
                self._failures = 0
            return
        if slot.pending is None:  # kept for the next chance, unless a newer one came
            slot.pending = pending
        self._failures += 1
        log = logger.warning if self._failures == 1 else logger.debug
        log("worker %s: writing progress of task %s failed: %s", self._worker_id, task_id, error)
