"""One-line setup: a Scheduler on Redis.

Design notes:

- The result is a plain :class:`tasker.Scheduler`: unlike ``tasker_pg``'s, it needs no
  check before its loop. There is nothing to migrate, the driver runs on trio too, and a
  lock's key is its name, so two names never share a lock. The errors retrying cannot fix
  (a refused login, ``NOPERM``, a server older than :data:`tasker_redis.MIN_VERSION`) are
  told from outages by tasker_redis' fault classifier, and the Scheduler raises them out
  of the scheduled job instead of retrying.
- The locker factory and the state repository share one :class:`RedisSource`: one client,
  one connection pool, one server check per Scheduler.
"""

from __future__ import annotations

import ssl
from datetime import timedelta

import tasker
from tasker import Backoff

from ._connection import RedisSource
from ._locks import RedisLockerFactory
from ._state import RedisStateRepository

__all__ = ["scheduler"]

#: tasker.Scheduler's default ``backend_backoff`` (a frozen value: safe to share).
_BACKOFF = Backoff(initial=0.5, maximum=30.0)


def scheduler(
    url: str,
    *,
    namespace: str = "tasker",
    lock_ttl: float | timedelta = 10.0,
    renew_every: float | timedelta | None = None,
    lock_retry: float | timedelta = 1.0,
    backend_backoff: Backoff | float | timedelta = _BACKOFF,
    ssl_context: ssl.SSLContext | None = None,
) -> tasker.Scheduler:
    """A :class:`tasker.Scheduler` whose locks and state live in Redis.

    One line: ``scheduler = tasker_redis.scheduler(os.environ["REDIS_URL"])``. There is
    nothing to migrate; ``await scheduler.aclose()`` at the end. The locks and the state
    share one client, started lazily in the running loop (asyncio or trio). Runs on Redis
    6.2 or newer; what a server restart does to a held lock depends on its persistence
    (see :class:`RedisLockerFactory`).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS, or
            ``unix:///path``.
        namespace: the keys' prefix and hash tag (``{namespace}:...``), so applications
            sharing a server do not share locks or state. 1 to 64 letters, digits, ``_.-``.
        lock_ttl: seconds (or a ``timedelta``) a lock lives unless renewed: how long a
            replica that died holding it blocks its schedule, and how long a holder may
            fail to reach the server before its run is stopped with ``LOCK_LOST``.
        renew_every: seconds (or a ``timedelta``) between renewals of a held lock, shorter
            than ``lock_ttl`` (default: a quarter of it).
        lock_retry: seconds (or a ``timedelta``) before a replica that found a lock busy
            looks again (as in :class:`tasker.Scheduler`).
        backend_backoff: the wait between retries while the server is unreachable (as in
            :class:`tasker.Scheduler`).
        ssl_context: the TLS context for a ``rediss://`` URL (default: verify the server
            with the system's CA store).

    Raises:
        ValueError: for a bad URL, namespace or duration, or a ``renew_every`` not shorter
            than ``lock_ttl``.
        TypeError: for a URL that is not a string, or a duration (``backend_backoff``
            included, unless a :class:`tasker.Backoff`) that is neither seconds nor a
            ``timedelta``.
    """
    source = RedisSource(url, ssl_context=ssl_context, client_name="tasker-scheduler")
    return tasker.Scheduler(
        locker_factory=RedisLockerFactory(
            source, namespace=namespace, ttl=lock_ttl, renew_every=renew_every
        ),
        repository=RedisStateRepository(source, namespace=namespace),
        lock_retry=lock_retry,
        backend_backoff=backend_backoff,
    )
