"""Rate limits and concurrency keys on Postgres (``QueueCapability.RATE_LIMITS``,
``CONCURRENCY_KEYS``; the rule is ``tasker.queue.RateLimit``'s, as on memory and SQLite).

Design notes:

- **The settings are columns of the task row** (``rate_count``, ``rate_per``,
  ``concurrency_key``, ``concurrency_limit``, written by the insert), and each start of a
  rate-limited task writes a row of ``queue_rate_log`` (its name and the expiry of its
  entry). The limit columns never change after the insert, which is what lets the fast
  claim rely on its gate below.
- **The path without limits stays the one-statement claim.** Its gate,
  :func:`limited_claimable`, is one probe of a partial index that holds only the live
  limited tasks (empty for a queue that uses none): when a limited task is claimable, the
  fast statement takes nothing (it cannot count, and skipping the limited task would break
  claim order) and flags it, and the claim runs :func:`claim_limited` instead.
- **Limited claims are serialised** by a transaction-level advisory lock per schema (the
  key from ``tasker_pg.advisory_key``, passed as a parameter): the statements after it see
  every earlier limited claim committed, so counting the log and the running tasks of a key
  and writing the starts is one step for every process. ``SKIP LOCKED`` is still needed:
  fast claims whose snapshot saw no limited task due may take the unlimited candidates.
- **Greedy in claim order, in Python**: expired leases (oldest first), then due tasks
  (priority, run_at, created_at); each candidate row carries its name's count of unexpired
  entries and its key's count of running tasks under a live lease, and the pick keeps them
  up to date with the starts it allows. Candidates are read ``limit * 2 + 16`` at a time,
  doubling while the blocked ones fill the read: a backlog of a rate-limited name whose
  window is full is read on each claim (what the guide calls its cost).
- ``claim_ids`` applies neither limit (a broker's delivery by id; documented in
  ``tasker.abc``).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from tasker.backends import PROGRESS_CLEARED
from tasker.backends import TASK_COLUMNS as COLUMNS
from tasker.backends import task_record_from_row as record_from_row
from tasker.queue import NewTask, TaskRecord

from ._locks import advisory_key

__all__ = [
    "LIMIT_COLUMNS",
    "LimitStatements",
    "claim_limited",
    "limit_values",
    "limited_claimable",
]

#: The limit columns of the insert, after ``TASK_INSERT_COLUMNS``.
LIMIT_COLUMNS = "rate_count, rate_per, concurrency_key, concurrency_limit"

_LIMITED = "(rate_count is not null or concurrency_key is not null)"
_SPENT = "(attempts >= max_attempts or cancel_requested)"


def limit_values(task: NewTask) -> tuple[object, ...]:
    """The values of :data:`LIMIT_COLUMNS` for ``task`` (nulls for a task without)."""
    rate = task.rate_limit
    return (
        None if rate is None else rate.count,
        None if rate is None else rate.seconds,
        task.concurrency_key,
        None if task.concurrency_key is None else task.concurrency_limit,
    )


def limited_claimable(tasks: str, queues: str, now: str, exclude: str) -> str:
    """Whether a limited task of ``queues`` is claimable at ``now`` (never ``exclude``): a
    boolean expression over parameters, along the partial index ``queue_tasks_limited``."""
    return (
        f"exists(select from {tasks} where {_LIMITED}"
        f" and state in ('queued', 'running') and queue = any({queues})"
        f" and ((state = 'queued' and run_at <= {now}) or (state = 'running'"
        f" and lease_until <= {now} and not {_SPENT}))"
        f" and not (id = any({exclude}::text[])))"
    )


class LimitStatements:
    """The statements of limited claims, for one schema (validated and quoted).

    Args:
        schema: the schema, quoted.
        name: the schema's name as given (the lock key is derived from it).
    """

    def __init__(self, schema: str, name: str) -> None:
        tasks = f"{schema}.queue_tasks"
        self.log = log = f"{schema}.queue_rate_log"
        #: The advisory lock key of this schema's limited claims.
        self.lock_key = advisory_key("tasker_pg.queue_limits", name)
        self.lock = "select pg_advisory_xact_lock($1::bigint)"
        # Each candidate with its name's unexpired entries and its key's running tasks
        # ($2 now); a CASE evaluates a subquery only for a task that has the limit.
        counts = (
            "t.id, t.name, t.rate_count, t.rate_per, t.concurrency_key, t.concurrency_limit,"  # noqa: S608 - validated identifiers
            f" case when t.rate_count is not null then (select count(*) from {log} r"
            " where r.name = t.name and r.expires_at > $2) end as used,"
            " case when t.concurrency_key is not null then (select count(*) from"
            f" {tasks} k where k.concurrency_key = t.concurrency_key"
            " and k.state = 'running' and k.lease_until > $2) end as running"
        )
        # $1 queues, $2 now, $3 the excluded ids, $4 how many to read.
        self.expired = (
            f"select {counts} from {tasks} t where t.state = 'running'"  # noqa: S608 - validated identifiers
            " and t.queue = any($1) and t.lease_until <= $2"
            " and t.attempts < t.max_attempts and not t.cancel_requested"
            " and not (t.id = any($3::text[])) order by t.lease_until limit $4"
            " for update of t skip locked"
        )
        self.due = (
            "select x.* from unnest($1::text[]) as q(name), lateral"  # noqa: S608
            f" (select {counts}, t.priority, t.run_at, t.created_at from {tasks} t"
            " where t.queue = q.name and t.state = 'queued' and t.run_at <= $2"
            " and not (t.id = any($3::text[]))"
            " order by t.priority desc, t.run_at, t.created_at limit $4"
            " for update of t skip locked) x"
            " order by x.priority desc, x.run_at, x.created_at limit $4"
        )
        # $1 the ids in claim order, $2 the worker, $3 the lease end.
        self.start = (
            f"update {tasks} t set state = 'running', attempts = t.attempts + 1,"  # noqa: S608
            f" lease_owner = $2, lease_until = $3, {PROGRESS_CLEARED}"
            " from unnest($1::text[]) with ordinality as p(id, rank) where t.id = p.id"
            f" returning {', '.join('t.' + c.strip() for c in COLUMNS.split(','))}, p.rank"
        )
        # $1 names, $2 expiries; then the expired entries of those names ($2 now).
        self.log_starts = (
            f"insert into {log} (name, expires_at)"  # noqa: S608
            " select * from unnest($1::text[], $2::float8[])"
        )
        self.prune = f"delete from {log} where name = any($1::text[]) and expires_at <= $2"  # noqa: S608
        self.purge = f"delete from {log} where expires_at <= $1"  # noqa: S608
        # When the earliest limited queued task of $1 may start at $2 (None: none until a
        # slot frees): its run_at, later while its name's log is full (the expiry that
        # leaves a slot: the ``count``-th latest), never while its key is full.
        self.limited_due = (
            "select min(case when g.rate_count is null then g.run_at else"  # noqa: S608
            f" greatest(g.run_at, (select r.expires_at from {log} r where r.name = g.name"
            " and r.expires_at > $2 order by r.expires_at desc"
            " offset g.rate_count - 1 limit 1)) end)"
            " from (select name, rate_count, concurrency_key, concurrency_limit,"
            f" min(run_at) as run_at from {tasks} where {_LIMITED}"
            " and state in ('queued', 'running') and state = 'queued' and queue = any($1)"
            " group by name, rate_count, concurrency_key, concurrency_limit) g"
            " where g.concurrency_key is null or (select count(*) from"
            f" {tasks} k where k.concurrency_key = g.concurrency_key"
            " and k.state = 'running' and k.lease_until > $2) < g.concurrency_limit"
        )


class _Admission:
    """One claim's decisions: the counts of each name and key, read with the first
    candidate that has them, then kept up to date with the starts this claim allows."""

    __slots__ = ("ids", "running", "starts", "taken", "used")

    def __init__(self) -> None:
        self.used: dict[str, int] = {}
        self.running: dict[str, int] = {}
        self.ids: list[str] = []
        self.taken: set[str] = set()
        self.starts: list[tuple[str, float]] = []

    def admit(self, row: Any, now: float) -> bool:
        name, rate_count, key = row["name"], row["rate_count"], row["concurrency_key"]
        used = running = 0
        if rate_count is not None:
            used = self.used.setdefault(name, row["used"])
            if used >= rate_count:
                return False
        if key is not None:
            running = self.running.setdefault(key, row["running"])
            if running >= row["concurrency_limit"]:
                return False
        if rate_count is not None:
            self.used[name] = used + 1
            self.starts.append((name, now + row["rate_per"]))
        if key is not None:
            self.running[key] = running + 1
        self.ids.append(row["id"])
        self.taken.add(row["id"])
        return True


async def claim_limited(
    pool: asyncpg.Pool,
    sql: LimitStatements,
    queues: list[str],
    limit: int,
    *,
    worker: str,
    until: float,
    now: float,
    exclude: list[str],
) -> list[TaskRecord]:
    """Claim up to ``limit`` tasks of ``queues`` at ``now`` by the limits, in one
    transaction under the schema's limits lock (see the module notes): expired leases with
    attempts left first, then due tasks in claim order, each blocked one skipped."""
    if limit <= 0:
        return []
    conn: Any
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(sql.lock, sql.lock_key)
        admission = _Admission()
        for statement in (sql.expired, sql.due):
            need = limit - len(admission.ids)
            read = need * 2 + 16
            while need > 0:
                # A re-read with a larger window passes the rows it read before again:
                # those taken are skipped, and a blocked one stays blocked (counts only
                # grow within a claim), so it decides as one long read would.
                rows = await conn.fetch(statement, queues, now, exclude, read)
                for row in rows:
                    admitted = row["id"] not in admission.taken and admission.admit(row, now)
                    if admitted and len(admission.ids) >= limit:
                        break
                if len(admission.ids) >= limit or len(rows) < read:
                    break
                read *= 2
            if len(admission.ids) >= limit:
                break
        if not admission.ids:
            return []
        rows = await conn.fetch(sql.start, admission.ids, worker, until)
        if admission.starts:
            names = [name for name, _ in admission.starts]
            await conn.execute(sql.log_starts, names, [at for _, at in admission.starts])
            await conn.execute(sql.prune, sorted(set(names)), now)
    taken = sorted(rows, key=lambda row: row["rank"])
    return [record_from_row(row) for row in taken]
