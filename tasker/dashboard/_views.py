"""What each page shows, gathered through the public protocols of a queue backend and the
public API of the Scheduler.

Each ``gather_*`` function asks the backend what its declared capabilities allow, and says
in ``notices`` what it cannot show (kombu's rule: ask the declaration, never probe). The
scans are bounded (``SCAN_LIMIT`` tasks of a state per queue, ``HISTORY_LIMIT`` attempts for
the plots): a page of a queue with a million tasks costs a few bounded queries, and says
when a figure is a lower bound. Nothing here renders a backend's ``repr`` (which may hold a
DSN): the page names the backend by its class only.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import anyio
from markupsafe import Markup

from .._redact import redact_dsn
from .._status import _lock_holders
from ..abc import QueueCapability, QueueInspection, WorkerRegistry
from ..queue import HistoryEntry, Progress, Queue, TaskRecord, TaskState
from ..scheduler import Scheduler, SchedulerStatistics
from ._describe import describe_schedule
from ._format import Shown, duration, moment, show_bytes, slot
from ._plots import Series, bar_chart

__all__ = [
    "HISTORY_LIMIT",
    "SCAN_LIMIT",
    "QueueRow",
    "QueuesView",
    "ScheduleRow",
    "SchedulesView",
    "SearchView",
    "TaskView",
    "WorkerRow",
    "WorkersView",
    "backend_name",
    "error_text",
    "gather_queues",
    "gather_schedules",
    "gather_task",
    "gather_workers",
    "missing",
    "search_tasks",
]

logger = logging.getLogger("tasker.dashboard")

#: Tasks of one state scanned per queue (oldest wait, held names, leases).
SCAN_LIMIT = 1000
#: Attempts read for the plots (the latest ones, across every queue).
HISTORY_LIMIT = 5000
#: Tasks whose due time the latency plot looks up (the newest ones).
SAMPLE_LIMIT = 2000
#: The plots' window: one bar per minute.
MINUTES = 60
#: Outcomes that count as failures on the plot.
FAILURES = frozenset({"retry", "dead"})
#: Seconds a lock probe may take before the lock counts as unknown.
LOCK_PROBE_TIMEOUT = 5.0

_MISSING = {
    QueueCapability.INSPECTION: (
        "this backend cannot list its tasks (QueueCapability.INSPECTION): no queue depths,"
        " plots, task search or task pages"
    ),
    QueueCapability.ADMINISTRATION: (
        "this backend cannot requeue dead tasks or dispatch held ones"
        " (QueueCapability.ADMINISTRATION)"
    ),
    QueueCapability.WORKERS: (
        "this backend has no worker registry (QueueCapability.WORKERS): idle workers are"
        " not shown, and busy ones only by the leases they hold, without their concurrency"
        " or last heartbeat"
    ),
    QueueCapability.CANCEL: "this backend cannot cancel tasks (QueueCapability.CANCEL)",
}


def missing(capability: QueueCapability) -> str:
    """What the page says when the backend lacks ``capability``."""
    return _MISSING.get(capability, f"this backend lacks QueueCapability.{capability.name}")


def backend_name(queue: Queue) -> str:
    """The backend's class name: never its repr, which may hold a DSN."""
    return type(queue.backend).__name__


def error_text(exc: BaseException) -> str:
    """An error as a page shows it: ``Type: message``, DSN passwords redacted."""
    return redact_dsn(f"{type(exc).__name__}: {exc}")[:2000]


def _inspection(queue: Queue) -> QueueInspection | None:
    if QueueCapability.INSPECTION not in queue.backend.capabilities:
        return None
    return cast(QueueInspection, queue.backend)


