"""Acknowledged publishes over one reply subscription: nats-py's ``request`` without its cost.

Design notes:

- nats-py's ``request`` makes, for every message, a token (a NUID and ``secrets``'
  random bytes), a future with a done callback, and waits with ``asyncio.wait_for`` (a
  second future and a timer): with three acknowledged writes a task, that plumbing was
  the largest part of the worker's Python. Here a connection has one wildcard reply
  subscription, ``<inbox>.*``; a publish's reply subject is that prefix and a counter, and
  a dict maps it to its waiter. A write of several messages (a batch of claims, of
  outcomes, of history entries) waits on one future for all their replies.
- **Timeouts** are swept, not timed one by one: a single task, running while anything
  waits, fails every waiter past its deadline (``nats.errors.TimeoutError``, as
  ``request`` raises) every :data:`_SWEEP` seconds; a deadline is kept to within that.
- **Reconnects**: nats-py subscribes the reply subject again; a reply lost with the old
  connection is waited out, as with ``request``. Closing fails whoever still waits with
  ``nats.errors.ConnectionClosedError``.
- Only nats-py's public API is used (``new_inbox``, ``subscribe``, ``publish``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

__all__ = ["Acks", "Message"]

logger = logging.getLogger("tasker_nats")

#: Seconds between two sweeps of the deadlines.
_SWEEP = 0.25

#: A message to publish: its subject, data and headers (None: none).
Message = tuple[str, bytes, dict[str, str] | None]


class _Waiter:
    """The replies one write waits for: one future for all of them."""

    __slots__ = ("deadline", "future", "left", "replies", "tokens")

    def __init__(self, future: asyncio.Future[list[Msg]], count: int, deadline: float) -> None:
        self.future = future
        self.replies: list[Any] = [None] * count
        self.left = count
        self.deadline = deadline
        self.tokens: list[str] = []


class Acks:
    """The replies to this connection's acknowledged publishes (see the module notes)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._prefix = client.new_inbox() + "."
        self._counter = itertools.count(1)
        #: reply token -> (its waiter, the index of its reply)
        self._waiting: dict[str, tuple[_Waiter, int]] = {}
        self._waiters: set[_Waiter] = set()
        self._subscription: Any = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Subscribe to the replies."""
        self._subscription = await self._client.subscribe(self._prefix + "*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        found = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if found is None:
            return  # a reply after its deadline, or to a cancelled write
        waiter, index = found
        waiter.replies[index] = msg
        waiter.left -= 1
        if not waiter.left and not waiter.future.done():
            waiter.future.set_result(waiter.replies)

    async def request(
        self, subject: str, data: bytes, headers: dict[str, str] | None, timeout: float
    ) -> Msg:
        """Publish one message and return its reply.

        Raises:
            nats.errors.TimeoutError: no reply within ``timeout`` seconds.
            nats.errors.ConnectionClosedError: the connection was closed meanwhile.
        """
        replies = await self.request_many([(subject, data, headers)], timeout)
        reply: Msg = replies[0]
        return reply

    async def request_many(self, messages: Sequence[Message], timeout: float) -> list[Msg]:
        """Publish ``messages`` in order, each with a reply subject, and return their
        replies in the same order once all have come.

        Raises:
            nats.errors.TimeoutError: not every reply came within ``timeout`` seconds.
            nats.errors.ConnectionClosedError: the connection was closed meanwhile.
        """
        if self._closed:
            raise nats.errors.ConnectionClosedError
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), len(messages), loop.time() + timeout)
        waiting, prefix, counter, publish = (
            self._waiting,
            self._prefix,
            self._counter,
            self._client.publish,
        )
        self._waiters.add(waiter)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = loop.create_task(self._sweep())
        try:
            for index, (subject, data, headers) in enumerate(messages):
                token = str(next(counter))
                waiting[token] = (waiter, index)
                waiter.tokens.append(token)
                await publish(subject, data, reply=prefix + token, headers=headers)
            return await waiter.future
        finally:
            self._waiters.discard(waiter)
            if waiter.left:  # failed, timed out or cancelled: forget its replies
                for token in waiter.tokens:
                    waiting.pop(token, None)
                future = waiter.future
                if future.done() and not future.cancelled():
                    future.exception()  # read: a publish that raised never awaited it

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiters:
            await asyncio.sleep(_SWEEP)
            now = loop.time()
            for waiter in [w for w in self._waiters if w.deadline <= now]:
                self._waiters.discard(waiter)
                if not waiter.future.done():
                    waiter.future.set_exception(nats.errors.TimeoutError())

    async def close(self) -> None:
        """Stop listening; fail whoever still waits."""
        self._closed = True
        for waiter in list(self._waiters):
            if not waiter.future.done():
                waiter.future.set_exception(nats.errors.ConnectionClosedError())
        self._waiters.clear()
        self._waiting.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                await subscription.unsubscribe()
            except Exception as exc:  # pragma: no cover - a connection already gone
                logger.debug("stopping the reply subscription failed: %s", exc)
