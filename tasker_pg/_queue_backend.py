"""The Postgres queue backend: ``FOR UPDATE SKIP LOCKED`` claims, ``LISTEN/NOTIFY`` wake-ups.

Design notes:

- Claims lease up to ``limit`` tasks in one statement (``SKIP LOCKED``, so workers never wait
  on each other; per queue, an ordered scan of the claim index that stops at the limit).
  A batch of completions is one statement too (``unnest`` of arrays: task rows and history
  together); chain steps and group callbacks take a transaction that enqueues them.
- An enqueue sends ``pg_notify`` in its own transaction: a worker is woken only when the task
  is committed, and an enqueue on the caller's connection inside a transaction that rolls
  back never happened at all.
- The listener connection reconnects by itself: a wait after a lost connection returns at
  once, so the worker claims whatever it missed, and the next wait listens again.
- Unique keys are enforced by a partial unique index on live tasks, so two replicas cannot
  both insert; the window after completion is checked in the same transaction.
- Time is the server's: :meth:`PostgresQueueBackend.time` reads ``clock_timestamp()`` every
  ``clock_resync`` seconds and advances it by the local monotonic clock in between, so a
  worker whose wall clock is off still compares leases and due times on the one clock.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import asyncpg

from tasker.backends import LIVE_STATES, callback_from_json, callback_to_json, group_payload
from tasker.backends import TASK_COLUMNS as COLUMNS
from tasker.backends import task_record_from_row as record_from_row
from tasker.queue import (
    EnqueueResult,
    GroupSpec,
    HistoryEntry,
    NewTask,
    Outcome,
    OutcomeKind,
    QueueCapability,
    TaskRecord,
    TaskState,
    UnstorableRecordError,
)

from ._connection import PoolSource, quote_identifier

__all__ = ["PostgresQueueBackend", "QueueStatus", "WorkerLease"]

logger = logging.getLogger("tasker_pg")


# The combined statement claims only when no outcome belongs to a group.
_UNGROUPED = " where not exists (select from held h where h.group_id is not null)"


def _outcome_arrays(outcomes: Sequence[Outcome], now: float) -> tuple[list[Any], ...]:
    """The parameters ``$1`` .. ``$10`` of the completion statement."""
    return (
        [o.id for o in outcomes],
        [o.worker for o in outcomes],
        [o.kind.value for o in outcomes],
        [o.result for o in outcomes],
        [o.result_expires for o in outcomes],
        [o.error for o in outcomes],
        [o.traceback for o in outcomes],
        [o.started_at for o in outcomes],
        [o.finished_at for o in outcomes],
        [o.retry_at if o.retry_at is not None else now for o in outcomes],
    )


@contextlib.contextmanager
def _unstorable() -> Iterator[None]:
    """Translate the server's refusal of a value (SQLSTATE class 22, data exceptions, or 54,
    program limits such as a row too large) into tasker's ``UnstorableRecordError``: retrying
    the same outcome fails the same way, so the worker stores it in a reduced form."""
    try:
        yield
    except (asyncpg.exceptions.DataError, asyncpg.exceptions.ProgramLimitExceededError) as exc:
        raise UnstorableRecordError(f"{type(exc).__name__}: {exc}") from exc


def _filters(*pairs: tuple[str, object]) -> tuple[str, list[object]]:
    """A ``where`` clause for the given (column, value) pairs whose value is not None."""
    args = [value for _, value in pairs if value is not None]
    columns = [column for column, value in pairs if value is not None]
    if not columns:
        return "", []
    return " where " + " and ".join(f"{c} = ${i}" for i, c in enumerate(columns, 1)), args


def _claimed(rows: Sequence[Any]) -> list[TaskRecord]:
    """The claimed tasks of a claim statement's rows, in claim order."""
    claimed = sorted((row for row in rows if row["id"] is not None), key=lambda row: row["rank"])
    return [record_from_row(row) for row in claimed]


def _prefixed(alias: str) -> str:
    return ", ".join(f"{alias}.{column.strip()}" for column in COLUMNS.split(","))


# The claim and completion statements are planned once per connection: re-planning them
# on every call (Postgres' choice for a parameterised statement of this shape) costs more
# than running them.
_SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan"}

