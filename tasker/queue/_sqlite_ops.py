"""The embedded queue's statements: each one runs in the connection's thread, inside a batch.

Every function takes the connection and its call's arguments, as
``tasker._sqlite_batch.BatchedConnection.call`` hands them over; :class:`SQLiteQueueBackend`
(``tasker.queue._sqlite``) sends them. Times read with a stale clock anchor, or before a
stall of the write lock, are moved onto the current timeline first (``_machine_clock``).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Mapping, Sequence

from . import _sqlite_limits as limits
from ._errors import QueueFullError
from ._machine_clock import shift, translate
from ._records import (
    CancelResult,
    CancelStatus,
    EnqueueResult,
    GroupSpec,
    NewTask,
    Outcome,
    OutcomeKind,
    TaskRecord,
    TaskState,
)
from ._rows import (
    COLUMNS,
    LIVE_STATES,
    PROGRESS_CLEARED,
    TASK_INSERT_COLUMNS,
    callback_from_json,
    callback_to_json,
    group_payload,
    record_from_row,
    settled_kind,
    task_insert_values,
)

__all__ = [
    "SCHEMA",
    "cancel",
    "cancel_requested",
    "claim",
    "enqueue",
    "enqueue_bounded",
    "finish",
    "finish_and_claim",
    "group_member_done",
    "heartbeat",
    "insert",
    "migrate",
    "report_progress",
]

SCHEMA = [
    """create table if not exists tasks (
        id text primary key,
        name text not null,
        queue text not null,
        payload blob not null,
        priority integer not null,
        run_at real not null,
        state text not null,
        attempts integer not null default 0,
        max_attempts integer not null,
        timeout real,
        unique_key text,
        unique_until real,
        created_at real not null,
        lease_owner text,
        lease_until real,
        result blob,
        result_expires real,
        last_error text,
        traceback text,
        finished_at real,
        chain blob,
        group_id text,
        group_index integer,
        cancel_requested integer not null default 0,
        progress real,
        progress_text text,
        progress_at real,
        trace text
    )""",
    # A claim reads due tasks of a queue in this order and stops at its limit: the index
    # ends with the order's last tie-breaker, or every task sharing one run_at (a bulk
    # enqueue, a dispatch, a newsletter at 09:00) would be sorted at each claim (a backlog
    # of 100,000 tied tasks drained 20x slower). It replaced tasks_due, which lacked it.
    "drop index if exists tasks_due",
    "create index if not exists tasks_claim on tasks"
    " (state, queue, priority desc, run_at, created_at)",
    # No index of leases: every query of leases reads ``state = 'running'``, and the claim
    # index's leading column holds the running tasks together (no more than run at once),
    # which the planner preferred anyway. The earlier tasks_lease (state, lease_until) cost
    # every attempt four more index writes and a finished task an entry for ever (a drain
    # measured 15-20% faster without it).
    "drop index if exists tasks_lease",
    "create index if not exists tasks_unique on tasks (unique_key) where unique_key is not null",
    # The database, not only this code, admits one live task per unique key.
    """create unique index if not exists tasks_unique_live on tasks (unique_key)
        where unique_key is not null and state in ('held', 'queued', 'running')""",
    "create index if not exists tasks_group on tasks (group_id) where group_id is not null",
    """create table if not exists task_groups (
        id text primary key, size integer not null, callback text)""",
    """create table if not exists task_history (
        task_id text not null, name text not null, queue text not null, worker text not null,
        attempt integer not null, started_at real not null, finished_at real not null,
        outcome text not null, error text)""",
    "create index if not exists task_history_task on task_history (task_id)",
    "create index if not exists task_history_time on task_history (finished_at)",
    # The queue's clock (``_machine_clock``): the wall clock at boot-time zero, per boot.
    # ``shifted_through``: leases were moved for a stall of the database up to this time.
    """create table if not exists queue_clock (
        boot_id text not null, anchor real not null, shifted_through real)""",
]


def _shifted_task(task: NewTask, delta: float) -> NewTask:
    return dataclasses.replace(
        task,
        run_at=task.run_at + delta,
        created_at=task.created_at + delta,
        unique_until=None if task.unique_until is None else task.unique_until + delta,
    )


def _shifted_outcome(outcome: Outcome, delta: float) -> Outcome:
    return dataclasses.replace(
        outcome,
        started_at=outcome.started_at + delta,
        finished_at=outcome.finished_at + delta,
        retry_at=None if outcome.retry_at is None else outcome.retry_at + delta,
        result_expires=None if outcome.result_expires is None else outcome.result_expires + delta,
        follow_ups=tuple(_shifted_task(t, delta) for t in outcome.follow_ups),
    )


def insert(db: sqlite3.Connection, task: NewTask) -> bool:
    """Insert ``task``; False if a task with its id is stored already (left as it is)."""
    cursor = db.execute(
        f"insert into tasks ({TASK_INSERT_COLUMNS})"  # noqa: S608 - constant column names
        " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict (id) do nothing",
        task_insert_values(task),
    )
    if cursor.rowcount <= 0:
        return False
    limits.store_limits(db, task)
    return True


def enqueue(
    db: sqlite3.Connection,
    arg: tuple[Sequence[NewTask], GroupSpec | None, float, float | None],
) -> list[EnqueueResult]:
    tasks, group, now, anchor = arg
    delta = shift(db, anchor)
    if delta:  # read on a stale timeline: move the tasks' times onto the current one
        now += delta
        tasks = [_shifted_task(t, delta) for t in tasks]
        if group is not None and group.callback is not None:
            group = dataclasses.replace(group, callback=_shifted_task(group.callback, delta))
    results = []
    for task in tasks:
        if task.unique_key is not None:
            row = db.execute(
                "select id, state, unique_until from tasks where unique_key = ?"
                " order by (state in ('held', 'queued', 'running')) desc, created_at desc"
                " limit 1",
                (task.unique_key,),
            ).fetchone()
            if row is not None and (row[1] in LIVE_STATES or (row[2] is not None and now < row[2])):
                results.append(EnqueueResult(id=row[0], deduplicated=True))
                continue
        results.append(EnqueueResult(id=task.id, deduplicated=not insert(db, task)))
    if group is not None:
        db.execute(
            "insert into task_groups (id, size, callback) values (?, ?, ?)",
            (
                group.id,
                group.size,
                None if group.callback is None else callback_to_json(group.callback),
            ),
        )
    return results


def enqueue_bounded(
    db: sqlite3.Connection,
    arg: tuple[Sequence[NewTask], Mapping[str, int], GroupSpec | None, float, float | None],
) -> list[EnqueueResult]:
    """:func:`enqueue`, then the depth of each bounded queue it added to, inside the same
    write transaction (held by this process alone): over a bound, the savepoint of this
    call is rolled back (``QueueFullError`` leaves the batch's call) and nothing stays.

    Inserting first and counting after is what makes a deduplicated task count for
    nothing, with no second copy of the deduplication rules. Each count reads the
    ``tasks_due`` index and stops at the bound plus the tasks added."""
    tasks, max_depth, group, now, anchor = arg
    results = enqueue(db, (tasks, group, now, anchor))
    adding: dict[str, int] = {}
    for task, result in zip(tasks, results, strict=True):
        if not result.deduplicated and result.id == task.id:
            adding[task.queue] = adding.get(task.queue, 0) + 1
    for queue in sorted(adding):
        bound = max_depth.get(queue)
        if bound is None:
            continue
        (depth,) = db.execute(
            "select count(*) from (select 1 from tasks where state in ('held', 'queued')"
            " and queue = ? limit ?)",
            (queue, bound + adding[queue]),
        ).fetchone()
        if depth > bound:
            before = depth - adding[queue]
            raise QueueFullError(queue, depth=before, max_depth=bound, adding=adding[queue])
    return results


def claim(
    db: sqlite3.Connection,
    arg: tuple[Sequence[str], int, str, float, float, Sequence[str], float | None],
) -> list[TaskRecord]:
    queues, limit, worker, lease, now, exclude, anchor = arg
    return _claim(db, queues, limit, worker, lease, translate(db, now, anchor), exclude)


def finish_and_claim(
    db: sqlite3.Connection,
    arg: tuple[
        Sequence[Outcome], float, Sequence[str], int, str, float, Sequence[str], float | None
    ],
) -> tuple[bool, list[TaskRecord]]:
    """:func:`finish`, then :func:`claim`: whether to notify, and the claimed tasks."""
    outcomes, now, queues, limit, worker, lease, exclude, anchor = arg
    # One reading of the stored anchor serves both: nothing can move it in between (this
    # call runs alone, inside a write transaction: no other call, nor another process,
    # writes the anchor meanwhile, and a stall was noted before the batch's calls ran).
    delta = shift(db, anchor)
    notify = _finish(db, outcomes, now, delta)
    return notify, _claim(db, queues, limit, worker, lease, now + delta, exclude)


def _claim(
    db: sqlite3.Connection,
    queues: Sequence[str],
    limit: int,
    worker: str,
    lease: float,
    now: float,
    exclude: Sequence[str],
) -> list[TaskRecord]:
    marks = ",".join("?" * len(queues))
    skip = f" and id not in ({','.join('?' * len(exclude))})" if exclude else ""
    # Expired leases on their last attempt die, and those whose cancel was requested are
    # cancelled (all of them: they must not use up the limit); then the others are claimed
    # again, oldest lease first.
    dying = db.execute(
        f"select id from tasks where state = 'running' and lease_until <= ?"  # noqa: S608 - placeholders only
        f" and (attempts >= max_attempts or cancel_requested) and queue in ({marks}){skip}"
        " order by id",
        (now, *queues, *exclude),
    ).fetchall()
    _die_expired(db, [task_id for (task_id,) in dying], now)
    if db.execute(limits.ANY_LIMITED).fetchone() is not None:
        ids = _limited_ids(db, queues, limit, now, exclude)
    else:
        ids = _unlimited_ids(db, queues, limit, now, exclude)
    if not ids:
        return []
    id_marks = ",".join("?" * len(ids))
    db.execute(
        f"update tasks set state = 'running', attempts = attempts + 1, lease_owner = ?,"  # noqa: S608
        f" lease_until = ?, {PROGRESS_CLEARED} where id in ({id_marks})",
        (worker, now + lease, *ids),
    )
    rows = db.execute(
        f"select {COLUMNS} from tasks where id in ({id_marks})",  # noqa: S608
        ids,
    ).fetchall()
    order = {task_id: index for index, task_id in enumerate(ids)}
    return sorted((record_from_row(row) for row in rows), key=lambda r: order[r.id])


def _limited_ids(
    db: sqlite3.Connection,
    queues: Sequence[str],
    limit: int,
    now: float,
    exclude: Sequence[str],
) -> list[str]:
    """:func:`_unlimited_ids`, skipping the tasks whose limits hold them back (read in
    claim order, lazily: the scan stops once ``limit`` are admitted); their starts logged."""
    marks = ",".join("?" * len(queues))
    skip = f" and id not in ({','.join('?' * len(exclude))})" if exclude else ""
    admission = limits.Admission(db, now)
    expired = db.execute(
        f"select {limits.CANDIDATE} from tasks where state = 'running' and lease_until <= ?"  # noqa: S608 - placeholders only
        f" and attempts < max_attempts and not cancel_requested and queue in ({marks}){skip}"
        " order by lease_until",
        (now, *queues, *exclude),
    )
    ids = admission.pick(expired, limit)
    if len(ids) < limit:
        due = db.execute(
            f"select {limits.CANDIDATE} from tasks where state = 'queued' and queue in ({marks})"  # noqa: S608
            f" and run_at <= ?{skip} order by priority desc, run_at, created_at",
            (*queues, now, *exclude),
        )
        ids.extend(admission.pick(due, limit - len(ids)))
    admission.write()
    return ids


def _unlimited_ids(
    db: sqlite3.Connection,
    queues: Sequence[str],
    limit: int,
    now: float,
    exclude: Sequence[str],
) -> list[str]:
    """The ids a claim takes: expired leases with attempts left, oldest lease first, then
    due queued tasks in claim order, at most ``limit``."""
    marks = ",".join("?" * len(queues))
    skip = f" and id not in ({','.join('?' * len(exclude))})" if exclude else ""
    ids = [
        row[0]
        for row in db.execute(
            f"select id from tasks where state = 'running' and lease_until <= ?"  # noqa: S608
            f" and attempts < max_attempts and not cancel_requested and queue in ({marks}){skip}"
            " order by lease_until limit ?",
            (now, *queues, *exclude, limit),
        ).fetchall()
    ]
    if len(ids) < limit:
        rows = db.execute(
            f"select id from tasks where state = 'queued' and queue in ({marks})"  # noqa: S608
            f" and run_at <= ?{skip} order by priority desc, run_at, created_at limit ?",
            (*queues, now, *exclude, limit - len(ids)),
        ).fetchall()
        ids.extend(row[0] for row in rows)
    return ids


def _die_expired(db: sqlite3.Connection, task_ids: Sequence[str], now: float) -> None:
    """Tasks whose lease expired on their last attempt: dead; or whose cancel was
    requested: cancelled. Their groups told."""
    for task_id in task_ids:
        db.execute(
            "update tasks set state = case when cancel_requested then 'cancelled'"
            " else 'dead' end, lease_owner = null, lease_until = null,"
            " last_error = case when cancel_requested then last_error"
            " else 'lease expired (the worker stopped responding)' end,"
            " finished_at = ? where id = ?",
            (now, task_id),
        )
        group_member_done(db, task_id, now)


def claim_ids(
    db: sqlite3.Connection, arg: tuple[Sequence[str], str, float, float, float | None]
) -> list[TaskRecord]:
    """Lease the named tasks a claim could take; expired leases on their last attempt die.
    One statement per kind, by primary key: the cost does not grow with the backlog."""
    ids, worker, lease, now, anchor = arg
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return []
    now = translate(db, now, anchor)
    marks = ",".join("?" * len(wanted))
    dying = db.execute(
        f"select id from tasks where id in ({marks}) and state = 'running'"  # noqa: S608 - placeholders only
        " and lease_until <= ? and (attempts >= max_attempts or cancel_requested) order by id",
        (*wanted, now),
    ).fetchall()
    _die_expired(db, [task_id for (task_id,) in dying], now)
    taken = {
        row[0]
        for row in db.execute(
            f"update tasks set state = 'running', attempts = attempts + 1, lease_owner = ?,"  # noqa: S608
            f" lease_until = ?, {PROGRESS_CLEARED} where id in ({marks})"
            " and ((state = 'queued' and run_at <= ?)"
            " or (state = 'running' and lease_until <= ? and attempts < max_attempts"
            " and not cancel_requested)) returning id",
            (worker, now + lease, *wanted, now, now),
        ).fetchall()
    }
    if not taken:
        return []
    order = [task_id for task_id in wanted if task_id in taken]
    rows = db.execute(
        f"select {COLUMNS} from tasks where id in ({','.join('?' * len(order))})",  # noqa: S608
        order,
    ).fetchall()
    position = {task_id: index for index, task_id in enumerate(order)}
    return sorted((record_from_row(row) for row in rows), key=lambda r: position[r.id])


def overdue(
    db: sqlite3.Connection,
    arg: tuple[float, Sequence[str] | None, int, float | None],
) -> list[TaskRecord]:
    """Queued tasks due and running ones whose lease expired by ``before``, the longest
    overdue first (each half read along its index, then merged)."""
    before, queues, limit, anchor = arg
    before = translate(db, before, anchor)
    where = ""
    params: tuple[str, ...] = ()
    if queues is not None:
        if not queues:
            return []
        where = f" and queue in ({','.join('?' * len(queues))})"
        params = tuple(queues)
    queued = db.execute(
        f"select {COLUMNS}, run_at from tasks where state = 'queued' and run_at <= ?{where}"  # noqa: S608
        " order by run_at limit ?",
        (before, *params, limit),
    ).fetchall()
    running = db.execute(
        f"select {COLUMNS}, lease_until from tasks where state = 'running'"  # noqa: S608
        f" and lease_until <= ?{where} order by lease_until limit ?",
        (before, *params, limit),
    ).fetchall()
    merged = sorted([*queued, *running], key=lambda row: row[-1])[:limit]
    return [record_from_row(row[:-1]) for row in merged]


def heartbeat(
    db: sqlite3.Connection, arg: tuple[str, Sequence[str], float, float, float | None]
) -> set[str]:
    worker, ids, lease, now, anchor = arg
    if not ids:
        return set()
    now = translate(db, now, anchor)
    marks = ",".join("?" * len(ids))
    db.execute(
        f"update tasks set lease_until = ? where state = 'running' and lease_owner = ?"  # noqa: S608
        f" and id in ({marks})",
        (now + lease, worker, *ids),
    )
    rows = db.execute(
        f"select id from tasks where state = 'running' and lease_owner = ?"  # noqa: S608
        f" and id in ({marks})",
        (worker, *ids),
    ).fetchall()
    return {row[0] for row in rows}


def finish(db: sqlite3.Connection, arg: tuple[Sequence[Outcome], float, float | None]) -> bool:
    outcomes, now, anchor = arg
    return _finish(db, outcomes, now, shift(db, anchor))


def _finish(db: sqlite3.Connection, outcomes: Sequence[Outcome], now: float, delta: float) -> bool:
    if delta:  # read on a stale timeline: move the outcome's times onto the current one
        now += delta
        outcomes = [_shifted_outcome(o, delta) for o in outcomes]
    requeued = False
    # One read of every outcome's task, then the history rows and the successes each in one
    # ``executemany``: a batch of ten outcomes costs four statements, not thirty. A task's
    # group never changes, so a task of none (the common case) settles without asking again.
    wanted = list(dict.fromkeys(o.id for o in outcomes))
    rows = {
        row[0]: row
        for row in db.execute(
            "select id, lease_owner, name, queue, attempts, group_id, cancel_requested,"  # noqa: S608 - placeholders only
            f" concurrency_key from tasks where id in ({','.join('?' * len(wanted))})"
            " and state = 'running'",
            wanted,
        )
    }
    history: list[tuple[object, ...]] = []
    succeeded: list[tuple[object, ...]] = []
    settled: list[tuple[Outcome, OutcomeKind, int, str | None]] = []
    for outcome in outcomes:
        row = rows.pop(outcome.id, None)
        if row is None or row[1] != outcome.worker:
            continue  # the lease was lost: a newer attempt owns the task
        _, _, name, queue, attempts, group_id, cancelling, keyed = row
        if keyed is not None:
            requeued = True  # a concurrency key's slot frees: wake the waiting workers
        kind = settled_kind(outcome.kind, bool(cancelling))
        if kind is not OutcomeKind.RELEASED:
            history.append(
                (
                    outcome.id,
                    name,
                    queue,
                    outcome.worker,
                    attempts,
                    outcome.started_at,
                    outcome.finished_at,
                    kind._value_,  # not .value: a property call
                    outcome.error,
                )
            )
        if kind is OutcomeKind.SUCCEEDED:
            succeeded.append(
                (outcome.result, outcome.result_expires, outcome.finished_at, outcome.id)
            )
        settled.append((outcome, kind, cancelling, group_id))
    if history:
        db.executemany(
            "insert into task_history (task_id, name, queue, worker, attempt, started_at,"
            " finished_at, outcome, error) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            history,
        )
    if succeeded:
        db.executemany(
            "update tasks set state = 'succeeded', lease_owner = null, lease_until = null,"
            " result = ?, result_expires = ?, last_error = null, traceback = null,"
            " finished_at = ? where id = ?",
            succeeded,
        )
    # Then, in the outcomes' order: the other kinds, the chains' next steps and the groups
    # (a group is told once its members' states are all written).
    for outcome, kind, cancelling, group_id in settled:
        if kind is OutcomeKind.SUCCEEDED:
            for follow_up in () if cancelling else outcome.follow_ups:  # a cancel ends a chain
                insert(db, follow_up)
                requeued = True
            if group_id is not None:
                requeued |= _group_done(db, group_id, now)
        elif kind is OutcomeKind.DEAD or kind is OutcomeKind.CANCELLED:
            db.execute(
                "update tasks set state = ?, lease_owner = null, lease_until = null,"
                " last_error = ?, traceback = ?, finished_at = ? where id = ?",
                (
                    TaskState.DEAD.value if kind is OutcomeKind.DEAD else TaskState.CANCELLED.value,
                    outcome.error,
                    outcome.traceback,
                    outcome.finished_at,
                    outcome.id,
                ),
            )
            if group_id is not None:
                requeued |= _group_done(db, group_id, now)
        elif kind is OutcomeKind.RETRY:
            db.execute(
                "update tasks set state = 'queued', lease_owner = null, lease_until = null,"
                " run_at = ?, last_error = ?, traceback = ? where id = ?",
                (outcome.retry_at or now, outcome.error, outcome.traceback, outcome.id),
            )
            requeued = True
        else:
            db.execute(
                "update tasks set state = 'queued', lease_owner = null, lease_until = null,"
                " attempts = attempts - 1 where id = ?",
                (outcome.id,),
            )
            requeued = True
    return requeued


def group_member_done(db: sqlite3.Connection, task_id: str, now: float) -> bool:
    row = db.execute("select group_id from tasks where id = ?", (task_id,)).fetchone()
    if row is None or row[0] is None:
        return False
    return _group_done(db, row[0], now)


def _group_done(db: sqlite3.Connection, group_id: str, now: float) -> bool:
    """A member of ``group_id`` settled: fire its callback once every member has."""
    left = db.execute(
        "select count(*) from tasks where group_id = ?"
        " and state not in ('succeeded', 'dead', 'cancelled')",
        (group_id,),
    ).fetchone()[0]
    if left:
        return False
    group = db.execute(
        "delete from task_groups where id = ? returning callback", (group_id,)
    ).fetchone()
    if group is None or group[0] is None:
        return False  # already fired, or no callback
    results = db.execute(
        "select case when state = 'succeeded' then result end from tasks"
        " where group_id = ? order by group_index",
        (group_id,),
    ).fetchall()
    payload = group_payload([None if r[0] is None else bytes(r[0]) for r in results])
    insert(db, callback_from_json(group[0], payload, now))
    return True


def migrate(db: sqlite3.Connection) -> None:
    """Bring a database made by an earlier version up to :data:`SCHEMA` (idempotent, inside
    the transaction that runs the schema): ``create table if not exists`` leaves an existing
    table as it was, so a column added since is added here."""
    columns = {row[1] for row in db.execute("pragma table_info(tasks)")}
    if "cancel_requested" not in columns:
        db.execute("alter table tasks add column cancel_requested integer not null default 0")
    for column, kind in (("progress", "real"), ("progress_text", "text"), ("progress_at", "real")):
        if column not in columns:
            db.execute(f"alter table tasks add column {column} {kind}")
    if "trace" not in columns:  # tasker.tracing's carrier
        db.execute("alter table tasks add column trace text")
    limits.migrate(db, columns)


def cancel(db: sqlite3.Connection, arg: tuple[str, float, float | None]) -> CancelResult:
    """Cancel a task: held, queued or with an expired lease at once (its group told), a
    running one by recording the request (``tasker.abc.TaskCancellation.cancel``)."""
    task_id, now, anchor = arg
    now = translate(db, now, anchor)
    row = db.execute("select state, lease_until from tasks where id = ?", (task_id,)).fetchone()
    if row is None:
        return CancelResult(id=task_id, status=CancelStatus.UNKNOWN, state=None)
    state, lease_until = TaskState(row[0]), row[1]
    if state.value not in LIVE_STATES:
        return CancelResult(id=task_id, status=CancelStatus.FINISHED, state=state)
    if state is TaskState.RUNNING and lease_until is not None and lease_until > now:
        db.execute("update tasks set cancel_requested = 1 where id = ?", (task_id,))
        return CancelResult(id=task_id, status=CancelStatus.REQUESTED, state=state)
    db.execute(
        "update tasks set state = 'cancelled', lease_owner = null, lease_until = null,"
        " finished_at = ? where id = ?",
        (now, task_id),
    )
    group_member_done(db, task_id, now)
    return CancelResult(id=task_id, status=CancelStatus.CANCELLED, state=TaskState.CANCELLED)


def cancel_requested(db: sqlite3.Connection, arg: tuple[str, Sequence[str]]) -> set[str]:
    """Those of the ids running under the worker's lease whose cancel was requested."""
    worker, ids = arg
    if not ids:
        return set()
    rows = db.execute(
        f"select id from tasks where id in ({','.join('?' * len(ids))})"  # noqa: S608 - placeholders only
        " and state = 'running' and lease_owner = ? and cancel_requested",
        (*ids, worker),
    ).fetchall()
    return {row[0] for row in rows}


def report_progress(
    db: sqlite3.Connection, arg: tuple[str, str, float, str, float, float | None]
) -> bool:
    """Store the progress of a task the worker holds (``tasker.abc.TaskProgress``)."""
    worker, task_id, value, text, now, anchor = arg
    cursor = db.execute(
        "update tasks set progress = ?, progress_text = ?, progress_at = ?"
        " where id = ? and state = 'running' and lease_owner = ?",
        (value, text, translate(db, now, anchor), task_id, worker),
    )
    return cursor.rowcount == 1
