"""The queue's statements, built once per backend from its validated, quoted schema.

Design notes:

- Claims lease up to ``limit`` tasks in one statement (``SKIP LOCKED``, so workers never wait
  on each other; per queue, an ordered scan of the claim index that stops at the limit).
  A batch of completions is one statement too (``unnest`` of arrays: task rows and history
  together); :attr:`QueueStatements.finish_claim` does both in one round trip and one
  snapshot.
- The text is built from the schema alone, never from a value: every value is a ``$n``
  parameter. The text of a statement does not change between calls, so asyncpg prepares it
  once per connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import asyncpg

from tasker.backends import (
    HISTORY_COLUMNS,
    PROGRESS_CLEARED,
    TASK_INSERT_COLUMNS,
    history_from_row,
)
from tasker.backends import TASK_COLUMNS as COLUMNS
from tasker.backends import task_record_from_row as record_from_row
from tasker.queue import HistoryEntry, Outcome, TaskRecord, UnstorableRecordError

from ._queue_limits import LIMIT_COLUMNS, limited_claimable

__all__ = [
    "COLUMNS",
    "QueueStatements",
    "claimed",
    "history_entries",
    "outcome_arrays",
    "unstorable",
]

# The combined statement claims only when no outcome belongs to a group.
_UNGROUPED = " where not exists (select from held h where h.group_id is not null)"

_LIVE = "state in ('held', 'queued', 'running')"

# An expired lease that a claim settles instead of taking it: on its last attempt (it dies),
# or of a task whose cancel was requested (it is cancelled).
_SPENT = "(attempts >= max_attempts or cancel_requested)"
# What settling it writes; ``$2`` is now (replaced where now is another parameter).
_EXPIRED_SETTLED = (
    "state = case when cancel_requested then 'cancelled' else 'dead' end,"
    " lease_owner = null, lease_until = null, finished_at = $2,"
    " last_error = case when cancel_requested then last_error"
    " else 'lease expired (the worker stopped responding)' end"
)


def outcome_arrays(outcomes: Sequence[Outcome], now: float) -> tuple[list[Any], ...]:
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
def unstorable() -> Iterator[None]:
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


def claimed(rows: Sequence[Any]) -> list[TaskRecord]:
    """The claimed tasks of a claim statement's rows, in claim order."""
    taken = sorted((row for row in rows if row["id"] is not None), key=lambda row: row["rank"])
    return [record_from_row(row) for row in taken]


def history_entries(rows: Sequence[Any]) -> list[HistoryEntry]:
    """The rows of :meth:`QueueStatements.list_history` as records."""
    return [history_from_row(row) for row in rows]


