"""Realtime tasks: a registered task run in a worker's pool at once, never stored.

A mixin of :class:`tasker.queue.Worker` (see ``tasker.queue._worker_state``); the
dispatcher's ``SpawnRealtimeBg``. A realtime attempt takes a slot like a claimed one (it is
listed in ``running``, so the claim loop, the concurrency limit and the bounded stop count
it), and goes through the same runner (timeout, ``current_task()``, the shutdown's grace and
cut), but the backend never hears of it: no heartbeat asks for its lease (``realtime``
attempts are left out), no outcome is recorded, and a hand-back drops it. It is lost on a
restart, by design: what must survive one is enqueued.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import anyio

from ._attempt import Attempt
from ._errors import UnknownTaskError
from ._ids import new_id
from ._records import Outcome, OutcomeKind, TaskRecord, TaskState
from ._worker_state import WorkerState

__all__ = ["Realtime"]

logger = logging.getLogger("tasker.queue")


class Realtime(WorkerState):
    """``Worker.spawn``: run a task here and now, without the backend."""

    async def spawn(self, task: Any, payload: Any = None) -> str:
        """Run ``task`` with ``payload`` in this worker's pool, without storing it (the
        dispatcher's ``SpawnRealtimeBg``), and return the id ``current_task()`` gives it.

        It shares the worker's concurrency: when every slot is taken, this waits for one
        (the worker's own claims and other spawns compete for slots as they free up), and
        returns once the task is handed to a runner, not when it ends. It runs once, with
        the registration's timeout: no retry, no history, no result, no ``on_failure``; a
        failure is logged on ``tasker.queue`` with its traceback. The payload goes through
        the queue's serialiser, as a stored task's does, so the handler sees the same
        values either way.

        **Lost on restart, as documented**: a realtime task that has not started when the
        worker stops is dropped (logged), and one still running when the shutdown's grace
        ends is cut off like any task, and dropped instead of handed back.

        Args:
            task: a registered task name, or its :class:`Task`.
            payload: the handler's argument.

        Raises:
            UnknownTaskError: no handler is registered as ``task``.
            PayloadError: the serialiser cannot represent ``payload``.
            RuntimeError: the worker is not running (its job has not started, or it is
                stopping): a realtime task has nowhere to run.
        """
        name = getattr(task, "name", task)
        registration = self._registry.handlers.get(name)
        if registration is None:
            raise UnknownTaskError(name)
        if payload is not None and not registration.takes_payload:
            raise TypeError(
                f"Worker.spawn(): task {name!r} takes no payload (its handler takes only"
                f" ctx), got a {type(payload).__name__}"
            )
        data = self._registry.serialize(name, payload)
        self._check_running()
        now = await self._time.now()
        self._spawners += 1
        try:
            while True:
                self._check_running()
                if self._free() > 0:  # nothing awaits from here to the slot's taking
                    break
                if self._spawn_wake is None:
                    self._spawn_wake = anyio.Event()
                await self._spawn_wake.wait()
        finally:
            self._spawners -= 1
        record = TaskRecord(
            id=new_id(),
            name=name,
            queue=registration.queue,
            payload=data,
            priority=registration.priority,
            run_at=now,
            state=TaskState.RUNNING,
            attempts=1,
            max_attempts=1,
            timeout=registration.timeout,
            unique_key=None,
            created_at=now,
            lease_owner=self.worker_id,
        )
        # Never overdue: no lease to renew (math.inf - now is never a whole lease old).
        attempt = Attempt(record, math.inf, realtime=True)
        self.running[record.id] = attempt
        send = self._send
        assert send is not None
        try:
            send.send_nowait(attempt)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            del self.running[record.id]
            self._freed()
            raise RuntimeError(
                f"Worker.spawn(): worker {self.worker_id} stopped before task {name!r} could run"
            ) from None
        return record.id

    def _check_running(self) -> None:
        ctx = self._ctx
        if self._send is None or ctx is None or ctx.done or self._stopping:
            raise RuntimeError(
                f"Worker.spawn(): worker {self.worker_id} is not running (spawn a realtime"
                " task while its job runs, e.g. from another job of the same tasker.main)"
            )

    def _end_realtime(self, attempt: Attempt, outcome: Outcome) -> None:
        """A realtime attempt ended: log a failure, free its slot; the backend never knows."""
        record = attempt.record
        self.realtime += 1
        if outcome.kind is not OutcomeKind.SUCCEEDED:
            logger.error(
                "worker %s: realtime task %s %s failed (it is not retried): %s\n%s",
                self.worker_id,
                record.name,
                record.id,
                outcome.error,
                outcome.traceback or "",
            )
        if self.running.get(record.id) is attempt:
            del self.running[record.id]
        self._freed()

    def _drop_realtime(self, attempts: list[Attempt], why: str) -> None:
        """Realtime attempts the worker lets go (stopping): dropped, and logged."""
        for attempt in attempts:
            record = attempt.record
            logger.warning(
                "worker %s: realtime task %s %s dropped (%s): it is not stored, so it will"
                " not run again",
                self.worker_id,
                record.name,
                record.id,
                why,
            )
            if self.running.get(record.id) is attempt:
                del self.running[record.id]
