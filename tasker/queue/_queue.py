"""``Queue``: register handlers, enqueue tasks, run workers that are tasker jobs.

The Queue is assembled from one class per concept (see ``_core.py``): this module holds
construction, registration, enqueueing and workers; chains and groups, inspection and
administration are inherited from their own modules.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar, overload

from .._backoff import Backoff
from .._context import Context, to_seconds
from .._job import Job
from ..abc import QueueBackend, QueueCapability
from ._administration import AdministrationMethods
from ._cancel import CancelMethods
from ._checks import check_int, check_name
from ._core import check_backend, check_max_depth
from ._errors import MissingCapabilityError
from ._info import Enqueued, TaskInfo
from ._inspection import InspectionMethods
from ._limits import RateLimit
from ._long_queue import LongQueue, LongQueueWatch
from ._periodic import periodic_job
from ._records import HeaderValue
from ._registry import Handler, Registry
from ._retention import Retention
from ._serializer import JSONSerializer, Serializer
from ._task import Task, TaskDecorator
from ._time import BackendClock
from ._worker import Worker
from ._workflows import WorkflowMethods

if TYPE_CHECKING:
    from ..schedule import Schedule
    from ..scheduler import CatchUp, Scheduler

#: The default retention (a sentinel too: only an explicit one needs ADMINISTRATION).
_DEFAULT_RETENTION = Retention()

__all__ = ["Handler", "Queue"]

P = TypeVar("P")
R = TypeVar("R")


class Queue(WorkflowMethods, InspectionMethods, AdministrationMethods, CancelMethods):
    """Durable background tasks: handlers by name, enqueue now or later, workers as jobs.

    ``@queue.task`` registers a handler and returns its :class:`Task`, which enqueues it
    and reads its results with the handler's payload and result types;
    ``queue.enqueue(name, payload)`` does the same by name, untyped.

    Args:
        backend: where tasks live (:class:`QueueBackend`); by default the embedded SQLite
            backend in ``path``.
        path: the embedded backend's database file (default ``$TASKER_STATE_DIR`` or
            ``./.tasker``, file ``queue.sqlite3``).
        serializer: payload and result serialiser (default strict JSON; never pickle).
        result_ttl: how long a result is kept after success.
        on_failure: called as ``on_failure(task_info)`` (sync or async) when a task dies.
        long_queue_threshold: a queue with at least this many queued tasks after an
            enqueue is long (needs ``INSPECTION``).
        long_queue_drain_time: a queue whose queued tasks would take at least this long
            to work through is long: the mean duration of its recent attempts, times its
            depth, over the concurrency of the live workers that take from it across
            every replica (taskrunner's ``LongQueueThreshold``, measured rather than
            configured; needs ``INSPECTION`` and ``WORKERS``).
        on_long_queue: called as ``on_long_queue(stats)`` (sync or async, a
            :class:`LongQueue`) once each time a queue becomes long by either threshold;
            a failing hook is logged.
        retention: what is kept of finished tasks and history, applied by the workers
            (:class:`Retention`; by default dead tasks and history for 7 days, a purge every
            5 minutes); None never purges. Needs ``QueueCapability.ADMINISTRATION`` when
            given; the default is skipped on a backend without it.
        max_depth: backpressure: the most tasks a queue may hold waiting to run (held and
            queued, delayed ones included; not running ones), as an int for every queue or
            a mapping of queue names to ints (queues not named are unbounded). An enqueue
            that would go past it raises :class:`QueueFullError` at once and stores nothing
            (a group is all or nothing); the check and the insert are one atomic step in the
            backend, so producers enqueueing at once, in any process, never pass it
            together. A deduplicated enqueue (unique key, task id) is never refused; a
            chain's first step counts, its later steps and a group's callback do not (they
            are enqueued as the workflow moves on, and refusing them would break it), nor
            does a requeue. Needs ``QueueCapability.BOUNDED_QUEUES`` (memory, SQLite,
            Postgres).

    Time is the backend's (:meth:`QueueBackend.time`): enqueues, claims and leases all use
    its one clock, so a process whose wall clock is off neither steals leases nor starts
    delayed tasks early. To move time in a test, give the memory backend a fake clock.

    Raises:
        TypeError: for a backend or serializer that does not implement its protocol.
        ValueError: for a bad ``result_ttl``, threshold or ``max_depth``.
        MissingCapabilityError: an option the backend cannot honour (``max_depth``
            without ``BOUNDED_QUEUES``, ``retention`` without ``ADMINISTRATION``).
    """

    def __init__(
        self,
        backend: QueueBackend | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        serializer: Serializer | None = None,
        result_ttl: float | timedelta = 86400.0,
        on_failure: Callable[[TaskInfo[Any]], object] | None = None,
        long_queue_threshold: int | None = None,
        long_queue_drain_time: float | timedelta | None = None,
        on_long_queue: Callable[[LongQueue], object] | None = None,
        retention: Retention | None = _DEFAULT_RETENTION,
        max_depth: int | Mapping[str, int] | None = None,
    ) -> None:
        if backend is None:
            from ._sqlite import SQLiteQueueBackend, default_queue_path

            backend = SQLiteQueueBackend(Path(path) if path is not None else default_queue_path())
        elif path is not None:
            raise ValueError("Queue: path is only for the embedded default backend")
        capabilities = check_backend(backend)
        if long_queue_threshold is not None and QueueCapability.INSPECTION not in capabilities:
            raise MissingCapabilityError(
                backend, QueueCapability.INSPECTION, "Queue(long_queue_threshold=...)"
            )
        for needed in (QueueCapability.INSPECTION, QueueCapability.WORKERS):
            if long_queue_drain_time is not None and needed not in capabilities:
                raise MissingCapabilityError(backend, needed, "Queue(long_queue_drain_time=...)")
        chosen = serializer or JSONSerializer()
        if not isinstance(chosen, Serializer):
            raise TypeError(f"Queue: {serializer!r} is not a Serializer (dumps/loads)")
        if long_queue_threshold is not None:
            check_int(long_queue_threshold, "long_queue_threshold", 1)
        drain_time = (
            None
            if long_queue_drain_time is None
            else to_seconds(long_queue_drain_time, "long_queue_drain_time", allow_zero=False)
        )
        thresholds = long_queue_threshold is not None or drain_time is not None
        if thresholds != (on_long_queue is not None):
            raise ValueError(
                "Queue: give on_long_queue with long_queue_threshold and/or"
                " long_queue_drain_time, or none of them"
            )
        if on_long_queue is not None and not callable(on_long_queue):
            raise TypeError(f"Queue: on_long_queue must be callable, got {on_long_queue!r}")
        self.backend = backend
        self._registry = Registry(chosen, to_seconds(result_ttl, "result_ttl"))
        self._time = BackendClock(backend)
        self._on_failure = on_failure
        self._long_queue = (
            None
            if on_long_queue is None
            else LongQueueWatch(on_long_queue, depth=long_queue_threshold, drain_time=drain_time)
        )
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
        self._depth_default, self._depth_by_queue = check_max_depth(max_depth)
        if max_depth is not None and QueueCapability.BOUNDED_QUEUES not in capabilities:
            raise MissingCapabilityError(
                backend, QueueCapability.BOUNDED_QUEUES, "Queue(max_depth=...)"
            )

    # -- registration --------------------------------------------------------------------

    @overload
    def task(self, handler: Callable[[Context, P], Awaitable[R]], /) -> Task[P, R]: ...

    @overload
    def task(self, handler: Callable[[Context], Awaitable[R]], /) -> Task[None, R]: ...

    @overload
    def task(self, handler: Callable[[Context, P], R], /) -> Task[P, R]: ...

    @overload
    def task(self, handler: Callable[[Context], R], /) -> Task[None, R]: ...

    @overload
    def task(
        self,
        name: str | None = None,
        *,
        queue: str = ...,
        max_attempts: int = ...,
        backoff: Backoff | float | timedelta = ...,
        timeout: float | timedelta | None = ...,
        priority: int = ...,
        unique_key: Callable[[Any], str | None] | None = ...,
        unique_for: float | timedelta | None = ...,
        rate_limit: RateLimit | str | None = ...,
        concurrency_key: Callable[[Any], str | None] | None = ...,
        concurrency_limit: int = ...,
    ) -> TaskDecorator: ...

    def task(
        self,
        name: str | Callable[..., Any] | None = None,
        *,
        queue: str = "default",
        max_attempts: int = 3,
        backoff: Backoff | float | timedelta = Backoff(initial=1.0, maximum=300.0),  # noqa: B008
        timeout: float | timedelta | None = None,
        priority: int = 0,
        unique_key: Callable[[Any], str | None] | None = None,
        unique_for: float | timedelta | None = None,
        rate_limit: RateLimit | str | None = None,
        concurrency_key: Callable[[Any], str | None] | None = None,
        concurrency_limit: int = 1,
    ) -> Task[Any, Any] | TaskDecorator:
        """A decorator that registers a handler, ``async def handler(ctx, payload)`` (or a
        plain ``def``, run in a thread), and returns its :class:`Task`, typed by the
        handler's payload and result.

        Bare (``@queue.task``) it registers the handler under its qualified name with the
        default options; called (``@queue.task("send-email", max_attempts=5)``) it takes a
        name (by default the function's qualified name) and options. The options are the
        defaults of every enqueue of this task; ``backoff`` spaces its retries;
        ``priority`` is an integer from ``-2**31`` to ``2**31 - 1`` (higher runs first). A
        handler of a task without a payload takes only ``ctx`` (a ``Task[None, R]``).
        ``unique_key`` is a function of the payload that gives the unique key of every
        enqueue that names none (None: no key for that payload), and ``unique_for`` the
        window of every enqueue with a key that gives none (see :meth:`enqueue`).

        ``rate_limit`` (``"100/m"``, ``"5/s"``, ``"1000/h"`` or a :class:`RateLimit`): at
        most that many attempts of this task start in any window of its period, across
        every worker and process sharing the backend (a sliding log kept by the backend's
        claim: see :class:`RateLimit`). A task held back stays queued, the claim takes
        other due tasks instead, and idle workers wake when the window lets it start.
        ``concurrency_key`` is a function of the payload that gives the concurrency key of
        every enqueue that names none (None: no key), and ``concurrency_limit`` (default 1)
        how many tasks of one key run at once across every worker, as saq's ``group_key``:
        a task whose key is at its limit stays queued until one of the key finishes (or its
        lease expires). Both are enforced atomically by the backend's claim
        (:attr:`~tasker.abc.QueueCapability.RATE_LIMITS`,
        :attr:`~tasker.abc.QueueCapability.CONCURRENCY_KEYS`).

        Raises:
            ValueError, TypeError: as :meth:`register`, when the handler is registered.
        """
        chosen = None if callable(name) else name

        def register(handler: Callable[..., Any]) -> Task[Any, Any]:
            return self.register(
                chosen or handler.__qualname__,
                handler,
                queue=queue,
                max_attempts=max_attempts,
                backoff=backoff,
                timeout=timeout,
                priority=priority,
                unique_key=unique_key,
                unique_for=unique_for,
                rate_limit=rate_limit,
                concurrency_key=concurrency_key,
                concurrency_limit=concurrency_limit,
            )

        # Bare (``@queue.task``), the first argument is the handler itself.
        return register(name) if callable(name) else TaskDecorator(register)

    @overload
    def register(
        self,
        name: str,
        handler: Callable[[Context, P], Awaitable[R]],
        *,
        queue: str = ...,
        max_attempts: int = ...,
        backoff: Backoff | float | timedelta = ...,
        timeout: float | timedelta | None = ...,
        priority: int = ...,
        unique_key: Callable[[Any], str | None] | None = ...,
        unique_for: float | timedelta | None = ...,
        rate_limit: RateLimit | str | None = ...,
        concurrency_key: Callable[[Any], str | None] | None = ...,
        concurrency_limit: int = ...,
    ) -> Task[P, R]: ...

    @overload
    def register(
        self,
        name: str,
        handler: Callable[[Context], Awaitable[R]],
        *,
        queue: str = ...,
        max_attempts: int = ...,
        backoff: Backoff | float | timedelta = ...,
        timeout: float | timedelta | None = ...,
        priority: int = ...,
        unique_key: Callable[[Any], str | None] | None = ...,
        unique_for: float | timedelta | None = ...,
        rate_limit: RateLimit | str | None = ...,
        concurrency_key: Callable[[Any], str | None] | None = ...,
        concurrency_limit: int = ...,
    ) -> Task[None, R]: ...

    @overload
    def register(
        self,
        name: str,
        handler: Callable[[Context, P], R],
        *,
        queue: str = ...,
        max_attempts: int = ...,
        backoff: Backoff | float | timedelta = ...,
        timeout: float | timedelta | None = ...,
        priority: int = ...,
        unique_key: Callable[[Any], str | None] | None = ...,
        unique_for: float | timedelta | None = ...,
        rate_limit: RateLimit | str | None = ...,
        concurrency_key: Callable[[Any], str | None] | None = ...,
        concurrency_limit: int = ...,
    ) -> Task[P, R]: ...

    @overload
    def register(
        self,
        name: str,
        handler: Callable[[Context], R],
        *,
        queue: str = ...,
        max_attempts: int = ...,
        backoff: Backoff | float | timedelta = ...,
        timeout: float | timedelta | None = ...,
        priority: int = ...,
        unique_key: Callable[[Any], str | None] | None = ...,
        unique_for: float | timedelta | None = ...,
        rate_limit: RateLimit | str | None = ...,
        concurrency_key: Callable[[Any], str | None] | None = ...,
        concurrency_limit: int = ...,
    ) -> Task[None, R]: ...

    def register(
        self,
        name: str,
        handler: Callable[..., Any],
        *,
        queue: str = "default",
        max_attempts: int = 3,
        backoff: Backoff | float | timedelta = Backoff(initial=1.0, maximum=300.0),  # noqa: B008
        timeout: float | timedelta | None = None,
        priority: int = 0,
        unique_key: Callable[[Any], str | None] | None = None,
        unique_for: float | timedelta | None = None,
        rate_limit: RateLimit | str | None = None,
        concurrency_key: Callable[[Any], str | None] | None = None,
        concurrency_limit: int = 1,
    ) -> Task[Any, Any]:
        """Register ``handler`` under ``name`` and return its :class:`Task` (see :meth:`task`).

        ``handler`` may be a :class:`Task` already (the same handler under a second name).
        A plain ``def`` handler runs in a thread of its own for each attempt, so that it
        blocks no other task: it cannot await, but it can read ``ctx.done`` between units
        of work. A thread cannot be stopped from outside: when the attempt is cut off (its
        ``timeout``, the hard stop of a shutdown, a lost lease), the attempt ends at once
        as an async one does (a failure, a hand-back, a discarded outcome), and the thread
        is abandoned: it runs on to its end in the background, what it returns is dropped
        and what it raises is logged. So the task may run again (a retry, another worker)
        while the abandoned thread still runs: keep sync handlers idempotent, as every
        handler should be.

        Raises:
            ValueError: for a duplicate or invalid name, attempts below 1, a bad timeout.
            TypeError: if ``handler`` is not a function taking (ctx, payload) or (ctx), or
                ``unique_key`` is not a function.
            MissingCapabilityError: a ``unique_key`` function on a backend without
                :attr:`~tasker.abc.QueueCapability.UNIQUE_KEYS`, a ``rate_limit`` without
                ``RATE_LIMITS``, a ``concurrency_key`` function without
                ``CONCURRENCY_KEYS``.
            ValueError: a ``rate_limit`` text that is not one (it is shown), a
                ``concurrency_limit`` below 1.
        """
        if isinstance(handler, Task):
            handler = handler.__wrapped__
        if unique_key is not None:
            self._require(QueueCapability.UNIQUE_KEYS, f"Queue.register({name!r}, unique_key=...)")
        if rate_limit is not None:
            self._require(QueueCapability.RATE_LIMITS, f"Queue.register({name!r}, rate_limit=...)")
        if concurrency_key is not None:
            self._require(
                QueueCapability.CONCURRENCY_KEYS, f"Queue.register({name!r}, concurrency_key=...)"
            )
        registration = self._registry.add(
            name,
            handler,
            queue=queue,
            max_attempts=max_attempts,
            backoff=backoff,
            timeout=timeout,
            priority=priority,
            unique_key=unique_key,
            unique_for=unique_for,
            rate_limit=rate_limit,
            concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit,
        )
        return Task._create(self, registration, handler)

    @property
    def task_names(self) -> list[str]:
        """The registered task names."""
        return sorted(self._registry.handlers)

    # -- enqueueing ----------------------------------------------------------------------

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
        headers: Mapping[str, HeaderValue] | None = None,
        connection: Any = None,
        task_id: str | None = None,
        concurrency_key: str | None = None,
    ) -> Enqueued[Any]:
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
                Default: the registration's ``unique_key(payload)``, if it has one; and
                ``unique_for`` defaults to the registration's.
            held: keep the task until :meth:`dispatch` releases it (manual dispatch).
            headers: names to str, int or bool values that travel with the task, for a
                broker to route by (a headers exchange) and for the handler
                (``current_task().headers``); backends with
                :attr:`~tasker.abc.QueueCapability.HEADERS` (tasker_amqp).
            connection: a database connection inside the caller's transaction, for backends
                that support it (Postgres): the task exists only if that transaction commits.
            task_id: the task's id (default: a new UUID, as hex), for backends with
                :attr:`~tasker.abc.QueueCapability.TASK_IDS`: while a task with this id is
                stored, in any state, another enqueue with it is deduplicated, so a
                retried enqueue runs the task once.
            concurrency_key: at most the registration's ``concurrency_limit`` (default 1)
                tasks with this key run at once, across every worker (one per customer:
                ``concurrency_key=f"customer-{id}"``); default: the registration's
                ``concurrency_key(payload)``, if it has one; backends with
                :attr:`~tasker.abc.QueueCapability.CONCURRENCY_KEYS`.

        Raises:
            UnknownTaskError: no handler is registered as ``name`` (a ``KeyError``).
            MissingCapabilityError: an option the backend cannot honour (``unique_key``,
                ``held``, ``headers``, ``connection``, ``task_id``, ``concurrency_key``).
            PayloadError: the serialiser cannot represent ``payload`` (a ``TypeError``).
            TypeError: a payload for a task whose handler takes only ``ctx``.
            ValueError: a negative delay, a naive ``at``, a priority out of range, a bad
                option; ``connection`` for a queue with a ``max_depth``.
            QueueFullError: the queue is at its ``max_depth`` (``Queue(max_depth=...)``):
                nothing was enqueued. A deduplicated enqueue is never refused.
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
            headers=headers,
            task_id=task_id,
            derive_key=True,
            concurrency_key=concurrency_key,
        )
        if connection is None:
            (result,) = await self._put([task], now=now)
        else:
            within = self._require(QueueCapability.TRANSACTIONAL_ENQUEUE, "enqueue(connection=...)")
            if self._bounds([task]):
                # The bound's lock would be held until the caller's transaction ends,
                # serialising every producer of the queue behind it: refused, not ignored.
                raise ValueError(
                    f"enqueue(connection=...): queue {task.queue!r} has a max_depth, which"
                    " an enqueue inside the caller's transaction cannot check; enqueue"
                    " it without connection=, or leave the queue unbounded"
                )
            tracer = self._registry.tracer
            if tracer is None:
                (result,) = await within.enqueue_within(connection, [task], now=now)
            else:
                (result,) = await tracer.enqueue(
                    lambda tasks, _: within.enqueue_within(connection, tasks, now=now),
                    [task],
                    None,
                )
        observer = self._registry.observer
        if observer is not None:
            observer.enqueued([task], [result.deduplicated])
        if self._long_queue is not None:
            await self._long_queue.check(self.backend, task.queue, now)
        return Enqueued(id=result.id, deduplicated=result.deduplicated)

    def periodic(
        self,
        task: str | Task[Any, Any],
        schedule: Schedule,
        payload: Any = None,
        *,
        scheduler: Scheduler,
        name: str | None = None,
        catch_up: CatchUp = "once",
        retry_delay: float | timedelta = 10.0,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
        headers: Mapping[str, HeaderValue] | None = None,
    ) -> Job:
        """Return a job that enqueues ``task`` once per slot of ``schedule``, across every
        replica (tasqueue's cron tasks, celery beat's entries).

        ``scheduler`` runs the schedule under ``name`` (default ``"periodic:<task>"``): its
        lock makes one replica enqueue a slot at a time, and its state each slot once while
        enqueues succeed. A slot's enqueue is also idempotent: it names the slot, with a
        task id made of ``name`` and the slot (``TASK_IDS``), or a unique key with a day's
        window on a backend without chosen ids (``UNIQUE_KEYS``); so a retried slot, or a
        replica whose Scheduler has another backend, finds the slot's task and enqueues
        nothing. Slots missed while no replica ran are caught up by ``catch_up``: ``"once"``
        (one enqueue for the latest of them) or ``"skip"``.

        Args:
            task: a registered task name, or its :class:`Task`.
            schedule: when to enqueue (a :mod:`tasker.schedule` value).
            payload: the payload of every slot's task, checked now; or a function of the
                slot (an aware datetime) that returns the payload, such as
                ``lambda slot: {"day": slot.date().isoformat()}``.
            scheduler: the :class:`tasker.Scheduler` that runs the schedule.
            name, catch_up, retry_delay: as :meth:`tasker.Scheduler.with_schedule`.
            queue, priority, max_attempts, timeout, headers: as :meth:`enqueue`.

        Compose the returned job with the workers and the rest of the program
        (:func:`tasker.main`); it behaves on error, cancellation and shutdown as a job of
        :meth:`tasker.Scheduler.with_schedule`: a failed enqueue is logged and its slot
        retried after ``retry_delay``.

        Raises:
            UnknownTaskError: ``task`` is not registered (register it first).
            MissingCapabilityError: the backend has neither ``TASK_IDS`` nor
                ``UNIQUE_KEYS``, so a slot could be enqueued twice.
            PayloadError: the serialiser cannot represent ``payload``.
            TypeError, ValueError: a bad schedule, scheduler, name or option.
        """
        options = {
            key: value
            for key, value in (
                ("queue", queue),
                ("priority", priority),
                ("max_attempts", max_attempts),
                ("timeout", timeout),
                ("headers", headers),
            )
            if value is not None
        }
        # Validated now, as an enqueue would (a bad option must not wait for the first slot).
        self._new_task(
            task.name if isinstance(task, Task) else task,
            None,
            now=0.0,
            raw_payload=b"",
            **options,
        )
        return periodic_job(
            self,
            task.name if isinstance(task, Task) else task,
            schedule,
            payload,
            scheduler=scheduler,
            name=name,
            catch_up=catch_up,
            retry_delay=retry_delay,
            options=options,
        )

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
