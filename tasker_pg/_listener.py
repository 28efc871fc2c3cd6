"""The queue's ``LISTEN`` connection: wake-ups by ``NOTIFY``, reconnecting by itself.

Design notes:

- One dedicated connection per backend (``LISTEN`` is session state: a pooled connection
  would carry it to whoever borrows it next). asyncpg calls plain callbacks on a
  notification and on the connection's loss; they only set an event, and the waiting task
  acts on it.
- Notifications sent while nobody listens are lost, so a wait that had to (re)connect
  returns at once: the worker then claims whatever it missed, and its next wait listens.
- If the server cannot be reached the wait logs, sleeps a little (at most a second) and
  returns: the worker polls until the listener is back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import asyncpg

from ._connection import PoolSource

__all__ = ["Listener"]

logger = logging.getLogger("tasker_pg")


class Listener:
    """``LISTEN`` on ``channel`` over a dedicated connection from ``source``."""

    def __init__(self, source: PoolSource, channel: str) -> None:
        self._source = source
        self.channel = channel
        #: The listening connection, once there is one (it may have died since).
        self.connection: Any = None
        self._work = anyio.Event()
        self._lock: anyio.Lock | None = None

    def _on_notify(self, *args: object) -> None:
        # A plain callback from asyncpg: set the event, act on it from a task.
        self._work.set()

    def _on_lost(self, connection: object) -> None:
        self._work.set()

    def _listening(self) -> bool:
        return self.connection is not None and not self.connection.is_closed()

    async def listen(self) -> bool:
        """Listen if not listening; True if a new listener was just set up."""
        if self._listening():
            return False
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._listening():
                return False
            self.connection = await self._source.connect()
            self.connection.add_termination_listener(self._on_lost)
            await self.connection.add_listener(self.channel, self._on_notify)
            return True

    async def wait(self, timeout: float, *, due_in: Callable[[], Awaitable[float | None]]) -> None:
        """Wait for a NOTIFY, the listener's loss, ``due_in()`` seconds, or ``timeout``.

        ``due_in`` gives the seconds until the next delayed task or lease falls due (None:
        nothing pending). After (re)connecting it returns at once (see the module notes).
        """
        # Taken first: a notification that arrives while this wait sets up still counts.
        event = self._work
        try:
            if await self.listen():
                return
            delay = await due_in()
            if delay is not None:  # a delayed task or a lease falls due before the timeout
                timeout = min(timeout, max(0.0, delay))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            logger.warning("queue listener cannot connect (%s); polling instead", exc)
            await anyio.sleep(min(timeout, 1.0))
            return
        with anyio.move_on_after(timeout):
            await event.wait()
        if event.is_set():
            self._work = anyio.Event()

    async def aclose(self) -> None:
        """Close the listening connection, if any."""
        connection, self.connection = self.connection, None
        if connection is not None and not connection.is_closed():
            await connection.close()
