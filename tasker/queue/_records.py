"""The records a queue backend stores and returns.

Times are POSIX timestamps (float seconds) on the backend's clock (``QueueBackend.time()``):
the queue reads it and passes ``now`` to every backend call, so tests can move time.
Payloads and results are bytes, already serialised by the queue's serialiser.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._limits import RateLimit
from ._quick import quick_init

__all__ = [
    "CancelResult",
    "CancelStatus",
    "EnqueueResult",
    "GroupSpec",
    "HeaderValue",
    "HistoryEntry",
    "NewTask",
    "Outcome",
    "OutcomeKind",
    "Progress",
    "TaskRecord",
    "TaskState",
    "WorkerInfo",
]


class TaskState(enum.Enum):
    """Where a task is in its life."""

    #: Enqueued and waiting for ``dispatch()`` (manual dispatch); never claimed before.
    HELD = "held"
    #: Waiting for a worker (possibly not before its ``run_at``).
    QUEUED = "queued"
    #: Claimed by a worker that holds a lease on it.
    RUNNING = "running"
    #: Finished successfully; its result is kept until ``result_expires``.
    SUCCEEDED = "succeeded"
    #: Failed its last attempt (or its lease expired on the last one): a dead letter.
    DEAD = "dead"
    #: Cancelled (``Queue.cancel``): before it ran (it never will), or while it ran, its
    #: worker stopped it (a handler that still returned is ``SUCCEEDED``). Never retried.
    CANCELLED = "cancelled"


#: The states a task never leaves (but a requeue of a dead one): a group's member in one
#: of them has settled.
TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.DEAD, TaskState.CANCELLED})

#: What a task header may hold (``enqueue(headers=...)``): what AMQP headers carry exactly
#: and a headers exchange routes by (no floats: AMQP's are 32-bit, and would lose digits).
HeaderValue = str | int | bool


@quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class NewTask:
    """A task to enqueue, as the backend receives it."""

    id: str
    name: str
    queue: str
    payload: bytes
    priority: int = 0
    run_at: float
    max_attempts: int = 1
    timeout: float | None = None
    unique_key: str | None = None
    unique_until: float | None = None
    held: bool = False
    #: The serialised rest of a chain: enqueued with this task's result when it succeeds.
    chain: bytes | None = None
    group_id: str | None = None
    group_index: int | None = None
    created_at: float
    #: Headers for the broker and the handler (with :attr:`QueueCapability.HEADERS`).
    headers: Mapping[str, HeaderValue] | None = None
    #: At most this many attempts of ``name`` start per window, across every worker
    #: (:attr:`QueueCapability.RATE_LIMITS`; ``tasker.queue.RateLimit``).
    rate_limit: RateLimit | None = None
    #: At most ``concurrency_limit`` tasks with this key run at once, across every worker
    #: (:attr:`QueueCapability.CONCURRENCY_KEYS`); None: no key.
    concurrency_key: str | None = None
    concurrency_limit: int = 1
    #: The trace context of its enqueue (``tasker.tracing``): W3C ``traceparent`` and
    #: ``tracestate`` as compact JSON, for the attempt span to continue; None: untraced.
    trace: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupSpec:
    """A group of tasks whose callback runs when every member has finished."""

    id: str
    size: int
    #: The callback task, enqueued with the members' results (a JSON list) as its payload.
    callback: NewTask | None


@dataclass(frozen=True, slots=True, kw_only=True)
class EnqueueResult:
    """What an enqueue did: the task's id, and whether an existing task took its place."""

    id: str
    deduplicated: bool = False


#: The longest progress text (``Progress.text``), in characters.
PROGRESS_TEXT_LIMIT = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """How far a running task got, as its handler last reported it
    (``current_task().report_progress``; :attr:`QueueCapability.PROGRESS`).

    Attributes:
        value: the fraction done, from 0.0 to 1.0.
        text: a short description (``"resized 4 of 10"``), at most
            ``PROGRESS_TEXT_LIMIT`` (200) characters; empty when none was given.
        updated_at: when the backend stored it (backend clock, POSIX seconds).

    Raises:
        ValueError: for a value that is not a finite number from 0 to 1, or a text longer
            than 200 characters.
        TypeError: for a value that is not a number, or a text that is not a str.
    """

    value: float
    text: str = ""
    updated_at: float

    def __post_init__(self) -> None:
        check_progress(self.value, self.text, "Progress")


