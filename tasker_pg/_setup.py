"""One-line setup: a Scheduler on Postgres.

Design notes:

- ``tasker.Scheduler`` treats every backend error as an outage and retries it, which is right
  for a restarting server but would hide two errors that retrying cannot fix: running under
  trio (asyncpg is asyncio-only) and two schedule names sharing an advisory lock key. The
  Scheduler built here checks both when each scheduled job starts, before its loop, and
  raises them out of the job.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import asyncpg

import tasker
from tasker import Backoff, CatchUp, Context, FirstRun, Job, redact_dsn
from tasker.backends import raise_if_permanent
from tasker.schedule import Schedule

from ._connection import PoolSource, check_asyncio
from ._errors import LockKeyCollisionError
from ._locks import PostgresLockerFactory
from ._state import STATE_POOL_SIZE, PostgresStateRepository

__all__ = ["PostgresScheduler", "scheduler"]

logger = logging.getLogger("tasker_pg")

#: tasker.Scheduler's default ``backend_backoff`` (a frozen value: safe to share), also the
#: wait between start-up checks of a lock key while the database is down.
_BACKOFF = Backoff(initial=0.5, maximum=30.0)


class PostgresScheduler(tasker.Scheduler):
    """A :class:`tasker.Scheduler` whose locks and state live in Postgres.

    Build it with :func:`scheduler`. Besides the Scheduler's API it has :meth:`migrate`,
    and each job from :meth:`with_schedule` first checks, before its loop, that it runs on
    asyncio and that its name's lock key is not registered to another name.

    Args:
        locker_factory: the advisory locks.
        repository: the state table.
        lock_retry: as in :class:`tasker.Scheduler` (seconds or a ``timedelta``).
        backend_backoff: as in :class:`tasker.Scheduler`.

    Raises:
        ValueError: for a bad ``lock_retry``.
        TypeError: for a ``backend_backoff`` that is not a :class:`tasker.Backoff`.
    """

    def __init__(
        self,
        *,
        locker_factory: PostgresLockerFactory,
        repository: PostgresStateRepository,
        lock_retry: float | timedelta = 1.0,
        backend_backoff: Backoff = _BACKOFF,
    ) -> None:
        super().__init__(
            locker_factory=locker_factory,
            repository=repository,
            lock_retry=lock_retry,
            backend_backoff=backend_backoff,
        )
        self._pg_lockers = locker_factory
        self._pg_repository = repository
        self._preflight_backoff = _BACKOFF

    async def migrate(self) -> None:
        """Create every tasker_pg table, if missing: a thin wrapper of :func:`tasker_pg.migrate`
        with this scheduler's pool, schema and state table (idempotent, safe to run
        concurrently)."""
        await self._pg_repository.migrate()

    def with_schedule(
        self,
        name: str,
        schedule: Schedule,
        job: Job,
        *,
        catch_up: CatchUp = "once",
        retry_delay: float | timedelta = 10.0,
        first_run: FirstRun = "next_slot",
    ) -> Job:
        """Like :meth:`tasker.Scheduler.with_schedule`, with two checks when the job starts.

        - **On error**: under trio the job raises :class:`tasker_pg.AsyncioRequiredError`;
          if ``name``'s advisory lock key is registered to another name it raises
          :class:`tasker_pg.LockKeyCollisionError`. Both end the job at once, before any
          run. Everything else is as in :meth:`tasker.Scheduler.with_schedule` (an outage,
          at start or later, is logged once and retried with backoff).
        - **On cancellation**: as :meth:`tasker.Scheduler.with_schedule`.
        - **On shutdown**: as :meth:`tasker.Scheduler.with_schedule`; a shutdown while the
          start-up check waits for the database returns at once.
        """
        inner = super().with_schedule(
            name, schedule, job, catch_up=catch_up, retry_delay=retry_delay, first_run=first_run
        )

        async def postgres_scheduled(ctx: Context) -> None:
            check_asyncio()
            if await self._check_key(ctx, name):
                await inner(ctx)

        postgres_scheduled.__name__ = postgres_scheduled.__qualname__ = inner.__name__
        return postgres_scheduled

    async def _check_key(self, ctx: Context, name: str) -> bool:
        """Register ``name``'s lock key; False if the context ended while the database was down."""
        attempt = 0
        while True:
            try:
                await self._pg_lockers.register(name)
                return True
            except LockKeyCollisionError:
                raise
            except Exception as exc:
                # Missing tables, a refused login: retrying cannot help.
                raise_if_permanent(exc, f"Scheduler on {self._pg_repository!r}")
                # An outage: the scheduler's loop logs it and retries; this check waits
                # with it so that a collision is still raised, not retried forever.
                attempt += 1
                if attempt == 1:
                    logger.warning(
                        "schedule %r: cannot check its lock key yet (%s: %s); retrying",
                        name,
                        type(exc).__name__,
                        redact_dsn(str(exc)),
                    )
            if not await ctx.sleep(self._preflight_backoff.delay(attempt)):
                return False


def scheduler(
    dsn_or_pool: str | asyncpg.Pool,
    *,
    schema: str = "tasker",
    table: str = "schedule_state",
    namespace: str = "tasker",
    check_interval: float | timedelta = 1.0,
    lock_retry: float | timedelta = 1.0,
    backend_backoff: Backoff = _BACKOFF,
) -> PostgresScheduler:
    """A :class:`tasker.Scheduler` whose locks and state live in Postgres.

    One line: ``scheduler = tasker_pg.scheduler(os.environ["DATABASE_URL"])``. Run
    :func:`tasker_pg.migrate` (or ``await scheduler.migrate()``, or ``python -m tasker_pg
    migrate``) once per database, and ``await scheduler.aclose()`` at the end when you gave
    a DSN. A DSN gets a small pool of its own (at most two connections, created lazily in
    the running loop); every lock is held on one more, dedicated connection, the lock
    session: at most three connections per replica, whatever the number of schedules.

    Args:
        dsn_or_pool: a ``postgresql://`` DSN or an asyncpg pool.
        schema: the schema of the tables (a lower-case identifier; validated and quoted).
        table: the state table's name (likewise).
        namespace: mixed into every advisory lock key, so applications sharing a database
            do not share locks.
        check_interval: seconds (or a ``timedelta``) between liveness checks of a held lock's
            connection.
        lock_retry: seconds (or a ``timedelta``) before a replica that found a lock busy
            looks again (as in :class:`tasker.Scheduler`).
        backend_backoff: the wait between retries while the database is unreachable (as in
            :class:`tasker.Scheduler`).

    Raises:
        ValueError: for a bad DSN, schema, table, namespace or duration.
        TypeError: for something that is neither a DSN nor an asyncpg pool, a duration that
            is neither seconds nor a ``timedelta``, or a ``backend_backoff`` that is not a
            :class:`tasker.Backoff`.
        tasker_pg.AsyncioRequiredError: when called under trio (asyncpg is asyncio-only).
    """
    # The state pool and the lock session: at most STATE_POOL_SIZE + 1 connections per
    # replica, whatever the number of schedules (docs/guide/postgres.md, "Connection budget").
    source = PoolSource(dsn_or_pool, max_size=STATE_POOL_SIZE)
    return PostgresScheduler(
        locker_factory=PostgresLockerFactory(
            source, namespace=namespace, schema=schema, check_interval=check_interval
        ),
        repository=PostgresStateRepository(source, schema=schema, table=table),
        lock_retry=lock_retry,
        backend_backoff=backend_backoff,
    )
