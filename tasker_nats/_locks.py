"""NATS KV locks with a TTL and fencing numbers, for the Scheduler.

Design notes:

- **Keys.** A lock is the key ``<name>`` (:func:`encode_key`) of the bucket
  ``<namespace>_locks`` (history 1, file storage). Its value is the owner,
  ``"<host>:<pid>:<random>"``.
- **Taking** is one publish to the key's subject with ``Nats-Expected-Last-Subject-Sequence:
  0`` (only if the key has no message: KV ``create``) and ``Nats-TTL``: the server deletes
  the message when the TTL runs out, on its own clock. The TTL travels in whole seconds
  (the server truncates finer ones), rounded up from ``ttl``; the holder counts with
  ``ttl`` itself, so it gives the lock up no later than the server does. A key whose last
  message is the delete marker of an unlock is taken over by a publish that expects the
  marker's sequence.
- **The fencing number** is the revision the lock was taken with: the bucket stream's
  sequence, which grows across every key of the bucket, so each holding of a name has a
  larger number than every earlier one (as long as the bucket is not deleted).
- **Renewing** republishes the owner with the TTL, expecting the revision of the last
  renewal: a compare-and-set. The Scheduler runs :meth:`~_NatsLocker.wait_lost` beside
  each run, which renews every ``renew_every``.
- **Lost.** A renewal that finds another revision (the key expired and somebody took it,
  or it was deleted) reports the lock lost at once. A renewal that cannot reach the server
  is retried until the deadline, the moment the last successful publish was sent plus
  ``ttl``, on the local monotonic clock: the server started the TTL after it received the
  publish, so the key cannot expire before the deadline. At the deadline the lock counts as
  lost; the Scheduler stops the run with ``StopReason.LOCK_LOST``.
- **Releasing** publishes a delete marker expecting the current revision (only the holder
  deletes), in a shielded scope with a timeout of its own.
- **A server restart.** JetStream keeps the message on disk with its TTL; if the server is
  back before the holder's deadline, the next renewal succeeds. In a cluster with replicas
  (``replicas=3``) a lock survives the loss of a server.
- **A SIGKILLed holder** keeps its lock until its TTL runs out: its schedule waits at most
  ``ttl`` before another replica runs it. Hence the short default: 10 s, renewed every
  2.5 s.
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
import nats.js.errors

from tasker import redact_dsn
from tasker.backends import check_schedule_name, permanent_fault, to_seconds

from ._connection import NatsSource, check_namespace, encode_key
from ._shared import KV_DEL, KV_OP, KV_PURGE, Bucket, is_wrong_last_sequence, source_of

__all__ = ["NatsLockerFactory", "fencing_token"]

logger = logging.getLogger("tasker_nats")

#: How long an unlock may wait for the server (it runs shielded from cancellation).
_UNLOCK_TIMEOUT = 5.0
#: The longest wait between renewal attempts while the server cannot be reached.
_RETRY = 0.25
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"

_current_fence: ContextVar[int | None] = ContextVar("tasker_nats_fencing_token", default=None)


def fencing_token() -> int | None:
    """The fencing number of the NATS lock the current scheduled run holds, else None.

    Inside a job run by a Scheduler on :class:`NatsLockerFactory` locks it is the revision
    the run's lock was taken with: larger than that of every earlier holding of the same
    name. Pass it to a store that refuses writes with a number older than the newest it
    saw, and a run that lost its lock (and was stopped late) cannot overwrite the work of
    the replica that took over.
    """
    return _current_fence.get()


class _NatsLocker:
    #: A TTL lock is lost when it cannot be renewed in time: the Scheduler watches each run.
    can_be_lost = True

    __slots__ = (
        "_factory",
        "_lost",
        "_name",
        "_owner",
        "_renewed_at",
        "_revision",
        "_subject",
        "fencing_token",
    )

    def __init__(self, factory: NatsLockerFactory, name: str) -> None:
        self._factory = factory
        self._name = name
        self._subject = factory.bucket.subject_prefix + encode_key(name)
        self._revision: int | None = None  # of the last successful publish, while held
        self._renewed_at = 0.0  # when the last successful publish was sent
        self._lost = False
        self._owner = b""
        #: The fencing number of the held lock (None when this locker holds none).
        self.fencing_token: int | None = None

    async def _publish(self, owner: bytes, expected: int) -> int:
        js, _ = await self._factory.bucket.get()
        headers = {_EXPECTED_LAST: str(expected), "Nats-TTL": self._factory.ttl_header}
        ack = await js.publish(self._subject, owner, headers=headers)
        return ack.seq

    async def _own_revision(self) -> int | None:
        """The key's revision if its message is still this holding's (a write of ours that
        the server stored but whose answer never came back: a renewal cancelled in flight,
        or one sent twice after a reconnect), else None."""
        js, _ = await self._factory.bucket.get()
        try:
            last = await js.get_msg(self._factory.bucket.stream, subject=self._subject)
        except nats.js.errors.NotFoundError:
            return None
        if (last.headers or {}).get(KV_OP) in (KV_DEL, KV_PURGE) or last.data != self._owner:
            return None
        return last.seq

    async def try_lock(self) -> bool:
        if self._revision is not None:
            return False
        owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}".encode()
        sent = anyio.current_time()
        try:
            revision = await self._publish(owner, 0)
        except nats.js.errors.APIError as exc:
            if not is_wrong_last_sequence(exc):
                raise
            # Busy, or the key's last message is an unlock's delete marker: take that over.
            js, _ = await self._factory.bucket.get()
            try:
                last = await js.get_msg(self._factory.bucket.stream, subject=self._subject)
            except nats.js.errors.NotFoundError:
                return False  # it expired just now: the next look takes it
            if (last.headers or {}).get(KV_OP) not in (KV_DEL, KV_PURGE) or last.seq is None:
                return False
            sent = anyio.current_time()
            try:
                revision = await self._publish(owner, last.seq)
            except nats.js.errors.APIError as again:
                if is_wrong_last_sequence(again):
                    return False  # another replica took it first
                raise
        self._revision = self.fencing_token = revision
        self._owner = owner
        self._renewed_at = sent
        self._lost = False
        _current_fence.set(revision)
        return True

    def _report_lost(self, why: str) -> None:
        self._lost = True
        logger.warning("lock %r (fencing number %s): lost, %s", self._name, self.fencing_token, why)

    async def wait_lost(self) -> None:
        """Renew the held lock every ``renew_every``; return once it is lost (see the
        module notes). With no lock held, sleep forever."""
        if self._revision is None:
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
            renewed: int | None = None
            with anyio.move_on_after(deadline - now):
                try:
                    assert self._revision is not None
                    renewed = await self._publish(self._owner, self._revision)
                except Exception as exc:
                    if is_wrong_last_sequence(exc):
                        try:
                            own = await self._own_revision()
                        except Exception as again:
                            failing = again
                            continue
                        if own is None:
                            self._report_lost("its key expired or was taken over")
                            return
                        # A renewal of ours was stored without its answer (cancelled in
                        # flight, or sent twice after a reconnect): renew over it at once.
                        self._revision = own
                        continue
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
            if renewed is None:  # no answer before the deadline: the next turn says lost
                continue
            if failing is not None:
                logger.warning("lock %r: renewed again", self._name)
                failing = None
            self._revision = renewed
            self._renewed_at = now

    async def unlock(self) -> None:
        revision, self._revision = self._revision, None
        if revision is None:
            return
        self.fencing_token = None
        _current_fence.set(None)
        if self._lost:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(_UNLOCK_TIMEOUT) as scope:
            try:
                js, _ = await self._factory.bucket.get()
                for _ in range(2):
                    try:
                        await js.publish(
                            self._subject,
                            b"",
                            headers={KV_OP: KV_DEL, _EXPECTED_LAST: str(revision)},
                        )
                        break
                    except nats.js.errors.APIError as refused:
                        if not is_wrong_last_sequence(refused):
                            raise
                        # A renewal of ours stored without its answer (cancelled in
                        # flight) moved the revision: delete over it; anyone else's, keep.
                        own = await self._own_revision()
                        if own is None:
                            break
                        revision = own
            except Exception as exc:
                if not is_wrong_last_sequence(exc):
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
            f"<NatsLocker {self._name!r} held={self._revision is not None}"
            f" fencing_token={self.fencing_token}>"
        )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {redact_dsn(str(exc))}"


class NatsLockerFactory:
    """:class:`tasker.abc.LockerFactory` of NATS KV locks with a TTL and fencing numbers
    (nats-py; asyncio only; see the module notes).

    A lock is a key the server deletes after ``ttl`` unless its holder renews it, which the
    Scheduler's lock watch does every ``renew_every`` during a run. Its locker reports the
    lock lost when a renewal finds another revision, or when the server cannot be reached
    before the ``ttl`` runs out; then the Scheduler stops the run with
    ``StopReason.LOCK_LOST``. Inside a run, :func:`tasker_nats.fencing_token` is the lock's
    fencing number.

    Args:
        url_or_source: ``nats://[user:password@]host[:port]`` (several comma-separated),
            ``tls://`` for TLS; or the :class:`NatsSource` a :func:`tasker_nats.scheduler`
            shares with its state repository.
        namespace: names the bucket, ``<namespace>_locks``: locks of two namespaces never
            meet. 1 to 64 letters, digits, ``_`` or ``-``.
        ttl: seconds (or a ``timedelta``), at least 1, a lock lives unless renewed: how
            long a replica that died holding it blocks its schedule, and how long a holder
            may fail to reach the server before its lock counts as lost.
        renew_every: seconds (or a ``timedelta``) between renewals of a held lock; shorter
            than ``ttl`` (default: a quarter of it).
        replicas: the bucket's replicas when tasker_nats creates it (3 in a cluster, so
            that a lock survives the loss of a server).
        tls: the TLS context for a URL (with a source: give it to the source).

    Raises:
        ValueError: for a bad URL or namespace, a ``ttl`` under a second, a duration that
            is not positive, or a ``renew_every`` not shorter than ``ttl``.
        TypeError: for something that is neither a URL nor a source, or a duration that is
            neither seconds nor a ``timedelta``.
    """

    def __init__(
        self,
        url_or_source: str | NatsSource,
        *,
        namespace: str = "tasker",
        ttl: float | timedelta = 10.0,
        renew_every: float | timedelta | None = None,
        replicas: int = 1,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.namespace = check_namespace(namespace)
        self.ttl = to_seconds(ttl, "ttl", allow_zero=False)
        if self.ttl < 1:
            raise ValueError(
                f"ttl must be at least 1 second (NATS expires messages in whole seconds),"
                f" got {ttl!r}"
            )
        self.renew_every = (
            self.ttl / 4
            if renew_every is None
            else to_seconds(renew_every, "renew_every", allow_zero=False)
        )
        if self.renew_every >= self.ttl:
            raise ValueError(
                f"renew_every must be shorter than ttl ({self.ttl:g}s), got {renew_every!r}"
            )
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 5:
            raise ValueError(f"replicas must be an int from 1 to 5, got {replicas!r}")
        #: The TTL as the server takes it: whole seconds, rounded up.
        self.ttl_header = f"{math.ceil(self.ttl)}s"
        self._source = source_of(url_or_source, tls, "tasker-scheduler")
        self.bucket = Bucket(self._source, f"{self.namespace}_locks", replicas=replicas)

    def locker(self, name: str) -> _NatsLocker:
        """Return a locker for ``name``; two lockers for the same name exclude each other."""
        return _NatsLocker(self, check_schedule_name(name, "NatsLockerFactory.locker"))

    async def aclose(self) -> None:
        """Close the connection (shared with the state repository when built by
        :func:`tasker_nats.scheduler`: closing either closes it, and the other connects
        again on its next call); calling it again does nothing. Held locks are released by
        their unlock, or expire."""
        await self._source.aclose()

    def __repr__(self) -> str:
        return (
            f"NatsLockerFactory({self._source.url!r}, namespace={self.namespace!r},"
            f" ttl={self.ttl:g})"
        )
