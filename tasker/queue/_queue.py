"""``Queue``: register handlers, enqueue tasks, run workers that are tasker jobs."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from .._backoff import Backoff
from .._context import Context, to_seconds
from .._errors import TaskerError
from .._job import Job, check_job, takes_argument
from .._redact import redact_dsn
from ..abc import (
    FinishAndClaim,
    QueueAdministration,
    QueueBackend,
    QueueCapability,
    QueueInspection,
    TransactionalEnqueue,
)
from ._records import (
    GroupSpec,
    HistoryEntry,
    NewTask,
    TaskRecord,
    TaskState,
)
from ._serializer import JSONSerializer, Serializer

__all__ = [
    "Enqueued",
    "Handler",
    "MissingCapabilityError",
    "PayloadError",
    "Queue",
    "Step",
    "TaskInfo",
    "UnknownTaskError",
    "UnstorableRecordError",
]

logger = logging.getLogger("tasker.queue")

#: A task handler: ``async def handler(ctx, payload) -> result`` (result serialisable or None).
Handler = Callable[[Context, Any], Awaitable[Any]]
H = TypeVar("H", bound=Handler)

_NAME_LIMIT = 200

#: The priorities every backend stores (a signed 32-bit integer, Postgres ``integer``).
PRIORITY_MIN = -(2**31)
PRIORITY_MAX = 2**31 - 1
#: Characters of a failure's ``"Type: message"`` and of its traceback that are stored.
ERROR_LIMIT = 2000
TRACEBACK_LIMIT = 20000


class UnknownTaskError(TaskerError, KeyError):
    """No handler is registered under this task name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no task handler is registered as {name!r}")

    def __str__(self) -> str:
        return str(self.args[0])


