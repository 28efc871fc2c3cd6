"""The queue backend contract on RabbitMQ: the state machine for the core protocol, in real
time (the delays are the broker's TTL timers, which the machine cannot move)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from tasker.testing import queue_backend_machine
from tasker_amqp import AmqpQueueBackend

from .broker import amqp_url, delete_queues

_MADE: list[str] = []


class _Patient(AmqpQueueBackend):
    """Waits longer for what it published than a producer would: a delay's trip down the
    TTL ladder on a loaded CI machine can take seconds."""

    async def wait_delivered(self, timeout: float = 30.0) -> bool:
        return await super().wait_delivered(timeout)


async def _fresh_backend() -> AmqpQueueBackend:
    # Each example has queues and an exchange of its own: a retry still travelling the
    # delay ladder from an earlier example must not land in this one.
    # The earlier examples' queues go now, not at the end: each quorum queue holds a few
    # of the broker's file handles (about 900 on a default node).
    while _MADE:
        made = _MADE.pop()
        await delete_queues(amqp_url(), f"{made}.q1", f"{made}.q2", f"{made}.dead")
    names = f"m{uuid.uuid4().hex[:10]}"
    _MADE.append(names)
    # The prefetch holds every task of an example, so the order of claims is exact.
    return _Patient(
        amqp_url(),
        exchange=names,
        namespace=names,
        dead_queue=f"{names}.dead",
        prefetch=1000,
    )


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    for names in _MADE:
        asyncio.run(delete_queues(amqp_url(), f"{names}.q1", f"{names}.q2", f"{names}.dead"))


TestAmqpQueueMachine = queue_backend_machine(
    _fresh_backend, real_time=0.02, max_examples=20
).TestCase