# -- queues ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueRow:
    """One queue: its depth per state, its oldest waiting task, its plots."""

    name: str
    depth: dict[str, int]
    total: int
    oldest_wait: str | None
    oldest_id: str | None
    #: The scan stopped at SCAN_LIMIT: the oldest wait is a lower bound.
    scan_capped: bool
    delayed: int
    held: int
    held_names: list[str]
    succeeded: int
    failed: int
    throughput: Markup
    failures: Markup
    latency: Markup
    latency_mean: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuesView:
    """The queues page."""

    rows: list[QueueRow]
    states: list[str]
    notices: list[str]
    window: str
    #: The history read stopped at HISTORY_LIMIT: the plots may miss the window's start.
    history_capped: bool


def _minute_labels(start: float) -> list[str]:
    return [f"{datetime.fromtimestamp(start + 60 * i, UTC):%H:%M} UTC" for i in range(MINUTES)]


def _count(n: float) -> str:
    return f"{n:.0f} per minute"


async def gather_queues(queue: Queue) -> QueuesView:
    """Depths, oldest waits, held tasks and the last hour's plots, per queue."""
    states = [state.value for state in TaskState]
    inspection = _inspection(queue)
    if inspection is None:
        return QueuesView(
            rows=[],
            states=states,
            notices=[missing(QueueCapability.INSPECTION)],
            window="",
            history_capped=False,
        )
    now = await queue.backend.time()
    counts = await inspection.counts()
    history = await inspection.history(limit=HISTORY_LIMIT)
    sample = {record.id: record for record in await inspection.tasks(limit=SAMPLE_LIMIT)}
    end = math.floor(now / 60) * 60 + 60
    start = end - 60 * MINUTES
    labels = _minute_labels(start)
    by_queue: dict[str, list[HistoryEntry]] = defaultdict(list)
    for entry in history:
        by_queue[entry.queue].append(entry)
    rows = []
    for name in sorted(set(counts) | set(by_queue)):
        depth = {state.value: counts.get(name, {}).get(state, 0) for state in TaskState}
        queued: list[TaskRecord] = []
        if depth["queued"]:
            queued = await inspection.tasks(state=TaskState.QUEUED, queue=name, limit=SCAN_LIMIT)
        due = [task for task in queued if task.run_at <= now]
        oldest = min(due, key=lambda task: task.run_at, default=None)
        held_names: list[str] = []
        if depth["held"]:
            held = await inspection.tasks(state=TaskState.HELD, queue=name, limit=SCAN_LIMIT)
            held_names = sorted({task.name for task in held})
        throughput: list[float | None] = [0.0] * MINUTES
        failures: list[float | None] = [0.0] * MINUTES
        waits: list[list[float]] = [[] for _ in range(MINUTES)]
        succeeded = failed = 0
        for entry in by_queue.get(name, []):
            index = math.floor((entry.finished_at - start) / 60)
            if 0 <= index < MINUTES:
                if entry.outcome == "succeeded":
                    throughput[index] = (throughput[index] or 0) + 1
                    succeeded += 1
                elif entry.outcome in FAILURES:
                    failures[index] = (failures[index] or 0) + 1
                    failed += 1
            record = sample.get(entry.task_id)
            started = math.floor((entry.started_at - start) / 60)
            # The record's run_at is the due time of its latest claim (its enqueue, delay
            # or retry), so only the latest attempt's wait can be measured from it.
            if record is not None and record.attempts == entry.attempt and 0 <= started < MINUTES:
                wait = entry.started_at - record.run_at
                if wait >= 0:
                    waits[started].append(wait)
        latency: list[float | None] = [sum(w) / len(w) if w else None for w in waits]
        every_wait = [w for bucket in waits for w in bucket]
        rows.append(
            QueueRow(
                name=name,
                depth=depth,
                total=sum(depth.values()),
                oldest_wait=None if oldest is None else duration(now - oldest.run_at),
                oldest_id=None if oldest is None else oldest.id,
                scan_capped=len(queued) >= SCAN_LIMIT,
                delayed=len(queued) - len(due),
                held=depth["held"],
                held_names=held_names,
                succeeded=succeeded,
                failed=failed,
                throughput=bar_chart(
                    Series(
                        label=f"succeeded per minute in {name}",
                        values=throughput,
                        bucket_labels=labels,
                        colour="#2e7d32",
                        unit=_count,
                    )
                ),
                failures=bar_chart(
                    Series(
                        label=f"failed attempts per minute in {name}",
                        values=failures,
                        bucket_labels=labels,
                        colour="#c62828",
                        unit=_count,
                    )
                ),
                latency=bar_chart(
                    Series(
                        label=f"mean wait from due to start per minute in {name}",
                        values=latency,
                        bucket_labels=labels,
                        colour="#1565c0",
                        unit=duration,
                    )
                ),
                latency_mean=(duration(sum(every_wait) / len(every_wait)) if every_wait else None),
            )
        )
    window = (
        f"{datetime.fromtimestamp(start, UTC):%H:%M}-{datetime.fromtimestamp(end, UTC):%H:%M} UTC"
    )
    notices = [
        missing(c) for c in (QueueCapability.ADMINISTRATION,) if c not in queue.backend.capabilities
    ]
    return QueuesView(
        rows=rows,
        states=states,
        notices=notices,
        window=window,
        history_capped=len(history) >= HISTORY_LIMIT,
    )


