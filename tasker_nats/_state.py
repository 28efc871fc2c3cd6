"""Schedule state in a NATS KV bucket, saved only forward, on the server's clock.

Design notes:

- **One key per schedule**, ``s.<name>`` (:func:`encode_key`) in the bucket
  ``<namespace>_schedules`` (history 1, file storage): the value is its
  :class:`tasker.ScheduleState` as JSON. ``all()`` lists the ``s.>`` keys.
- **Saves only move forward.** A save reads the stored state and its revision, refuses a
  state whose ``last_slot`` is older (an equal slot is stored: it is a failed run's
  record), and writes with ``Nats-Expected-Last-Subject-Sequence`` set to that revision; a
  concurrent save makes it read again. So a replica that lost its lock and saves late
  cannot make a slot that already ran due again.
- **A delete is a KV delete marker** (``Scheduler.forget``): the key reads as missing, and
  the next save writes over the marker whatever slot it has (the revision it expects is
  the marker's, which nats-py hands over inside ``KeyNotFoundError``).
- **The clock is the server's**: the time the server stored an empty message on the
  bucket's ``clock`` key (:class:`ServerClock`), read every ``clock_resync`` seconds and
  advanced in between by the local monotonic clock. Replicas whose clocks disagree agree on
  which slot is due.
- Datetimes are stored in ISO 8601 with their UTC offset, as tasker_redis does.
"""

from __future__ import annotations

import logging
import ssl
from datetime import UTC, datetime, timedelta

import nats.js.errors

from tasker import ScheduleState
from tasker.backends import (
    check_schedule_name,
    schedule_state_from_json,
    schedule_state_to_json,
    to_seconds,
)

from ._connection import NatsSource, ServerClock, check_namespace, decode_key, encode_key
from ._shared import Bucket, is_wrong_last_sequence, source_of

__all__ = ["NatsStateRepository"]

logger = logging.getLogger("tasker_nats")

#: Compare-and-set rounds a save tries before it gives up (each lost round means another
#: replica saved the same schedule at the same moment).
_SAVE_ROUNDS = 20


