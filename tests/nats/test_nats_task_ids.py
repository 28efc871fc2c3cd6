"""Caller-chosen task ids on NATS: a stored id deduplicates, whatever the task's state."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tasker.queue import NewTask, Outcome, OutcomeKind, TaskState
from tasker_nats import NatsQueueBackend

from ..helpers import check_chosen_task_ids

pytestmark = pytest.mark.anyio


@pytest.fixture
async def backend(nats_url: str, namespace: str) -> AsyncIterator[NatsQueueBackend]:
    queue_backend = NatsQueueBackend(nats_url, namespace=namespace)
    yield queue_backend
    await queue_backend.aclose()


async def test_a_stored_id_deduplicates_before_and_after_the_task_ran(
    backend: NatsQueueBackend,
) -> None:
    """Enqueued twice, the task runs once; enqueued again once it succeeded, it stays so."""
    await check_chosen_task_ids(backend)


async def test_stored_ids_in_a_batch_a_resend_and_after_a_purge(
    backend: NatsQueueBackend,
) -> None:
    """A stored id in a batch is deduplicated and the rest stored (no second message); the
    same batch sent again answers as the first send did; a purged id is stored anew."""
    now = await backend.time()

    def task(task_id: str, payload: bytes, unique_key: str | None = None) -> NewTask:
        return NewTask(
            id=task_id,
            name="t",
            queue="q",
            payload=payload,
            run_at=now,
            created_at=now,
            unique_key=unique_key,
        )

    await backend.enqueue([task("a", b"1")], now=now)
    batch = [task("a", b"2"), task("b", b"2")]
    first = await backend.enqueue(batch, now=now)
    assert [(r.id, r.deduplicated) for r in first] == [("a", True), ("b", False)]
    assert await backend.enqueue(batch, now=now) == first
    (keyed,) = await backend.enqueue([task("a", b"3", unique_key="k")], now=now)
    assert (keyed.id, keyed.deduplicated) == ("a", True)
    stored = await backend.get("a")
    assert stored is not None
    assert (stored.payload, stored.unique_key) == (b"1", None)
    assert await backend.counts() == {"q": {TaskState.QUEUED: 2}}

    claimed = await backend.claim(["q"], 2, worker="w", lease=30, now=now)
    assert {c.id for c in claimed} == {"a", "b"}
    done = [
        Outcome(
            id=c.id,
            worker="w",
            kind=OutcomeKind.SUCCEEDED,
            started_at=now,
            finished_at=now,
            result_expires=now,
        )
        for c in claimed
    ]
    await backend.finish(done, now=now)
    assert await backend.purge(now=now + 1) == 2
    (anew,) = await backend.enqueue([task("a", b"4")], now=now + 1)
    assert (anew.id, anew.deduplicated) == ("a", False)
    stored = await backend.get("a")
    assert stored is not None
    assert (stored.payload, stored.state) == (b"4", TaskState.QUEUED)