# A dedicated connection or one borrowed from a pool.
_Conn = Any


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerLease:
    """A worker holding leases: how many tasks, and when its latest lease runs out."""

    worker: str
    tasks: int
    lease_expires_in: float


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStatus:
    """What :meth:`PostgresQueueBackend.status` reports."""

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


class PostgresQueueBackend:
    """:class:`tasker.queue.QueueBackend` on Postgres (asyncpg, asyncio only).

    Declares every capability (:class:`tasker.abc.QueueCapability`).

    Args:
        dsn_or_pool: a ``postgresql://`` DSN or an asyncpg pool.
        schema: the schema of the queue tables (a validated lower-case identifier).

    Call :meth:`migrate` once (or ``python -m tasker_pg migrate``). ``enqueue`` accepts
    ``connection=`` an asyncpg connection inside the caller's transaction: the task exists
    only if that transaction commits.

    Args:
        clock_resync: seconds between readings of the server's clock (in between, the last
            reading advanced by the local monotonic clock); 0 reads it every time.

    Raises:
        ValueError: for a bad DSN, schema or ``clock_resync``.
        tasker_pg.AsyncioRequiredError: under trio.
    """

    capabilities: frozenset[QueueCapability] = frozenset(QueueCapability)

    def __init__(
        self,
        dsn_or_pool: str | asyncpg.Pool | PoolSource,
        *,
        schema: str = "tasker",
        clock_resync: float = 30.0,
    ) -> None:
        if (
            isinstance(clock_resync, bool)
            or not isinstance(clock_resync, int | float)
            or not clock_resync >= 0
        ):
            raise ValueError(f"clock_resync must be >= 0 seconds, got {clock_resync!r}")
        self._clock_resync = float(clock_resync)
        self._clock: tuple[float, float] | None = None
        self._source = (
            dsn_or_pool
            if isinstance(dsn_or_pool, PoolSource)
            else PoolSource(dsn_or_pool, max_size=10, server_settings=_SERVER_SETTINGS)
        )
        self.schema = schema
        q = quote_identifier(schema, "schema")
        self._schema = q
        self._tasks = f"{q}.queue_tasks"
        self._groups = f"{q}.queue_groups"
        self._history = f"{q}.queue_history"
        self._channel = f"tasker_queue_{schema}"
        self._listener: _Conn | None = None
        self._work = anyio.Event()
        self._listener_lock: anyio.Lock | None = None

    # -- schema ----------------------------------------------------------------------------

    async def migrate(self) -> None:
        """Create the queue tables and indexes (idempotent, safe to run concurrently)."""
        pool = await self._source.pool()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("select pg_advisory_xact_lock(hashtext('tasker_pg.migrate'))")
            await conn.execute(f"create schema if not exists {self._schema}")
            await conn.execute(
                f"""create table if not exists {self._tasks} (
                    id text primary key,
                    name text not null,
                    queue text not null,
                    payload bytea not null,
                    priority integer not null,
                    run_at double precision not null,
                    state text not null,
                    attempts integer not null default 0,
                    max_attempts integer not null,
                    timeout double precision,
                    unique_key text,
                    unique_until double precision,
                    created_at double precision not null,
                    lease_owner text,
                    lease_until double precision,
                    result bytea,
                    result_expires double precision,
                    last_error text,
                    traceback text,
                    finished_at double precision,
                    chain bytea,
                    group_id text,
                    group_index integer
                )"""
            )
            # Claims read due tasks of a queue in this order and stop at their limit.
            await conn.execute(
                f"create index if not exists queue_tasks_claim on {self._tasks}"
                " (queue, priority desc, run_at, created_at) where state = 'queued'"
            )
            await conn.execute(f"drop index if exists {self._schema}.queue_tasks_due")
            await conn.execute(
                f"create index if not exists queue_tasks_lease on {self._tasks} (lease_until)"
                " where state = 'running'"
            )
            await conn.execute(
                f"create unique index if not exists queue_tasks_unique_live on {self._tasks}"
                " (unique_key) where unique_key is not null"
                " and state in ('held', 'queued', 'running')"
            )
            await conn.execute(
                f"create index if not exists queue_tasks_unique on {self._tasks} (unique_key)"
                " where unique_key is not null"
            )
            await conn.execute(
                f"create index if not exists queue_tasks_group on {self._tasks} (group_id)"
                " where group_id is not null"
            )
            await conn.execute(
                f"create table if not exists {self._groups} ("
                " id text primary key, size integer not null, callback jsonb)"
            )
            await conn.execute(
                f"""create table if not exists {self._history} (
                    task_id text not null, name text not null, queue text not null,
                    worker text not null, attempt integer not null,
                    started_at double precision not null, finished_at double precision not null,
                    outcome text not null, error text)"""
            )
            await conn.execute(
                f"create index if not exists queue_history_task on {self._history} (task_id)"
            )

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
        local = time.monotonic()
        if self._clock is None or local - self._clock[1] >= self._clock_resync:
            try:
                pool = await self._source.pool()
                before = time.monotonic()
                value: float = await pool.fetchval("select extract(epoch from clock_timestamp())")
                after = time.monotonic()
            except Exception as exc:
                if self._clock is None:
                    raise
                # The last reading, advanced by the monotonic clock, is as good as a new one
                # for a while: an outage must not make every caller wait for a connection.
                reading, at = self._clock
                self._clock = (reading + (local - at), local)
                logger.debug("could not read the server's clock (%s); extrapolating", exc)
            else:
                # The server read its clock somewhere in the round trip: take the middle.
                self._clock = (float(value), (before + after) / 2)
        reading, at = self._clock
        return reading + (time.monotonic() - at)

    # -- enqueue ---------------------------------------------------------------------------

    async def _insert(self, conn: _Conn, task: NewTask) -> bool:
        row = await conn.fetchrow(
            f"insert into {self._tasks} (id, name, queue, payload, priority, run_at, state,"  # noqa: S608 - validated identifiers
            " max_attempts, timeout, unique_key, unique_until, created_at, chain, group_id,"
            " group_index)"
            " values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
            " on conflict (unique_key) where unique_key is not null"
            " and state in ('held', 'queued', 'running') do nothing returning id",
            task.id,
            task.name,
            task.queue,
            task.payload,
            task.priority,
            task.run_at,
            "held" if task.held else "queued",
            task.max_attempts,
            task.timeout,
            task.unique_key,
            task.unique_until,
            task.created_at,
            task.chain,
            task.group_id,
            task.group_index,
        )
        return row is not None

    async def _enqueue_on(
        self,
        conn: _Conn,
        tasks: Sequence[NewTask],
        group: GroupSpec | None,
        now: float,
    ) -> list[EnqueueResult]:
        results = []
        queues = set()
        for task in tasks:
            if task.unique_key is not None:
                row = await conn.fetchrow(
                    f"select id, state, unique_until from {self._tasks} where unique_key = $1"  # noqa: S608
                    " order by (state in ('held', 'queued', 'running')) desc, created_at desc"
                    " limit 1",
                    task.unique_key,
                )
                if row is not None and (
                    row[1] in LIVE_STATES or (row[2] is not None and now < row[2])
                ):
                    results.append(EnqueueResult(id=row[0], deduplicated=True))
                    continue
            if await self._insert(conn, task):
                results.append(EnqueueResult(id=task.id))
                queues.add(task.queue)
            else:  # another replica inserted a live task with this key meanwhile
                existing = await conn.fetchval(
                    f"select id from {self._tasks} where unique_key = $1"  # noqa: S608
                    " and state in ('held', 'queued', 'running')",
                    task.unique_key,
                )
                results.append(EnqueueResult(id=existing, deduplicated=True))
        if group is not None:
            await conn.execute(
                f"insert into {self._groups} (id, size, callback) values ($1, $2, $3)",  # noqa: S608
                group.id,
                group.size,
                None if group.callback is None else callback_to_json(group.callback),
            )
        for queue in queues:
            await conn.execute("select pg_notify($1, $2)", self._channel, queue)
        return results

    async def enqueue_within(
        self,
        connection: _Conn,
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
        return await self._enqueue_on(connection, tasks, group, now)

    async def enqueue(
        self, tasks: Sequence[NewTask], *, group: GroupSpec | None = None, now: float
    ) -> list[EnqueueResult]:
        """Store tasks in a transaction of their own."""
        pool = await self._source.pool()
        async with pool.acquire() as conn, conn.transaction():
            return await self._enqueue_on(conn, tasks, group, now)

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
        ``exclude`` are never taken.
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
        rows = await pool.fetch(self._claim_sql, names, now, limit, worker, now + lease, exclude)
        if rows[0]["grouped"]:  # grouped tasks whose lease expired on their last attempt
            await self._reap_grouped(list(queues), now, exclude)
        return _claimed(rows)

    def _claim_ctes(self, first: int, exclude: str, gate: str = "") -> str:
        """The claim's CTEs; parameters ``$first`` .. ``$first+4`` are queues, now, limit,
        worker and lease end. ``exclude``: an array parameter of task ids never to take.
        ``gate``: a ``where`` clause; when it is false nothing is claimed at all."""
        tasks = self._tasks
        queues, now, limit, worker, until = (f"${first + i}" for i in range(5))
        skip = f" and not (id = any({exclude}::text[]))"
        return (
            # Expired on their last attempt, outside a group: dead now.
            f" dead as (update {tasks} set state = 'dead', lease_owner = null,"  # noqa: S608 - validated identifiers
            f" lease_until = null, finished_at = {now},"
            " last_error = 'lease expired (the worker stopped responding)'"
            f" where id in (select id from {tasks} where state = 'running'"
            f" and queue = any({queues}) and lease_until <= {now}"
            f" and attempts >= max_attempts and group_id is null{skip}"
            " for update skip locked) returning id),"
            # Expired with attempts left first, then due queued tasks. A CTE is read lazily:
            # the outer limit stops the second scan (and its row locks) once the first filled it.
            f" expired as (select id from {tasks} where state = 'running'"
            f" and queue = any({queues}) and lease_until <= {now}"
            f" and attempts < max_attempts{skip} order by lease_until"
            f" limit {limit} for update skip locked),"
            # Per queue, an ordered scan of the claim index that stops at the limit (one
            # scan over several queues would read and sort every due task).
            f" due as (select x.id from unnest({queues}::text[]) as q(name), lateral"
            f" (select id, priority, run_at, created_at from {tasks} where queue = q.name"
            f" and state = 'queued' and run_at <= {now}{skip}"
            f" order by priority desc, run_at, created_at limit {limit}"
            " for update skip locked) x"
            f" order by x.priority desc, x.run_at, x.created_at limit {limit}),"
            " picked as (select id, row_number() over () as rank from (select id from expired"
            f" union all select id from due limit {limit}) c{gate}),"
            f" claimed as (update {tasks} t set state = 'running', attempts = t.attempts + 1,"
            f" lease_owner = {worker}, lease_until = {until} from picked p where t.id = p.id"
            f" returning {_prefixed('t')}, p.rank)"
        )

    def _grouped_expired(self, first: int, exclude: str) -> str:
        queues, now = f"${first}", f"${first + 1}"
        skip = f" and not (id = any({exclude}::text[]))"
        return (
            f"exists(select 1 from {self._tasks} where state = 'running'"  # noqa: S608 - validated identifiers
            f" and queue = any({queues}) and lease_until <= {now}"
            f" and attempts >= max_attempts and group_id is not null{skip}) as grouped"
        )

    @functools.cached_property
    def _claim_sql(self) -> str:
        return (
            f"with{self._claim_ctes(1, '$6')}"  # noqa: S608 - validated identifiers
            # One row at least: the flag rides on every row, with or without a claim.
            f" select c.*, f.grouped from (select {self._grouped_expired(1, '$6')}) f"
            " left join claimed c on true"
        )

    async def _reap_grouped(self, queues: list[str], now: float, exclude: list[str]) -> None:
        """Settle grouped tasks whose lease expired on their last attempt (never ``exclude``).

        Runs after a claim committed: a failure here is logged, not raised (the claimed
        tasks must reach their worker); the next claim finds these tasks again.
        """
        try:
            pool = await self._source.pool()
            async with pool.acquire() as conn, conn.transaction():
                dead = await conn.fetch(
                    f"update {self._tasks} set state = 'dead', lease_owner = null,"  # noqa: S608
                    " lease_until = null, finished_at = $2,"
                    " last_error = 'lease expired (the worker stopped responding)'"
                    f" where id in (select id from {self._tasks} where state = 'running'"
                    " and queue = any($1) and lease_until <= $2 and attempts >= max_attempts"
                    " and group_id is not null and not (id = any($3::text[]))"
                    " order by id for update skip locked) returning id, group_id",
                    queues,
                    now,
                    exclude,
                )
                await self._lock_groups(conn, [row[1] for row in dead])
                fired = False
                for row in sorted(dead, key=lambda row: str(row[0])):
                    fired |= await self._group_member_done(conn, row[0], now)
                if fired:
                    await conn.execute("select pg_notify($1, $2)", self._channel, "*")
        except Exception as exc:
            logger.warning("could not settle expired grouped tasks yet: %s", exc)

    async def _notify(self, pool: asyncpg.Pool, queues: set[str]) -> None:
        """Wake workers of ``queues`` (after a commit: a failure is logged, workers poll)."""
        try:
            for queue in queues:
                await pool.execute("select pg_notify($1, $2)", self._channel, queue)
        except Exception as exc:
            logger.warning("could not notify workers (they will poll): %s", exc)

    async def heartbeat(
        self, worker: str, ids: Sequence[str], *, lease: float, now: float
    ) -> set[str]:
        """Extend ``worker``'s leases; return the ids it still holds."""
        if not ids:
            return set()
        pool = await self._source.pool()
        rows = await pool.fetch(
            f"update {self._tasks} set lease_until = $3 where state = 'running'"  # noqa: S608
            " and lease_owner = $1 and id = any($2) returning id",
            worker,
            list(ids),
            now + lease,
        )
        return {row[0] for row in rows}

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> None:
        """Record outcomes; only the worker that holds a task's lease may report it.

        The common case (no chain step to enqueue, no group) is one statement: the
        outcomes go in as arrays, the tasks are updated and their history written together.
        Tasks of a group, and outcomes with follow-ups, are recorded in a transaction that
        also enqueues the next step or the group's callback.
        """
        if outcomes:
            with _unstorable():
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
            with _unstorable():
                claimed, complete = await self._finish(
                    outcomes,
                    now=now,
                    claim=(list(dict.fromkeys(queues)), now, limit, worker, now + lease, skip),
                )
            if complete:
                return claimed
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
        claimed: list[TaskRecord] = []
        complete = claim is not None
        pool = await self._source.pool()
        arrays = _outcome_arrays(simple, now)
        if claim is not None:
            rows = await pool.fetch(self._finish_claim_sql, *arrays, *claim)
            first = rows[0]
            requeued = set(first["requeued"] or ())
            grouped = set(first["grouped_ids"] or ())
            complete = not grouped
            claimed = _claimed(rows)
            if first["grouped"]:
                await self._reap_grouped(claim[0], now, claim[5])
        elif simple:
            rows = await pool.fetch(self._finish_sql, *arrays)
            requeued = {row[1] for row in rows if row[2]}
            grouped = {row[0] for row in rows if row[3]}
        else:
            requeued, grouped = set(), set()
        await self._notify(pool, requeued)
        rest.extend(o for o in simple if o.id in grouped)
        if rest:
            # Nothing was claimed when an outcome is grouped: a failure here loses no task.
            assert not claimed
            await self._finish_in_transaction(rest, now=now)
        return claimed, complete

    def _finish_ctes(self, *, grouped: bool = False) -> str:
        """The completion's CTEs; parameters ``$1`` .. ``$10`` are the outcome arrays.

        Tasks of a group are left alone unless ``grouped`` (the caller then settles the
        group in the same transaction)."""
        tasks, history = self._tasks, self._history
        alone = "" if grouped else " and h.group_id is null"
        return (
            " o as (select * from unnest($1::text[], $2::text[], $3::text[],"  # noqa: S608 - validated identifiers
            " $4::bytea[], $5::float8[], $6::text[], $7::text[], $8::float8[], $9::float8[],"
            " $10::float8[]) as o(id, worker, kind, result, expires, error, trace, started,"
            " finished, retry_at)),"
            # Only the lease holder may report: a slow worker whose lease expired (its
            # task runs elsewhere now) is ignored.
            " held as (select t.id, t.name, t.queue, t.attempts, t.group_id, o.worker,"
            " o.kind, o.result, o.expires, o.error, o.trace, o.started, o.finished,"
            f" o.retry_at from {tasks} t join o on o.id = t.id"
            # A lease owner is set exactly while a task is running, so the owner check is
            # the state check too; it leaves the planner a primary-key lookup per outcome
            # (``state = 'running'`` would draw it to the lease index and its dead entries).
            " where t.id = any($1::text[]) and t.lease_owner = o.worker for update of t),"
            f" done as (update {tasks} t set"
            " state = case h.kind when 'succeeded' then 'succeeded' when 'dead' then 'dead'"
            " else 'queued' end,"
            " lease_owner = null, lease_until = null,"
            " attempts = case when h.kind = 'released' then t.attempts - 1 else t.attempts end,"
            " run_at = case when h.kind = 'retry' then h.retry_at else t.run_at end,"
            " result = case when h.kind = 'succeeded' then h.result else t.result end,"
            " result_expires = case when h.kind = 'succeeded' then h.expires"
            " else t.result_expires end,"
            " last_error = case h.kind when 'succeeded' then null when 'released'"
            " then t.last_error else h.error end,"
            " traceback = case h.kind when 'succeeded' then null when 'released'"
            " then t.traceback else h.trace end,"
            " finished_at = case when h.kind in ('succeeded', 'dead') then h.finished"
            " else t.finished_at end"
            f" from held h where t.id = h.id{alone} returning t.id),"
            f" written as (insert into {history} (task_id, name, queue, worker, attempt,"
            " started_at, finished_at, outcome, error)"
            " select id, name, queue, worker, attempts, started, finished, kind, error"
            f" from held h where kind <> 'released'{alone})"
        )

    @functools.cached_property
    def _finish_sql(self) -> str:
        return (
            f"with{self._finish_ctes()}"  # noqa: S608 - validated identifiers
            " select id, queue, kind in ('retry', 'released'), group_id is not null from held"
        )

    @functools.cached_property
    def _finish_claim_sql(self) -> str:
        # One snapshot for both parts: a task requeued by an outcome here is claimable by
        # the next claim, not this one; $16 (the outcomes' own tasks and the caller's
        # exclusions) is excluded from the claim.
        return (
            f"with{self._finish_ctes()},{self._claim_ctes(11, '$16', _UNGROUPED)}"  # noqa: S608 - validated identifiers
            f" select c.*, f.grouped, f.requeued, f.grouped_ids from (select"
            f" {self._grouped_expired(11, '$16')},"
            " (select array_agg(distinct queue) from held where kind in ('retry', 'released'))"
            " as requeued,"
            " (select array_agg(id) from held where group_id is not null) as grouped_ids) f"
            " left join claimed c on true"
        )

    @functools.cached_property
    def _finish_all_sql(self) -> str:
        return (
            f"with{self._finish_ctes(grouped=True)}"  # noqa: S608 - validated identifiers
            " select id, queue, kind, group_id from held"
        )

    async def _finish_in_transaction(self, outcomes: Sequence[Outcome], *, now: float) -> None:
        """Record outcomes with their follow-ups (a chain's next step) and group callbacks."""
        pool = await self._source.pool()
        by_id = {o.id: o for o in outcomes}
        queues: set[str] = set()
        async with pool.acquire() as conn, conn.transaction():
            # Rows are locked in id order, and groups in id order below: two workers that
            # finish members of the same groups in opposite orders must not deadlock.
            await conn.execute(
                f"select from {self._tasks} where id = any($1) order by id for update",
                sorted(by_id),
            )
            rows = await conn.fetch(self._finish_all_sql, *_outcome_arrays(outcomes, now))
            members: dict[str, str] = {}  # finished members of groups: task id -> group id
            for task_id, queue, kind, group_id in rows:
                if kind == OutcomeKind.SUCCEEDED.value:
                    for follow_up in by_id[task_id].follow_ups:
                        await self._insert(conn, follow_up)
                        queues.add(follow_up.queue)
                if kind in (OutcomeKind.RETRY.value, OutcomeKind.RELEASED.value):
                    queues.add(queue)
                elif group_id is not None:
                    members[task_id] = group_id
            await self._lock_groups(conn, list(members.values()))
            for task_id in members:
                if await self._group_member_done(conn, task_id, now):
                    queues.add("*")
            for queue in queues:
                await conn.execute("select pg_notify($1, $2)", self._channel, queue)

    async def _lock_groups(self, conn: _Conn, group_ids: Sequence[str]) -> None:
        """Lock the callback rows of these groups, in id order (no deadlock between workers)."""
        if group_ids:
            await conn.execute(
                f"select id from {self._groups} where id = any($1) order by id for update",  # noqa: S608
                sorted(set(group_ids)),
            )

    async def _group_member_done(self, conn: _Conn, task_id: str, now: float) -> bool:
        group_id = await conn.fetchval(
            f"select group_id from {self._tasks} where id = $1",  # noqa: S608
            task_id,
        )
        if group_id is None:
            return False
        # Lock the group first: two members finishing in concurrent transactions would each
        # see the other unfinished and neither would fire the callback. After the lock, the
        # count below (a new statement) sees the other transaction's committed state.
        exists = await conn.fetchval(
            f"select 1 from {self._groups} where id = $1 for update",  # noqa: S608
            group_id,
        )
        if exists is None:
            return False  # fired already, or a group without a callback row
        left = await conn.fetchval(
            f"select count(*) from {self._tasks} where group_id = $1"  # noqa: S608
            " and state not in ('succeeded', 'dead')",
            group_id,
        )
        if left:
            return False
        callback = await conn.fetchval(
            f"delete from {self._groups} where id = $1 returning callback",  # noqa: S608
            group_id,
        )
        if callback is None:
            return False
        results = await conn.fetch(
            f"select case when state = 'succeeded' then result end from {self._tasks}"  # noqa: S608
            " where group_id = $1 order by group_index",
            group_id,
        )
        payload = group_payload([None if r[0] is None else bytes(r[0]) for r in results])
        await self._insert(conn, callback_from_json(callback, payload, now))
        return True

    # -- reading and maintenance -----------------------------------------------------------

    async def get(self, task_id: str) -> TaskRecord | None:
        """Return a task by id."""
        pool = await self._source.pool()
        row = await pool.fetchrow(f"select {COLUMNS} from {self._tasks} where id = $1", task_id)  # noqa: S608
        return None if row is None else record_from_row(row)

    async def tasks(
        self, *, state: TaskState | None = None, queue: str | None = None, limit: int = 100
    ) -> list[TaskRecord]:
        """List tasks, newest first."""
        pool = await self._source.pool()
        # One statement per combination of filters: ``($1 is null or state = $1)`` would
        # give a generic plan that cannot use an index for either.
        where, args = _filters(("state", None if state is None else state.value), ("queue", queue))
        rows = await pool.fetch(
            f"select {COLUMNS} from {self._tasks}{where}"  # noqa: S608 - validated identifiers
            f" order by created_at desc limit ${len(args) + 1}",
            *args,
            limit,
        )
        return [record_from_row(row) for row in rows]

    async def requeue(self, task_id: str, *, now: float) -> bool:
        """Give a dead task fresh attempts (not if a newer live task holds its unique key)."""
        pool = await self._source.pool()
        async with pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                f"update {self._tasks} t set state = 'queued', attempts = 0, run_at = $2,"  # noqa: S608
                " finished_at = null where id = $1 and state = 'dead' and (unique_key is null"
                f" or not exists (select 1 from {self._tasks} o where o.unique_key = t.unique_key"
                " and o.state in ('held', 'queued', 'running')))",
                task_id,
                now,
            )
            done = status.endswith(" 1")
            if done:
                await conn.execute("select pg_notify($1, $2)", self._channel, "*")
        return done

    async def dispatch(
        self, queue: str, *, name: str | None = None, limit: int | None = None, now: float
    ) -> int:
        """Release held tasks."""
        pool = await self._source.pool()
        async with pool.acquire() as conn, conn.transaction():
            named = "" if name is None else " and name = $4"
            status = await conn.execute(
                f"update {self._tasks} set state = 'queued', run_at = least(run_at, $3)"  # noqa: S608
                f" where id in (select id from {self._tasks} where state = 'held' and queue = $1"
                f"{named} order by priority desc, created_at limit $2 for update skip locked)",
                queue,
                limit,
                now,
                *(() if name is None else (name,)),
            )
            count = int(status.split()[-1])
            if count:
                await conn.execute("select pg_notify($1, $2)", self._channel, queue)
        return count

    async def counts(self) -> dict[str, dict[TaskState, int]]:
        """Counts per queue and state."""
        pool = await self._source.pool()
        rows = await pool.fetch(
            f"select queue, state, count(*) from {self._tasks} group by queue, state"  # noqa: S608
        )
        result: dict[str, dict[TaskState, int]] = {}
        for queue, state, count in rows:
            result.setdefault(queue, {})[TaskState(state)] = count
        return result

    async def history(self, *, task_id: str | None = None, limit: int = 100) -> list[HistoryEntry]:
        """Attempts, newest first."""
        pool = await self._source.pool()
        where, args = _filters(("task_id", task_id))
        rows = await pool.fetch(
            "select task_id, name, queue, worker, attempt, started_at, finished_at, outcome,"  # noqa: S608
            f" error from {self._history}{where}"
            f" order by finished_at desc, ctid desc limit ${len(args) + 1}",
            *args,
            limit,
        )
        return [
            HistoryEntry(
                task_id=r[0],
                name=r[1],
                queue=r[2],
                worker=r[3],
                attempt=r[4],
                started_at=r[5],
                finished_at=r[6],
                outcome=r[7],
                error=r[8],
            )
            for r in rows
        ]

    async def next_run_at(self, queues: Sequence[str]) -> float | None:
        """Earliest run_at of a queued task, or lease expiry of a running one."""
        pool = await self._source.pool()
        value: float | None = await pool.fetchval(
            f"select least((select min(run_at) from {self._tasks} where state = 'queued'"  # noqa: S608
            f" and queue = any($1)), (select min(lease_until) from {self._tasks}"
            " where state = 'running' and queue = any($1)))",
            list(queues),
        )
        return value

    def _on_notify(self, *args: object) -> None:
        # A plain callback from asyncpg: set the event, act on it from a task.
        self._work.set()

    def _on_listener_lost(self, connection: object) -> None:
        self._work.set()

    async def _ensure_listener(self) -> bool:
        """Listen if not listening; True if a new listener was just set up."""
        if self._listener is not None and not self._listener.is_closed():
            return False
        if self._listener_lock is None:
            self._listener_lock = anyio.Lock()
        async with self._listener_lock:
            if self._listener is not None and not self._listener.is_closed():
                return False
            self._listener = await self._source.connect()
            self._listener.add_termination_listener(self._on_listener_lost)
            await self._listener.add_listener(self._channel, self._on_notify)
            return True

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Wait for a NOTIFY, the listener's loss, the next due time in ``queues``, or the
        timeout.

        After (re)connecting the listener it returns at once: notifications sent while it
        was not listening are lost, so the worker must look for work itself.
        """
        event = self._work
        try:
            if await self._ensure_listener():
                return
            due = await self.next_run_at(queues)
            if due is not None:  # a delayed task or a lease falls due before the timeout
                timeout = min(timeout, max(0.0, due - await self.time()))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            logger.warning("queue listener cannot connect (%s); polling instead", exc)
            await anyio.sleep(min(timeout, 1.0))
            return
        with anyio.move_on_after(timeout):
            await event.wait()
        if event.is_set():
            self._work = anyio.Event()

    async def purge(self, *, now: float, history_before: float | None = None) -> int:
        """Delete succeeded tasks whose results expired, and old history."""
        pool = await self._source.pool()
        status = await pool.execute(
            f"delete from {self._tasks} where state = 'succeeded' and result_expires <= $1",  # noqa: S608
            now,
        )
        if history_before is not None:
            query = f"delete from {self._history} where finished_at < $1"  # noqa: S608
            await pool.execute(query, history_before)
        return int(status.split()[-1])

    async def status(self, *, now: float | None = None) -> QueueStatus:
        """Depth per queue and state, the oldest waiting task's age, and the live workers."""
        moment = await self.time() if now is None else now
        pool = await self._source.pool()
        counts = await self.counts()
        oldest = await pool.fetch(
            f"select queue, min(run_at) from {self._tasks} where state = 'queued'"  # noqa: S608
            " and run_at <= $1 group by queue",
            moment,
        )
        workers = await pool.fetch(
            f"select lease_owner, count(*), max(lease_until) from {self._tasks}"  # noqa: S608
            " where state = 'running' group by lease_owner order by lease_owner"
        )
        return QueueStatus(
            depth={q: {s.value: n for s, n in states.items()} for q, states in counts.items()},
            oldest_waiting={row[0]: moment - row[1] for row in oldest},
            workers=[
                WorkerLease(worker=row[0], tasks=row[1], lease_expires_in=row[2] - moment)
                for row in workers
            ],
        )

    async def aclose(self) -> None:
        """Close the listener and a pool made from a DSN."""
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            await listener.close()
        await self._source.close()

    def __repr__(self) -> str:
        return f"PostgresQueueBackend({self._source!r}, schema={self.schema!r})"
