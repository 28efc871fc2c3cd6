"""What the queue answers: an enqueue's result, and a task as :meth:`Queue.get` reports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._records import TaskState

__all__ = ["Enqueued", "TaskInfo"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Enqueued:
    """The answer to an enqueue: the task's id, and whether an existing task was reused.

    Attributes:
        id: the id to ask :meth:`Queue.get` about.
        deduplicated: True when a task with the same unique key was pending (or finished
            within its window): no new task was created and ``id`` names the existing one.
    """

    id: str
    deduplicated: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskInfo:
    """What :meth:`Queue.get` reports about a task.

    Attributes:
        id, name, queue, state, attempts, max_attempts: as stored.
        result: the handler's return value once it succeeded (until the result expires).
        error: ``"Type: message"`` of the last failure, if any.
        traceback: the last failure's traceback, if any.
        created_at, finished_at: POSIX timestamps.
    """

    id: str
    name: str
    queue: str
    state: TaskState
    attempts: int
    max_attempts: int
    result: Any
    error: str | None
    traceback: str | None
    created_at: float
    finished_at: float | None