def check_progress(value: object, text: object, where: str) -> float:
    """``value`` as a float, once ``value`` and ``text`` are shown to be a progress report.

    Raises:
        TypeError: ``value`` is not an int or float (a bool is not), ``text`` not a str.
        ValueError: ``value`` is NaN or outside 0..1, ``text`` longer than 200 characters.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{where}: value must be a number from 0.0 to 1.0, got {value!r}")
    if not 0.0 <= value <= 1.0:  # False for NaN too
        raise ValueError(f"{where}: value must be a fraction from 0.0 to 1.0, got {value!r}")
    if not isinstance(text, str):
        raise TypeError(f"{where}: text must be a str, got {text!r}")
    if len(text) > PROGRESS_TEXT_LIMIT:
        raise ValueError(
            f"{where}: text must be at most {PROGRESS_TEXT_LIMIT} characters, got"
            f" {len(text)}: {text[:40]!r}..."
        )
    return float(value)


@quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRecord:
    """A task as stored."""

    id: str
    name: str
    queue: str
    payload: bytes
    priority: int
    run_at: float
    state: TaskState
    attempts: int
    max_attempts: int
    timeout: float | None
    unique_key: str | None
    created_at: float
    lease_owner: str | None = None
    lease_until: float | None = None
    result: bytes | None = None
    result_expires: float | None = None
    last_error: str | None = None
    traceback: str | None = None
    finished_at: float | None = None
    chain: bytes | None = None
    group_id: str | None = None
    group_index: int | None = None
    #: The headers it was enqueued with (backends with :attr:`QueueCapability.HEADERS`).
    headers: Mapping[str, HeaderValue] | None = None
    #: A cancel was requested while it ran (:attr:`QueueCapability.CANCEL`): its worker
    #: stops it at its next heartbeat, and it ends ``CANCELLED`` unless its handler returns
    #: (then ``SUCCEEDED``, its chain ended). Stays True once set.
    cancel_requested: bool = False
    #: The progress its current (or last) attempt reported (:attr:`QueueCapability.PROGRESS`):
    #: cleared when an attempt starts, kept once the task finished.
    progress: Progress | None = None
    #: The trace context it was enqueued with (:attr:`NewTask.trace`), where the backend
    #: stores it; None: untraced, or a backend that drops it.
    trace: str | None = None


class OutcomeKind(enum.Enum):
    """How a claimed task ended."""

    SUCCEEDED = "succeeded"
    #: Failed, with attempts left: back to the queue at ``retry_at``.
    RETRY = "retry"
    #: Failed its last attempt.
    DEAD = "dead"
    #: Handed back before it started (a stopping worker's claims): back to the queue, the
    #: attempt not counted, no history row.
    RELEASED = "released"
    #: Cut off by a shutdown while it ran: back to the queue, the attempt not counted, and a
    #: history row (``outcome="interrupted"``) saying so.
    INTERRUPTED = "interrupted"
    #: Stopped because its cancel was requested (:attr:`QueueCapability.CANCEL`): the task is
    #: ``CANCELLED``, the attempt counted, a history row (``outcome="cancelled"``), no
    #: follow-ups. A backend records any outcome but ``SUCCEEDED`` of a task whose cancel was
    #: requested as this one (a retry, a release or an interruption never requeue it).
    CANCELLED = "cancelled"


@quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """A worker's report on one claimed task."""

    id: str
    worker: str
    kind: OutcomeKind
    started_at: float
    finished_at: float
    result: bytes | None = None
    result_expires: float | None = None
    error: str | None = None
    traceback: str | None = None
    retry_at: float | None = None
    #: Tasks to enqueue in the same transaction (the next step of a chain).
    follow_ups: tuple[NewTask, ...] = field(default=())


class CancelStatus(enum.Enum):
    """What a cancel (``Queue.cancel``) did to its task."""

    #: It was held, queued (delayed, or waiting for a retry) or running with an expired
    #: lease (its worker gone): it is ``CANCELLED`` now and never runs (again).
    CANCELLED = "cancelled"
    #: It is running: the cancel is recorded (``TaskRecord.cancel_requested``), and the
    #: worker that holds it stops it at its next heartbeat.
    REQUESTED = "requested"
    #: It had finished already (succeeded, dead or cancelled): nothing changed.
    FINISHED = "finished"
    #: No task has this id (never enqueued, or purged): nothing changed.
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelResult:
    """The answer to a cancel: which task, what the cancel did, and the task's state after it.

    True (``if await queue.cancel(task_id):``) when the cancel took effect or was
    requested (:attr:`CancelStatus.CANCELLED`, :attr:`CancelStatus.REQUESTED`); False
    when there was nothing to cancel (finished, or unknown).

    Attributes:
        id: the task's id.
        status: what the cancel did (:class:`CancelStatus`).
        state: the task's state after the cancel: ``CANCELLED`` once cancelled,
            ``RUNNING`` while a requested cancel waits for its worker, the final state of a
            finished task, None for an unknown one.
    """

    id: str
    status: CancelStatus
    state: TaskState | None

    def __post_init__(self) -> None:
        if not isinstance(self.status, CancelStatus):
            raise TypeError(f"CancelResult: status must be a CancelStatus, got {self.status!r}")
        if (self.state is None) != (self.status is CancelStatus.UNKNOWN):
            raise ValueError(
                f"CancelResult: state must be None exactly for an unknown task, got"
                f" status={self.status!r} with state={self.state!r}"
            )

    def __bool__(self) -> bool:
        return self.status in (CancelStatus.CANCELLED, CancelStatus.REQUESTED)


@quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEntry:
    """One attempt of one task: who ran it, when, for how long, and how it ended."""

    task_id: str
    name: str
    queue: str
    worker: str
    attempt: int
    started_at: float
    finished_at: float
    outcome: str
    error: str | None = None

    @property
    def duration(self) -> float:
        """Seconds the attempt took."""
        return self.finished_at - self.started_at


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    """A running worker as the registry knows it (``QueueCapability.WORKERS``).

    A worker says it is alive when it starts and at every heartbeat (every ``lease / 3``),
    busy or idle, and says goodbye when it stops. One that stops saying anything (killed)
    drops out once ``expires_at`` passes.

    Attributes:
        id: the worker's id (its lease owner name).
        queues: the queues it takes tasks from.
        concurrency: how many tasks it runs at most.
        running: how many it ran at its last heartbeat.
        started_at: when it started (backend clock).
        last_seen: its last heartbeat (backend clock).
        expires_at: when it counts as gone without a newer heartbeat (backend clock).
    """

    id: str
    queues: tuple[str, ...]
    concurrency: int
    running: int
    started_at: float
    last_seen: float
    expires_at: float
