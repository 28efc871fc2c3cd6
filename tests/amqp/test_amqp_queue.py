"""The queue backend contract on RabbitMQ: the state machine for the core protocol, in real
time (the delays are the broker's TTL timers, which the machine cannot move)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tasker.testing import queue_backend_machine

from .machines import MachineBackends

_BACKENDS = MachineBackends("m")


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield from _BACKENDS.cleanup()


TestAmqpQueueMachine = queue_backend_machine(
    _BACKENDS.fresh, real_time=0.02, max_examples=20
).TestCase