class PayloadError(TaskerError, TypeError):
    """A payload (or result) the serialiser cannot represent."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"payload of task {name!r} cannot be serialised: {reason}")


#: The protocol each capability with methods of its own must implement.
_PROTOCOLS: dict[QueueCapability, type] = {
    QueueCapability.INSPECTION: QueueInspection,
    QueueCapability.ADMINISTRATION: QueueAdministration,
    QueueCapability.FINISH_AND_CLAIM: FinishAndClaim,
    QueueCapability.TRANSACTIONAL_ENQUEUE: TransactionalEnqueue,
}


class MissingCapabilityError(TaskerError, NotImplementedError):
    """The queue's backend lacks a capability that a call needs.

    Attributes:
        backend: the backend's repr.
        capability: the :class:`tasker.abc.QueueCapability` missing.
        needed_by: what needed it (``"Queue.history()"``).
    """

    def __init__(self, backend: object, capability: QueueCapability, needed_by: str) -> None:
        self.backend = repr(backend)
        self.capability = capability
        self.needed_by = needed_by
        super().__init__(
            f"{needed_by} needs {capability.value}, which the backend {self.backend} does not"
            f" offer (it declares: {_declared(backend)}); use a backend that declares"
            f" QueueCapability.{capability.name}"
        )


def _declared(backend: object) -> str:
    capabilities: frozenset[object] = getattr(backend, "capabilities", frozenset())
    names = sorted(c.name for c in capabilities if isinstance(c, QueueCapability))
    return ", ".join(names) or "nothing beyond the core"


class UnstorableRecordError(TaskerError, ValueError):
    """A backend cannot store a record as it was given: its data, not the backend, is at fault.

    Raised by a backend (translated from its driver's data errors) so that the worker knows
    that retrying the same record fails the same way: the worker then stores the outcome in a
    reduced form instead of waiting for the backend as in an outage.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the backend cannot store this record: {reason}")


def is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the record is at fault (retrying it unchanged would fail again).

    :class:`UnstorableRecordError`, and the builtin errors of bad values (``ValueError``,
    ``TypeError``, ``UnicodeError``, ``OverflowError``) that drivers raise when they cannot
    encode a value; never an ``OSError`` (a connection that failed).
    """
    return isinstance(exc, ValueError | TypeError | OverflowError) and not isinstance(exc, OSError)


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > _NAME_LIMIT or not value.isprintable():
        raise ValueError(f"{what} must be at most {_NAME_LIMIT} printable characters: {value!r}")
    return value


def _check_int(value: object, what: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        if high is None:
            raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
        raise ValueError(f"{what} must be an integer from {low} to {high}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{what} must be an integer from {low} to {high}, got {value!r}")
    return value


def _check_priority(value: object) -> int:
    return _check_int(value, "priority", PRIORITY_MIN, PRIORITY_MAX)


@dataclass(frozen=True, slots=True)
class _Registration:
    name: str
    handler: Handler
    queue: str
    max_attempts: int
    backoff: Backoff
    timeout: float | None
    priority: int


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One task of a chain or a group, made by :meth:`Queue.step`."""

    name: str
    payload: Any = None
    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    timeout: float | None = None


class Queue:
    """Durable background tasks: handlers by name, enqueue now or later, workers as jobs.

    Args:
        backend: where tasks live (:class:`QueueBackend`); by default the embedded SQLite
            backend in ``path``.
        path: the embedded backend's database file (default ``$TASKER_STATE_DIR`` or
            ``./.tasker``, file ``queue.sqlite3``).
        serializer: payload and result serialiser (default strict JSON; never pickle).
        result_ttl: how long a result is kept after success.
        on_failure: called as ``on_failure(task_info)`` (sync or async) when a task dies.
        long_queue_threshold: when a queue holds at least this many queued tasks after an
            enqueue, ``on_long_queue(queue, depth)`` is called (once per crossing).
        on_long_queue: the long-queue hook.

    Time is the backend's (:meth:`QueueBackend.time`): enqueues, claims and leases all use
    its one clock, so a process whose wall clock is off neither steals leases nor starts
    delayed tasks early. To move time in a test, give the memory backend a fake clock.

    Raises:
        TypeError: for a backend or serializer that does not implement its protocol.
        ValueError: for a bad ``result_ttl`` or threshold.
    """

    def __init__(
        self,
        backend: QueueBackend | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        serializer: Serializer | None = None,
        result_ttl: float | timedelta = 86400.0,
        on_failure: Callable[[TaskInfo], object] | None = None,
        long_queue_threshold: int | None = None,
        on_long_queue: Callable[[str, int], object] | None = None,
    ) -> None:
        if backend is None:
            from ._sqlite import SQLiteQueueBackend, default_queue_path

            backend = SQLiteQueueBackend(Path(path) if path is not None else default_queue_path())
        elif path is not None:
            raise ValueError("Queue: path is only for the embedded default backend")
        if not isinstance(backend, QueueBackend):
            raise TypeError(f"Queue: {backend!r} is not a tasker.queue.QueueBackend")
        capabilities = backend.capabilities
        if not isinstance(capabilities, frozenset) or not all(
            isinstance(c, QueueCapability) for c in capabilities
        ):
            raise TypeError(
                f"Queue: {backend!r}.capabilities must be a frozenset of QueueCapability,"
                f" got {capabilities!r}"
            )
        for capability in sorted(capabilities, key=lambda c: c.name):
            protocol = _PROTOCOLS.get(capability)
            if protocol is not None and not isinstance(backend, protocol):
                raise TypeError(
                    f"Queue: {backend!r} declares QueueCapability.{capability.name} but does"
                    f" not implement tasker.abc.{protocol.__name__}"
                )
        if long_queue_threshold is not None and QueueCapability.INSPECTION not in capabilities:
            raise MissingCapabilityError(
                backend, QueueCapability.INSPECTION, "Queue(long_queue_threshold=...)"
            )
        self._serializer = serializer or JSONSerializer()
        if not isinstance(self._serializer, Serializer):
            raise TypeError(f"Queue: {serializer!r} is not a Serializer (dumps/loads)")
        if long_queue_threshold is not None:
            _check_int(long_queue_threshold, "long_queue_threshold", 1)
        if (long_queue_threshold is None) != (on_long_queue is None):
            raise ValueError("Queue: give both long_queue_threshold and on_long_queue, or neither")
        self.backend = backend
        self._result_ttl = to_seconds(result_ttl, "result_ttl")
        self._on_failure = on_failure
        self._long_threshold = long_queue_threshold
        self._on_long_queue = on_long_queue
        self._long_queues: set[str] = set()
        self._handlers: dict[str, _Registration] = {}
        # The last reading of the backend's clock, and the monotonic time it was made at.
        self._clock: tuple[float, float] | None = None

    # -- registration --------------------------------------------------------------------

    def task(
        self,
        name: str | None = None,
        *,
        queue: str = "default",
        max_attempts: int = 3,
        backoff: Backoff | float | timedelta = Backoff(initial=1.0, maximum=300.0),  # noqa: B008
        timeout: float | timedelta | None = None,
        priority: int = 0,
    ) -> Callable[[H], H]:
        """A decorator that registers an ``async def handler(ctx, payload)``.

        The name defaults to the function's qualified name. The options are the defaults of
        every enqueue of this task; ``backoff`` spaces its retries; ``priority`` is an
        integer from ``-2**31`` to ``2**31 - 1`` (higher runs first).
        """

        def register(handler: H) -> H:
            self.register(
                name or handler.__qualname__,
                handler,
                queue=queue,
                max_attempts=max_attempts,
                backoff=backoff,
                timeout=timeout,
                priority=priority,
            )
            return handler

        return register

    def register(
        self,
        name: str,
        handler: Handler,
        *,
        queue: str = "default",
        max_attempts: int = 3,
        backoff: Backoff | float | timedelta = Backoff(initial=1.0, maximum=300.0),  # noqa: B008
        timeout: float | timedelta | None = None,
        priority: int = 0,
    ) -> None:
        """Register ``handler`` under ``name`` (see :meth:`task`).

        Raises:
            ValueError: for a duplicate or invalid name, attempts below 1, a bad timeout.
            TypeError: if ``handler`` is not an async function taking (ctx, payload).
        """
        _check_name(name, "task name")
        if name in self._handlers:
            raise ValueError(f"Queue.register(): the task name {name!r} is already registered")
        check_job(handler, f"Queue.register({name!r})")
        if takes_argument(handler) and not _takes_two(handler):
            raise TypeError(f"Queue.register(): handler for {name!r} must take (ctx, payload)")
        if not isinstance(backoff, Backoff):
            backoff = Backoff.fixed(to_seconds(backoff, "backoff"))
        self._handlers[name] = _Registration(
            name=name,
            handler=handler,
            queue=_check_name(queue, "queue"),
            max_attempts=_check_int(max_attempts, "max_attempts", 1),
            backoff=backoff,
            timeout=None if timeout is None else to_seconds(timeout, "timeout", allow_zero=False),
            priority=_check_priority(priority),
        )

    @property
    def task_names(self) -> list[str]:
        """The registered task names."""
        return sorted(self._handlers)

    # -- enqueueing ----------------------------------------------------------------------

    def _require(self, capability: QueueCapability, needed_by: str) -> Any:
        """The backend, if it declares ``capability``; else MissingCapabilityError."""
        if capability not in self.backend.capabilities:
            raise MissingCapabilityError(self.backend, capability, needed_by)
        return self.backend

    async def _now(self) -> float:
        """The backend's clock; its last reading advanced by the monotonic clock when the
        backend cannot be asked (a worker never fails for want of the time)."""
        try:
            reading = await self.backend.time()
        except Exception:
            if self._clock is None:
                raise
            last, at = self._clock
            return last + (time.monotonic() - at)
        self._clock = (reading, time.monotonic())
        return reading

    def _serialize(self, name: str, value: Any) -> bytes:
        try:
            return self._serializer.dumps(value)
        except RecursionError as exc:  # before ValueError: a subclass of RuntimeError
            raise PayloadError(name, "nested too deeply to serialise") from exc
        except (TypeError, ValueError, OverflowError) as exc:
            raise PayloadError(name, str(exc)) from exc

    def _new_task(
        self,
        name: str,
        payload: Any,
        *,
        now: float,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
        unique_key: str | None = None,
        unique_for: float | timedelta | None = None,
        held: bool = False,
        chain: bytes | None = None,
        group: tuple[str, int] | None = None,
        raw_payload: bytes | None = None,
    ) -> NewTask:
        registration = self._handlers.get(name)
        if registration is None:
            raise UnknownTaskError(name)
        if delay is not None and at is not None:
            raise ValueError("enqueue(): give delay or at, not both")
        run_at = now
        if delay is not None:
            run_at = now + to_seconds(delay, "delay")
        if at is not None:
            if at.tzinfo is None or at.utcoffset() is None:
                raise ValueError(f"enqueue(): at must be an aware datetime, got {at!r}")
            run_at = at.timestamp()
        if unique_for is not None and unique_key is None:
            raise ValueError("enqueue(): unique_for needs a unique_key")
        if unique_key is not None:
            _check_name(unique_key, "unique_key")
            self._require(QueueCapability.UNIQUE_KEYS, "enqueue(unique_key=...)")
        if held:
            self._require(QueueCapability.ADMINISTRATION, "enqueue(held=True)")
        return NewTask(
            id=uuid.uuid4().hex,
            name=name,
            queue=_check_name(queue, "queue") if queue is not None else registration.queue,
            payload=raw_payload if raw_payload is not None else self._serialize(name, payload),
            priority=registration.priority if priority is None else _check_priority(priority),
            run_at=run_at,
            max_attempts=registration.max_attempts
            if max_attempts is None
            else _check_int(max_attempts, "max_attempts", 1),
            timeout=registration.timeout
            if timeout is None
            else to_seconds(timeout, "timeout", allow_zero=False),
            unique_key=unique_key,
            unique_until=None if unique_for is None else now + to_seconds(unique_for, "unique_for"),
            held=held,
            chain=chain,
            group_id=group[0] if group else None,
            group_index=group[1] if group else None,
            created_at=now,
        )

    async def enqueue(
        self,
        name: str,
        payload: Any = None,
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
        unique_key: str | None = None,
        unique_for: float | timedelta | None = None,
        held: bool = False,
        connection: Any = None,
    ) -> Enqueued:
        """Enqueue task ``name`` with ``payload``, to run now, after ``delay`` or ``at`` a time.

        Args:
            name: a registered task name.
            payload: the handler's argument; serialised now, so a bad payload fails here.
            delay: seconds (or timedelta) from now; ``at``: an aware datetime.
            priority: higher runs first (default: the registration's); an integer from
                ``-2**31`` to ``2**31 - 1``.
            queue: the queue (default: the registration's).
            max_attempts, timeout: override the registration's.
            unique_key: while a task with this key is pending or running (or finished less
                than ``unique_for`` ago), another enqueue with the key is deduplicated.
            held: keep the task until :meth:`dispatch` releases it (manual dispatch).
            connection: a database connection inside the caller's transaction, for backends
                that support it (Postgres): the task exists only if that transaction commits.

        Raises:
            UnknownTaskError: no handler is registered as ``name`` (a ``KeyError``).
            PayloadError: the serialiser cannot represent ``payload`` (a ``TypeError``).
            ValueError: a negative delay, a naive ``at``, a priority out of range, a bad
                option.
        """
        now = await self._now()
        task = self._new_task(
            name,
            payload,
            now=now,
            delay=delay,
            at=at,
            priority=priority,
            queue=queue,
            max_attempts=max_attempts,
            timeout=timeout,
            unique_key=unique_key,
            unique_for=unique_for,
            held=held,
        )
        if connection is None:
            (result,) = await self.backend.enqueue([task], now=now)
        else:
            within = self._require(QueueCapability.TRANSACTIONAL_ENQUEUE, "enqueue(connection=...)")
            (result,) = await within.enqueue_within(connection, [task], now=now)
        await self._check_long_queue(task.queue)
        return Enqueued(id=result.id, deduplicated=result.deduplicated)

    def step(self, name: str, payload: Any = None, **options: Any) -> Step:
        """A task for :meth:`enqueue_chain` or :meth:`enqueue_group`; options as for enqueue."""
        if name not in self._handlers:
            raise UnknownTaskError(name)
        return Step(name=name, payload=payload, **options)

    async def enqueue_chain(self, *steps: Step) -> Enqueued:
        """Enqueue ``steps`` to run one after another, each receiving the previous result.

        The first step gets its own payload; every later step gets the result of the step
        before it as its payload (so later steps take no payload of their own). The next
        step is enqueued in the same transaction that records its predecessor's success; a
        step that dies ends the chain.

        Returns:
            The first step's :class:`Enqueued`.

        Raises:
            ValueError: for an empty chain or a payload on a later step.
        """
        self._require(QueueCapability.WORKFLOWS, "enqueue_chain()")
        if not steps:
            raise ValueError("enqueue_chain(): needs at least one step")
        for later in steps[1:]:
            if later.payload is not None:
                raise ValueError(
                    f"enqueue_chain(): step {later.name!r} gets the previous result as its"
                    " payload; it cannot have one of its own"
                )
        for step in steps:
            if step.name not in self._handlers:
                raise UnknownTaskError(step.name)
        rest = encode_chain(steps[1:])
        now = await self._now()
        first = steps[0]
        task = self._new_task(
            first.name,
            first.payload,
            now=now,
            priority=first.priority,
            queue=first.queue,
            max_attempts=first.max_attempts,
            timeout=first.timeout,
            chain=rest,
        )
        (result,) = await self.backend.enqueue([task], now=now)
        return Enqueued(id=result.id)

    async def enqueue_group(
        self, steps: Sequence[Step], *, then: Step | None = None
    ) -> list[Enqueued]:
        """Enqueue ``steps`` to run in parallel; ``then`` runs once all of them finished.

        ``then`` receives the list of the members' results, in order (None for a member
        that died). It needs the JSON serialiser (the results are joined as a JSON array).

        Raises:
            ValueError: for an empty group, or a payload on ``then``.
            TypeError: for a group callback with a non-JSON serialiser.
        """
        self._require(QueueCapability.WORKFLOWS, "enqueue_group()")
        if not steps:
            raise ValueError("enqueue_group(): needs at least one step")
        if then is not None:
            if then.payload is not None:
                raise ValueError("enqueue_group(): then receives the results; no payload")
            if not isinstance(self._serializer, JSONSerializer):
                raise TypeError("enqueue_group(): a group callback needs the JSON serializer")
        now = await self._now()
        group_id = uuid.uuid4().hex
        tasks = [
            self._new_task(
                step.name,
                step.payload,
                now=now,
                priority=step.priority,
                queue=step.queue,
                max_attempts=step.max_attempts,
                timeout=step.timeout,
                group=(group_id, index),
            )
            for index, step in enumerate(steps)
        ]
        callback = None
        if then is not None:
            callback = self._new_task(
                then.name,
                None,
                now=now,
                priority=then.priority,
                queue=then.queue,
                max_attempts=then.max_attempts,
                timeout=then.timeout,
                raw_payload=b"null",
            )
        group = GroupSpec(id=group_id, size=len(tasks), callback=callback)
        results = await self.backend.enqueue(tasks, group=group, now=now)
        return [Enqueued(id=r.id, deduplicated=r.deduplicated) for r in results]

    async def dispatch(
        self, queue: str = "default", *, name: str | None = None, limit: int | None = None
    ) -> int:
        """Release tasks enqueued with ``held=True`` (manual dispatch); return how many.

        Args:
            queue: the queue to dispatch from.
            name: only tasks of this name (e.g. one type of task).
            limit: at most this many (``limit=1`` dispatches a single task).
        """
        admin = self._require(QueueCapability.ADMINISTRATION, "Queue.dispatch()")
        if limit is not None:
            _check_int(limit, "limit", 1)
        return int(await admin.dispatch(queue, name=name, limit=limit, now=await self._now()))

    async def _check_long_queue(self, queue: str) -> None:
        if self._long_threshold is None or self._on_long_queue is None:
            return
        inspection = self._require(QueueCapability.INSPECTION, "the long-queue hook")
        depth = (await inspection.counts()).get(queue, {}).get(TaskState.QUEUED, 0)
        if depth >= self._long_threshold:
            if queue not in self._long_queues:
                self._long_queues.add(queue)
                await _call_hook(self._on_long_queue, queue, depth)
        else:
            self._long_queues.discard(queue)

    # -- inspection ----------------------------------------------------------------------

    def _info(self, record: TaskRecord, now: float) -> TaskInfo:
        result = None
        if record.result is not None and (
            record.result_expires is None or record.result_expires > now
        ):
            result = self._serializer.loads(record.result)
        return TaskInfo(
            id=record.id,
            name=record.name,
            queue=record.queue,
            state=record.state,
            attempts=record.attempts,
            max_attempts=record.max_attempts,
            result=result,
            error=record.last_error,
            traceback=record.traceback,
            created_at=record.created_at,
            finished_at=record.finished_at,
        )

    async def get(self, task_id: str) -> TaskInfo | None:
        """The task's state and, once it succeeded, its result (None if unknown or purged)."""
        record = await self._require(QueueCapability.INSPECTION, "Queue.get()").get(task_id)
        return None if record is None else self._info(record, await self._now())

    async def dead(self, *, queue: str | None = None, limit: int = 100) -> list[TaskInfo]:
        """Dead tasks (failed their last attempt), newest first."""
        inspection = self._require(QueueCapability.INSPECTION, "Queue.dead()")
        now = await self._now()
        records = await inspection.tasks(state=TaskState.DEAD, queue=queue, limit=limit)
        return [self._info(r, now) for r in records]

    async def requeue(self, task_id: str) -> bool:
        """Put a dead task back with fresh attempts.

        Returns:
            False if it is not dead, or a newer live task holds its unique key.
        """
        admin = self._require(QueueCapability.ADMINISTRATION, "Queue.requeue()")
        return bool(await admin.requeue(task_id, now=await self._now()))

    async def counts(self) -> dict[str, dict[str, int]]:
        """Task counts per queue and state name."""
        raw = await self._require(QueueCapability.INSPECTION, "Queue.counts()").counts()
        return {q: {s.value: n for s, n in states.items()} for q, states in raw.items()}

    async def history(self, *, task_id: str | None = None, limit: int = 100) -> list[HistoryEntry]:
        """Finished attempts (who ran what, when, how long, how it ended), newest first."""
        inspection = self._require(QueueCapability.INSPECTION, "Queue.history()")
        entries: list[HistoryEntry] = await inspection.history(task_id=task_id, limit=limit)
        return entries

    # -- workers -------------------------------------------------------------------------

    def worker(
        self,
        queues: str | Iterable[str] = "default",
        *,
        concurrency: int = 10,
        lease: float | timedelta = 30.0,
        poll: float | timedelta = 5.0,
        worker_id: str | None = None,
    ) -> Job:
        """Return a job that runs tasks from ``queues``, at most ``concurrency`` at a time.

        Workers wake up when work is enqueued (the backend's notification) and otherwise at
        the next delayed task or every ``poll`` seconds at most. Each claimed task is leased
        for ``lease`` seconds and the lease is renewed every ``lease / 3`` while it runs, so
        a task whose worker dies runs again elsewhere once its lease expires.

        - **On error**: a failing task is retried per its backoff until its attempts run out,
          then it is dead (``on_failure`` runs). Backend errors are logged once and retried;
          an outcome the backend refuses is stored in a reduced form (texts in ASCII, then
          a dead letter saying why) so that it never holds back the others.
        - **On a lost lease**: when a heartbeat says another worker took a task, or its lease
          could not be renewed for a whole ``lease``, the task's context is done with
          ``StopReason.LEASE_LOST``, it is cancelled after its grace period, and its outcome
          is discarded (and logged).
        - **On cancellation**: running tasks are cancelled and handed back to the queue
          (their attempt is not counted), within half a second.
        - **On shutdown**: the worker stops claiming at once; running tasks see ``ctx.done``
          and have the grace period less a margin (a fifth of it, at most a second) to
          finish, after which they are cancelled and handed back, uncounted; recording
          gives up at the end of the grace period, whatever the backend does, and the log
          names what it could not record (those tasks run again when their leases expire).

        Raises:
            ValueError: for ``concurrency < 1``, no queues, or a bad duration.
        """
        # Duplicates dropped, order kept (a name given twice would halve a claim's share).
        names = list(dict.fromkeys([queues] if isinstance(queues, str) else queues))
        if not names:
            raise ValueError("Queue.worker(): needs at least one queue")
        for name in names:
            _check_name(name, "queue")
        _check_int(concurrency, "concurrency", 1)
        if worker_id is not None:
            _check_name(worker_id, "worker_id")
        from ._worker import Worker

        return Worker(
            self,
            names,
            concurrency=concurrency,
            lease=to_seconds(lease, "lease", allow_zero=False),
            poll=to_seconds(poll, "poll", allow_zero=False),
            worker_id=worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}",
        ).job()

    def __repr__(self) -> str:
        return f"<tasker.queue.Queue tasks={self.task_names} backend={self.backend!r}>"


