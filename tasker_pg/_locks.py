"""Postgres advisory locks for the Scheduler.

Design notes:

- An advisory lock belongs to a *session*: it is taken with ``pg_try_advisory_lock`` on a
  dedicated connection that is held for the whole run, never on a pooled connection that goes
  back to the pool. Connections are reused between runs (a free list), not per lock.
  Session locks need a direct connection or PgBouncer in *session* mode: in transaction mode
  the lock would stay on a server connection that other clients then use.
- Key: the first 8 bytes of ``blake2b(namespace + "\\x00" + name)``, read as a signed
  big-endian 64-bit integer. Two names with the same key would silently share a lock, so
  every (key, name) pair is registered in the ``lock_keys`` table on first use; a different
  name already registered under the key raises :class:`LockKeyCollisionError`.
- A held lock is lost when its connection dies (server restart, ``pg_terminate_backend``, a
  network drop). ``wait_lost`` notices through asyncpg's termination listener and a
  ``select 1`` watchdog every ``check_interval`` seconds, so the scheduler can stop the job
  before another replica, which may now take the lock, runs a second copy for long.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from datetime import timedelta
from typing import Any

import anyio
import asyncpg

from tasker import redact_dsn
from tasker.backends import check_schedule_name as check_name
from tasker.backends import to_seconds

from ._connection import PoolSource, quote_identifier
from ._errors import LockKeyCollisionError

__all__ = ["LockKeyCollisionError", "PostgresLockerFactory", "advisory_key"]

logger = logging.getLogger("tasker_pg")

#: What a dead connection raises (a server restart, a terminated backend, a network drop).
_CONNECTION_ERRORS = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
)


def advisory_key(namespace: str, name: str) -> int:
    """The 64-bit advisory lock key of ``name`` in ``namespace`` (see the module notes)."""
    digest = hashlib.blake2b(f"{namespace}\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class _PostgresLocker:
    #: A session lock is lost with its connection: the Scheduler watches each run.
    can_be_lost = True

    __slots__ = ("_conn", "_factory", "_key", "_lost", "_name")

    def __init__(self, factory: PostgresLockerFactory, name: str) -> None:
        self._factory = factory
        self._name = name
        self._key = advisory_key(factory.namespace, name)
        self._conn: asyncpg.Connection[Any] | None = None
        self._lost = anyio.Event()

    async def try_lock(self) -> bool:
        if self._conn is not None:
            return False
        await self._factory._register(self._key, self._name)
        conn, reused = await self._factory._take_connection()
        try:
            taken = await conn.fetchval("select pg_try_advisory_lock($1)", self._key)
        except _CONNECTION_ERRORS:
            await self._factory._discard(conn)
            if not reused:
                raise
            # An idle connection kept for reuse died meanwhile (a server restart): that is
            # not an outage, so try once more on a fresh one before reporting an error.
            conn, _ = await self._factory._take_connection(fresh=True)
            try:
                taken = await conn.fetchval("select pg_try_advisory_lock($1)", self._key)
            except BaseException:
                await self._factory._discard(conn)
                raise
        except BaseException:
            await self._factory._discard(conn)
            raise
        if not taken:
            self._factory._give_back(conn)
            return False
        self._conn = conn
        self._lost = anyio.Event()
        conn.add_termination_listener(self._on_termination)
        return True

    def _on_termination(self, connection: object) -> None:
        # A plain callback from asyncpg: only set an event here, act on it from a task.
        self._lost.set()

    async def wait_lost(self) -> None:
        conn = self._conn
        if conn is None:
            await anyio.sleep_forever()
            return
        interval, timeout = self._factory.check_interval, self._factory.check_timeout
        while not self._lost.is_set():
            with anyio.move_on_after(interval):
                await self._lost.wait()
                break
            try:
                # Shielded: cancelling a query in flight makes asyncpg open another
                # connection to send a cancel request, and leaves this one busy for the
                # unlock that follows. A healthy server answers in well under a millisecond;
                # a silent network drop is caught by the timeout.
                with anyio.CancelScope(shield=True), anyio.fail_after(timeout):
                    await conn.fetchval("select 1")
            except Exception as exc:
                logger.warning(
                    "lock %r: its connection stopped answering (%s: %s)",
                    self._name,
                    type(exc).__name__,
                    redact_dsn(str(exc)),
                )
                self._lost.set()

    async def unlock(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.remove_termination_listener(self._on_termination)
        if self._lost.is_set() or conn.is_closed():
            await self._factory._discard(conn)
            return
        try:
            with anyio.fail_after(5):
                await conn.fetchval("select pg_advisory_unlock($1)", self._key)
        except Exception as exc:
            logger.warning(
                "lock %r: unlock failed (%s); dropping the connection",
                self._name,
                redact_dsn(str(exc)),
            )
            await self._factory._discard(conn)  # closing the session releases the lock
            return
        self._factory._give_back(conn)

    @property
    def connection_pid(self) -> int | None:
        """The server process id of the connection holding the lock, if held."""
        return None if self._conn is None else self._conn.get_server_pid()

    def __repr__(self) -> str:
        return f"<PostgresLocker {self._name!r} key={self._key} held={self._conn is not None}>"


class PostgresLockerFactory:
    """Advisory locks, one dedicated connection per held lock (see the module notes).

    Args:
        dsn_or_pool: a ``postgresql://`` DSN or an asyncpg pool (lock connections are opened
            with the same parameters; they never come from the pool).
        namespace: mixed into every key, so several applications can share a database.
        schema: where the ``lock_keys`` registry lives (created by :func:`tasker_pg.migrate`).
        check_interval: seconds (or a ``timedelta``) between liveness checks of a held lock's
            connection (a server restart or ``pg_terminate_backend`` is noticed at once
            through asyncpg's termination listener; the check catches connections that die
            silently).
        check_timeout: seconds (or a ``timedelta``) a liveness check may take before the
            lock counts as lost.
        idle_connections: how many unlocked connections to keep for reuse.

    Raises:
        ValueError: for a bad DSN, schema, namespace or ``idle_connections``, or an interval
            that is not positive.
        TypeError: for an interval that is not a duration.
        tasker_pg.AsyncioRequiredError: when constructed under trio.
    """

    def __init__(
        self,
        dsn_or_pool: str | asyncpg.Pool | PoolSource,
        *,
        namespace: str = "tasker",
        schema: str = "tasker",
        check_interval: float | timedelta = 1.0,
        check_timeout: float | timedelta = 5.0,
        idle_connections: int = 2,
    ) -> None:
        self._source = (
            dsn_or_pool if isinstance(dsn_or_pool, PoolSource) else PoolSource(dsn_or_pool)
        )
        if not isinstance(namespace, str) or not namespace:
            raise ValueError(f"namespace must be a non-empty string, got {namespace!r}")
        self.check_interval = to_seconds(check_interval, "check_interval", allow_zero=False)
        self.check_timeout = to_seconds(check_timeout, "check_timeout", allow_zero=False)
        if not isinstance(idle_connections, int) or idle_connections < 0:
            raise ValueError(
                f"idle_connections must be a non-negative int, got {idle_connections!r}"
            )
        self.namespace = namespace
        self.schema = schema
        self._keys_table = f"{quote_identifier(schema, 'schema')}.lock_keys"
        #: How lock connections name themselves in ``pg_stat_activity``.
        self.application_name = f"tasker_pg {socket.gethostname()} pid {os.getpid()}"
        self._idle: list[asyncpg.Connection[Any]] = []
        self._idle_limit = idle_connections
        self._registered: set[str] = set()

    def locker(self, name: str) -> _PostgresLocker:
        """Return a locker for ``name``."""
        return _PostgresLocker(self, check_name(name, "PostgresLockerFactory.locker"))

    async def _take_connection(
        self, *, fresh: bool = False
    ) -> tuple[asyncpg.Connection[Any], bool]:
        """A connection for a lock, and whether it was reused from the idle list."""
        while self._idle and not fresh:
            conn = self._idle.pop()
            if not conn.is_closed():
                return conn, True
        return await self._source.connect(self.application_name), False

    def _give_back(self, conn: asyncpg.Connection[Any]) -> None:
        if len(self._idle) < self._idle_limit and not conn.is_closed():
            self._idle.append(conn)
        else:
            conn.terminate()

    async def _discard(self, conn: asyncpg.Connection[Any]) -> None:
        conn.terminate()

    async def register(self, name: str) -> None:
        """Record ``name`` under its key in the registry table (done by the first ``try_lock``).

        Raises:
            LockKeyCollisionError: if another name is registered under the same key.
        """
        check_name(name, "PostgresLockerFactory.register")
        await self._register(advisory_key(self.namespace, name), name)

    async def _register(self, key: int, name: str) -> None:
        if name in self._registered:
            return
        pool = await self._source.pool()
        await pool.execute(
            f"insert into {self._keys_table} (key, name) values ($1, $2)"  # noqa: S608 - validated, quoted identifier
            " on conflict (key) do nothing",
            key,
            name,
        )
        # A separate statement: its snapshot sees a row another replica inserted (and
        # committed) while our insert waited on it.
        owner = await pool.fetchval(
            f"select name from {self._keys_table} where key = $1",  # noqa: S608
            key,
        )
        if owner != name:
            raise LockKeyCollisionError(key, name, owner)
        self._registered.add(name)

    async def aclose(self) -> None:
        """Close the idle connections and a pool made from a DSN (held locks are released
        by their unlock)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()
        await self._source.close()

    def __repr__(self) -> str:
        return f"PostgresLockerFactory({self._source!r}, namespace={self.namespace!r})"
