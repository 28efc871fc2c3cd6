"""Schedule state in Redis: one hash per namespace, saved only forward, on the server's clock.

Design notes:

- **One hash for every schedule of a namespace**, ``{namespace}:schedules``: the field is
  the schedule's name, the value its :class:`tasker.ScheduleState` as JSON. Beside it,
  ``{namespace}:schedule-slots`` maps each name to its ``last_slot`` in whole microseconds
  since the epoch: what the save script compares. One hash rather than one per schedule:
  ``all()`` (what ``tasker status`` lists) is one ``HGETALL``, with no ``SCAN`` of the
  keyspace and no index of names to keep in step with the keys; a name is a field, never
  part of a key; and a namespace holds tens of schedules, not millions, so the hash stays
  small. The slot apart from the JSON: the script compares two integers and never decodes
  JSON (Lua's ``cjson`` refuses some text Python's ``json`` writes, such as a lone
  surrogate from an error message about an undecodable file name), so no stored state can
  make later saves fail.
- **Saves only move forward.** One script refuses a state whose ``last_slot`` is older than
  the stored one (an equal slot is stored: it is a failed run's record), so a replica that
  lost its lock and saves late cannot make a slot that already ran due again.
- **A delete removes both fields** (the state and its slot) in one ``HDEL`` script, so the
  next save of the name is compared with nothing and is stored, whatever its slot.
- **The clock is the server's** ``TIME`` (read by a script, ``return redis.call('TIME')``:
  coredis' ``time()`` misreads the microseconds), so replicas whose clocks disagree agree on
  which slot is due. It is read every ``clock_resync`` seconds and advanced in between by
  the local monotonic clock.
- Datetimes are stored in ISO 8601 with their UTC offset, so a state reads back with the
  offset it was saved with (equal as instants in any case).
"""

from __future__ import annotations

import logging
import ssl
import time
from datetime import UTC, datetime, timedelta

from tasker import ScheduleState, redact_dsn
from tasker.backends import schedule_state_from_json, schedule_state_to_json, to_seconds

from ._connection import RedisSource, check_namespace
from ._shared import ScriptSet, source_of

__all__ = ["RedisStateRepository"]

logger = logging.getLogger("tasker_redis")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_SCRIPTS = {
    # KEYS: the states, the slots. ARGV: the name, its last_slot in µs, the state's JSON.
    # 1 if stored, 0 if the stored slot is newer. (Microsecond counts stay below 2^53 until
    # the year 2255, so Lua's doubles compare them exactly.)
    "save": """
local stored = redis.call('HGET', KEYS[2], ARGV[1])
if stored and tonumber(stored) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
""",
    # KEYS: the states, the slots. ARGV: the name. Both fields go together: a slot left
    # behind would make the save script refuse the name's next, older state.
    "delete": """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
""",
    # KEYS: a key of the namespace, so that a cluster asks the node holding the state.
    "time": "return redis.call('TIME')",
}


