"""The worker's leases (``tasker.queue._leases``): an outcome whose lease went unrenewed for
a whole lease (a paused process) is reported only once a heartbeat says it is still held."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import anyio
import pytest

import tasker
from tasker import Context
from tasker.queue import MemoryQueueBackend, Queue, TaskState

pytestmark = pytest.mark.anyio

LEASE = 0.3


class TakenMeanwhile(MemoryQueueBackend):
    """Heartbeats say every lease is gone: another worker took the tasks during the pause."""

    async def heartbeat(
        self, worker: str, ids: Sequence[str], *, lease: float, now: float
    ) -> set[str]:
        return set()


@pytest.mark.parametrize("taken", [False, True], ids=["still-held", "taken"])
async def test_an_outcome_after_a_pause_past_the_lease_is_checked_first(
    taken: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that holds the event loop past its lease (as a SIGSTOP or a long GC pause
    would) gets no heartbeat in: at the report its lease is asked about first. Still held,
    the outcome is recorded; taken by another worker, it is discarded and counted lost."""
    backend = TakenMeanwhile() if taken else MemoryQueueBackend()
    queue = Queue(backend)

    @queue.task("paused", max_attempts=1)
    async def paused(ctx: Context, n: int) -> str:
        time.sleep(LEASE * 1.5)  # noqa: ASYNC251 - the pause itself: nothing else runs
        return "done"

    task_id = (await queue.enqueue("paused", 0)).id
    worker = queue.worker(concurrency=1, lease=LEASE, poll=0.05)
    stop = anyio.Event()
    with caplog.at_level(logging.WARNING, logger="tasker.queue"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: tasker.run(worker, shutdown_trigger=stop.wait, grace=1))
            with anyio.fail_after(10):
                while not (worker.statistics().completed or worker.statistics().discarded):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            stop.set()
    info = await queue.get(task_id)
    assert info is not None
    stats = worker.statistics()
    if taken:
        assert (stats.completed, stats.discarded, stats.leases_lost) == (0, 1, 1)
        assert info.state is not TaskState.SUCCEEDED
        assert "discarded the outcome" in caplog.text
    else:
        assert (stats.completed, stats.discarded, stats.leases_lost) == (1, 0, 0)
        assert (info.state, info.result) == (TaskState.SUCCEEDED, "done")


class HeartbeatOutage(MemoryQueueBackend):
    """Heartbeats fail while ``down`` is set (claims and outcomes still work)."""

    down = False

    async def heartbeat(
        self, worker: str, ids: Sequence[str], *, lease: float, now: float
    ) -> set[str]:
        if self.down:
            raise ConnectionError("the server is gone")
        return await super().heartbeat(worker, ids, lease=lease, now=now)


async def test_a_heartbeat_outage_is_logged_once_and_its_end_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Several heartbeats in a row fail: one warning for the outage (the rest at DEBUG),
    and one when they go through again."""
    backend = HeartbeatOutage()
    queue = Queue(backend, retention=None)
    release = anyio.Event()

    @queue.task("slow", max_attempts=1)
    async def slow(ctx: Context, payload: None) -> None:
        await release.wait()

    await slow.enqueue(None)
    worker = queue.worker(lease=1.5, poll=1)  # a heartbeat every 0.5 s
    caplog.set_level(logging.DEBUG, logger="tasker.queue")
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: tasker.run(worker, shutdown_trigger=release.wait))
        await anyio.sleep(0.7)  # claimed, and renewed once
        backend.down = True
        await anyio.sleep(1.1)  # two heartbeats fail
        backend.down = False
        await anyio.sleep(0.8)  # the next goes through
        release.set()
    failed = [r for r in caplog.records if "heartbeat failed" in r.getMessage()]
    assert [r.levelno for r in failed][:1] == [logging.WARNING]
    assert sum(r.levelno == logging.WARNING for r in failed) == 1, failed
    assert len(failed) >= 2, [r.getMessage() for r in failed]
    again = [r for r in caplog.records if "heartbeats go through again" in r.getMessage()]
    assert len(again) == 1, again
    assert again[0].levelno == logging.WARNING
