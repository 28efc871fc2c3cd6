"""tasker_amqp composed with a store: the queue contract with every capability the store
lends (SQLite here), and the checks of the composition's construction."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasker.abc import QueueCapability
from tasker.queue import MemoryQueueBackend, SQLiteQueueBackend
from tasker.testing import queue_backend_machine
from tasker_amqp import AmqpQueueBackend

from .broker import amqp_url, delete_queues

_MADE: list[str] = []
_DIR = tempfile.TemporaryDirectory(prefix="tasker-amqp-store-")


class _Patient(AmqpQueueBackend):
    """Waits longer for what it published than a producer would (see test_amqp_queue)."""

    async def wait_delivered(self, timeout: float = 30.0) -> bool:
        return await super().wait_delivered(timeout)


async def _fresh_backend() -> AmqpQueueBackend:
    while _MADE:
        made = _MADE.pop()
        await delete_queues(amqp_url(), f"{made}.q1", f"{made}.q2", f"{made}.dead")
    names = f"s{uuid.uuid4().hex[:10]}"
    _MADE.append(names)
    return _Patient(
        amqp_url(),
        exchange=names,
        namespace=names,
        dead_queue=f"{names}.dead",
        prefetch=1000,
        store=SQLiteQueueBackend(Path(_DIR.name) / f"{names}.db"),
    )


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    for names in _MADE:
        asyncio.run(delete_queues(amqp_url(), f"{names}.q1", f"{names}.q2", f"{names}.dead"))


TestAmqpWithSQLiteMachine = queue_backend_machine(
    _fresh_backend, real_time=0.02, max_examples=20
).TestCase


def test_capabilities_come_from_the_store(tmp_path: Path) -> None:
    alone = AmqpQueueBackend(amqp_url())
    stored = AmqpQueueBackend(amqp_url(), store=SQLiteQueueBackend(tmp_path / "q.db"))
    assert alone.capabilities == {QueueCapability.HEADERS}
    assert stored.capabilities == {
        QueueCapability.HEADERS,
        QueueCapability.INSPECTION,
        QueueCapability.ADMINISTRATION,
        QueueCapability.UNIQUE_KEYS,
        QueueCapability.WORKFLOWS,
        QueueCapability.WORKERS,
        QueueCapability.TASK_IDS,
    }
    assert "store=SQLiteQueueBackend" in repr(stored)


def test_a_store_that_cannot_claim_by_id_is_refused() -> None:
    class NoClaimById(MemoryQueueBackend):
        capabilities = MemoryQueueBackend.capabilities - {QueueCapability.CLAIM_BY_ID}

    with pytest.raises(ValueError, match=r"lacks claim named tasks.*CLAIM_BY_ID"):
        AmqpQueueBackend(amqp_url(), store=NoClaimById())
    with pytest.raises(TypeError, match="store must be a tasker queue backend"):
        AmqpQueueBackend(amqp_url(), store=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="republish_after"):
        AmqpQueueBackend(amqp_url(), store=MemoryQueueBackend(), republish_after=0)
