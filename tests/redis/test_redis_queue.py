"""The Redis queue backend on a real server: the contract machine on asyncio and trio."""

from __future__ import annotations

import uuid

import anyio
import pytest

from tasker.testing import queue_backend_machine
from tasker_redis import RedisQueueBackend

from .conftest import delete_namespace


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_contract_state_machine(redis_url: str, anyio_backend: str) -> None:
    """The same hypothesis state machine as every backend, against Redis."""
    namespaces: list[str] = []

    def fresh() -> RedisQueueBackend:
        namespaces.append(f"m{uuid.uuid4().hex[:12]}")
        return RedisQueueBackend(redis_url, namespace=namespaces[-1])

    machine = queue_backend_machine(fresh, anyio_backend=anyio_backend)
    try:
        machine.TestCase("runTest").runTest()
    finally:
        for name in namespaces:
            anyio.run(delete_namespace, redis_url, name)
