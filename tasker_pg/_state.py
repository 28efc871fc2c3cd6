"""Schedule state in a Postgres table (created by :func:`tasker_pg.migrate`)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from tasker import ScheduleState
from tasker.backends import to_seconds

from ._connection import PoolSource, quote_identifier
from ._schema import migrate_source

__all__ = ["STATE_POOL_SIZE", "PostgresStateRepository"]

#: The most pooled connections a Scheduler's state takes (from a DSN): its statements are
#: short, and the lock session is the only other connection (see the connection budget).
STATE_POOL_SIZE = 2

_COLUMNS = (
    "name, last_slot, last_started, last_finished, last_error, run_count, failure_count, next_due"
)


class PostgresStateRepository:
    """:class:`tasker.abc.StateRepository` on a Postgres table.

    ``now()`` is the database's clock, so replicas with skewed clocks agree on which slot
    is due. Run :func:`tasker_pg.migrate` once (or ``python -m tasker_pg migrate``) before use.

    Args:
        dsn_or_pool: a ``postgresql://`` DSN or an asyncpg pool.
        schema: the schema (a validated lower-case identifier).
        table: the table name (likewise).
        clock_resync: seconds (or a ``timedelta``) between readings of the database clock
            (see :meth:`now`); 0 reads it on every call.

    Raises:
        ValueError: for a bad DSN, schema or table name, or a negative ``clock_resync``.
        TypeError: for a ``clock_resync`` that is not a duration.
        tasker_pg.AsyncioRequiredError: when constructed under trio.
    """

    def __init__(
        self,
        dsn_or_pool: str | asyncpg.Pool | PoolSource,
        *,
        schema: str = "tasker",
        table: str = "schedule_state",
        clock_resync: float | timedelta = 30.0,
    ) -> None:
        self._source = (
            dsn_or_pool
            if isinstance(dsn_or_pool, PoolSource)
            else PoolSource(dsn_or_pool, max_size=STATE_POOL_SIZE)
        )
        self._clock_resync = to_seconds(clock_resync, "clock_resync")
        self._clock: tuple[datetime, float] | None = None
        self.schema = schema
        self.table = table
        self._table = f"{quote_identifier(schema, 'schema')}.{quote_identifier(table, 'table')}"

    async def migrate(self) -> None:
        """Create every tasker_pg table, if missing: a thin wrapper of :func:`tasker_pg.migrate`
        with this repository's pool, schema and table (idempotent, safe to run concurrently)."""
        await migrate_source(self._source, schema=self.schema, table=self.table)

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

    async def delete(self, name: str) -> None:
        """Delete the row of ``name`` (a no-op if there is none).

        The next save of the name inserts a new row, whatever slot the deleted one had.
        """
        pool = await self._source.pool()
        await pool.execute(
            f"delete from {self._table} where name = $1",  # noqa: S608 - validated identifiers
            name,
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
