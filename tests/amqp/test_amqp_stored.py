"""tasker_amqp composed with a store: the queue contract with every capability the store
lends (SQLite here), and the checks of the composition's construction."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasker.abc import QueueCapability
from tasker.queue import MemoryQueueBackend, SQLiteQueueBackend
from tasker.testing import queue_backend_machine
from tasker_amqp import AmqpQueueBackend

from .broker import amqp_url
from .machines import MachineBackends

_DIR = tempfile.TemporaryDirectory(prefix="tasker-amqp-store-")
_BACKENDS = MachineBackends(
    "s", lambda names: {"store": SQLiteQueueBackend(Path(_DIR.name) / f"{names}.db")}
)


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield from _BACKENDS.cleanup()


TestAmqpWithSQLiteMachine = queue_backend_machine(
    _BACKENDS.fresh, real_time=0.02, max_examples=20
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
