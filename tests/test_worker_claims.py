"""The worker's claim loop (``tasker.queue._claims``): it sleeps while the worker is full and
is woken only when it has slots to fill, so no wake-up it needs is ever skipped."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

import tasker
from tasker import Context
from tasker.abc import QueueCapability
from tasker.queue import (
    MemoryQueueBackend,
    Queue,
    QueueBackend,
    SQLiteQueueBackend,
    TaskRecord,
    Worker,
)

pytestmark = pytest.mark.anyio

#: Longer than any test waits: a wake-up the claim loop missed shows as a timeout, not as
#: a task picked up at the next poll.
POLL = 30.0


class CountsClaims(MemoryQueueBackend):
    """Counts the claim loop's calls (a flush's combined call is not one)."""

    def __init__(self) -> None:
        super().__init__()
        self.claims = 0

    async def claim(self, *args: Any, **kwargs: Any) -> list[TaskRecord]:
        self.claims += 1
        return await super().claim(*args, **kwargs)


class NoCombinedCall(CountsClaims):
    """Records and claims in separate calls: the claim loop refills every slot."""

    capabilities = MemoryQueueBackend.capabilities - {QueueCapability.FINISH_AND_CLAIM}

    async def finish_and_claim(self, outcomes: Sequence[Any], **kwargs: Any) -> Any:
        raise AssertionError("not declared: the worker must not call it")


async def _run_until(worker: Worker, done: Any, timeout: float = 10.0) -> None:
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: tasker.run(worker, shutdown_trigger=stop.wait, grace=2))
        with anyio.fail_after(timeout):
            await done()
        stop.set()


@pytest.mark.parametrize("concurrency", [1, 3, 10])
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_the_claim_loop_wakes_when_a_flush_claims_nothing(
    kind: str, concurrency: int, tmp_path: Path
) -> None:
    """When the queue runs dry the flush claims nothing: the claim loop takes over and waits
    for work, so a task enqueued later starts at once, not at the next poll."""
    backend: QueueBackend = (
        CountsClaims() if kind == "memory" else SQLiteQueueBackend(tmp_path / "queue.sqlite3")
    )
    queue = Queue(backend)
    ran: list[int] = []
    more = anyio.Event()

    @queue.task("t")
    async def t(ctx: Context, n: int) -> None:
        ran.append(n)
        if len(ran) == 3:
            more.set()

    for n in range(3):
        await queue.enqueue("t", n)

    async def done() -> None:
        await more.wait()
        await anyio.sleep(0.05)  # the worker is idle now, its slots all free
        await queue.enqueue("t", 3)
        while len(ran) < 4:  # noqa: ASYNC110 - polling what the handler saw
            await anyio.sleep(0.01)

    await _run_until(queue.worker(concurrency=concurrency, poll=POLL), done, timeout=5)
    assert sorted(ran) == [0, 1, 2, 3]


async def test_a_flush_refills_its_slot_without_the_claim_loop() -> None:
    """With a combined record-and-claim call, tasks that follow each other at concurrency 1
    are claimed by the flushes: the claim loop claims only at the start and when idle."""
    backend = CountsClaims()
    queue = Queue(backend)
    ran: list[int] = []

    @queue.task("t")
    async def t(ctx: Context, n: int) -> None:
        ran.append(n)

    for n in range(50):
        await queue.enqueue("t", n)

    async def done() -> None:
        while len(ran) < 50:  # noqa: ASYNC110 - polling what the handler saw
            await anyio.sleep(0.01)

    worker = queue.worker(concurrency=1, poll=POLL)
    await _run_until(worker, done)
    assert ran == list(range(50))
    assert backend.claims <= 3
    assert worker.statistics().completed == 50


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_without_a_combined_call_the_claim_loop_fills_each_freed_slot(
    concurrency: int,
) -> None:
    """A backend that cannot claim while it records: each slot a task frees wakes the claim
    loop (in batches of half the slots while others run), and every task runs."""
    backend = NoCombinedCall()
    queue = Queue(backend)
    ran: list[int] = []

    @queue.task("t")
    async def t(ctx: Context, n: int) -> None:
        await anyio.sleep(0.002 * (n % 3))
        ran.append(n)

    for n in range(40):
        await queue.enqueue("t", n)

    async def done() -> None:
        while len(ran) < 40:  # noqa: ASYNC110 - polling what the handler saw
            await anyio.sleep(0.01)

    worker = queue.worker(concurrency=concurrency, poll=POLL)
    await _run_until(worker, done)
    assert sorted(ran) == list(range(40))
    assert backend.claims >= 40 // concurrency
