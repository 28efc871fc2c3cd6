"""What ``tasker status`` shows, gathered through the public protocols of any backend."""

from __future__ import annotations

import dataclasses
import sys
import types
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._state_dir import default_state_dir
from .abc import QueueCapability
from .queue import Queue, TaskState
from .scheduler import Scheduler

__all__ = ["Source", "StatusReport", "collect"]

#: How many queued or running tasks the oldest-wait and lease figures look at, per queue.
SCAN_LIMIT = 10_000


@dataclass
class StatusReport:
    """Schedules, queue depths, the oldest wait per queue, and the workers holding leases."""

    schedules: list[dict[str, Any]] = field(default_factory=list)
    queues: dict[str, dict[str, int]] = field(default_factory=dict)
    oldest_waiting: dict[str, float] = field(default_factory=dict)
    workers: list[dict[str, Any]] = field(default_factory=list)
    #: A message broker's queues (tasker_amqp): name, ready, unacked (None: not known
    #: without the management API) and consumers.
    broker: list[dict[str, Any]] = field(default_factory=list)
    #: Running tasks that reported progress (``QueueCapability.PROGRESS``): id, name, queue,
    #: worker, value (0..1), text and updated_ago (seconds).
    progress: list[dict[str, Any]] = field(default_factory=list)


def _found(objects: list[Any]) -> tuple[list[Scheduler], list[Queue]]:
    schedulers: list[Scheduler] = []
    queues: list[Queue] = []
    for obj in objects:
        candidates = vars(obj).values() if isinstance(obj, types.ModuleType) else [obj]
        for candidate in candidates:
            if isinstance(candidate, Scheduler) and candidate not in schedulers:
                schedulers.append(candidate)
            elif isinstance(candidate, Queue) and candidate not in queues:
                queues.append(candidate)
    return schedulers, queues


@dataclass(frozen=True, kw_only=True)
class Source:
    """Where ``tasker status`` looks without ``--app``: Postgres (``dsn``), Redis
    (``redis_url``), NATS (``nats_url``, with ``nats_credentials``) or the embedded default
    (``state_dir``)."""

    dsn: str | None = None
    schema: str = "tasker"
    redis_url: str | None = None
    nats_url: str | None = None
    nats_credentials: Path | None = None
    amqp_url: str | None = None
    amqp_queues: tuple[str, ...] = ()
    amqp_management: str | None = None
    namespace: str = "tasker"
    state_dir: Path | None = None


def _defaults(source: Source) -> tuple[list[Scheduler], list[Queue]]:
    if source.dsn:
        import tasker_pg

        return [tasker_pg.scheduler(source.dsn, schema=source.schema)], [
            Queue(tasker_pg.PostgresQueueBackend(source.dsn, schema=source.schema))
        ]
    if source.redis_url:
        import tasker_redis

        return [tasker_redis.scheduler(source.redis_url, namespace=source.namespace)], [
            Queue(tasker_redis.RedisQueueBackend(source.redis_url, namespace=source.namespace))
        ]
    if source.amqp_url:
        return [], []  # no schedules and no task records: the broker's counts (collect)
    if source.nats_url:
        import tasker_nats

        nats_source = tasker_nats.NatsSource(
            source.nats_url, credentials=source.nats_credentials, name="tasker-status"
        )
        return [tasker_nats.scheduler(nats_source, namespace=source.namespace)], [
            Queue(tasker_nats.NatsQueueBackend(nats_source, namespace=source.namespace))
        ]
    from .queue import SQLiteQueueBackend

    directory = source.state_dir or default_state_dir()
    queues = []
    if (directory / "queue.sqlite3").exists():  # status never creates a database
        queues.append(Queue(SQLiteQueueBackend(directory / "queue.sqlite3")))
    return [Scheduler(state_dir=directory)], queues


async def collect(objects: list[Any], source: Source | None = None) -> StatusReport:
    """The status of the Schedulers and Queues in ``objects`` (modules are searched), or of
    ``source`` (the embedded default, Postgres or Redis) when there are none."""
    schedulers, queues = _found(objects)
    if not objects:
        schedulers, queues = _defaults(source or Source())
    elif not schedulers and not queues:
        raise ValueError("--app names no tasker.Scheduler or tasker.queue.Queue")
    report = StatusReport()
    if not objects and source is not None and source.amqp_url:
        report.broker = await _amqp(source)
        return report
    try:
        for scheduler in schedulers:
            report.schedules += await _schedules(scheduler)
        for queue in queues:
            await _queue(queue, report)
    finally:
        if not objects:
            for scheduler in schedulers:
                await scheduler.aclose()
            for queue in queues:
                await queue.aclose()
    return report


