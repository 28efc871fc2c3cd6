"""Caller-chosen task ids on Redis: a stored id deduplicates, whatever the task's state."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tasker.queue import NewTask, TaskState
from tasker_redis import RedisQueueBackend

from ..helpers import check_chosen_task_ids

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def backend(redis_url: str, namespace: str) -> AsyncIterator[RedisQueueBackend]:
    queue_backend = RedisQueueBackend(redis_url, namespace=namespace)
    yield queue_backend
    await queue_backend.aclose()


async def test_a_stored_id_deduplicates_before_and_after_the_task_ran(
    backend: RedisQueueBackend,
) -> None:
    """Enqueued twice, the task runs once; enqueued again once it succeeded, it stays so."""
    await check_chosen_task_ids(backend)


async def test_a_stored_id_in_a_batch_and_a_replay(backend: RedisQueueBackend) -> None:
    """A stored id in a batch is deduplicated and the rest of the batch is stored; the same
    batch sent again (a retry after a lost reply) answers as the first send did."""
    now = await backend.time()

    def task(task_id: str, payload: bytes) -> NewTask:
        return NewTask(id=task_id, name="t", queue="q", payload=payload, run_at=now, created_at=now)

    await backend.enqueue([task("a", b"1")], now=now)
    batch = [task("a", b"2"), task("b", b"2")]
    first = await backend.enqueue(batch, now=now)
    assert [(r.id, r.deduplicated) for r in first] == [("a", True), ("b", False)]
    assert await backend.enqueue(batch, now=now) == first
    stored = await backend.get("a")
    assert stored is not None
    assert stored.payload == b"1"
    assert await backend.counts() == {"q": {TaskState.QUEUED: 2}}
