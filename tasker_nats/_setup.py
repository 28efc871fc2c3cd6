"""One-line setup: a Scheduler on NATS.

Design notes:

- The result is a plain :class:`tasker.Scheduler`. There is nothing to migrate (the buckets
  are created on first use). The errors retrying cannot fix (a refused login, no JetStream,
  a server older than :data:`tasker_nats.MIN_VERSION`, running under trio) are told from
  outages by tasker_nats' fault classifier, and the Scheduler raises them out of the
  scheduled job instead of retrying.
- The locker factory and the state repository share one :class:`NatsSource`: one
  connection per Scheduler.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence
from datetime import timedelta

import tasker
from tasker import Backoff

from ._connection import NatsSource
from ._locks import NatsLockerFactory
from ._state import NatsStateRepository

__all__ = ["scheduler"]

#: tasker.Scheduler's default ``backend_backoff`` (a frozen value: safe to share).
_BACKOFF = Backoff(initial=0.5, maximum=30.0)


def scheduler(
    url: str | Sequence[str] | NatsSource,
    *,
    namespace: str = "tasker",
    lock_ttl: float | timedelta = 10.0,
    renew_every: float | timedelta | None = None,
    lock_retry: float | timedelta = 1.0,
    backend_backoff: Backoff | float | timedelta = _BACKOFF,
    replicas: int = 1,
    credentials: str | os.PathLike[str] | None = None,
    nkey_seed: str | os.PathLike[str] | None = None,
    token: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> tasker.Scheduler:
    """A :class:`tasker.Scheduler` whose locks and state live in NATS JetStream KV buckets.

    One line: ``scheduler = tasker_nats.scheduler(os.environ["NATS_URL"])``. There is
    nothing to migrate; ``await scheduler.aclose()`` at the end. asyncio only (nats-py);
    NATS server 2.11 or newer with JetStream.

    Args:
        url: ``nats://[user:password@]host[:port]`` (several comma-separated, or a list),
            ``tls://`` for TLS; or a :class:`NatsSource` (then give no credentials or TLS
            context here).
        namespace: names the buckets (``<namespace>_locks``, ``<namespace>_schedules``), so
            applications sharing a server do not share locks or state. 1 to 64 letters,
            digits, ``_`` or ``-``.
        lock_ttl: seconds (or a ``timedelta``), at least 1, a lock lives unless renewed:
            how long a replica that died holding it blocks its schedule, and how long a
            holder may fail to reach the server before its run is stopped with
            ``LOCK_LOST``.
        renew_every: seconds (or a ``timedelta``) between renewals of a held lock, shorter
            than ``lock_ttl`` (default: a quarter of it).
        lock_retry: seconds (or a ``timedelta``) before a replica that found a lock busy
            looks again (as in :class:`tasker.Scheduler`).
        backend_backoff: the wait between retries while the server is unreachable (as in
            :class:`tasker.Scheduler`).
        replicas: the buckets' replicas when tasker_nats creates them (3 in a cluster).
        credentials: a ``.creds`` file (decentralised auth).
        nkey_seed: a file holding a user's nkey seed.
        token: a token, instead of one in the URL.
        tls: the TLS context (default for ``tls://``: the system's CA store).

    Raises:
        ValueError: for a bad URL, namespace or duration, a credentials file that does not
            exist, or a ``renew_every`` not shorter than ``lock_ttl``.
        TypeError: for options of the wrong type.
    """
    if isinstance(url, NatsSource):
        if credentials is not None or nkey_seed is not None or token is not None or tls:
            raise ValueError("give the credentials and TLS context to the NatsSource")
        source = url
    else:
        source = NatsSource(
            url,
            credentials=credentials,
            nkey_seed=nkey_seed,
            token=token,
            tls=tls,
            name="tasker-scheduler",
        )
    return tasker.Scheduler(
        locker_factory=NatsLockerFactory(
            source, namespace=namespace, ttl=lock_ttl, renew_every=renew_every, replicas=replicas
        ),
        repository=NatsStateRepository(source, namespace=namespace, replicas=replicas),
        lock_retry=lock_retry,
        backend_backoff=backend_backoff,
    )