# -- workers -----------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class WorkerRow:
    """One worker: from the registry (``WORKERS``), from the leases it holds, or both."""

    id: str
    registered: bool = False
    queues: list[str] = field(default_factory=list)
    concurrency: int | None = None
    running: int | None = None
    started: str | None = None
    last_seen: str | None = None
    expires_in: str | None = None
    leases: int = 0
    lease_ends: str | None = None

    @property
    def used(self) -> int | None:
        """Percent of its concurrency in use at its last heartbeat."""
        if self.running is None or not self.concurrency:
            return None
        return min(100, round(100 * self.running / self.concurrency))


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkersView:
    """The workers page."""

    rows: list[WorkerRow]
    notices: list[str]
    scan_capped: bool


async def gather_workers(queue: Queue) -> WorkersView:
    """The registry's workers (busy or idle) and every lease owner of a running task."""
    capabilities = queue.backend.capabilities
    now = await queue.backend.time()
    rows: dict[str, WorkerRow] = {}
    notices = []
    if QueueCapability.WORKERS in capabilities:
        registry = cast(WorkerRegistry, queue.backend)
        for worker in await registry.workers(now=now):
            rows[worker.id] = WorkerRow(
                id=worker.id,
                registered=True,
                queues=list(worker.queues),
                concurrency=worker.concurrency,
                running=worker.running,
                started=moment(worker.started_at, now),
                last_seen=moment(worker.last_seen, now),
                expires_in=duration(max(0.0, worker.expires_at - now)),
            )
    else:
        notices.append(missing(QueueCapability.WORKERS))
    inspection = _inspection(queue)
    running: list[TaskRecord] = []
    if inspection is None:
        notices.append(missing(QueueCapability.INSPECTION))
    else:
        running = await inspection.tasks(state=TaskState.RUNNING, limit=SCAN_LIMIT)
    ends: dict[str, float] = {}
    for task in running:
        owner = task.lease_owner or "?"
        row = rows.setdefault(owner, WorkerRow(id=owner))
        row.leases += 1
        if task.lease_until is not None:
            ends[owner] = max(ends.get(owner, task.lease_until), task.lease_until)
    for owner, until in ends.items():
        rows[owner].lease_ends = moment(until, now)
    return WorkersView(
        rows=sorted(rows.values(), key=lambda row: row.id),
        notices=notices,
        scan_capped=len(running) >= SCAN_LIMIT,
    )


# -- schedules ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleRow:
    """One registered schedule, its stored state and its lock, probed now."""

    name: str
    words: str
    catch_up: str
    next_slot: str
    last_slot: str
    outcome: str
    last_finished: str
    last_error: str | None
    runs: int
    failures: int
    #: "busy", "free" or "unknown" (the probe failed or timed out).
    lock: str
    lock_detail: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulesView:
    """The schedules page."""

    rows: list[ScheduleRow]
    statistics: SchedulerStatistics | None
    notices: list[str]


