"""Postgres advisory locks for the Scheduler.

Design notes:

- An advisory lock belongs to a *session*, and one session can hold many: every lock of a
  factory (of a replica) is held on **one** dedicated connection, its *lock session*, never
  on a pooled connection that goes back to the pool. So a replica's connections do not grow
  with the number of schedules it runs: one lock session, plus the state pool (see
  ``docs/guide/postgres.md``, "Connection budget"). Before, each held lock had a connection
  of its own: a replica running 20 schedules at once held 24 connections.
  Session locks need a direct connection or PgBouncer in *session* mode: in transaction mode
  the lock would stay on a server connection that other clients then use.
- A session lock is re-entrant *within* its session, so exclusion between this process's
  lockers is local: the session keeps the keys it holds, and a second locker for a held key
  is refused without asking the server. Statements on the session run one at a time (an
  asyncpg connection runs one query at a time), each shielded from cancellation with a
  timeout of its own: a cancelled query would make asyncpg open one more connection to send
  the cancel request, and leave the lock's outcome unknown.
- Fencing stays per lock: a locker remembers the session it locked on. When that session
  dies every locker holding a lock on it sees ``wait_lost`` return (``LOCK_LOST`` in the
  Scheduler), its ``unlock`` does nothing (the server released the lock with the session),
  and the next ``try_lock`` opens a new session; a lock on the new session never answers
  for one taken on the old.
- Key: the first 8 bytes of ``blake2b(namespace + "\\x00" + name)``, read as a signed
  big-endian 64-bit integer. Two names with the same key would silently share a lock, so
  every (key, name) pair is registered in the ``lock_keys`` table on first use; a different
  name already registered under the key raises :class:`LockKeyCollisionError`.
- A held lock is lost when its session dies (server restart, ``pg_terminate_backend``, a
  network drop). ``wait_lost`` notices through asyncpg's termination listener and a
  ``select 1`` watchdog every ``check_interval`` seconds (one per session, whichever
  waiter's turn it is, not one per lock), so the scheduler can stop the job before another
  replica, which may now take the lock, runs a second copy for long. An unlock that fails
  ends the session (closing it is what releases the lock), so the other locks on it are
  lost too.
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


#: Seconds a lock, unlock or registry statement on the lock session may take.
_STATEMENT_TIMEOUT = 5.0


class _Session:
    """The lock session: one connection holding every advisory lock of a factory."""

    __slots__ = ("checked_at", "checking", "conn", "held", "lost", "use")

    def __init__(self, conn: asyncpg.Connection[Any]) -> None:
        self.conn = conn
        #: Set once the connection died or was given up: every lock on it is lost.
        self.lost = anyio.Event()
        #: The keys held on this session, and the locker holding each.
        self.held: dict[int, _PostgresLocker] = {}
        #: One statement at a time on the connection.
        self.use = anyio.Lock()
        self.checked_at = anyio.current_time()
        #: A liveness check in flight (its waiters wait for ``lost`` or their next turn).
        self.checking = False
        conn.add_termination_listener(self._on_termination)

    def _on_termination(self, connection: object) -> None:
        # A plain callback from asyncpg: only set an event here, act on it from a task.
        self.lost.set()

    @property
    def alive(self) -> bool:
        return not self.lost.is_set() and not self.conn.is_closed()

    def give_up(self) -> None:
        """End the session: the server releases every lock on it."""
        self.lost.set()
        self.conn.terminate()

    async def fetchval(self, query: str, *args: object) -> Any:
        """Run one statement on the session, shielded, with a timeout (see the notes).

        A connection error or the timeout ends the session and propagates.
        """
        async with self.use:
            try:
                with anyio.CancelScope(shield=True), anyio.fail_after(_STATEMENT_TIMEOUT):
                    return await self.conn.fetchval(query, *args)
            except (*_CONNECTION_ERRORS, TimeoutError):
                self.give_up()
                raise

    async def check(self, timeout: float) -> None:
        """``select 1`` on the session; a failure or a silence past ``timeout`` ends it."""
        self.checking = True
        try:
            async with self.use:
                with anyio.CancelScope(shield=True), anyio.fail_after(timeout):
                    await self.conn.fetchval("select 1")
            self.checked_at = anyio.current_time()
        finally:
            self.checking = False


class _PostgresLocker:
    #: A session lock is lost with its connection: the Scheduler watches each run.
    can_be_lost = True

    __slots__ = ("_factory", "_key", "_name", "_session")

    def __init__(self, factory: PostgresLockerFactory, name: str) -> None:
        self._factory = factory
        self._name = name
        self._key = advisory_key(factory.namespace, name)
        #: The session this locker holds its lock on, while it holds it.
        self._session: _Session | None = None

    async def try_lock(self) -> bool:
        if self._session is not None:
            return False
        factory = self._factory
        session, reused = await factory._current_session()
        try:
            await factory._register(session, self._key, self._name)
            taken = await self._take(session)
        except _CONNECTION_ERRORS:
            if not reused:
                raise
            # The session kept between runs died meanwhile (a server restart): that is not
            # an outage, so try once more on a fresh one before reporting an error.
            session, _ = await factory._current_session()
            await factory._register(session, self._key, self._name)
            taken = await self._take(session)
        if taken:
            self._session = session
        return taken

    async def _take(self, session: _Session) -> bool:
        if self._key in session.held:
            await anyio.lowlevel.checkpoint()
            return False  # held by another locker of this process (see the notes)
        session.held[self._key] = self  # reserved: a concurrent locker is refused meanwhile
        taken = False
        try:
            taken = bool(await session.fetchval("select pg_try_advisory_lock($1)", self._key))
        finally:
            if not taken and session.held.get(self._key) is self:
                del session.held[self._key]
        return taken

    async def wait_lost(self) -> None:
        session = self._session
        if session is None:
            await anyio.sleep_forever()
            return
        interval, timeout = self._factory.check_interval, self._factory.check_timeout
        while not session.lost.is_set():
            with anyio.move_on_after(interval):
                await session.lost.wait()
                break
            # One liveness check per session and interval, whichever waiter's turn it is.
            if session.checking or anyio.current_time() - session.checked_at < interval / 2:
                continue
            try:
                await session.check(timeout)
            except Exception as exc:
                logger.warning(
                    "lock session of %r: its connection stopped answering (%s: %s); every"
                    " lock on it counts as lost",
                    self._name,
                    type(exc).__name__,
                    redact_dsn(str(exc)),
                )
                session.give_up()

    async def unlock(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        if session.held.get(self._key) is self:
            del session.held[self._key]
        if not session.alive:
            return  # the server released the lock with the session
        try:
            await session.fetchval("select pg_advisory_unlock($1)", self._key)
        except Exception as exc:
            logger.warning(
                "lock %r: unlock failed (%s); ending the lock session, which releases it"
                " (and every other lock on it)",
                self._name,
                redact_dsn(str(exc)),
            )
            session.give_up()

    @property
    def connection_pid(self) -> int | None:
        """The server process id of the session holding the lock, if held."""
        return None if self._session is None else self._session.conn.get_server_pid()

    def __repr__(self) -> str:
        return f"<PostgresLocker {self._name!r} key={self._key} held={self._session is not None}>"


class PostgresLockerFactory:
    """Advisory locks, all held on one dedicated connection, the lock session (see the notes).

    Args:
        dsn_or_pool: a ``postgresql://`` DSN or an asyncpg pool (the lock session is opened
            with the same parameters; it never comes from the pool, and the factory takes no
            pooled connection).
        namespace: mixed into every key, so several applications can share a database.
        schema: where the ``lock_keys`` registry lives (created by :func:`tasker_pg.migrate`).
        check_interval: seconds (or a ``timedelta``) between liveness checks of the lock
            session while a lock is held (a server restart or ``pg_terminate_backend`` is
            noticed at once through asyncpg's termination listener; the check catches
            connections that die silently).
        check_timeout: seconds (or a ``timedelta``) a liveness check may take before the
            session, and every lock on it, counts as lost.
        idle_connections: accepted for compatibility and ignored: there is one session,
            kept open between runs (it was the number of per-lock connections kept for reuse).

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
        #: How the lock session names itself in ``pg_stat_activity``.
        self.application_name = f"tasker_pg {socket.gethostname()} pid {os.getpid()}"
        self._session: _Session | None = None
        self._opening: anyio.Lock | None = None
        self._registered: set[str] = set()

    def locker(self, name: str) -> _PostgresLocker:
        """Return a locker for ``name``."""
        return _PostgresLocker(self, check_name(name, "PostgresLockerFactory.locker"))

    @property
    def session_pid(self) -> int | None:
        """The server process id of the lock session, if one is open."""
        session = self._session
        return None if session is None or not session.alive else session.conn.get_server_pid()

    async def _current_session(self) -> tuple[_Session, bool]:
        """The live lock session, opened if needed, and whether it was open already."""
        session = self._session
        if session is not None and session.alive:
            return session, True
        if self._opening is None:
            self._opening = anyio.Lock()
        async with self._opening:  # concurrent first lockers open one session, not several
            session = self._session
            if session is not None and session.alive:
                return session, True
            if session is not None:
                session.give_up()  # dead: make sure the socket is closed too
            conn = await self._source.connect(self.application_name)
            self._session = _Session(conn)
            return self._session, False

    async def register(self, name: str) -> None:
        """Record ``name`` under its key in the registry table (done by the first ``try_lock``).

        Raises:
            LockKeyCollisionError: if another name is registered under the same key.
        """
        check_name(name, "PostgresLockerFactory.register")
        if name in self._registered:
            return
        session, _ = await self._current_session()
        await self._register(session, advisory_key(self.namespace, name), name)

    async def _register(self, session: _Session, key: int, name: str) -> None:
        # On the lock session, not a pool: the factory's connection budget is that session.
        if name in self._registered:
            return
        await session.fetchval(
            f"insert into {self._keys_table} (key, name) values ($1, $2)"  # noqa: S608 - validated, quoted identifier
            " on conflict (key) do nothing",
            key,
            name,
        )
        # A separate statement: its snapshot sees a row another replica inserted (and
        # committed) while our insert waited on it.
        owner = await session.fetchval(
            f"select name from {self._keys_table} where key = $1",  # noqa: S608
            key,
        )
        if owner != name:
            raise LockKeyCollisionError(key, name, owner)
        self._registered.add(name)

    async def aclose(self) -> None:
        """Close the lock session (the server releases the locks still held on it: their
        holders see them lost) and a pool made from a DSN."""
        session, self._session = self._session, None
        if session is not None:
            session.lost.set()
            if not session.conn.is_closed():
                with anyio.move_on_after(_STATEMENT_TIMEOUT, shield=True):
                    await session.conn.close()
            if not session.conn.is_closed():
                session.conn.terminate()
        await self._source.close()

    def __repr__(self) -> str:
        return f"PostgresLockerFactory({self._source!r}, namespace={self.namespace!r})"
