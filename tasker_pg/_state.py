"""Schedule state in a Postgres table, and the migration that creates it."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from tasker import ScheduleState

from ._connection import PoolSource, quote_identifier

__all__ = ["PostgresStateRepository", "migrate"]

_COLUMNS = (
    "name, last_slot, last_started, last_finished, last_error, run_count, failure_count, next_due"
)


async def migrate(
    pool: asyncpg.Pool, *, schema: str = "tasker", table: str = "schedule_state"
) -> None:
    """Create the schema, the state table and the lock-key registry, if missing.

    Idempotent and safe to run from several replicas at once (it holds a transaction-level
    advisory lock while it works).
    """
    q_schema = quote_identifier(schema, "schema")
    q_table = f"{q_schema}.{quote_identifier(table, 'table')}"
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("select pg_advisory_xact_lock(hashtext('tasker_pg.migrate'))")
        await conn.execute(f"create schema if not exists {q_schema}")
        await conn.execute(
            f"""create table if not exists {q_table} (
                name text primary key check (length(name) between 1 and 200),
                last_slot timestamptz not null,
                last_started timestamptz,
                last_finished timestamptz,
                last_error text,
                run_count bigint not null default 0,
                failure_count bigint not null default 0,
                next_due timestamptz,
                updated_at timestamptz not null default now()
            )"""
        )
        await conn.execute(
            f"""create table if not exists {q_schema}.lock_keys (
                key bigint primary key,
                name text not null
            )"""
        )


class PostgresStateRepository:
    """:class:`tasker.abc.StateRepository` on a Postgres table.

    ``now()`` is the database's clock, so replicas with skewed clocks agree on which slot
    is due. Call :meth:`migrate` once (or ``python -m tasker_pg migrate``) before use.

    Args:
        dsn_or_pool: a ``postgresql://`` DSN or an asyncpg pool.
        schema: the schema (a validated lower-case identifier).
        table: the table name (likewise).
        clock_resync: seconds between readings of the database clock (see :meth:`now`);
            0 reads it on every call.

    Raises:
        ValueError: for a bad DSN, schema or table name.
        tasker_pg.AsyncioRequiredError: when constructed under trio.
    """

    def __init__(
        self,
        dsn_or_pool: str | asyncpg.Pool | PoolSource,
        *,
        schema: str = "tasker",
        table: str = "schedule_state",
        clock_resync: float = 30.0,
    ) -> None:
        self._source = (
            dsn_or_pool if isinstance(dsn_or_pool, PoolSource) else PoolSource(dsn_or_pool)
        )
        if not isinstance(clock_resync, int | float) or not clock_resync >= 0:
            raise ValueError(f"clock_resync must be >= 0 seconds, got {clock_resync!r}")
        self._clock_resync = float(clock_resync)
        self._clock: tuple[datetime, float] | None = None
        self.schema = schema
        self.table = table
        self._table = f"{quote_identifier(schema, 'schema')}.{quote_identifier(table, 'table')}"

    async def migrate(self) -> None:
        """Create the tables this repository and the lock factory need (idempotent)."""
        await migrate(await self._source.pool(), schema=self.schema, table=self.table)

    async def now(self) -> datetime | None:
        """The database clock.

        Read from the server at most every ``clock_resync`` seconds; in between it is the
        last reading plus the local *monotonic* time elapsed since, so the local wall clock
        (however skewed) never matters, and a replica costs no query per ``now()``.
        """
        local = time.monotonic()
        if self._clock is None or local - self._clock[1] >= self._clock_resync:
            pool = await self._source.pool()
            before = time.monotonic()
            value: datetime = await pool.fetchval("select clock_timestamp()")
            after = time.monotonic()
            # The server read its clock somewhere in the round trip: take the middle.
            self._clock = (value, (before + after) / 2)
            if self._clock_resync == 0:
                return value
        reading, at = self._clock
        return reading + timedelta(seconds=time.monotonic() - at)

    async def get(self, name: str) -> ScheduleState | None:
        """Read the state of ``name``."""
        pool = await self._source.pool()
        row = await pool.fetchrow(
            f"select {_COLUMNS} from {self._table} where name = $1",  # noqa: S608 - validated identifiers
            name,
        )
        return None if row is None else _state(row)

    async def all(self) -> list[ScheduleState]:
        """Every stored state, by name."""
        pool = await self._source.pool()
        rows = await pool.fetch(f"select {_COLUMNS} from {self._table} order by name")  # noqa: S608
        return [_state(row) for row in rows]

    async def save(self, state: ScheduleState) -> None:
        """Insert or replace the state of ``state.name``.

        A save whose ``last_slot`` is older than the stored one is ignored (see the note in
        the statement), so a late write from a replica that lost its lock cannot make a slot
        that already ran due again.
        """
        pool = await self._source.pool()
        await pool.execute(
            f"insert into {self._table} ({_COLUMNS}) values ($1, $2, $3, $4, $5, $6, $7, $8)"  # noqa: S608
            " on conflict (name) do update set last_slot = excluded.last_slot,"
            " last_started = excluded.last_started, last_finished = excluded.last_finished,"
            " last_error = excluded.last_error, run_count = excluded.run_count,"
            " failure_count = excluded.failure_count, next_due = excluded.next_due,"
            " updated_at = now()"
            # Never move a schedule back: a replica that lost its lock (a long pause, a dead
            # connection) and saves late must not undo a newer replica's run, which would
            # make the newer slot due again and run it twice.
            f" where {self._table}.last_slot <= excluded.last_slot",
            state.name,
            state.last_slot,
            state.last_started,
            state.last_finished,
            state.last_error,
            state.run_count,
            state.failure_count,
            state.next_due,
        )

    async def aclose(self) -> None:
        """Close the pool if this repository created it from a DSN."""
        await self._source.close()

    def __repr__(self) -> str:
        return f"PostgresStateRepository({self._source!r}, table={self._table!r})"


def _state(row: Any) -> ScheduleState:
    return ScheduleState(
        name=row[0],
        last_slot=row[1],
        last_started=row[2],
        last_finished=row[3],
        last_error=row[4],
        run_count=row[5],
        failure_count=row[6],
        next_due=row[7],
    )