async def _probe_lock(scheduler: Scheduler, name: str) -> tuple[str, str | None]:
    """Whether the lock of ``name`` is held now: take it without waiting, release it at once.

    A replica whose slot falls due during the probe finds the lock busy and looks again
    after its ``lock_retry``: the cost of a live answer, the same as a second replica's.
    """
    locker = scheduler.locker_factory.locker(name)
    try:
        with anyio.fail_after(LOCK_PROBE_TIMEOUT):
            taken = await locker.try_lock()
    except Exception as exc:
        logger.warning("dashboard: the lock probe of schedule %r failed: %s", name, error_text(exc))
        return "unknown", error_text(exc)
    if not taken:
        return "busy", None
    with anyio.CancelScope(shield=True), anyio.move_on_after(LOCK_PROBE_TIMEOUT):
        await locker.unlock()
    return "free", None


def _catch_up(scheduler: Scheduler, name: str) -> str:
    # The Scheduler has no public accessor for a schedule's options (only ``schedules``,
    # the values); its entries are read here, and "?" is shown should they change shape.
    entry: Any = getattr(scheduler, "_entries", {}).get(name)
    return str(getattr(entry, "catch_up", "?"))


async def gather_schedules(scheduler: Scheduler | None) -> SchedulesView:
    """Each registered schedule with its state, its next slot and its lock, probed live."""
    if scheduler is None:
        return SchedulesView(
            rows=[],
            statistics=None,
            notices=["no Scheduler was given to this dashboard (app(scheduler=...))"],
        )
    repository = scheduler.repository
    now = await repository.now() or datetime.now(UTC)
    try:
        holders = await _lock_holders(repository)
    except Exception as exc:  # who holds a lock is extra detail: the probe still answers
        logger.warning("dashboard: lock holders could not be read: %s", error_text(exc))
        holders = {}
    rows = []
    for name, schedule in scheduler.schedules.items():
        state = await repository.get(name)
        lock, detail = await _probe_lock(scheduler, name)
        if lock == "busy" and name in holders:
            detail = f"held by {holders[name]}"
        if state is None:
            outcome = "never run"
        elif state.last_error is not None:
            outcome = "failed"
        elif state.last_finished is None:
            outcome = "no run yet"
        else:
            outcome = "succeeded"
        rows.append(
            ScheduleRow(
                name=name,
                words=describe_schedule(schedule),
                catch_up=_catch_up(scheduler, name),
                next_slot=slot(schedule.next_after(state.last_slot if state else now), now),
                last_slot=slot(state.last_slot if state else None, now),
                outcome=outcome,
                last_finished=slot(state.last_finished if state else None, now),
                last_error=state.last_error if state else None,
                runs=state.run_count if state else 0,
                failures=state.failure_count if state else 0,
                lock=lock,
                lock_detail=detail,
            )
        )
    notices = [] if rows else ["the Scheduler has no schedule registered (with_schedule)"]
    return SchedulesView(rows=rows, statistics=scheduler.statistics(), notices=notices)


# -- tasks -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchView:
    """The task search: the matches, and how much was searched."""

    rows: list[TaskRecord]
    scanned: int
    #: The scan stopped at its limit: older tasks were not searched.
    capped: bool
    now: float
    notices: list[str]


async def search_tasks(
    queue: Queue,
    *,
    task_id: str | None,
    name: str | None,
    state: TaskState | None,
    queue_name: str | None,
    limit: int,
    scan: int,
) -> SearchView:
    """Tasks by id (exact), or by state and queue (exact) and name (a substring, any case)
    among the newest ``scan`` tasks of that state and queue."""
    inspection = _inspection(queue)
    if inspection is None:
        return SearchView(
            rows=[], scanned=0, capped=False, now=0.0, notices=[missing(QueueCapability.INSPECTION)]
        )
    now = await queue.backend.time()
    if task_id:
        record = await inspection.get(task_id)
        return SearchView(
            rows=[] if record is None else [record], scanned=1, capped=False, now=now, notices=[]
        )
    found = await inspection.tasks(state=state, queue=queue_name, limit=scan if name else limit)
    capped = len(found) >= (scan if name else limit)
    if name:
        needle = name.casefold()
        matches = [record for record in found if needle in record.name.casefold()]
    else:
        matches = found
    return SearchView(rows=matches[:limit], scanned=len(found), capped=capped, now=now, notices=[])