def _takes_two(func: Callable[..., object]) -> bool:
    import inspect

    try:
        inspect.signature(func).bind(None, None)
    except (TypeError, ValueError):
        return False
    return True


async def _call_hook(hook: Callable[..., object], *args: Any) -> None:
    import inspect

    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("queue hook %r failed", hook)


def encode_chain(steps: Sequence[Step]) -> bytes | None:
    """The rest of a chain, as stored with a task (None when nothing follows)."""
    if not steps:
        return None
    return json.dumps(
        [
            {
                "name": s.name,
                "queue": s.queue,
                "priority": s.priority,
                "max_attempts": s.max_attempts,
                "timeout": s.timeout,
            }
            for s in steps
        ]
    ).encode()


def decode_chain(data: bytes) -> list[Step]:
    """The rest of a chain, as stored with a task."""
    return [Step(**item) for item in json.loads(data)]


def storable(text: str, limit: int, *, tail: bool = False) -> str:
    """``text`` in a form every backend stores, capped at ``limit`` characters.

    Lossless where it can be: a lone surrogate (not UTF-8) becomes its ``\\udXXX`` escape
    and a NUL (refused by Postgres ``text``) becomes ``\\x00``; everything else is kept.
    ``tail`` keeps the end (a traceback's last frames) instead of the start.
    """
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        text = text[-limit:] if tail else text[:limit]
    return text


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception as failure:  # an exception whose __str__ raises is still reported
        return f"<str() of the exception failed: {type(failure).__name__}>"


def format_error(exc: BaseException) -> tuple[str, str]:
    """``"Type: message"`` and the formatted traceback of ``exc``, both storable.

    Never raises: an exception whose ``__str__`` fails, or whose text holds lone surrogates,
    NUL bytes or megabytes, still gives a readable, storable pair. A DSN's or URL's password
    quoted in either is replaced by ``***`` (:func:`tasker.redact_dsn`): what a queue stores
    is shown in status output and dashboards.
    """
    # Capped before escaping too: a 10 MB message must not be copied and escaped whole.
    # Redacted before the final cut: a cut-off URL no longer shows where its password ends.
    text = f"{type(exc).__name__}: {_message(exc)[: ERROR_LIMIT * 2]}"
    text = storable(redact_dsn(text), ERROR_LIMIT)
    try:
        trace = "".join(traceback.format_exception(exc))
    except Exception as failure:
        trace = f"<the traceback could not be formatted: {type(failure).__name__}>"
    if len(trace) > TRACEBACK_LIMIT * 2:
        trace = trace[-TRACEBACK_LIMIT * 2 :]
    return text, storable(redact_dsn(trace), TRACEBACK_LIMIT, tail=True)
