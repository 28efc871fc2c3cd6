"""The backends the contract machine runs on RabbitMQ: each example has queues and an
exchange of its own, and the earlier examples' queues go when the next one starts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from tasker_amqp import AmqpQueueBackend

from .broker import amqp_url, delete_queues

__all__ = ["MachineBackends"]


class _Patient(AmqpQueueBackend):
    """Waits longer for what it published than a producer would: a delay's trip down the
    TTL ladder on a loaded CI machine can take seconds."""

    async def wait_delivered(self, timeout: float = 30.0) -> bool:
        return await super().wait_delivered(timeout)


class MachineBackends:
    """A factory of fresh backends for the machine, and the cleanup of what they made.

    ``options(names)`` gives the backend's extra options for an example's names (a store).
    """

    def __init__(self, tag: str, options: Callable[[str], dict[str, Any]] | None = None) -> None:
        self._tag = tag
        self._options = options
        self._made: list[str] = []

    async def fresh(self) -> AmqpQueueBackend:
        # A retry still travelling the delay ladder from an earlier example must not land
        # in this one; and each quorum queue holds a few of the broker's file handles
        # (about 900 on a default node), so the earlier examples' queues go now.
        while self._made:
            await _delete(self._made.pop())
        names = f"{self._tag}{uuid.uuid4().hex[:10]}"
        self._made.append(names)
        # The prefetch holds every task of an example, so the order of claims is exact.
        return _Patient(
            amqp_url(),
            exchange=names,
            namespace=names,
            dead_queue=f"{names}.dead",
            prefetch=1000,
            **(self._options(names) if self._options else {}),
        )

    def cleanup(self) -> Iterator[None]:
        """A module fixture's body: after the module, what is left goes."""
        yield
        for names in self._made:
            asyncio.run(_delete(names))


async def _delete(names: str) -> None:
    await delete_queues(amqp_url(), f"{names}.q1", f"{names}.q2", f"{names}.dead")