@dataclass(frozen=True, slots=True, kw_only=True)
class TimelineEvent:
    """One line of a task's timeline."""

    at: str
    what: str
    detail: str | None = None
    kind: str = "info"


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskView:
    """The task page."""

    record: TaskRecord
    now: float
    payload: Shown
    result: Shown | None
    result_note: str | None
    attempts: list[HistoryEntry]
    timeline: list[TimelineEvent]
    #: The progress its handler last reported (``QueueCapability.PROGRESS``), if any, and
    #: when it was stored.
    progress: Progress | None
    times: dict[str, str]
    progress_at: str | None = None


def _kind(outcome: str) -> str:
    return "bad" if outcome in FAILURES else "good" if outcome == "succeeded" else "info"


def _events(
    record: TaskRecord, attempts: Sequence[HistoryEntry], now: float
) -> list[TimelineEvent]:
    # (when, order among events at the same instant, the event)
    events = [
        (record.created_at, 0, TimelineEvent(at=moment(record.created_at, now), what="enqueued"))
    ]
    for entry in attempts:
        started = TimelineEvent(
            at=moment(entry.started_at, now),
            what=f"attempt {entry.attempt} started",
            detail=f"on {entry.worker}",
        )
        ended = TimelineEvent(
            at=moment(entry.finished_at, now),
            what=f"attempt {entry.attempt}: {entry.outcome} after {duration(entry.duration)}",
            detail=entry.error,
            kind=_kind(entry.outcome),
        )
        events += [(entry.started_at, 1, started), (entry.finished_at, 2, ended)]
    if record.state is TaskState.RUNNING and record.lease_owner:
        running = TimelineEvent(at="now", what="running", detail=f"on {record.lease_owner}")
        events.append((now, 3, running))
    elif record.state in (TaskState.QUEUED, TaskState.HELD):
        what = "held until dispatched" if record.state is TaskState.HELD else "due"
        events.append((record.run_at, 3, TimelineEvent(at=moment(record.run_at, now), what=what)))
    events.sort(key=lambda event: (event[0], event[1]))
    return [event for _, _, event in events]


async def gather_task(queue: Queue, task_id: str, *, payload_limit: int) -> TaskView | None:
    """The task ``task_id`` with its payload, result, attempts and timeline, or None."""
    inspection = _inspection(queue)
    if inspection is None:
        return None
    record = await inspection.get(task_id)
    if record is None:
        return None
    now = await queue.backend.time()
    attempts = sorted(
        await inspection.history(task_id=task_id, limit=200),
        key=lambda e: (e.started_at, e.attempt),
    )
    result = result_note = None
    if record.result is not None:
        if record.result_expires is not None and record.result_expires <= now:
            result_note = f"expired {moment(record.result_expires, now)}"
        else:
            result = show_bytes(record.result, payload_limit)
    times = {
        "created": moment(record.created_at, now),
        "due": moment(record.run_at, now),
        "finished": moment(record.finished_at, now),
    }
    if record.lease_until is not None and record.state is TaskState.RUNNING:
        times["lease until"] = moment(record.lease_until, now)
    return TaskView(
        record=record,
        now=now,
        payload=show_bytes(record.payload, payload_limit),
        result=result,
        result_note=result_note,
        attempts=attempts,
        timeline=_events(record, attempts, now),
        progress=record.progress,
        times=times,
        progress_at=None if record.progress is None else moment(record.progress.updated_at, now),
    )