async def _schedules(scheduler: Scheduler) -> list[dict[str, Any]]:
    repository: Any = scheduler.repository
    registered = scheduler.schedules
    now: datetime = await repository.now() or datetime.now(UTC)
    stored = {}
    if callable(getattr(repository, "all", None)):
        stored = {state.name: state for state in await repository.all()}
    else:
        for name in registered:
            state = await repository.get(name)
            if state is not None:
                stored[name] = state
    holders = await _lock_holders(repository)
    rows = []
    for name in [*registered, *sorted(set(stored) - set(registered))]:
        state, schedule = stored.get(name), registered.get(name)
        next_slot: datetime | None
        if schedule is not None:
            next_slot = schedule.next_after(state.last_slot if state else now)
        else:
            next_slot = state.next_due if state else None
        rows.append(
            {
                "name": name,
                "registered": schedule is not None,
                "next_slot": next_slot,
                "last_slot": state.last_slot if state else None,
                "last_started": state.last_started if state else None,
                "last_error": state.last_error if state else None,
                "runs": state.run_count if state else 0,
                "failures": state.failure_count if state else 0,
                "lock_holder": holders.get(name),
            }
        )
    return rows


async def _lock_holders(repository: Any) -> dict[str, str]:
    """Who holds each schedule's lock, where the backend can tell: a repository with a
    ``lock_holders()`` method (tasker_redis), or tasker_pg's."""
    holders = getattr(repository, "lock_holders", None)
    if callable(holders):
        found: dict[str, str] = await holders()
        return found
    tasker_pg: Any = sys.modules.get("tasker_pg")  # loaded if the repository is one of its
    if tasker_pg is None or not isinstance(repository, tasker_pg.PostgresStateRepository):
        return {}
    rows = await tasker_pg.status(repository)
    return {
        row.name: f"{row.lock_holder.application_name or 'pid'} ({row.lock_holder.pid})"
        for row in rows
        if row.lock_holder is not None
    }


async def _amqp(source: Source) -> list[dict[str, Any]]:
    import tasker_amqp

    amqp = tasker_amqp.AmqpSource(source.amqp_url or "", name="tasker-status", reconnect_retries=0)
    try:
        stats = await tasker_amqp.broker_stats(
            amqp, source.amqp_queues or None, management_url=source.amqp_management
        )
    finally:
        await amqp.aclose()
    return [dataclasses.asdict(row) for row in stats]


async def _queue(queue: Queue, report: StatusReport) -> None:
    backend: Any = queue.backend
    amqp = sys.modules.get("tasker_amqp")
    if amqp is not None and isinstance(backend, amqp.AmqpQueueBackend):
        report.broker += [dataclasses.asdict(row) for row in await backend.queue_stats()]
    if QueueCapability.INSPECTION not in backend.capabilities:
        report.queues[f"({type(backend).__name__}: no inspection)"] = {}
        return
    now = await backend.time()
    for name, states in (await backend.counts()).items():
        depth = report.queues.setdefault(name, {})
        for state, count in states.items():
            depth[state.value] = depth.get(state.value, 0) + count
    for task in await backend.tasks(state=TaskState.QUEUED, limit=SCAN_LIMIT):
        if task.run_at <= now:
            age = now - task.run_at
            report.oldest_waiting[task.queue] = max(report.oldest_waiting.get(task.queue, 0), age)
    rows: dict[str, dict[str, Any]] = {}
    if QueueCapability.WORKERS in backend.capabilities:  # idle workers too
        for worker in await backend.workers(now=now):
            rows[worker.id] = _worker_row(worker.id) | {
                "queues": list(worker.queues),
                "concurrency": worker.concurrency,
                "running": worker.running,
                "last_seen_ago": round(now - worker.last_seen, 3),
            }
    for task in await backend.tasks(state=TaskState.RUNNING, limit=SCAN_LIMIT):
        if task.progress is not None:
            report.progress.append(
                {
                    "id": task.id,
                    "name": task.name,
                    "queue": task.queue,
                    "worker": task.lease_owner,
                    "value": task.progress.value,
                    "text": task.progress.text,
                    "updated_ago": round(now - task.progress.updated_at, 3),
                }
            )
        owner = task.lease_owner or "?"
        row = rows.setdefault(owner, _worker_row(owner))
        row["tasks"] += 1
        if task.lease_until is not None:
            ends = round(task.lease_until - now, 3)
            row["lease_ends_in"] = (
                ends if row["lease_ends_in"] is None else max(row["lease_ends_in"], ends)
            )
    report.workers += sorted(rows.values(), key=lambda row: row["worker"])


def _worker_row(worker: str) -> dict[str, Any]:
    """A worker's status row: registry fields None when the backend keeps no registry."""
    return {
        "worker": worker,
        "queues": None,
        "concurrency": None,
        "running": None,
        "last_seen_ago": None,
        "tasks": 0,
        "lease_ends_in": None,
    }
