"""Schema and migrations: every table tasker_pg uses, created by one function.

Design notes:

- One entry point, :func:`migrate`, creates the scheduler's state table, the lock-key
  registry and the queue tables in one transaction. The older entry points
  (``PostgresStateRepository.migrate``, ``PostgresScheduler.migrate``,
  ``PostgresQueueBackend.migrate``, ``python -m tasker_pg migrate``) call it, so a database
  migrated by any of them has the same tables.
- Every statement is ``if not exists`` (idempotent; a column added to an existing table by
  ``alter table ... add column if not exists``), and the transaction first takes a
  transaction-level advisory lock: replicas that start together and all migrate run one
  after the other, instead of racing on ``create`` (Postgres raises a unique violation on
  its catalogue when two sessions create the same table at once).
- The queue tables have fixed names in the schema; the state table's name is an option
  because it predates the queue.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from ._connection import PoolSource, quote_identifier

__all__ = ["migrate"]

#: The key of the advisory lock every migration holds while it works.
_LOCK = "select pg_advisory_xact_lock(hashtext('tasker_pg.migrate'))"


def _state_ddl(schema: str, table: str) -> list[str]:
    """The scheduler's tables; ``schema`` quoted, ``table`` quoted and qualified."""
    return [
        f"""create table if not exists {table} (
                name text primary key check (length(name) between 1 and 200),
                last_slot timestamptz not null,
                last_started timestamptz,
                last_finished timestamptz,
                last_error text,
                run_count bigint not null default 0,
                failure_count bigint not null default 0,
                next_due timestamptz,
                updated_at timestamptz not null default now()
            )""",
        f"""create table if not exists {schema}.lock_keys (
                key bigint primary key,
                name text not null
            )""",
    ]


def _queue_ddl(schema: str) -> list[str]:
    """The queue's tables and indexes; ``schema`` quoted."""
    tasks, groups, history = (f"{schema}.queue_{name}" for name in ("tasks", "groups", "history"))
    return [
        f"""create table if not exists {tasks} (
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
                    group_index integer,
                    cancel_requested boolean not null default false,
                    progress double precision,
                    progress_text text,
                    progress_at double precision
                )""",
        # Columns added since a table was first created (``create table if not exists``
        # leaves an existing one as it was).
        f"alter table {tasks} add column if not exists"
        " cancel_requested boolean not null default false",
        f"alter table {tasks} add column if not exists progress double precision,"
        " add column if not exists progress_text text,"
        " add column if not exists progress_at double precision",
        # tasker.tracing's carrier: the enqueue's trace context, for the attempt's span.
        f"alter table {tasks} add column if not exists trace text",
        # Rate limits and concurrency keys (``_queue_limits``): the settings travel with
        # each task; the log holds an entry per start of a rate-limited name until it
        # expires, and the partial indexes hold only live limited tasks (empty for a queue
        # that uses none), so the claim without limits pays one probe of an empty index.
        f"alter table {tasks} add column if not exists rate_count integer,"
        " add column if not exists rate_per double precision,"
        " add column if not exists concurrency_key text,"
        " add column if not exists concurrency_limit integer",
        f"create table if not exists {schema}.queue_rate_log ("
        " name text not null, expires_at double precision not null)",
        f"create index if not exists queue_rate_log_name on {schema}.queue_rate_log"
        " (name, expires_at)",
        f"create index if not exists queue_tasks_limited on {tasks} (queue)"
        " where (rate_count is not null or concurrency_key is not null)"
        " and state in ('queued', 'running')",
        f"create index if not exists queue_tasks_concurrency on {tasks}"
        " (concurrency_key, lease_until) where concurrency_key is not null"
        " and state = 'running'",
        # Claims read due tasks of a queue in this order and stop at their limit.
        f"create index if not exists queue_tasks_claim on {tasks}"
        " (queue, priority desc, run_at, created_at) where state = 'queued'",
        # An index of earlier versions, which the claim index replaced.
        f"drop index if exists {schema}.queue_tasks_due",
        # A bounded enqueue (max_depth) counts a queue's held tasks along this one (and its
        # queued ones along the claim index); held tasks are few, so it costs little.
        f"create index if not exists queue_tasks_held on {tasks} (queue) where state = 'held'",
        f"create index if not exists queue_tasks_lease on {tasks} (lease_until)"
        " where state = 'running'",
        f"create unique index if not exists queue_tasks_unique_live on {tasks}"
        " (unique_key) where unique_key is not null"
        " and state in ('held', 'queued', 'running')",
        f"create index if not exists queue_tasks_unique on {tasks} (unique_key)"
        " where unique_key is not null",
        f"create index if not exists queue_tasks_group on {tasks} (group_id)"
        " where group_id is not null",
        f"create table if not exists {groups} ("
        " id text primary key, size integer not null, callback jsonb)",
        f"""create table if not exists {history} (
                    task_id text not null, name text not null, queue text not null,
                    worker text not null, attempt integer not null,
                    started_at double precision not null, finished_at double precision not null,
                    outcome text not null, error text)""",
        f"create index if not exists queue_history_task on {history} (task_id)",
        # The worker registry (QueueCapability.WORKERS): idle workers too, for status.
        f"""create table if not exists {schema}.queue_workers (
                    id text primary key, queues text[] not null, concurrency integer not null,
                    running integer not null, started_at double precision not null,
                    last_seen double precision not null,
                    expires_at double precision not null)""",
    ]


async def migrate(
    dsn_or_pool: str | asyncpg.Pool,
    *,
    schema: str = "tasker",
    table: str = "schedule_state",
) -> None:
    """Create every table tasker_pg uses, if missing: the scheduler's state table, the
    lock-key registry and the queue's tables, with their indexes.

    Run it once per database (``python -m tasker_pg migrate`` runs it too) before a
    scheduler or a queue uses the schema. It is idempotent, and safe to run from several
    replicas at once: it works in one transaction that holds an advisory lock, so
    concurrent migrations wait for each other. A DSN gets a connection for the migration
    only; a pool is borrowed from and left open.

    Args:
        dsn_or_pool: a ``postgresql://`` DSN or an asyncpg pool.
        schema: the schema of every table (a lower-case identifier; validated and quoted).
        table: the scheduler's state table (likewise; the queue's tables have fixed names).

    Raises:
        ValueError: for a bad DSN, schema or table.
        TypeError: for something that is neither a DSN nor an asyncpg pool.
        tasker_pg.AsyncioRequiredError: when called under trio (asyncpg is asyncio-only).
        asyncpg.PostgresError, OSError: when the database refuses or cannot be reached.
    """
    statements = _statements(schema, table)  # validate before connecting
    source = PoolSource(dsn_or_pool, max_size=1)
    try:
        await _run(await source.pool(), statements)
    finally:
        await source.close()


def _statements(schema: str, table: str) -> list[str]:
    q_schema = quote_identifier(schema, "schema")
    q_table = f"{q_schema}.{quote_identifier(table, 'table')}"
    return [
        f"create schema if not exists {q_schema}",
        *_state_ddl(q_schema, q_table),
        *_queue_ddl(q_schema),
    ]


async def migrate_source(source: PoolSource, *, schema: str, table: str) -> None:
    """:func:`migrate` on the pool of a backend's own ``source`` (which stays open)."""
    await _run(await source.pool(), _statements(schema, table))


async def _run(pool: asyncpg.Pool, statements: list[str]) -> None:
    """Run ``statements`` in one transaction under the migration lock."""
    conn: Any
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_LOCK)
        for statement in statements:
            await conn.execute(statement)