class NatsStateRepository:
    """:class:`tasker.abc.StateRepository` on a NATS KV bucket (nats-py; asyncio only; see
    the module notes).

    ``now()`` is the server's clock, so replicas with skewed clocks agree on which slot is
    due; ``save`` never moves a schedule's ``last_slot`` back. Nothing to migrate: the
    bucket is created on first use.

    Args:
        url_or_source: ``nats://[user:password@]host[:port]`` (several comma-separated),
            ``tls://`` for TLS; or the :class:`NatsSource` a :func:`tasker_nats.scheduler`
            shares with its locker factory.
        namespace: names the bucket, ``<namespace>_schedules``. 1 to 64 letters, digits,
            ``_`` or ``-``.
        clock_resync: seconds (or a ``timedelta``) between readings of the server's clock
            (see :meth:`now`); 0 reads it on every call.
        replicas: the bucket's replicas when tasker_nats creates it.
        tls: the TLS context for a URL (with a source: give it to the source).

    Raises:
        ValueError: for a bad URL or namespace or a negative ``clock_resync``.
        TypeError: for something that is neither a URL nor a source, or a ``clock_resync``
            that is neither seconds nor a ``timedelta``.
    """

    def __init__(
        self,
        url_or_source: str | NatsSource,
        *,
        namespace: str = "tasker",
        clock_resync: float | timedelta = 30.0,
        replicas: int = 1,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.namespace = check_namespace(namespace)
        resync = to_seconds(clock_resync, "clock_resync")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 5:
            raise ValueError(f"replicas must be an int from 1 to 5, got {replicas!r}")
        self._source = source_of(url_or_source, tls, "tasker-scheduler")
        self.bucket = Bucket(self._source, f"{self.namespace}_schedules", replicas=replicas)
        self._locks = Bucket(self._source, f"{self.namespace}_locks", replicas=replicas)
        self._clock = ServerClock(
            self.bucket.stream, self.bucket.subject_prefix + "clock", resync=resync
        )

    async def now(self) -> datetime:
        """The server's clock, as an aware UTC datetime (see :class:`ServerClock`)."""
        js, _ = await self.bucket.get()
        return datetime.fromtimestamp(await self._clock.read(js), UTC)

    async def get(self, name: str) -> ScheduleState | None:
        """Read the state of ``name``, or None if it was never saved."""
        check_schedule_name(name, "NatsStateRepository.get")
        _, kv = await self.bucket.get()
        try:
            entry = await kv.get("s." + encode_key(name))
        except nats.js.errors.KeyNotFoundError:
            return None
        return None if not entry.value else schedule_state_from_json(name, entry.value)

    async def all(self) -> list[ScheduleState]:
        """Every stored state, by name."""
        states = [
            schedule_state_from_json(decode_key(key.removeprefix("s.")), value)
            for key, _, value in await self.bucket.entries("s.>")
        ]
        return sorted(states, key=lambda state: state.name)

    async def lock_holders(self) -> dict[str, str]:
        """Who holds each schedule's lock now (``tasker status`` shows it): schedule name ->
        ``"host:pid:random (revision N)"``, from the namespace's lock bucket. The
        fencing number is the revision the lock was taken with, which renewals move on:
        shown is the revision of the last renewal."""
        return {
            decode_key(key): f"{value.decode('utf-8', 'replace')} (revision {revision})"
            for key, revision, value in await self._locks.entries()
        }

    async def save(self, state: ScheduleState) -> None:
        """Insert or replace the state of ``state.name`` by compare-and-set.

        A save whose ``last_slot`` is older than the stored one is ignored, so a late write
        from a replica that lost its lock cannot make a slot that already ran due again.
        A cancelled save stored the new state or left the old one.
        """
        key = "s." + encode_key(state.name)
        data = schedule_state_to_json(state).encode("ascii")
        _, kv = await self.bucket.get()
        for _ in range(_SAVE_ROUNDS):
            revision = 0
            try:
                entry = await kv.get(key)
            except (nats.js.errors.KeyDeletedError, nats.js.errors.KeyNotFoundError) as missing:
                # A deleted key still holds its delete marker: the write must expect the
                # marker's revision (0 would be refused as a wrong last sequence forever).
                # nats-py's get turns KeyDeletedError into KeyNotFoundError with the entry.
                if missing.entry is not None:
                    revision = missing.entry.revision or 0
            else:
                revision = entry.revision or 0
                stored = schedule_state_from_json(state.name, entry.value) if entry.value else None
                if stored is not None and stored.last_slot > state.last_slot:
                    logger.debug(
                        "schedule %r: a save for slot %s was refused: a newer slot is stored",
                        state.name,
                        state.last_slot,
                    )
                    return
            try:
                await kv.update(key, data, last=revision)
            except Exception as exc:
                if is_wrong_last_sequence(exc):
                    continue  # another save came first: read again
                raise
            return
        raise RuntimeError(
            f"schedule {state.name!r}: {_SAVE_ROUNDS} saves in a row lost a race; is a"
            " replica saving it in a loop?"
        )

    async def delete(self, name: str) -> None:
        """Delete the state of ``name`` (a KV delete marker; a no-op for a missing name).

        A cancelled delete deleted the state or left it.
        """
        check_schedule_name(name, "NatsStateRepository.delete")
        _, kv = await self.bucket.get()
        await kv.delete("s." + encode_key(name))

    async def aclose(self) -> None:
        """Close the connection (shared with the locker factory when built by
        :func:`tasker_nats.scheduler`: closing either closes it, and the other connects
        again on its next call); calling it again does nothing."""
        await self._source.aclose()

    def __repr__(self) -> str:
        return f"NatsStateRepository({self._source.url!r}, namespace={self.namespace!r})"