def _literal(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _prefixed(alias: str) -> str:
    return ", ".join(f"{alias}.{column.strip()}" for column in COLUMNS.split(","))


class QueueStatements:
    """The text of every statement the queue backend sends, for one schema.

    Args:
        schema: the schema, already validated and quoted.
    """

    def __init__(self, schema: str) -> None:
        self.tasks = tasks = f"{schema}.queue_tasks"
        self.groups = groups = f"{schema}.queue_groups"
        self.history = history = f"{schema}.queue_history"
        # -- enqueue
        # No conflict target: both the primary key (a stored id) and the partial unique
        # index on live unique keys make the insert do nothing.
        self.insert = (
            f"insert into {tasks} ({TASK_INSERT_COLUMNS}, {LIMIT_COLUMNS})"  # noqa: S608 - validated identifiers
            " values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,"
            " $16, $17, $18, $19, $20)"
            " on conflict do nothing returning id"
        )
        # A run of tasks without unique keys in one statement: a column array each (in
        # TASK_INSERT_COLUMNS, LIMIT_COLUMNS order), the rows in order. A row whose id is
        # stored (or came earlier in the arrays) does nothing; the ids returned are those
        # inserted.
        self.insert_many = (
            f"insert into {tasks} ({TASK_INSERT_COLUMNS}, {LIMIT_COLUMNS})"  # noqa: S608 - validated identifiers
            " select * from unnest($1::text[], $2::text[], $3::text[], $4::bytea[],"
            " $5::integer[], $6::float8[], $7::text[], $8::integer[], $9::float8[],"
            " $10::text[], $11::float8[], $12::float8[], $13::bytea[], $14::text[],"
            " $15::integer[], $16::text[], $17::integer[], $18::float8[], $19::text[],"
            " $20::integer[])"
            " on conflict do nothing returning id"
        )
        # $1 the task's id, $2 its unique key: the task stored with this id first, else the
        # latest with this key (a live one first).
        self.stored_or_latest_with_key = (
            f"select id, state, unique_until from {tasks}"  # noqa: S608
            " where id = $1 or unique_key = $2"
            f" order by id = $1 desc, ({_LIVE}) desc, created_at desc"
            " limit 1"
        )
        # After an insert did nothing: the task stored with this id, else the live one
        # holding this key ($2 may be null).
        self.conflicting = (
            f"select id from {tasks}"  # noqa: S608
            f" where id = $1 or (unique_key = $2 and {_LIVE})"
            " order by id = $1 desc limit 1"
        )
        self.insert_group = f"insert into {groups} (id, size, callback) values ($1, $2, $3)"  # noqa: S608
        self.notify = "select pg_notify($1, $2)"
        # -- the worker registry
        workers = f"{schema}.queue_workers"
        self.worker_seen = (
            f"insert into {workers} (id, queues, concurrency, running, started_at,"  # noqa: S608
            " last_seen, expires_at) values ($1, $2, $3, $4, $5, $6, $7)"
            " on conflict (id) do update set queues = excluded.queues,"
            " concurrency = excluded.concurrency, running = excluded.running,"
            " last_seen = excluded.last_seen, expires_at = excluded.expires_at"
        )
        self.worker_gone = f"delete from {workers} where id = $1"  # noqa: S608
        self.workers_expire = f"delete from {workers} where expires_at <= $1"  # noqa: S608
        self.workers = (
            f"select id, queues, concurrency, running, started_at, last_seen, expires_at"  # noqa: S608
            f" from {workers} where expires_at > $1 order by id"
        )
        # -- claim, heartbeat, finish
        # A claimable limited task (rate limit, concurrency key) stops the claim: ``limited``
        # tells the caller to claim under the limits lock instead (``_queue_limits``).
        self.claim = (
            f"with{self._claim_ctes(1, '$6', ' where not ' + self._limited(1, '$6'))}"  # noqa: S608 - validated identifiers
            # One row at least: the flags ride on every row, with or without a claim.
            f" select c.*, f.grouped, f.limited from (select {self._grouped_expired(1, '$6')},"
            f" {self._limited(1, '$6')} as limited) f"
            " left join claimed c on true"
        )
        self.reap_grouped = (
            f"update {tasks} set {_EXPIRED_SETTLED}"  # noqa: S608
            f" where id in (select id from {tasks} where state = 'running'"
            f" and queue = any($1) and lease_until <= $2 and {_SPENT}"
            " and group_id is not null and not (id = any($3::text[]))"
            " order by id for update skip locked) returning id, group_id"
        )
        # The same for the tasks a claim_ids named: ``$1`` the ids, ``$2`` now.
        self.reap_grouped_ids = (
            f"update {tasks} set {_EXPIRED_SETTLED}"  # noqa: S608
            f" where id in (select t.id from unnest($1::text[]) as w(id) join {tasks} t"
            " on t.id = w.id where t.state = 'running' and t.lease_until <= $2"
            " and (t.attempts >= t.max_attempts or t.cancel_requested)"
            " and t.group_id is not null"
            " order by t.id for update of t skip locked) returning id, group_id"
        )
        self.claim_ids = self._claim_ids()
        self.heartbeat = (
            f"update {tasks} set lease_until = $3 where state = 'running'"  # noqa: S608
            " and lease_owner = $1 and id = any($2) returning id"
        )
        self.finish = (
            f"with{self._finish_ctes()}"  # noqa: S608 - validated identifiers
            " select id, queue, kind in ('retry', 'released', 'interrupted'),"
            " group_id is not null, keyed from held"
        )
        # One snapshot for both parts: a task requeued by an outcome here is claimable by
        # the next claim, not this one; $16 (the outcomes' own tasks and the caller's
        # exclusions) is excluded from the claim.
        self.finish_claim = (
            f"with{self._finish_ctes()},"  # noqa: S608 - validated identifiers
            f"{self._claim_ctes(11, '$16', _UNGROUPED + ' and not ' + self._limited(11, '$16'))}"
            f" select c.*, f.grouped, f.requeued, f.grouped_ids, f.limited, f.keyed from (select"
            f" {self._grouped_expired(11, '$16')}, {self._limited(11, '$16')} as limited,"
            # A finished task of a concurrency key frees a slot: the caller wakes waiters.
            " exists(select from held where keyed) as keyed,"
            " (select array_agg(distinct queue) from held"
            " where kind in ('retry', 'released', 'interrupted'))"
            " as requeued,"
            " (select array_agg(id) from held where group_id is not null) as grouped_ids) f"
            " left join claimed c on true"
        )
        self.finish_all = (
            f"with{self._finish_ctes(grouped=True)}"  # noqa: S608 - validated identifiers
            " select id, queue, kind, group_id, cancel_requested, keyed from held"
        )
        # -- groups (in the finishing transaction)
        self.lock_tasks = f"select from {tasks} where id = any($1) order by id for update"
        self.lock_groups = f"select id from {groups} where id = any($1) order by id for update"  # noqa: S608
        self.group_of = f"select group_id from {tasks} where id = $1"  # noqa: S608
        self.lock_group = f"select 1 from {groups} where id = $1 for update"  # noqa: S608
        self.group_left = (
            f"select count(*) from {tasks} where group_id = $1"  # noqa: S608
            " and state not in ('succeeded', 'dead', 'cancelled')"
        )
        self.delete_group = f"delete from {groups} where id = $1 returning callback"  # noqa: S608
        self.group_results = (
            f"select case when state = 'succeeded' then result end from {tasks}"  # noqa: S608
            " where group_id = $1 order by group_index"
        )
        # -- reading and maintenance
        self.get = f"select {COLUMNS} from {tasks} where id = $1"  # noqa: S608
        self.requeue = (
            f"update {tasks} t set state = 'queued', attempts = 0, run_at = $2,"  # noqa: S608
            " finished_at = null where id = $1 and state = 'dead' and (unique_key is null"
            f" or not exists (select 1 from {tasks} o where o.unique_key = t.unique_key"
            " and o.state in ('held', 'queued', 'running')))"
        )
        self.counts = f"select queue, state, count(*) from {tasks} group by queue, state"  # noqa: S608
        self.next_run_at = (
            # Limited tasks are left to ``LimitStatements.limited_due``.
            f"select least((select min(run_at) from {tasks} where state = 'queued'"  # noqa: S608
            " and queue = any($1) and rate_count is null and concurrency_key is null),"
            f" (select min(lease_until) from {tasks}"
            " where state = 'running' and queue = any($1)))"
        )
        # $1 now, $2 the dead tasks' horizon; never a task whose unique window is open, nor a
        # member of a group whose callback has not been enqueued (its row still exists).
        self.purge = (
            f"delete from {tasks} t where ((t.state = 'succeeded' and t.result_expires <= $1)"  # noqa: S608
            " or (t.state in ('dead', 'cancelled') and t.finished_at < $2))"
            " and (t.unique_until is null or t.unique_until <= $1)"
            f" and (t.group_id is null or not exists (select from {groups} g"
            " where g.id = t.group_id))"
        )
        self.purge_history = f"delete from {history} where finished_at < $1"  # noqa: S608
        # -- cancels (QueueCapability.CANCEL), in the cancelling transaction: $1 the id
        self.cancel_lock = f"select state, lease_until from {tasks} where id = $1 for update"  # noqa: S608
        self.cancel_request = f"update {tasks} set cancel_requested = true where id = $1"  # noqa: S608
        # $2 now
        self.cancel_now = (
            f"update {tasks} set state = 'cancelled', lease_owner = null, lease_until = null,"  # noqa: S608
            " finished_at = $2 where id = $1 returning group_id"
        )
        # $1 the worker, $2 the ids it runs (a lease owner is set exactly while running)
        # -- progress (QueueCapability.PROGRESS): $1 the worker, $2 the id, $3 .. $5 the
        # value, text and time; only the lease holder writes (the owner is set exactly
        # while running)
        self.report_progress = (
            f"update {tasks} set progress = $3, progress_text = $4, progress_at = $5"  # noqa: S608
            " where id = $2 and lease_owner = $1"
        )
        # -- bounded queues (QueueCapability.BOUNDED_QUEUES), in the enqueuing transaction:
        # one transaction-level advisory lock per bounded queue (``$1`` its name), taken
        # before the insert, serialises the enqueues of a queue; then its depth, ``$1`` the
        # queue and ``$2`` where to stop counting: each half an index scan that stops there.
        self.lock_depth = (
            f"select pg_advisory_xact_lock(hashtext({_literal(schema)}), hashtext($1::text))"
        )
        self.depth = (
            f"select (select count(*) from (select from {tasks} where queue = $1"  # noqa: S608
            " and state = 'queued' limit $2) q)"
            f" + (select count(*) from (select from {tasks} where queue = $1"
            " and state = 'held' limit $2) h)"
        )
        self.cancel_requested = (
            f"select id from {tasks} where id = any($2::text[]) and lease_owner = $1"  # noqa: S608
            " and cancel_requested"
        )
        self.oldest_waiting = (
            f"select queue, min(run_at) from {tasks} where state = 'queued'"  # noqa: S608
            " and run_at <= $1 group by queue"
        )
        self.leases = (
            f"select lease_owner, count(*), max(lease_until) from {tasks}"  # noqa: S608
            " where state = 'running' group by lease_owner order by lease_owner"
        )

    def list_tasks(self, state: str | None, queue: str | None) -> tuple[str, list[object]]:
        """The listing of tasks, newest first, and its filter arguments (the limit follows).

        One statement per combination of filters: ``($1 is null or state = $1)`` would give
        a generic plan that cannot use an index for either."""
        where, args = _filters(("state", state), ("queue", queue))
        return (
            f"select {COLUMNS} from {self.tasks}{where}"  # noqa: S608 - validated identifiers
            f" order by created_at desc limit ${len(args) + 1}"
        ), args

    def list_history(self, task_id: str | None) -> tuple[str, list[object]]:
        """The attempts, newest first, and the filter argument (the limit follows)."""
        where, args = _filters(("task_id", task_id))
        return (
            f"select {HISTORY_COLUMNS} from {self.history}{where}"  # noqa: S608
            f" order by finished_at desc, ctid desc limit ${len(args) + 1}"
        ), args

    def dispatch(self, *, named: bool) -> str:
        """Release held tasks: ``$1`` queue, ``$2`` limit, ``$3`` now, ``$4`` the name."""
        name = " and name = $4" if named else ""
        return (
            f"update {self.tasks} set state = 'queued', run_at = least(run_at, $3)"  # noqa: S608
            f" where id in (select id from {self.tasks} where state = 'held' and queue = $1"
            f"{name} order by priority desc, created_at limit $2 for update skip locked)"
        )

    def overdue(self, *, every_queue: bool) -> str:
        """The overdue tasks: ``$1`` before, ``$2`` limit, ``$3`` the queues (unless
        ``every_queue``).

        The claim index orders a queue's tasks by priority before ``run_at``, so the queued
        half walks it as a loose index scan: each queue's distinct priorities (one index
        probe each), then per (queue, priority) an ordered scan of ``run_at`` that stops at
        the limit. The cost follows the number of priorities, not the backlog, and no index
        is added that every enqueue and claim would have to maintain. The running half is an
        ordered scan of the lease index.
        """
        tasks = self.tasks
        if every_queue:  # the queues that have queued tasks, one index probe each
            queues = (
                f"qs(name) as (select min(queue) from {tasks} where state = 'queued'"  # noqa: S608 - validated identifiers
                f" union all select (select min(queue) from {tasks} where state = 'queued'"
                " and queue > qs.name) from qs where qs.name is not null)"
            )
            only = ""
        else:
            queues = "qs(name) as (select distinct name from unnest($3::text[]) as u(name))"
            only = " and queue = any($3::text[])"
        return (
            f"with recursive {queues},"  # noqa: S608 - validated identifiers
            " prio(queue, priority) as (select name, (select max(priority) from"
            f" {tasks} where state = 'queued' and queue = qs.name) from qs"
            " where name is not null union all select p.queue, (select max(priority)"
            f" from {tasks} where state = 'queued' and queue = p.queue"
            " and priority < p.priority) from prio p where p.priority is not null),"
            " queued as (select x.* from prio p cross join lateral"
            f" (select {COLUMNS}, run_at as since from {tasks} where state = 'queued'"
            " and queue = p.queue and priority = p.priority and run_at <= $1"
            " order by run_at limit $2) x where p.priority is not null),"
            f" running as (select {COLUMNS}, lease_until as since from {tasks}"
            f" where state = 'running' and lease_until <= $1{only}"
            " order by lease_until limit $2)"
            f" select {COLUMNS} from (select * from queued union all select * from running) o"
            " order by since, id limit $2"
        )

    def _claim_ids(self) -> str:
        """The claim of named tasks: ``$1`` the ids (each once, in order), ``$2`` now,
        ``$3`` the worker, ``$4`` the lease end.

        The ids are read by primary key (joined to ``$1``: a generic plan would otherwise
        be drawn to the lease or group index and scan it), whatever their queue, and the
        claimable ones locked with SKIP LOCKED, so that of two claims naming the same task
        at once one takes it and the other skips it. Of those, an expired lease on its last
        attempt dies (a grouped one is flagged for ``reap_grouped_ids``, as :attr:`claim`
        flags it), and the rest are leased, ranked by their position in ``$1``."""
        tasks = self.tasks
        return (
            "with locked as (select t.id, w.rank, t.group_id is not null as grouped,"  # noqa: S608 - validated identifiers
            " (t.state = 'running' and (t.attempts >= t.max_attempts or t.cancel_requested))"
            " as spent"
            f" from unnest($1::text[]) with ordinality as w(id, rank) join {tasks} t"
            " on t.id = w.id where (t.state = 'queued' and t.run_at <= $2)"
            " or (t.state = 'running' and t.lease_until <= $2) for update of t skip locked),"
            f" dead as (update {tasks} t set {_EXPIRED_SETTLED}"
            " from locked l where t.id = l.id and l.spent and not l.grouped returning t.id),"
            f" claimed as (update {tasks} t set state = 'running', attempts = t.attempts + 1,"
            f" lease_owner = $3, lease_until = $4, {PROGRESS_CLEARED} from locked l"
            " where t.id = l.id"
            f" and not l.spent returning {_prefixed('t')}, l.rank)"
            # One row at least: the flag rides on every row, with or without a claim.
            " select c.*, f.grouped from (select exists(select from locked"
            " where spent and grouped) as grouped) f left join claimed c on true"
        )

    def _claim_ctes(self, first: int, exclude: str, gate: str = "") -> str:
        """The claim's CTEs; parameters ``$first`` .. ``$first+4`` are queues, now, limit,
        worker and lease end. ``exclude``: an array parameter of task ids never to take.
        ``gate``: a ``where`` clause; when it is false nothing is claimed at all."""
        tasks = self.tasks
        queues, now, limit, worker, until = (f"${first + i}" for i in range(5))
        skip = f" and not (id = any({exclude}::text[]))"
        return (
            # Expired on their last attempt, outside a group: dead now; or cancelled, those
            # whose cancel was requested.
            f" dead as (update {tasks} set {_EXPIRED_SETTLED.replace('$2', now)}"  # noqa: S608 - validated identifiers
            f" where id in (select id from {tasks} where state = 'running'"
            f" and queue = any({queues}) and lease_until <= {now}"
            f" and {_SPENT} and group_id is null{skip}"
            " for update skip locked) returning id),"
            # Expired with attempts left first, then due queued tasks. A CTE is read lazily:
            # the outer limit stops the second scan (and its row locks) once the first filled it.
            f" expired as (select id from {tasks} where state = 'running'"
            f" and queue = any({queues}) and lease_until <= {now}"
            f" and not ({_SPENT}){skip} order by lease_until"
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
            f" lease_owner = {worker}, lease_until = {until}, {PROGRESS_CLEARED}"
            " from picked p where t.id = p.id"
            f" returning {_prefixed('t')}, p.rank)"
        )

    def _limited(self, first: int, exclude: str) -> str:
        """Whether a limited task is claimable; ``$first`` the queues, ``$first+1`` now."""
        return limited_claimable(self.tasks, f"${first}", f"${first + 1}", exclude)

    def _grouped_expired(self, first: int, exclude: str) -> str:
        queues, now = f"${first}", f"${first + 1}"
        skip = f" and not (id = any({exclude}::text[]))"
        return (
            f"exists(select 1 from {self.tasks} where state = 'running'"  # noqa: S608 - validated identifiers
            f" and queue = any({queues}) and lease_until <= {now}"
            f" and {_SPENT} and group_id is not null{skip}) as grouped"
        )

    def _finish_ctes(self, *, grouped: bool = False) -> str:
        """The completion's CTEs; parameters ``$1`` .. ``$10`` are the outcome arrays.

        Tasks of a group are left alone unless ``grouped`` (the caller then settles the
        group in the same transaction)."""
        tasks, history = self.tasks, self.history
        alone = "" if grouped else " and h.group_id is null"
        return (
            " o as (select * from unnest($1::text[], $2::text[], $3::text[],"  # noqa: S608 - validated identifiers
            " $4::bytea[], $5::float8[], $6::text[], $7::text[], $8::float8[], $9::float8[],"
            " $10::float8[]) as o(id, worker, kind, result, expires, error, trace, started,"
            " finished, retry_at)),"
            # Only the lease holder may report: a slow worker whose lease expired (its
            # task runs elsewhere now) is ignored.
            # A task whose cancel was requested ends cancelled unless it succeeded.
            " held as (select t.id, t.name, t.queue, t.attempts, t.group_id, o.worker,"
            " t.concurrency_key is not null as keyed,"
            " case when t.cancel_requested and o.kind <> 'succeeded' then 'cancelled'"
            " else o.kind end as kind, t.cancel_requested,"
            " o.result, o.expires, o.error, o.trace, o.started, o.finished,"
            f" o.retry_at from {tasks} t join o on o.id = t.id"
            # A lease owner is set exactly while a task is running, so the owner check is
            # the state check too; it leaves the planner a primary-key lookup per outcome
            # (``state = 'running'`` would draw it to the lease index and its dead entries).
            " where t.id = any($1::text[]) and t.lease_owner = o.worker for update of t),"
            f" done as (update {tasks} t set"
            " state = case h.kind when 'succeeded' then 'succeeded' when 'dead' then 'dead'"
            " when 'cancelled' then 'cancelled' else 'queued' end,"
            " lease_owner = null, lease_until = null,"
            " attempts = case when h.kind in ('released', 'interrupted') then t.attempts - 1"
            " else t.attempts end,"
            " run_at = case when h.kind = 'retry' then h.retry_at else t.run_at end,"
            " result = case when h.kind = 'succeeded' then h.result else t.result end,"
            " result_expires = case when h.kind = 'succeeded' then h.expires"
            " else t.result_expires end,"
            " last_error = case when h.kind = 'succeeded' then null"
            " when h.kind in ('released', 'interrupted') then t.last_error else h.error end,"
            " traceback = case when h.kind = 'succeeded' then null"
            " when h.kind in ('released', 'interrupted') then t.traceback else h.trace end,"
            " finished_at = case when h.kind in ('succeeded', 'dead', 'cancelled') then h.finished"
            " else t.finished_at end"
            f" from held h where t.id = h.id{alone} returning t.id),"
            f" written as (insert into {history} (task_id, name, queue, worker, attempt,"
            " started_at, finished_at, outcome, error)"
            " select id, name, queue, worker, attempts, started, finished, kind, error"
            f" from held h where kind <> 'released'{alone})"
        )
