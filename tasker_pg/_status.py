"""Status: the schedules with their lock holders, and the queue's depth and workers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from tasker import redact_dsn
from tasker.queue import TaskState

from ._locks import advisory_key
from ._queue_sql import QueueStatements
from ._state import PostgresStateRepository

__all__ = [
    "LockHolder",
    "QueueStatus",
    "ScheduleStatus",
    "WorkerLease",
    "format_status",
    "queue_status",
    "status",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class LockHolder:
    """The backend that holds a schedule's advisory lock right now."""

    pid: int
    application_name: str
    client_addr: str | None
    backend_start: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleStatus:
    """One schedule as :func:`status` reports it."""

    name: str
    last_slot: datetime
    last_started: datetime | None
    last_finished: datetime | None
    duration: timedelta | None
    last_error: str | None
    run_count: int
    failure_count: int
    next_due: datetime | None
    lock_holder: LockHolder | None


async def status(
    repository: PostgresStateRepository, *, namespace: str = "tasker"
) -> list[ScheduleStatus]:
    """Every schedule in the state table, with who holds its lock (``pg_locks``)."""
    states = await repository.all()
    keys = {advisory_key(namespace, s.name): s.name for s in states}
    pool = await repository._source.pool()
    # A bigint advisory key shows in pg_locks as classid (high 32 bits) and objid (low).
    rows = await pool.fetch(
        "select ((l.classid::bigint << 32) | l.objid::bigint) as key, a.pid,"
        " a.application_name, host(a.client_addr) as client_addr, a.backend_start"
        " from pg_locks l join pg_stat_activity a on a.pid = l.pid"
        " where l.locktype = 'advisory' and l.granted and l.objsubid = 1"
    )
    holders: dict[str, LockHolder] = {}
    for row in rows:
        key = row["key"]
        if key >= 2**63:
            key -= 2**64
        if key in keys:
            holders[keys[key]] = LockHolder(
                pid=row["pid"],
                application_name=row["application_name"],
                client_addr=row["client_addr"],
                backend_start=row["backend_start"],
            )
    return [
        ScheduleStatus(
            name=s.name,
            last_slot=s.last_slot,
            last_started=s.last_started,
            last_finished=s.last_finished,
            duration=(s.last_finished - s.last_started)
            if s.last_started and s.last_finished
            else None,
            last_error=s.last_error,
            run_count=s.run_count,
            failure_count=s.failure_count,
            next_due=s.next_due,
            lock_holder=holders.get(s.name),
        )
        for s in states
    ]


def format_status(rows: list[ScheduleStatus]) -> str:
    """A plain-text table of :func:`status` rows."""
    header = (
        "name",
        "last slot",
        "last run",
        "duration",
        "runs",
        "fails",
        "next due",
        "lock",
        "last error",
    )

    def when(moment: datetime | None) -> str:
        return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S%z")

    table = [header] + [
        (
            r.name,
            when(r.last_slot),
            when(r.last_started),
            "-" if r.duration is None else f"{r.duration.total_seconds():.3f}s",
            str(r.run_count),
            str(r.failure_count),
            when(r.next_due),
            "-"
            if r.lock_holder is None
            else f"pid {r.lock_holder.pid} {r.lock_holder.application_name}".strip(),
            # Rows written before errors were redacted may still quote a DSN; redact, then cut.
            redact_dsn(r.last_error or "-")[:60],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in table
    ]
    return "\n".join(line.rstrip() for line in lines)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerLease:
    """A worker holding leases: how many tasks, and when its latest lease runs out.

    Attributes:
        worker: the worker's name (its lease owner id).
        tasks: how many running tasks it holds.
        lease_expires_in: seconds until its latest lease ends (negative: expired, the
            worker stopped responding and its tasks are claimed again).
    """

    worker: str
    tasks: int
    lease_expires_in: float


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStatus:
    """What :meth:`tasker_pg.PostgresQueueBackend.status` reports, at one moment of the
    server's clock.

    Attributes:
        depth: tasks per queue and state (the state's value, ``"queued"``, ...).
        oldest_waiting: per queue, the age in seconds of the oldest due queued task.
        workers: the workers holding leases, by name.
    """

    depth: dict[str, dict[str, int]]
    oldest_waiting: dict[str, float]
    workers: list[WorkerLease]

    def format(self) -> str:
        """A plain-text report."""
        lines = ["queue                state       tasks"]
        for queue in sorted(self.depth):
            for state, count in sorted(self.depth[queue].items()):
                lines.append(f"{queue[:20]:20} {state:10} {count:6}")
        for queue, age in sorted(self.oldest_waiting.items()):
            lines.append(f"oldest waiting in {queue}: {age:.1f}s")
        lines.extend(
            f"worker {lease.worker}: {lease.tasks} task(s), lease ends in"
            f" {lease.lease_expires_in:.1f}s"
            for lease in self.workers
        )
        return "\n".join(lines)


async def queue_status(
    pool: asyncpg.Pool,
    sql: QueueStatements,
    counts: dict[str, dict[TaskState, int]],
    moment: float,
) -> QueueStatus:
    """The queue's status at ``moment`` (the server's clock), given its ``counts``."""
    oldest = await pool.fetch(sql.oldest_waiting, moment)
    workers = await pool.fetch(sql.leases)
    return QueueStatus(
        depth={q: {s.value: n for s, n in states.items()} for q, states in counts.items()},
        oldest_waiting={row[0]: moment - row[1] for row in oldest},
        workers=[
            WorkerLease(worker=row[0], tasks=row[1], lease_expires_in=row[2] - moment)
            for row in workers
        ],
    )
