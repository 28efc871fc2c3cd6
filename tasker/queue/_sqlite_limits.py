"""The embedded queue's rate limits and concurrency keys (see ``_limits`` for the rule).

Each statement here runs in the connection's thread, inside the write transaction of the
call that needs it, so a count and the start it allows are one step for every process on
the machine (SQLite's write lock).

Design notes:

- **Columns on the task row** (``rate_count``, ``rate_per``, ``concurrency_key``,
  ``concurrency_limit``), added by :func:`migrate` (a file made by an earlier version gets
  them too), and a log table of starts (``task_rate_log``: a name and the expiry of its
  entry). A small table per name was rejected: the settings travel with the task, so a
  process that never registered the name still claims by its rule.
- **The path without limits pays one probe** of an index that holds only the live limited
  tasks (empty for a queue that uses none): then the claim is the old one, unchanged.
  With limited tasks live, the claim reads its candidates in claim order and skips the
  blocked ones in Python: its cost grows with the number of blocked tasks it passes before
  filling ``limit`` (a backlog of a rate-limited name is read on each claim while its
  window is full).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from ._records import NewTask

__all__ = [
    "ANY_LIMITED",
    "Admission",
    "limited_due",
    "migrate",
    "store_limits",
]

#: Whether any live task has limits (one probe of ``tasks_limited``).
ANY_LIMITED = (
    "select 1 from tasks where (rate_count is not null or concurrency_key is not null)"
    " and state in ('queued', 'running') limit 1"
)
#: What :class:`Admission` reads of each candidate, after its id.
CANDIDATE = "id, name, rate_count, rate_per, concurrency_key, concurrency_limit"


def migrate(db: sqlite3.Connection, columns: set[str]) -> None:
    """Add the columns, table and indexes of limits (idempotent)."""
    for column, kind in (
        ("rate_count", "integer"),
        ("rate_per", "real"),
        ("concurrency_key", "text"),
        ("concurrency_limit", "integer"),
    ):
        if column not in columns:
            db.execute(f"alter table tasks add column {column} {kind}")
    db.execute(
        "create table if not exists task_rate_log (name text not null, expires_at real not null)"
    )
    db.execute("create index if not exists task_rate_log_name on task_rate_log (name, expires_at)")
    db.execute(
        "create index if not exists tasks_limited on tasks (state)"
        " where rate_count is not null or concurrency_key is not null"
    )
    db.execute(
        "create index if not exists tasks_concurrency on tasks (concurrency_key, state,"
        " lease_until) where concurrency_key is not null"
    )


def store_limits(db: sqlite3.Connection, task: NewTask) -> None:
    """Write the limits of ``task``, just inserted (nothing for a task without)."""
    rate = task.rate_limit
    if rate is None and task.concurrency_key is None:
        return
    db.execute(
        "update tasks set rate_count = ?, rate_per = ?, concurrency_key = ?,"
        " concurrency_limit = ? where id = ?",
        (
            None if rate is None else rate.count,
            None if rate is None else rate.seconds,
            task.concurrency_key,
            None if task.concurrency_key is None else task.concurrency_limit,
            task.id,
        ),
    )


class Admission:
    """One claim's decisions: which candidates may start at ``now``, counted once per name
    and key from the database, then kept up to date with the starts this claim allows."""

    __slots__ = ("_db", "_now", "_running", "_starts", "_used")

    def __init__(self, db: sqlite3.Connection, now: float) -> None:
        self._db = db
        self._now = now
        self._used: dict[str, int] = {}
        self._running: dict[str, int] = {}
        self._starts: list[tuple[str, float]] = []

    def admit(self, row: Sequence[object]) -> bool:
        """Whether the candidate ``row`` (of :data:`CANDIDATE`) may start; if so, counted."""
        _, name, rate_count, rate_per, key, key_limit = row
        used = running = 0
        if rate_count is not None:
            assert isinstance(name, str)
            assert isinstance(rate_count, int)
            cached = self._used.get(name)
            if cached is None:
                cached = self._db.execute(
                    "select count(*) from task_rate_log where name = ? and expires_at > ?",
                    (name, self._now),
                ).fetchone()[0]
            used = self._used[name] = cached
            if used >= rate_count:
                return False
        if key is not None:
            assert isinstance(key, str)
            assert isinstance(key_limit, int)
            cached = self._running.get(key)
            if cached is None:
                cached = self._db.execute(
                    "select count(*) from tasks where concurrency_key = ? and state = 'running'"
                    " and lease_until > ?",
                    (key, self._now),
                ).fetchone()[0]
            running = self._running[key] = cached
            if running >= key_limit:
                return False
        if rate_count is not None:
            assert isinstance(name, str)
            assert isinstance(rate_per, float)
            self._used[name] = used + 1
            self._starts.append((name, self._now + rate_per))
        if key is not None:
            assert isinstance(key, str)
            self._running[key] = running + 1
        return True

    def pick(self, rows: Iterable[Sequence[object]], need: int) -> list[str]:
        """The ids of the first ``need`` rows that may start (``rows`` read lazily)."""
        ids: list[str] = []
        if need <= 0:
            return ids
        for row in rows:
            if self.admit(row):
                ids.append(str(row[0]))
                if len(ids) >= need:
                    break
        return ids

    def write(self) -> None:
        """Log the starts this claim allowed, and drop the expired entries of their names."""
        if not self._starts:
            return
        self._db.executemany(
            "insert into task_rate_log (name, expires_at) values (?, ?)", self._starts
        )
        self._db.executemany(
            "delete from task_rate_log where name = ? and expires_at <= ?",
            [(name, self._now) for name in {name for name, _ in self._starts}],
        )


def limited_due(
    db: sqlite3.Connection, queues: Sequence[str], now: float
) -> tuple[float | None, bool]:
    """When the earliest limited queued task of ``queues`` may start, as far as its limits
    tell (None: none may until a slot frees), and whether any is queued there: ``run_at``,
    later while its name's log is full (the expiry that frees a slot), never while its key
    is at its limit (a finish or a lease expiry frees a slot, and wakes the waiters)."""
    marks = ",".join("?" * len(queues))
    groups = db.execute(
        "select name, rate_count, concurrency_key, concurrency_limit, min(run_at) from tasks"  # noqa: S608 - placeholders only
        f" where state = 'queued' and queue in ({marks})"
        " and (rate_count is not null or concurrency_key is not null)"
        " group by name, rate_count, concurrency_key, concurrency_limit",
        tuple(queues),
    ).fetchall()
    best: float | None = None
    for name, rate_count, key, key_limit, run_at in groups:
        if key is not None:
            (running,) = db.execute(
                "select count(*) from tasks where concurrency_key = ? and state = 'running'"
                " and lease_until > ?",
                (key, now),
            ).fetchone()
            if running >= key_limit:
                continue
        due = run_at
        if rate_count is not None:
            entries = [
                row[0]
                for row in db.execute(
                    "select expires_at from task_rate_log where name = ? and expires_at > ?"
                    " order by expires_at",
                    (name, now),
                )
            ]
            if len(entries) >= rate_count:
                due = max(due, entries[len(entries) - rate_count])
        best = due if best is None else min(best, due)
    return best, bool(groups)
