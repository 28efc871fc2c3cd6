"""The backend's clock as the queue and its workers read it."""

from __future__ import annotations

import time

from ..abc import QueueBackend

__all__ = ["BackendClock"]


class BackendClock:
    """Reads ``backend.time()``; when that fails after a first reading, extrapolates the last
    one by the monotonic clock, so a worker never fails for want of the time."""

    __slots__ = ("_backend", "_last")

    def __init__(self, backend: QueueBackend) -> None:
        self._backend = backend
        # The last reading of the backend's clock, and the monotonic time it was made at.
        self._last: tuple[float, float] | None = None

    async def now(self) -> float:
        """The backend's time (POSIX seconds).

        Raises:
            Exception: the backend's error, when its clock was never read and cannot be now.
        """
        try:
            reading = await self._backend.time()
        except Exception:
            if self._last is None:
                raise
            last, at = self._last
            return last + (time.monotonic() - at)
        self._last = (reading, time.monotonic())
        return reading
