"""What the queue answers: an enqueue's result, and a task as :meth:`Queue.get` reports it.

Both are generic in the task's result type ``R`` so that a :class:`~tasker.queue.Task` can hand
back what its handler returns, typed: ``Enqueued[R]`` only carries the type (an id does not
say what it will produce), ``TaskInfo[R]`` types :attr:`TaskInfo.result`. The untyped API
(``Queue.enqueue("name", ...)``, ``Queue.get(id)``) answers ``Enqueued[Any]`` and
``TaskInfo[Any]``. ``R`` has no default (``TypeVar`` defaults need Python 3.13), so an
annotation names it: ``TaskInfo[Any]``.

The library builds both unparametrised (``TaskInfo(...)``): on Python 3.11 and 3.12, calling
a parametrised frozen slotted dataclass (``TaskInfo[int](...)``) fails in CPython's
``__orig_class__`` assignment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from ._records import Progress, TaskState

__all__ = ["Enqueued", "TaskInfo"]

R = TypeVar("R")


@dataclass(frozen=True, slots=True, kw_only=True)
class Enqueued(Generic[R]):
    """The answer to an enqueue: the task's id, and whether an existing task was reused.

    ``R`` is the result type of the task's handler (``Any`` from the untyped
    :meth:`Queue.enqueue`); :meth:`Task.get` takes an ``Enqueued[R]`` and answers a
    ``TaskInfo`` typed by it.

    Attributes:
        id: the id to ask :meth:`Queue.get` about.
        deduplicated: True when a task with the same unique key was pending (or finished
            within its window): no new task was created and ``id`` names the existing one.
    """

    id: str
    deduplicated: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskInfo(Generic[R]):
    """What :meth:`Queue.get` reports about a task.

    ``R`` is the type of :attr:`result`: ``Any`` from :meth:`Queue.get`, and ``R | None``
    from :meth:`Task.get` (None until the task succeeded, and again once its result
    expired).

    Attributes:
        id, name, queue, state, attempts, max_attempts: as stored.
        result: the handler's return value once it succeeded (until the result expires),
            as the serialiser gives it back (with JSON, a tuple comes back as a list).
        error: ``"Type: message"`` of the last failure, if any.
        traceback: the last failure's traceback, if any.
        created_at, finished_at: POSIX timestamps.
        cancel_requested: a cancel was requested while it ran (``Queue.cancel``); its
            worker stops it at its next heartbeat.
        progress: the last progress its handler reported
            (``current_task().report_progress``; ``value``, ``text``, ``updated_at``), or
            None: cleared when an attempt starts, kept once the task finished.
    """

    id: str
    name: str
    queue: str
    state: TaskState
    attempts: int
    max_attempts: int
    result: R
    error: str | None
    traceback: str | None
    created_at: float
    finished_at: float | None
    cancel_requested: bool = False
    progress: Progress | None = None
