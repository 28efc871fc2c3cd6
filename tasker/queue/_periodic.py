"""Periodic tasks: a schedule's slots enqueue a task, once per slot across every replica.

Design notes:

- The Scheduler does the timing and the coordination (its lock: one replica enqueues a
  slot at a time; its state: each slot once while enqueues succeed); the queue does the
  running. So a periodic task gets everything a task has (retries, a dead letter, history,
  a worker anywhere), and the schedule everything a schedule has (catch-up, ``first_run``).
- A slot's enqueue is idempotent: the Scheduler is at-least-once (a run whose state write
  failed runs again), so the enqueue names the slot, with a task id derived from the name
  and the slot (``TASK_IDS``) or, on a backend without chosen ids, a unique key with a
  day's window (``UNIQUE_KEYS``). A retried slot then finds its task and enqueues nothing.
  Replicas whose Schedulers do not even share a backend still enqueue each slot once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .._context import Context, to_seconds
from .._job import Job
from ..abc import QueueCapability
from ..scheduler import Scheduler, scheduled_slot
from ._errors import MissingCapabilityError, UnknownTaskError

if TYPE_CHECKING:
    from ..schedule import Schedule
    from ..scheduler import CatchUp
    from ._queue import Queue

__all__ = ["periodic_job", "slot_task_id"]

logger = logging.getLogger("tasker.queue")

#: How long a slot's unique key holds, on a backend without chosen task ids: longer than
#: any retry of a slot (the Scheduler's ``retry_delay``, a restart).
SLOT_KEY_WINDOW = timedelta(days=1)


def slot_task_id(name: str, slot: datetime) -> str:
    """The task id of ``name``'s periodic task for ``slot``: the same on every replica.

    The name is hashed (a schedule name may hold any printable character, an id may not);
    the slot is spelled out in UTC, so the id says which slot it is.
    """
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"periodic-{digest}-{slot.astimezone(UTC):%Y%m%dT%H%M%S%fZ}"


def periodic_job(
    queue: Queue,
    task_name: str,
    schedule: Schedule,
    payload: Any,
    *,
    scheduler: Scheduler,
    name: str | None,
    catch_up: CatchUp,
    retry_delay: float | timedelta,
    options: Mapping[str, Any],
) -> Job:
    """The job of :meth:`Queue.periodic` (see there), its arguments checked here."""
    if not isinstance(scheduler, Scheduler):
        raise TypeError(
            f"Queue.periodic(): scheduler must be a tasker.Scheduler, got {scheduler!r}"
        )
    registry = queue._registry
    if task_name not in registry.handlers:
        raise UnknownTaskError(task_name)
    capabilities = queue.backend.capabilities
    by_id = QueueCapability.TASK_IDS in capabilities
    if not by_id and QueueCapability.UNIQUE_KEYS not in capabilities:
        raise MissingCapabilityError(
            queue.backend,
            QueueCapability.TASK_IDS,
            "Queue.periodic() (a slot's enqueue names the slot, by a task id or a unique key,"
            " so that a retried slot enqueues nothing twice)",
        )
    make_payload: Callable[[datetime], Any] | None = payload if callable(payload) else None
    if make_payload is None:
        registry.serialize(task_name, payload)  # a payload it cannot store fails here, now
    schedule_name = name if name is not None else f"periodic:{task_name}"
    window = to_seconds(SLOT_KEY_WINDOW, "unique_for")

    async def enqueue_slot(ctx: Context) -> None:
        slot = scheduled_slot()
        assert slot is not None  # the Scheduler runs this job, always for a slot
        data = make_payload(slot) if make_payload is not None else payload
        task_id = slot_task_id(schedule_name, slot)
        if by_id:
            enqueued = await queue.enqueue(task_name, data, task_id=task_id, **options)
        else:
            enqueued = await queue.enqueue(
                task_name, data, unique_key=task_id, unique_for=window, **options
            )
        logger.info(
            "periodic %r: slot %s %s task %s %s",
            schedule_name,
            slot.isoformat(),
            "already had" if enqueued.deduplicated else "enqueued",
            task_name,
            enqueued.id,
        )

    enqueue_slot.__name__ = enqueue_slot.__qualname__ = f"periodic({task_name!r})"
    return scheduler.with_schedule(
        schedule_name, schedule, enqueue_slot, catch_up=catch_up, retry_delay=retry_delay
    )
