"""The Postgres queue backend: ``FOR UPDATE SKIP LOCKED`` claims, ``LISTEN/NOTIFY`` wake-ups.

Design notes:

- The statements are in ``_queue_sql`` (claims and completions are one statement each, see
  there), the tables in ``_schema``, the ``LISTEN`` connection in ``_listener`` and the
  status report in ``_status``; this module runs them. Chain steps and group callbacks take
  a transaction that enqueues them (``_queue_transactions``).
- An enqueue sends ``pg_notify`` in its own transaction: a worker is woken only when the task
  is committed, and an enqueue on the caller's connection inside a transaction that rolls
  back never happened at all.
- Unique keys are enforced by a partial unique index on live tasks, so two replicas cannot
  both insert; the window after completion is checked in the same transaction.
- Time is the server's: :meth:`PostgresQueueBackend.time` reads ``clock_timestamp()`` every
  ``clock_resync`` seconds and advances it by the local monotonic clock in between, so a
  worker whose wall clock is off still compares leases and due times on the one clock.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import asyncpg

from tasker.backends import task_record_from_row as record_from_row
from tasker.backends import to_seconds
from tasker.queue import (
    CancelResult,
    EnqueueResult,
    GroupSpec,
    HistoryEntry,
    NewTask,
    Outcome,
    QueueCapability,
    TaskRecord,
    TaskState,
)

from ._clock import ServerClock
from ._connection import PoolSource, quote_identifier
from ._listener import Listener
from ._queue_limits import LimitStatements, claim_limited
from ._queue_sql import QueueStatements, claimed, history_entries, outcome_arrays, unstorable
from ._queue_transactions import (
    cancel_in_transaction,
    enqueue_bounded_on,
    enqueue_on,
    finish_in_transaction,
    reap_grouped,
    reap_grouped_ids,
)
from ._schema import migrate_source
from ._status import QueueStatus, queue_status
from ._workers import WorkerRegistryMethods

__all__ = ["PostgresQueueBackend"]

logger = logging.getLogger("tasker_pg")

# The claim and completion statements are planned once per connection: re-planning them
# on every call (Postgres' choice for a parameterised statement of this shape) costs more
# than running them.
_SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan"}


class PostgresQueueBackend(WorkerRegistryMethods):
    """:class:`tasker.queue.QueueBackend` on Postgres (asyncpg, asyncio only).

    Declares every capability (:class:`tasker.abc.QueueCapability`). Run
    :func:`tasker_pg.migrate` once (or ``python -m tasker_pg migrate``) before use.
    ``enqueue`` accepts ``connection=`` an asyncpg connection inside the caller's
    transaction: the task exists only if that transaction commits.

    Args:
        dsn_or_pool: a ``postgresql://`` DSN or an asyncpg pool.
        schema: the schema of the queue tables (a validated lower-case identifier).
        clock_resync: seconds (or a ``timedelta``) between readings of the server's clock
            (in between, the last reading advanced by the local monotonic clock); 0 reads it
            every time.

    Raises:
        ValueError: for a bad DSN or schema, or a negative ``clock_resync``.
        TypeError: for a ``clock_resync`` that is not a duration.
        tasker_pg.AsyncioRequiredError: under trio.
    """

    capabilities: frozenset[QueueCapability] = frozenset(QueueCapability) - {
        QueueCapability.HEADERS,  # a broker's: they are not stored
    }

    def __init__(
        self,
        dsn_or_pool: str | asyncpg.Pool | PoolSource,
        *,
        schema: str = "tasker",
        clock_resync: float | timedelta = 30.0,
    ) -> None:
        resync = to_seconds(clock_resync, "clock_resync")
        self._source = (
            dsn_or_pool
            if isinstance(dsn_or_pool, PoolSource)
            else PoolSource(dsn_or_pool, max_size=10, server_settings=_SERVER_SETTINGS)
        )
        self._clock = ServerClock(self._source, resync)
        self.schema = schema
        self._sql = QueueStatements(quote_identifier(schema, "schema"))
        self._limits = LimitStatements(quote_identifier(schema, "schema"), schema)
        # $1 the queues, $2 now: the tasks without limits and the leases, then the limited.
        self._next_run_at = f"select least(({self._sql.next_run_at}), ({self._limits.limited_due}))"
        self._channel = f"tasker_queue_{schema}"
        self._listener = Listener(self._source, self._channel)

    async def migrate(self) -> None:
        """Create every tasker_pg table, if missing: a thin wrapper of :func:`tasker_pg.migrate`
        with this backend's pool and schema, the state table under its default name
        (idempotent, safe to run concurrently)."""
        await migrate_source(self._source, schema=self.schema, table="schedule_state")

    # -- time ------------------------------------------------------------------------------

    async def time(self) -> float:
        """The server's clock (``clock_timestamp()``), as a POSIX timestamp.

        Read at most every ``clock_resync`` seconds; in between, the last reading plus the
        local monotonic time since, so the local wall clock never matters. When a reading
        fails after a first one succeeded, the last one is extrapolated the same way (until
        the next attempt, ``clock_resync`` later).

        Raises:
            asyncpg.PostgresError, OSError: when the server's clock was never read and
                cannot be read now.
        """
        return await self._clock.read()

    # -- enqueue ---------------------------------------------------------------------------

    async def enqueue_within(
        self,
        connection: Any,
        tasks: Sequence[NewTask],
        *,
        group: GroupSpec | None = None,
        now: float,
    ) -> list[EnqueueResult]:
        """Store tasks inside the transaction open on the caller's asyncpg ``connection``.

        Raises:
            ValueError: if ``connection`` is not inside a transaction.
        """
        if not connection.is_in_transaction():
            raise ValueError(
                "enqueue(connection=...): the connection must be inside a transaction"
                " (async with connection.transaction(): ...)"
            )
        return await enqueue_on(connection, self._sql, self._channel, tasks, group, now)

    async def enqueue(
        self, tasks: Sequence[NewTask], *, group: GroupSpec | None = None, now: float
    ) -> list[EnqueueResult]:
        """Store tasks in a transaction of their own."""
        pool = await self._source.pool()
        async with pool.acquire() as conn, conn.transaction():
            return await enqueue_on(conn, self._sql, self._channel, tasks, group, now)

    async def enqueue_bounded(
        self,
        tasks: Sequence[NewTask],
        *,
        max_depth: Mapping[str, int],
        group: GroupSpec | None = None,
        now: float,
    ) -> list[EnqueueResult]:
        """Store tasks in a transaction of their own unless a bounded queue would exceed its
        ``max_depth`` (``QueueFullError``, nothing stored): each bounded queue's advisory
        lock is held from before the insert to the commit, and its depth is counted along
        its indexes, never past the bound plus the batch."""
        pool = await self._source.pool()
        async with pool.acquire() as conn, conn.transaction():
            return await enqueue_bounded_on(
                conn, self._sql, self._channel, tasks, max_depth, group, now
            )

    # -- claim, heartbeat, finish ----------------------------------------------------------

    async def claim(
        self,
        queues: Sequence[str],
        limit: int,
        *,
        worker: str,
        lease: float,
        now: float,
        exclude: Sequence[str] = (),
    ) -> list[TaskRecord]:
        """Lease due tasks with SKIP LOCKED, in one statement (one round trip).

        Expired leases (their worker died) come first: claimed again, or dead when that was
        their last attempt; then due queued tasks by priority. SKIP LOCKED throughout, so
        concurrent workers never wait on each other. An expired task of a group on its last
        attempt is settled in a transaction of its own, with the group's callback. Tasks in
        ``exclude`` are never taken. While a task with a rate limit or a concurrency key is
        claimable, the statement takes nothing and the claim runs in a transaction under
        the schema's limits lock instead (``_queue_limits``), skipping the blocked tasks.
        """
        return await self._claim(
            queues, limit, worker=worker, lease=lease, now=now, exclude=list(exclude)
        )

    async def _claim(
        self,
        queues: Sequence[str],
        limit: int,
        *,
        worker: str,
        lease: float,
        now: float,
        exclude: list[str],
    ) -> list[TaskRecord]:
        pool = await self._source.pool()
        names = list(dict.fromkeys(queues))  # each queue once: its scan takes up to the limit
        rows = await pool.fetch(self._sql.claim, names, now, limit, worker, now + lease, exclude)
        if rows[0]["grouped"]:  # grouped tasks whose lease expired on their last attempt
            await reap_grouped(pool, self._sql, self._channel, list(queues), now, exclude)
        if rows[0]["limited"]:  # the statement took nothing: claim by the limits
            return await claim_limited(
                pool,
                self._limits,
                names,
                limit,
                worker=worker,
                until=now + lease,
                now=now,
                exclude=exclude,
            )
        return claimed(rows)

    async def claim_ids(
        self, ids: Sequence[str], *, worker: str, lease: float, now: float
    ) -> list[TaskRecord]:
        """Lease the named tasks a claim could take, whatever their queue, in the order
        given: one statement, by primary key, so its cost does not grow with the backlog.

        SKIP LOCKED, as in :meth:`claim`: of two workers naming the same task at once (a
        broker that redelivered it), one leases it and the other skips it. An expired lease
        on its last attempt dies as in :meth:`claim`, a grouped one in a transaction of its
        own, with the group's callback.
        """
        wanted = list(dict.fromkeys(ids))  # an id given twice is claimed once, at its first
        if not wanted:
            return []
        pool = await self._source.pool()
        rows = await pool.fetch(self._sql.claim_ids, wanted, now, worker, now + lease)
        if rows[0]["grouped"]:  # grouped tasks whose lease expired on their last attempt
            await reap_grouped_ids(pool, self._sql, self._channel, wanted, now)
        return claimed(rows)

    async def overdue(
        self, *, before: float, queues: Sequence[str] | None = None, limit: int = 100
    ) -> list[TaskRecord]:
        """The tasks a claim could take at ``before``, changing nothing, the longest overdue
        first: what a broker should have delivered and did not (its message was lost).

        Read along the claim and lease indexes (the queued half one priority at a time,
        see ``_queue_sql``), so a long backlog of due tasks costs no more than a few.
        """
        if limit <= 0 or (queues is not None and not queues):
            return []
        pool = await self._source.pool()
        if queues is None:
            rows = await pool.fetch(self._sql.overdue(every_queue=True), before, limit)
        else:
            rows = await pool.fetch(
                self._sql.overdue(every_queue=False), before, limit, list(queues)
            )
        return [record_from_row(row) for row in rows]

    async def _notify(self, pool: asyncpg.Pool, queues: set[str]) -> None:
        """Wake workers of ``queues`` (after a commit: a failure is logged, workers poll)."""
        try:
            for queue in queues:
                await pool.execute(self._sql.notify, self._channel, queue)
        except Exception as exc:
            logger.warning("could not notify workers (they will poll): %s", exc)

    async def heartbeat(
        self, worker: str, ids: Sequence[str], *, lease: float, now: float
    ) -> set[str]:
        """Extend ``worker``'s leases; return the ids it still holds."""
        if not ids:
            return set()
        pool = await self._source.pool()
        rows = await pool.fetch(self._sql.heartbeat, worker, list(ids), now + lease)
        return {row[0] for row in rows}

    async def report_progress(
        self, worker: str, task_id: str, value: float, text: str, *, now: float
    ) -> bool:
        """Store the progress of a task ``worker`` holds (one update by primary key)."""
        pool = await self._source.pool()
        status = await pool.execute(self._sql.report_progress, worker, task_id, value, text, now)
        return bool(status == "UPDATE 1")

    async def cancel_requested(self, worker: str, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` running under ``worker``'s lease whose cancel was requested (one
        read by primary key)."""
        if not ids:
            return set()
        pool = await self._source.pool()
        rows = await pool.fetch(self._sql.cancel_requested, worker, list(ids))
        return {row[0] for row in rows}

    async def cancel(self, task_id: str, *, now: float) -> CancelResult:
        """Cancel a task in one transaction (its row locked ``for update``): held, queued
        or with an expired lease at once, with its group's callback if it was the last
        member; running, by recording the request its worker reads at its next heartbeat."""
        pool = await self._source.pool()
        return await cancel_in_transaction(pool, self._sql, self._channel, task_id, now)

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> None:
        """Record outcomes; only the worker that holds a task's lease may report it.

        The common case (no chain step to enqueue, no group) is one statement: the
        outcomes go in as arrays, the tasks are updated and their history written together.
        Tasks of a group, and outcomes with follow-ups, are recorded in a transaction that
        also enqueues the next step or the group's callback.
        """
        if outcomes:
            with unstorable():
                await self._finish(outcomes, now=now, claim=None)

    async def finish_and_claim(
        self,
        outcomes: Sequence[Outcome],
        *,
        now: float,
        queues: Sequence[str],
        limit: int,
        worker: str,
        lease: float,
        exclude: Sequence[str] = (),
    ) -> list[TaskRecord]:
        """:meth:`finish`, then :meth:`claim`, in one statement (one round trip, one commit).

        A worker whose slots free up as its tasks end reports them and takes new ones at
        once. The claim never takes a task of ``outcomes`` or ``exclude``.
        """
        skip = list(dict.fromkeys([*exclude, *(o.id for o in outcomes)]))
        if limit > 0 and not any(o.follow_ups for o in outcomes):
            with unstorable():
                taken, complete = await self._finish(
                    outcomes,
                    now=now,
                    claim=(list(dict.fromkeys(queues)), now, limit, worker, now + lease, skip),
                )
            if complete:
                return taken
        else:  # a chain step to enqueue: a transaction, then the claim
            await self.finish(outcomes, now=now)
        if limit <= 0:
            return []
        return await self._claim(queues, limit, worker=worker, lease=lease, now=now, exclude=skip)

    async def _finish(
        self, outcomes: Sequence[Outcome], *, now: float, claim: tuple[Any, ...] | None
    ) -> tuple[list[TaskRecord], bool]:
        """Record ``outcomes``; with ``claim``, claim in the same statement.

        Returns the claimed tasks, and whether the claim happened: the statement claims
        nothing when an outcome belongs to a group (those go through a transaction first,
        so nothing can fail after tasks were claimed), and the caller claims afterwards.
        """
        simple = [o for o in outcomes if not o.follow_ups]
        rest = [o for o in outcomes if o.follow_ups]
        taken: list[TaskRecord] = []
        complete = claim is not None
        pool = await self._source.pool()
        arrays = outcome_arrays(simple, now)
        if claim is not None:
            rows = await pool.fetch(self._sql.finish_claim, *arrays, *claim)
            first = rows[0]
            requeued = set(first["requeued"] or ())
            grouped = set(first["grouped_ids"] or ())
            complete = not grouped
            taken = claimed(rows)
            if first["keyed"]:  # a concurrency key's slot freed: wake every waiting worker
                requeued.add("*")
            if first["grouped"]:
                await reap_grouped(pool, self._sql, self._channel, claim[0], now, claim[5])
            if first["limited"] and complete:  # the statement took nothing: by the limits
                queues, _, limit, worker, until, skip = claim
                taken = await claim_limited(
                    pool,
                    self._limits,
                    queues,
                    limit,
                    worker=worker,
                    until=until,
                    now=now,
                    exclude=skip,
                )
        elif simple:
            rows = await pool.fetch(self._sql.finish, *arrays)
            requeued = {row[1] for row in rows if row[2]}
            grouped = {row[0] for row in rows if row[3]}
            if any(row[4] for row in rows):  # a concurrency key's slot freed: wake waiters
                requeued.add("*")
        else:
            requeued, grouped = set(), set()
        await self._notify(pool, requeued)
        rest.extend(o for o in simple if o.id in grouped)
        if rest:
            # Nothing was claimed when an outcome is grouped: a failure here loses no task.
            assert not taken
            await finish_in_transaction(pool, self._sql, self._channel, rest, now)
        return taken, complete

    # -- reading and maintenance -----------------------------------------------------------

    async def get(self, task_id: str) -> TaskRecord | None:
        """Return a task by id."""
        pool = await self._source.pool()
        row = await pool.fetchrow(self._sql.get, task_id)
        return None if row is None else record_from_row(row)

    async def tasks(
        self, *, state: TaskState | None = None, queue: str | None = None, limit: int = 100
    ) -> list[TaskRecord]:
        """List tasks, newest first."""
        pool = await self._source.pool()
        query, args = self._sql.list_tasks(None if state is None else state.value, queue)
        rows = await pool.fetch(query, *args, limit)
        return [record_from_row(row) for row in rows]

    async def requeue(self, task_id: str, *, now: float) -> bool:
        """Give a dead task fresh attempts (not if a newer live task holds its unique key)."""
        pool = await self._source.pool()
        async with pool.acquire() as conn, conn.transaction():
            status = await conn.execute(self._sql.requeue, task_id, now)
            done = status.endswith(" 1")
            if done:
                await conn.execute(self._sql.notify, self._channel, "*")
        return done

    async def dispatch(
        self, queue: str, *, name: str | None = None, limit: int | None = None, now: float
    ) -> int:
        """Release held tasks."""
        pool = await self._source.pool()
        async with pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                self._sql.dispatch(named=name is not None),
                queue,
                limit,
                now,
                *(() if name is None else (name,)),
            )
            count = int(status.split()[-1])
            if count:
                await conn.execute(self._sql.notify, self._channel, queue)
        return count

    async def counts(self) -> dict[str, dict[TaskState, int]]:
        """Counts per queue and state."""
        pool = await self._source.pool()
        result: dict[str, dict[TaskState, int]] = {}
        for queue, state, count in await pool.fetch(self._sql.counts):
            result.setdefault(queue, {})[TaskState(state)] = count
        return result

    async def history(self, *, task_id: str | None = None, limit: int = 100) -> list[HistoryEntry]:
        """Attempts, newest first."""
        pool = await self._source.pool()
        query, args = self._sql.list_history(task_id)
        return history_entries(await pool.fetch(query, *args, limit))

    async def next_run_at(self, queues: Sequence[str]) -> float | None:
        """Earliest run_at of a queued task, or lease expiry of a running one; for a task
        with limits, when they let it start at the backend's :meth:`time` (later while its
        name's rate window is full; never while its concurrency key is full: a finish of a
        keyed task, or a lease expiry, frees a slot and wakes the waiters)."""
        now = await self.time()
        pool = await self._source.pool()
        value: float | None = await pool.fetchval(self._next_run_at, list(queues), now)
        return value

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Wait for a NOTIFY, the listener's loss, the next due time in ``queues``, or the
        timeout.

        After (re)connecting the listener it returns at once: notifications sent while it
        was not listening are lost, so the worker must look for work itself.
        """

        async def due_in() -> float | None:
            due = await self.next_run_at(queues)
            return None if due is None else due - await self.time()

        await self._listener.wait(timeout, due_in=due_in)

    async def purge(
        self,
        *,
        now: float,
        history_before: float | None = None,
        dead_before: float | None = None,
    ) -> int:
        """Delete what retention no longer keeps (``QueueAdministration.purge``)."""
        pool = await self._source.pool()
        # -inf: no dead task finished before it (one statement, one generic plan).
        status = await pool.execute(
            self._sql.purge, now, float("-inf") if dead_before is None else dead_before
        )
        if history_before is not None:
            await pool.execute(self._sql.purge_history, history_before)
        # Rate-log entries of names no claim has started since they expired.
        await pool.execute(self._limits.purge, now)
        return int(status.split()[-1])

    async def status(self, *, now: float | None = None) -> QueueStatus:
        """Depth per queue and state, the oldest waiting task's age, and the live workers.

        Args:
            now: the moment to report at; by default the server's clock (:meth:`time`).

        Returns:
            A :class:`tasker_pg.QueueStatus` (its ``format()`` is what ``python -m
            tasker_pg status`` prints).
        """
        moment = await self.time() if now is None else now
        pool = await self._source.pool()
        return await queue_status(pool, self._sql, await self.counts(), moment)

    async def aclose(self) -> None:
        """Close the listener and a pool made from a DSN."""
        await self._listener.aclose()
        await self._source.close()

    def __repr__(self) -> str:
        return f"PostgresQueueBackend({self._source!r}, schema={self.schema!r})"
