"""``Queue``: register handlers, enqueue tasks, run workers that are tasker jobs."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Self, TypeVar

from .._backoff import Backoff
from .._context import to_seconds
from ..abc import (
    FinishAndClaim,
    QueueAdministration,
    QueueBackend,
    QueueCapability,
    QueueInspection,
    TransactionalEnqueue,
)
from ._chain import Step, encode_chain
from ._checks import check_int, check_name, check_priority
from ._errors import (
    MissingCapabilityError,
    UnknownTaskError,
)
from ._info import Enqueued, TaskInfo
from ._records import (
    GroupSpec,
    HistoryEntry,
    NewTask,
    TaskRecord,
    TaskState,
)
from ._registry import Handler, Registry
from ._retention import Retention
from ._serializer import JSONSerializer, Serializer
from ._time import BackendClock
from ._worker import Worker

#: The default retention (a sentinel too: only an explicit one needs ADMINISTRATION).
_DEFAULT_RETENTION = Retention()

#: The protocol each capability with methods of its own must implement.
_PROTOCOLS: dict[QueueCapability, type] = {
    QueueCapability.INSPECTION: QueueInspection,
    QueueCapability.ADMINISTRATION: QueueAdministration,
    QueueCapability.FINISH_AND_CLAIM: FinishAndClaim,
    QueueCapability.TRANSACTIONAL_ENQUEUE: TransactionalEnqueue,
}

__all__ = ["Handler", "Queue"]

logger = logging.getLogger("tasker.queue")

H = TypeVar("H", bound=Handler)


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
        retention: what is kept of finished tasks and history, applied by the workers
            (:class:`Retention`; by default dead tasks and history for 7 days, a purge every
            5 minutes); None never purges. Needs ``QueueCapability.ADMINISTRATION`` when
            given; the default is skipped on a backend without it.

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
        retention: Retention | None = _DEFAULT_RETENTION,
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
        chosen = serializer or JSONSerializer()
        if not isinstance(chosen, Serializer):
            raise TypeError(f"Queue: {serializer!r} is not a Serializer (dumps/loads)")
        if long_queue_threshold is not None:
            check_int(long_queue_threshold, "long_queue_threshold", 1)
        if (long_queue_threshold is None) != (on_long_queue is None):
            raise ValueError("Queue: give both long_queue_threshold and on_long_queue, or neither")
        self.backend = backend
        self._registry = Registry(chosen, to_seconds(result_ttl, "result_ttl"))
        self._time = BackendClock(backend)
        self._on_failure = on_failure
        self._long_threshold = long_queue_threshold
        self._on_long_queue = on_long_queue
        self._long_queues: set[str] = set()
        if retention is not None and not isinstance(retention, Retention):
            raise TypeError(f"Queue: retention must be a Retention or None, got {retention!r}")
        if (
            retention is not None
            and retention is not _DEFAULT_RETENTION
            and QueueCapability.ADMINISTRATION not in capabilities
        ):
            raise MissingCapabilityError(
                backend, QueueCapability.ADMINISTRATION, "Queue(retention=...)"
            )
        if QueueCapability.ADMINISTRATION not in capabilities:
            retention = None
        self._retention = retention

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
        self._registry.add(
            name,
            handler,
            queue=queue,
            max_attempts=max_attempts,
            backoff=backoff,
            timeout=timeout,
            priority=priority,
        )

    @property
    def task_names(self) -> list[str]:
        """The registered task names."""
        return sorted(self._registry.handlers)

    # -- enqueueing ----------------------------------------------------------------------

    async def _now(self) -> float:
        return await self._time.now()

    def _new_task(self, name: str, payload: Any, **options: Any) -> NewTask:
        if options.get("unique_key") is not None:
            self._require(QueueCapability.UNIQUE_KEYS, "enqueue(unique_key=...)")
        if options.get("held"):
            self._require(QueueCapability.ADMINISTRATION, "enqueue(held=True)")
        return self._registry.new_task(name, payload, **options)

    def _require(self, capability: QueueCapability, needed_by: str) -> Any:
        """The backend, if it declares ``capability``; else MissingCapabilityError."""
        if capability not in self.backend.capabilities:
            raise MissingCapabilityError(self.backend, capability, needed_by)
        return self.backend

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

    def step(
        self,
        name: str,
        payload: Any = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
    ) -> Step:
        """A task for :meth:`enqueue_chain` or :meth:`enqueue_group`; options as for enqueue.

        Raises:
            UnknownTaskError: no handler is registered as ``name``.
            ValueError: for an option out of range (checked here, not when the step runs).
        """
        if name not in self._registry.handlers:
            raise UnknownTaskError(name)
        return Step(
            name=name,
            payload=payload,
            queue=None if queue is None else check_name(queue, "queue"),
            priority=None if priority is None else check_priority(priority),
            max_attempts=None
            if max_attempts is None
            else check_int(max_attempts, "max_attempts", 1),
            timeout=None if timeout is None else to_seconds(timeout, "timeout", allow_zero=False),
        )

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
            if step.name not in self._registry.handlers:
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
            if not isinstance(self._registry.serializer, JSONSerializer):
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
            check_int(limit, "limit", 1)
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
            result = self._registry.serializer.loads(record.result)
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
    ) -> Worker:
        """Return a :class:`Worker`, a job that runs tasks from ``queues``, at most
        ``concurrency`` at a time (``worker.statistics()`` tells what it did).

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
            check_name(name, "queue")
        check_int(concurrency, "concurrency", 1)
        if worker_id is not None:
            check_name(worker_id, "worker_id")
        return Worker(
            self.backend,
            self._registry,
            self._time,
            names,
            concurrency=concurrency,
            lease=to_seconds(lease, "lease", allow_zero=False),
            poll=to_seconds(poll, "poll", allow_zero=False),
            worker_id=worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}",
            on_failure=self._on_failure,
            retention=self._retention,
        )

    async def aclose(self) -> None:
        """Close the backend (its connections, threads and files); idempotent."""
        await self.backend.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<tasker.queue.Queue tasks={self.task_names} backend={self.backend!r}>"


async def _call_hook(hook: Callable[..., object], *args: Any) -> None:
    import inspect

    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("queue hook %r failed", hook)
