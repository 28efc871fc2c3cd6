"""The queue's multi-statement transactions: enqueues, chain steps and group callbacks.

Claims and plain completions are one statement each (``_queue_sql``); what needs several
statements in one transaction is here, as functions of a connection (or a pool) and the
backend's :class:`QueueStatements`.

Design notes:

- Unique keys: a partial unique index on live tasks makes the insert itself the check, so
  two replicas cannot both insert; the window after completion (``unique_until``) is read
  in the same transaction first.
- Task ids: the primary key makes the insert the check too (``on conflict do nothing``
  has no target, so it covers both); a task whose id is stored already is deduplicated to
  it, whatever its state, and the stored task is left as it is.
- Groups: the last member to finish fires the group's callback. Members finishing in
  concurrent transactions would each see the other unfinished, so the group's row is
  locked first, and rows are always locked in id order (tasks, then groups): two workers
  finishing members of the same groups in opposite orders must not deadlock.
- ``pg_notify`` is sent inside the transaction: Postgres delivers it at commit, so a worker
  is never woken for a task it cannot see yet.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from tasker.backends import (
    LIVE_STATES,
    callback_from_json,
    callback_to_json,
    group_payload,
    task_insert_values,
)
from tasker.queue import (
    CancelResult,
    CancelStatus,
    EnqueueResult,
    GroupSpec,
    NewTask,
    Outcome,
    OutcomeKind,
    QueueFullError,
    TaskState,
)

from ._queue_limits import limit_values
from ._queue_sql import QueueStatements, outcome_arrays

__all__ = [
    "cancel_in_transaction",
    "enqueue_bounded_on",
    "enqueue_on",
    "finish_in_transaction",
    "reap_grouped",
    "reap_grouped_ids",
]

logger = logging.getLogger("tasker_pg")

# A dedicated connection or one borrowed from a pool (asyncpg's proxy has no common type).
_Conn = Any

# How many times an enqueue tries its insert when what it conflicted with is gone next.
_ATTEMPTS = 3


async def _insert(conn: _Conn, sql: QueueStatements, task: NewTask) -> bool:
    """Insert ``task``; False if a task with its id is stored, or a live task holds its
    unique key (the stored task is left as it is)."""
    row = await conn.fetchrow(sql.insert, *task_insert_values(task), *limit_values(task))
    return row is not None


async def _insert_run(
    conn: _Conn, sql: QueueStatements, tasks: Sequence[NewTask], now: float
) -> list[EnqueueResult]:
    """Store ``tasks`` (none with a unique key) in one statement, or one by one when there
    is a single task; a task whose id is stored already (or came earlier in the run) is
    deduplicated to it, found as :func:`_enqueue_one` finds it."""
    if len(tasks) == 1:
        return [await _enqueue_one(conn, sql, tasks[0], now)]
    rows = [(*task_insert_values(task), *limit_values(task)) for task in tasks]
    columns = [list(column) for column in zip(*rows, strict=True)]
    inserted = {row[0] for row in await conn.fetch(sql.insert_many, *columns)}
    results = []
    for task in tasks:
        if task.id in inserted:
            inserted.discard(task.id)  # a later task with the same id is deduplicated
            results.append(EnqueueResult(id=task.id))
        else:  # its id is stored: in any state, that task is the one
            results.append(await _enqueue_one(conn, sql, task, now))
    return results


async def _enqueue_one(
    conn: _Conn, sql: QueueStatements, task: NewTask, now: float
) -> EnqueueResult:
    """Store ``task``, or name the stored task it is deduplicated to: the task stored with
    its id (in any state), else the task holding its unique key (live, or in its window).

    A task without a unique key costs one statement, as before: the insert, which does
    nothing on a stored id. Should the task it conflicted with be gone by the next
    statement (finished, or purged), the insert is tried again.
    """
    for _ in range(_ATTEMPTS):
        if task.unique_key is not None:
            row = await conn.fetchrow(sql.stored_or_latest_with_key, task.id, task.unique_key)
            if row is not None and (
                row[0] == task.id or row[1] in LIVE_STATES or (row[2] is not None and now < row[2])
            ):
                return EnqueueResult(id=row[0], deduplicated=True)
        if await _insert(conn, sql, task):
            return EnqueueResult(id=task.id)
        # A task with this id is stored, or another replica inserted a live task with this
        # key meanwhile.
        existing = await conn.fetchval(sql.conflicting, task.id, task.unique_key)
        if existing is not None:
            return EnqueueResult(id=existing, deduplicated=True)
    raise RuntimeError(f"enqueue of task {task.id}: it kept conflicting with a vanishing task")


async def enqueue_on(
    conn: _Conn,
    sql: QueueStatements,
    channel: str,
    tasks: Sequence[NewTask],
    group: GroupSpec | None,
    now: float,
) -> list[EnqueueResult]:
    """Store ``tasks`` (and ``group``'s callback) in the transaction open on ``conn``.

    Tasks are stored in order, as if one by one: each run of tasks without a unique key
    in one statement (:func:`_insert_run`), a task with one by itself (its window is
    read first).
    """
    results: list[EnqueueResult] = []
    queues = set()
    start = 0
    while start < len(tasks):
        if tasks[start].unique_key is not None:
            results.append(await _enqueue_one(conn, sql, tasks[start], now))
            start += 1
            continue
        end = start + 1
        while end < len(tasks) and tasks[end].unique_key is None:
            end += 1
        results += await _insert_run(conn, sql, tasks[start:end], now)
        start = end
    for task, result in zip(tasks, results, strict=True):
        if not result.deduplicated:
            queues.add(task.queue)
    if group is not None:
        await conn.execute(
            sql.insert_group,
            group.id,
            group.size,
            None if group.callback is None else callback_to_json(group.callback),
        )
    for queue in queues:
        await conn.execute(sql.notify, channel, queue)
    return results


async def enqueue_bounded_on(
    conn: _Conn,
    sql: QueueStatements,
    channel: str,
    tasks: Sequence[NewTask],
    max_depth: Mapping[str, int],
    group: GroupSpec | None,
    now: float,
) -> list[EnqueueResult]:
    """:func:`enqueue_on` within bounds, in the transaction open on ``conn``.

    The advisory lock of every bounded queue of the batch is taken first (in name order:
    two batches that share queues never deadlock), so that the enqueues of a queue run one
    at a time; then the tasks are inserted, and each bounded queue that grew is counted
    (its own inserts included) up to its bound plus what this batch added. Over a bound,
    :class:`QueueFullError` leaves the transaction, which rolls the inserts back (the
    caller's ``conn.transaction()``). Inserting before counting is what makes a
    deduplicated task count for nothing, with the deduplication rules in one place.
    """
    for queue in sorted({t.queue for t in tasks if t.queue in max_depth}):
        await conn.execute(sql.lock_depth, queue)
    results = await enqueue_on(conn, sql, channel, tasks, group, now)
    adding: dict[str, int] = {}
    for task, result in zip(tasks, results, strict=True):
        if not result.deduplicated:
            adding[task.queue] = adding.get(task.queue, 0) + 1
    for queue in sorted(adding):
        bound = max_depth.get(queue)
        if bound is None:
            continue
        depth = await conn.fetchval(sql.depth, queue, bound + adding[queue])
        if depth > bound:
            added = adding[queue]
            # Counted up to the bound in each half: what was there is at most the bound.
            before = min(depth - added, bound)
            raise QueueFullError(queue, depth=before, max_depth=bound, adding=added)
    return results


async def finish_in_transaction(
    pool: asyncpg.Pool,
    sql: QueueStatements,
    channel: str,
    outcomes: Sequence[Outcome],
    now: float,
) -> None:
    """Record outcomes with their follow-ups (a chain's next step) and group callbacks."""
    by_id = {o.id: o for o in outcomes}
    queues: set[str] = set()
    async with pool.acquire() as conn, conn.transaction():
        # Rows are locked in id order, and groups in id order below (see the module notes).
        await conn.execute(sql.lock_tasks, sorted(by_id))
        rows = await conn.fetch(sql.finish_all, *outcome_arrays(outcomes, now))
        members: dict[str, str] = {}  # finished members of groups: task id -> group id
        for task_id, queue, kind, group_id, cancel_requested, keyed in rows:
            if keyed:  # a concurrency key's slot frees: wake every waiting worker
                queues.add("*")
            # A cancel ends a chain, even at a step whose handler still returned.
            if kind == OutcomeKind.SUCCEEDED.value and not cancel_requested:
                for follow_up in by_id[task_id].follow_ups:
                    await _insert(conn, sql, follow_up)
                    queues.add(follow_up.queue)
            if kind in (
                OutcomeKind.RETRY.value,
                OutcomeKind.RELEASED.value,
                OutcomeKind.INTERRUPTED.value,
            ):
                queues.add(queue)
            elif group_id is not None:
                members[task_id] = group_id
        await _lock_groups(conn, sql, list(members.values()))
        for task_id in members:
            if await _group_member_done(conn, sql, task_id, now):
                queues.add("*")
        for queue in queues:
            await conn.execute(sql.notify, channel, queue)


async def cancel_in_transaction(
    pool: asyncpg.Pool, sql: QueueStatements, channel: str, task_id: str, now: float
) -> CancelResult:
    """Cancel ``task_id`` (``tasker.abc.TaskCancellation.cancel``): its row locked first, so
    that a claim, a heartbeat or a finish of it runs wholly before or after; held, queued or
    with an expired lease it is cancelled and its group told, running it is asked to stop."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(sql.cancel_lock, task_id)
        if row is None:
            return CancelResult(id=task_id, status=CancelStatus.UNKNOWN, state=None)
        state, lease_until = TaskState(row[0]), row[1]
        if state.value not in LIVE_STATES:
            return CancelResult(id=task_id, status=CancelStatus.FINISHED, state=state)
        if state is TaskState.RUNNING and lease_until is not None and lease_until > now:
            await conn.execute(sql.cancel_request, task_id)
            return CancelResult(id=task_id, status=CancelStatus.REQUESTED, state=state)
        group_id = await conn.fetchval(sql.cancel_now, task_id, now)
        if group_id is not None:
            await _lock_groups(conn, sql, [group_id])
            if await _group_member_done(conn, sql, task_id, now):
                await conn.execute(sql.notify, channel, "*")
        return CancelResult(id=task_id, status=CancelStatus.CANCELLED, state=TaskState.CANCELLED)


async def reap_grouped(
    pool: asyncpg.Pool,
    sql: QueueStatements,
    channel: str,
    queues: list[str],
    now: float,
    exclude: list[str],
) -> None:
    """Settle grouped tasks whose lease expired on their last attempt (never ``exclude``).

    Runs after a claim committed: a failure here is logged, not raised (the claimed
    tasks must reach their worker); the next claim finds these tasks again.
    """
    await _reap(pool, sql, channel, now, sql.reap_grouped, queues, now, exclude)


async def reap_grouped_ids(
    pool: asyncpg.Pool, sql: QueueStatements, channel: str, ids: list[str], now: float
) -> None:
    """:func:`reap_grouped` for the tasks of ``ids`` (after a ``claim_ids``, which looks
    tasks up by id whatever their queue)."""
    await _reap(pool, sql, channel, now, sql.reap_grouped_ids, ids, now)


async def _reap(
    pool: asyncpg.Pool, sql: QueueStatements, channel: str, now: float, statement: str, *args: Any
) -> None:
    try:
        async with pool.acquire() as conn, conn.transaction():
            dead = await conn.fetch(statement, *args)
            await _lock_groups(conn, sql, [row[1] for row in dead])
            fired = False
            for row in sorted(dead, key=lambda row: str(row[0])):
                fired |= await _group_member_done(conn, sql, row[0], now)
            if fired:
                await conn.execute(sql.notify, channel, "*")
    except Exception as exc:
        logger.warning("could not settle expired grouped tasks yet: %s", exc)


async def _lock_groups(conn: _Conn, sql: QueueStatements, group_ids: Sequence[str]) -> None:
    """Lock the callback rows of these groups, in id order (no deadlock between workers)."""
    if group_ids:
        await conn.execute(sql.lock_groups, sorted(set(group_ids)))


async def _group_member_done(conn: _Conn, sql: QueueStatements, task_id: str, now: float) -> bool:
    """After ``task_id`` finished: fire its group's callback if it was the last member."""
    group_id = await conn.fetchval(sql.group_of, task_id)
    if group_id is None:
        return False
    # Lock the group first: two members finishing in concurrent transactions would each
    # see the other unfinished and neither would fire the callback. After the lock, the
    # count below (a new statement) sees the other transaction's committed state.
    if await conn.fetchval(sql.lock_group, group_id) is None:
        return False  # fired already, or a group without a callback row
    if await conn.fetchval(sql.group_left, group_id):
        return False
    callback = await conn.fetchval(sql.delete_group, group_id)
    if callback is None:
        return False
    results = await conn.fetch(sql.group_results, group_id)
    payload = group_payload([None if r[0] is None else bytes(r[0]) for r in results])
    await _insert(conn, sql, callback_from_json(callback, payload, now))
    return True
