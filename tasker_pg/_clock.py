"""The queue's clock: the server's ``clock_timestamp()``, read now and then.

Design notes:

- Every worker compares leases and due times on one clock, the server's, so a machine whose
  wall clock is off neither steals live leases nor runs delayed tasks early.
- Reading it costs a round trip, so it is read every ``resync`` seconds; in between, the last
  reading is advanced by the local *monotonic* clock (never the local wall clock).
- A failed reading after a first good one is not an error: the last reading, extrapolated the
  same way, is as good as a new one for a while, and an outage must not make every caller
  wait for a connection.
"""

from __future__ import annotations

import logging
import time

from ._connection import PoolSource

__all__ = ["ServerClock"]

logger = logging.getLogger("tasker_pg")


class ServerClock:
    """The server's clock through ``source``, re-read every ``resync`` seconds."""

    def __init__(self, source: PoolSource, resync: float) -> None:
        self._source = source
        self._resync = resync
        self._clock: tuple[float, float] | None = None  # (reading, monotonic time of it)

    async def read(self) -> float:
        """The server's time as a POSIX timestamp (see the module notes).

        Raises:
            asyncpg.PostgresError, OSError: when the clock was never read and cannot be now.
        """
        local = time.monotonic()
        if self._clock is None or local - self._clock[1] >= self._resync:
            try:
                pool = await self._source.pool()
                before = time.monotonic()
                value: float = await pool.fetchval("select extract(epoch from clock_timestamp())")
                after = time.monotonic()
            except Exception as exc:
                if self._clock is None:
                    raise
                reading, at = self._clock
                self._clock = (reading + (local - at), local)
                logger.debug("could not read the server's clock (%s); extrapolating", exc)
            else:
                # The server read its clock somewhere in the round trip: take the middle.
                self._clock = (float(value), (before + after) / 2)
        reading, at = self._clock
        return reading + (time.monotonic() - at)
