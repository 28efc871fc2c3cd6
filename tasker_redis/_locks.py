"""Redis locks with fencing numbers for the Scheduler.

Design notes:

- **Keys.** A lock is the string ``{namespace}:lock:<name>``; its value, the *token*, is
  ``"<fencing number> <host>:<pid>:<random>"`` and it expires after ``ttl``. The fencing
  numbers come from one counter per namespace, ``{namespace}:fence``, so they increase
  across every lock of the namespace (and so for each name). The name is only ever joined
  to the fixed prefix in Python and passed in ``KEYS``; the scripts' text is constant.
- **Taking** is one script: ``EXISTS`` (a busy lock writes nothing, so replicas that find
  it busy add nothing to the AOF), ``INCR`` of the counter, ``SET key token NX PX ttl``.
- **Renewing** is a compare-and-extend script (``PEXPIRE`` only if the value is our
  token), run by :meth:`~_RedisLocker.wait_lost` every ``renew_every``. The Scheduler runs
  ``wait_lost`` beside each run (the Locker protocol: ``try_lock``, ``wait_lost`` while the
  work runs, ``unlock``), so the renewal loop lives in a task the Scheduler owns and ends
  with the run; no task outlives its caller. Before the run starts (a state read) the lock
  lives on the ``ttl`` it was taken with; a caller that never calls ``wait_lost`` holds the
  lock for ``ttl`` at most.
- **Lost.** A renewal that finds the key gone or holding another token (it expired, was
  deleted, a restarted server lost it, another replica took it over) reports the lock lost
  at once. A renewal that cannot reach the server is retried until the *deadline*: the
  moment the last successful ``SET``/``PEXPIRE`` was sent, plus ``ttl``, on the local
  monotonic clock. The server started its ``ttl`` after it received the command, so the
  key cannot expire before the deadline (unless the server's clock jumps); at the deadline
  the lock counts as lost, the Scheduler stops the run with ``StopReason.LOCK_LOST`` and
  does not record it.
- **Releasing** is a compare-and-delete script (only the owner's token deletes), in a
  shielded scope with a timeout of its own. A lock already lost is not touched.
- **A server restart.** With AOF (``appendfsync always``, or ``everysec`` for writes older
  than a second) the key survives with its absolute expiry (Redis writes ``PX`` to the AOF
  as an absolute time): if the server is back before the holder's deadline, the next
  renewal succeeds and the holder keeps the lock, and the counter keeps counting. Without
  persistence (or when ``everysec`` lost the write, or a failover promoted a replica that
  had not received it) the key is gone: the next renewal reports the lock lost and another
  replica may take it; the counter may start again at 1, so a store that checks fencing
  numbers needs Redis with AOF.
- **What a TTL lock cannot do** is stop a holder that is paused longer than ``ttl`` (a long
  GC pause, ``SIGSTOP``, a migrated VM): it runs on until it notices. That is what fencing
  numbers are for: a store that remembers the highest number it saw refuses writes that
  carry an older one; :func:`fencing_token` gives the number of the current run's lock.
- **A SIGKILLed holder** keeps its lock until the key expires: its schedule waits at most
  ``ttl`` before another replica runs it. So does a ``try_lock`` whose reply never arrived
  (cancelled, or the connection dropped after the server ran it): nobody knows the token,
  nobody renews the key, and it expires. Both are why the default ``ttl`` is short: 10 s,
  renewed every 2.5 s (one command per held lock every 2.5 s; an outage of 7.5 s at least
  is ridden out).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import ssl
from contextvars import ContextVar
from datetime import timedelta

import anyio

from tasker import redact_dsn
from tasker.backends import check_schedule_name, permanent_fault, to_seconds

from ._connection import RedisSource, check_namespace
from ._shared import ScriptSet, source_of

__all__ = ["RedisLockerFactory", "fencing_token"]

logger = logging.getLogger("tasker_redis")

#: How long an unlock may wait for the server (it runs shielded from cancellation).
_UNLOCK_TIMEOUT = 5.0
#: The longest wait between renewal attempts while the server cannot be reached.
_RETRY = 0.25

_SCRIPTS = {
    # KEYS: the lock, the namespace's fencing counter. ARGV: the owner, the ttl in ms.
    # Returns the fencing number, or false if the lock is held.
    "try_lock": """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], string.format('%d', fence) .. ' ' .. ARGV[1], 'NX', 'PX', ARGV[2])
return fence
""",
    # KEYS: the lock. ARGV: our token, the ttl in ms. 1 if extended, 0 if not ours.
    "renew": """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
""",
    # KEYS: the lock. ARGV: our token. 1 if deleted, 0 if not ours.
    "unlock": """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
}

_current_fence: ContextVar[int | None] = ContextVar("tasker_redis_fencing_token", default=None)


def fencing_token() -> int | None:
    """The fencing number of the Redis lock the current scheduled run holds, else None.

    Inside a job run by a Scheduler on :class:`RedisLockerFactory` locks it is the number
    the run's lock was taken with: larger than that of every earlier holding of the same
    name. Pass it to a store that refuses writes with a number older than the newest it
    saw, and a run that lost its lock (and was stopped late, say after a long pause)
    cannot overwrite the work of the replica that took over.
    """
    return _current_fence.get()


class _RedisLocker:
    #: A TTL lock is lost when it cannot be renewed in time: the Scheduler watches each run.
    can_be_lost = True

    __slots__ = ("_factory", "_key", "_lost", "_name", "_renewed_at", "_token", "fencing_token")

    def __init__(self, factory: RedisLockerFactory, name: str) -> None:
        self._factory = factory
        self._name = name
        self._key = factory.key(name)
        self._token: str | None = None
        self._renewed_at = 0.0  # when the last successful SET or PEXPIRE was sent
        self._lost = False
        #: The fencing number of the held lock (None when this locker holds none).
        self.fencing_token: int | None = None

    async def try_lock(self) -> bool:
        if self._token is not None:
            return False
        factory = self._factory
        owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"
        sent = anyio.current_time()
        fence = await factory._scripts.run(
            "try_lock", [self._key, factory.fence_key], [owner, factory._ttl_ms]
        )
        if fence is None:
            return False
        self.fencing_token = int(fence)
        self._token = f"{self.fencing_token} {owner}"
        self._renewed_at = sent
        self._lost = False
        _current_fence.set(self.fencing_token)
        return True

    def _report_lost(self, why: str) -> None:
        self._lost = True
        logger.warning("lock %r (fencing number %s): lost, %s", self._name, self.fencing_token, why)

    async def wait_lost(self) -> None:
        """Renew the held lock every ``renew_every``; return once it is lost (see the
        module notes). With no lock held, sleep forever."""
        token = self._token
        if token is None:
            await anyio.sleep_forever()
            return
        factory = self._factory
        failing: Exception | None = None
        tried_at = 0.0
        while not self._lost:
            now = anyio.current_time()
            deadline = self._renewed_at + factory.ttl
            if now >= deadline:
                self._report_lost(
                    f"the server did not answer a renewal within its ttl ({factory.ttl:g}s)"
                    + ("" if failing is None else f"; last error {_describe(failing)}")
                )
                return
            due = (
                self._renewed_at + factory.renew_every
                if failing is None
                else tried_at + min(_RETRY, factory.renew_every)
            )
            if due > now:
                await anyio.sleep(min(due, deadline) - now)
                continue
            tried_at = now
            extended: int | None = None
            with anyio.move_on_after(deadline - now):
                try:
                    extended = await factory._scripts.run(
                        "renew", [self._key], [token, factory._ttl_ms]
                    )
                except Exception as exc:
                    if permanent_fault(exc) is not None:
                        self._report_lost(f"a renewal failed: {_describe(exc)}")
                        return
                    if failing is None:
                        logger.warning(
                            "lock %r: cannot renew it (%s); retrying until its ttl runs out",
                            self._name,
                            _describe(exc),
                        )
                    failing = exc
                    continue
            if extended is None:  # no answer before the deadline: the next turn says lost
                continue
            if not extended:
                self._report_lost("its key expired or holds another token")
                return
            if failing is not None:
                logger.warning("lock %r: renewed again", self._name)
                failing = None
            self._renewed_at = now

    async def unlock(self) -> None:
        token, self._token = self._token, None
        if token is None:
            return
        self.fencing_token = None
        _current_fence.set(None)
        if self._lost:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(_UNLOCK_TIMEOUT) as scope:
            try:
                await self._factory._scripts.run("unlock", [self._key], [token])
            except Exception as exc:
                logger.warning(
                    "lock %r: unlock failed (%s); the key expires within its ttl",
                    self._name,
                    _describe(exc),
                )
        if scope.cancelled_caught:
            logger.warning(
                "lock %r: no answer to the unlock within %gs; the key expires within its ttl",
                self._name,
                _UNLOCK_TIMEOUT,
            )

    def __repr__(self) -> str:
        return (
            f"<RedisLocker {self._name!r} held={self._token is not None}"
            f" fencing_token={self.fencing_token}>"
        )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {redact_dsn(str(exc))}"


class RedisLockerFactory:
    """:class:`tasker.abc.LockerFactory` of Redis locks with fencing numbers (coredis;
    asyncio and trio; see the module notes).

    A lock is a key that expires after ``ttl`` unless its holder renews it, which the
    Scheduler's lock watch does every ``renew_every`` during a run. Its locker reports the
    lock lost when a renewal finds the key gone or taken over, or when the server cannot
    be reached before the ``ttl`` runs out; then the Scheduler stops the run with
    ``StopReason.LOCK_LOST``. Only the holder's unlock deletes the key. Inside a run,
    :func:`tasker_redis.fencing_token` is the lock's fencing number.

    Args:
        url_or_source: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for
            TLS, or ``unix:///path``; or the source a :func:`tasker_redis.scheduler` shares
            with its state repository.
        namespace: the keys' prefix and hash tag (``{namespace}:lock:<name>``): locks of
            two namespaces never meet. 1 to 64 letters, digits, ``_.-``.
        ttl: seconds (or a ``timedelta``) a lock lives unless renewed: how long a replica
            that died holding it blocks its schedule, and how long a holder may fail to
            reach the server before its lock counts as lost.
        renew_every: seconds (or a ``timedelta``) between renewals of a held lock; shorter
            than ``ttl`` (default: a quarter of it).
        ssl_context: the TLS context for a ``rediss://`` URL (default: verify the server
            with the system's CA store).

    Raises:
        ValueError: for a bad URL or namespace, a duration that is not positive, a
            ``renew_every`` not shorter than ``ttl``, or an ``ssl_context`` with a source.
        TypeError: for something that is neither a URL nor a source, or a duration that is
            neither seconds nor a ``timedelta``.
    """

    def __init__(
        self,
        url_or_source: str | RedisSource,
        *,
        namespace: str = "tasker",
        ttl: float | timedelta = 10.0,
        renew_every: float | timedelta | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.namespace = check_namespace(namespace)
        self.ttl = to_seconds(ttl, "ttl", allow_zero=False)
        self.renew_every = (
            self.ttl / 4
            if renew_every is None
            else to_seconds(renew_every, "renew_every", allow_zero=False)
        )
        if self.renew_every >= self.ttl:
            raise ValueError(
                f"renew_every must be shorter than ttl ({self.ttl:g}s), got {renew_every!r}"
            )
        self._ttl_ms = math.ceil(self.ttl * 1000)  # as PX takes it: whole ms, rounded up
        self._source = source_of(url_or_source, ssl_context, "tasker-scheduler")
        self._prefix = "{" + self.namespace + "}:"
        #: The namespace's fencing counter.
        self.fence_key = self._prefix + "fence"
        self._scripts = ScriptSet(self._source, _SCRIPTS)

    def key(self, name: str) -> str:
        """The Redis key of ``name``'s lock: ``{namespace}:lock:<name>``."""
        return self._prefix + "lock:" + name

    def locker(self, name: str) -> _RedisLocker:
        """Return a locker for ``name``; two lockers for the same name exclude each other."""
        return _RedisLocker(self, check_schedule_name(name, "RedisLockerFactory.locker"))

    async def aclose(self) -> None:
        """Close the connections (shared with the state repository when built by
        :func:`tasker_redis.scheduler`: closing either closes them, and the other opens them
        again on its next call); calling it again does nothing. Held locks are released by
        their unlock, or expire."""
        await self._source.aclose()

    def __repr__(self) -> str:
        return (
            f"RedisLockerFactory({redact_dsn(self._source.url)!r}, namespace={self.namespace!r},"
            f" ttl={self.ttl:g})"
        )