class RedisStateRepository:
    """:class:`tasker.abc.StateRepository` on Redis (coredis; asyncio and trio; see the
    module notes).

    ``now()`` is the server's clock, so replicas with skewed clocks agree on which slot is
    due; ``save`` never moves a schedule's ``last_slot`` back. Nothing to migrate.

    Args:
        url_or_source: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for
            TLS, or ``unix:///path``; or the source a :func:`tasker_redis.scheduler` shares
            with its locker factory.
        namespace: the keys' prefix and hash tag (``{namespace}:schedules``). 1 to 64
            letters, digits, ``_.-``.
        clock_resync: seconds (or a ``timedelta``) between readings of the server's clock
            (see :meth:`now`); 0 reads it on every call.
        ssl_context: the TLS context for a ``rediss://`` URL (default: verify the server
            with the system's CA store).

    Raises:
        ValueError: for a bad URL or namespace, a negative ``clock_resync``, or an
            ``ssl_context`` with a source.
        TypeError: for something that is neither a URL nor a source, or a ``clock_resync``
            that is neither seconds nor a ``timedelta``.
    """

    def __init__(
        self,
        url_or_source: str | RedisSource,
        *,
        namespace: str = "tasker",
        clock_resync: float | timedelta = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.namespace = check_namespace(namespace)
        self._clock_resync = to_seconds(clock_resync, "clock_resync")
        self._clock: tuple[datetime, float] | None = None  # (reading, monotonic time of it)
        self._source = source_of(url_or_source, ssl_context, "tasker-scheduler")
        prefix = "{" + self.namespace + "}:"
        #: The hash of the states (name -> JSON) and of their slots (name -> microseconds).
        self.states_key, self.slots_key = prefix + "schedules", prefix + "schedule-slots"
        self._scripts = ScriptSet(self._source, _SCRIPTS)

    async def now(self) -> datetime:
        """The server's clock (``TIME``), as an aware UTC datetime.

        Read from the server at most every ``clock_resync`` seconds; in between it is the
        last reading plus the local *monotonic* time elapsed since, so the local wall clock
        (however skewed) never matters, and a replica costs no command per ``now()``.
        """
        local = time.monotonic()
        if self._clock is None or local - self._clock[1] >= self._clock_resync:
            before = time.monotonic()
            seconds, micros = await self._scripts.run("time", [self.states_key], [])
            after = time.monotonic()
            value = _EPOCH + timedelta(seconds=int(seconds), microseconds=int(micros))
            # The server read its clock somewhere in the round trip: take the middle.
            self._clock = (value, (before + after) / 2)
            if self._clock_resync == 0:
                return value
        reading, at = self._clock
        return reading + timedelta(seconds=time.monotonic() - at)

    async def get(self, name: str) -> ScheduleState | None:
        """Read the state of ``name``, or None if it was never saved."""
        client = await self._source.client()
        raw = await client.hget(self.states_key, name)
        return None if raw is None else schedule_state_from_json(name, raw)

    async def all(self) -> list[ScheduleState]:
        """Every stored state, by name."""
        client = await self._source.client()
        stored = await client.hgetall(self.states_key)
        states = [schedule_state_from_json(name.decode(), raw) for name, raw in stored.items()]
        return sorted(states, key=lambda state: state.name)

    async def lock_holders(self) -> dict[str, str]:
        """Who holds each schedule's lock now (``tasker status`` shows it): schedule name ->
        ``"host:pid:random (fencing number N)"``, from the lock keys of the namespace."""
        client = await self._source.client()
        prefix = "{" + self.namespace + "}:lock:"
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
        if not keys:
            return {}
        holders: dict[str, str] = {}
        for key, value in zip(keys, await client.mget(keys), strict=True):
            if value is None:
                continue  # released between the scan and the read
            fence, _, owner = value.decode("utf-8", "replace").partition(" ")
            name = key.decode("utf-8", "surrogateescape").removeprefix(prefix)
            holders[name] = f"{owner} (fencing number {fence})"
        return holders

    async def save(self, state: ScheduleState) -> None:
        """Insert or replace the state of ``state.name``, in one script.

        A save whose ``last_slot`` is older than the stored one is ignored, so a late write
        from a replica that lost its lock cannot make a slot that already ran due again.
        A cancelled save stored the new state or left the old one.
        """
        stored = await self._scripts.run(
            "save",
            [self.states_key, self.slots_key],
            [state.name, str(_microseconds(state.last_slot)), schedule_state_to_json(state)],
        )
        if not stored:
            logger.debug(
                "schedule %r: a save for slot %s was refused: a newer slot is stored",
                state.name,
                state.last_slot,
            )

    async def delete(self, name: str) -> None:
        """Delete the state of ``name`` and its stored slot, in one script (a no-op for a
        missing name). A cancelled delete deleted both or neither."""
        await self._scripts.run("delete", [self.states_key, self.slots_key], [name])

    async def aclose(self) -> None:
        """Close the connections (shared with the locker factory when built by
        :func:`tasker_redis.scheduler`: closing either closes them, and the other opens them
        again on its next call); calling it again does nothing."""
        await self._source.aclose()

    def __repr__(self) -> str:
        return (
            f"RedisStateRepository({redact_dsn(self._source.url)!r}, namespace={self.namespace!r})"
        )


def _microseconds(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND
