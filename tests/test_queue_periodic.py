"""``Queue.periodic``: a schedule's slots enqueue a task once per slot, across replicas."""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasker import (
    Context,
    MemoryLockerFactory,
    MemoryStateRepository,
    Scheduler,
    ScheduleState,
    concurrence,
    run,
)
from tasker.abc import QueueCapability
from tasker.queue import (
    MemoryQueueBackend,
    MissingCapabilityError,
    PayloadError,
    Queue,
    UnknownTaskError,
)
from tasker.queue._periodic import slot_task_id
from tasker.schedule import Interval
from tasker.testing import FakeClock

from .helpers import python_process

pytestmark = pytest.mark.anyio

START = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
BASE = START.replace(second=0)


def memory_scheduler(repository: MemoryStateRepository | None = None) -> Scheduler:
    return Scheduler(
        locker_factory=MemoryLockerFactory(), repository=repository or MemoryStateRepository()
    )


class KeysOnly(MemoryQueueBackend):
    """The memory backend without chosen task ids: periodic falls back to unique keys."""

    capabilities = MemoryQueueBackend.capabilities - {QueueCapability.TASK_IDS}


class Bare(MemoryQueueBackend):
    """The memory backend with neither chosen ids nor unique keys."""

    capabilities = MemoryQueueBackend.capabilities - {
        QueueCapability.TASK_IDS,
        QueueCapability.UNIQUE_KEYS,
    }


class LosesSaves(MemoryStateRepository):
    """A repository whose first ``failures`` saves fail after the run (a lost write)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def save(self, state: ScheduleState) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("connection reset while saving")
        await super().save(state)


def report_queue(backend: MemoryQueueBackend) -> Queue:
    queue = Queue(backend)

    @queue.task("report")
    async def report(ctx: Context, payload: Any) -> None: ...

    return queue


async def payloads(queue: Queue) -> list[Any]:
    """The payloads of the stored tasks, oldest first."""
    backend = queue.backend
    assert isinstance(backend, MemoryQueueBackend)
    records = await backend.tasks(limit=10_000)
    return [queue._registry.serializer.loads(r.payload) for r in reversed(records)]


async def drive(clock: FakeClock, until: datetime, *jobs: Any) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run(concurrence(*jobs), clock=clock, grace=1))
        await clock.wait_for_sleepers()
        await clock.run_until(until)
        tg.cancel_scope.cancel()


async def test_each_slot_enqueues_one_task_named_after_the_slot() -> None:
    """Five minutes of a per-minute schedule: five tasks, ids derived from the slots, the
    payload a function of the slot."""
    clock = FakeClock(START)
    queue = report_queue(MemoryQueueBackend())
    job = queue.periodic(
        "report",
        Interval(60),
        lambda slot: {"minute": slot.minute},
        scheduler=memory_scheduler(),
        priority=5,
    )
    await drive(clock, START + timedelta(minutes=5), job)
    slots = [BASE + timedelta(minutes=n) for n in range(1, 6)]
    assert await payloads(queue) == [{"minute": s.minute} for s in slots]
    for slot in slots:
        record = await queue.backend.get(slot_task_id("periodic:report", slot))  # type: ignore[attr-defined]
        assert record is not None
        assert record.priority == 5


@pytest.mark.parametrize("backend_class", [MemoryQueueBackend, KeysOnly])
async def test_a_retried_slot_enqueues_nothing_twice(
    backend_class: type[MemoryQueueBackend], caplog: pytest.LogCaptureFixture
) -> None:
    """The state write after the first slot's enqueue fails twice: the slot is run three
    times (the Scheduler is at-least-once), and one task exists for it."""
    clock = FakeClock(START)
    queue = report_queue(backend_class())
    repository = LosesSaves(failures=2)
    scheduler = memory_scheduler(repository)
    job = queue.periodic("report", Interval(60), "daily", scheduler=scheduler, retry_delay=5)
    with caplog.at_level(logging.INFO, logger="tasker.queue"):
        await drive(clock, START + timedelta(minutes=2), job)
    assert await payloads(queue) == ["daily", "daily"]  # slots 00:01 and 00:02
    assert caplog.text.count("already had task report") == 2
    assert scheduler.statistics().runs_started == 4


async def test_replicas_with_separate_schedulers_enqueue_each_slot_once() -> None:
    """Three replicas whose Schedulers share nothing (no lock, no state) but the queue:
    each slot is still enqueued once, by its task id."""
    clock = FakeClock(START)
    queue = report_queue(MemoryQueueBackend())
    jobs = [
        queue.periodic("report", Interval(60), None, scheduler=memory_scheduler()) for _ in range(3)
    ]
    await drive(clock, START + timedelta(minutes=4), *jobs)
    assert len(await payloads(queue)) == 4


async def test_periodic_checks_its_arguments_at_once() -> None:
    queue = report_queue(MemoryQueueBackend())
    scheduler = memory_scheduler()
    with pytest.raises(UnknownTaskError, match="'nope'"):
        queue.periodic("nope", Interval(60), scheduler=scheduler)
    with pytest.raises(PayloadError):
        queue.periodic("report", Interval(60), {1, 2}, scheduler=scheduler)
    with pytest.raises(ValueError, match="priority"):
        queue.periodic("report", Interval(60), scheduler=scheduler, priority=2**40)
    with pytest.raises(TypeError, match=r"scheduler must be a tasker\.Scheduler"):
        queue.periodic("report", Interval(60), scheduler=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="next_after"):
        queue.periodic("report", object(), scheduler=scheduler)  # type: ignore[arg-type]
    bare = report_queue(Bare())
    with pytest.raises(MissingCapabilityError, match="periodic"):
        bare.periodic("report", Interval(60), scheduler=scheduler)
    job = queue.periodic("report", Interval(60), scheduler=scheduler)
    assert "periodic:report" in scheduler.schedules
    assert job.__name__ == "scheduled('periodic:report')"


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    replicas=st.integers(1, 3),
    shared=st.booleans(),
    lost_saves=st.integers(0, 3),
    period=st.sampled_from([30, 60, 90]),
    keys_only=st.booleans(),
)
async def test_every_due_slot_has_exactly_one_task(
    replicas: int, shared: bool, lost_saves: int, period: int, keys_only: bool
) -> None:
    """For any number of replicas, shared or separate Scheduler backends, lost state
    writes and periods: the tasks are exactly the due slots, one each."""
    clock = FakeClock(START)
    queue = report_queue(KeysOnly() if keys_only else MemoryQueueBackend())
    lockers, repository = MemoryLockerFactory(), LosesSaves(lost_saves)
    jobs = []
    for _ in range(replicas):
        scheduler = (
            Scheduler(locker_factory=lockers, repository=repository)
            if shared
            else Scheduler(locker_factory=MemoryLockerFactory(), repository=LosesSaves(lost_saves))
        )
        jobs.append(
            queue.periodic(
                "report",
                Interval(period),
                lambda slot: slot.isoformat(),
                scheduler=scheduler,
                retry_delay=1,
            )
        )
    end = START + timedelta(minutes=6)
    await drive(clock, end, *jobs)
    schedule = Interval(period)
    due, slot = [], schedule.next_after(START)
    while slot <= end:
        due.append(slot.isoformat())
        slot = schedule.next_after(slot)
    assert sorted(await payloads(queue)) == due


_REPLICA = """
import sys
from pathlib import Path

import anyio

import tasker
from tasker.queue import Queue
from tasker.schedule import Interval

queue_path, state_dir, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
queue = Queue(path=queue_path)

@queue.task("tick")
async def tick(ctx, slot: str) -> None: ...

scheduler = tasker.Scheduler(state_dir=state_dir, lock_retry=0.05)
job = queue.periodic("tick", Interval(0.25), lambda slot: slot.isoformat(), scheduler=scheduler)

async def stop_later() -> None:
    await anyio.sleep(seconds)

print("ready", flush=True)
anyio.run(lambda: tasker.run(job, shutdown_trigger=stop_later))
"""


@pytest.mark.parametrize("coordinated", [True, False])
def test_replica_processes_enqueue_each_slot_once(tmp_path: Path, coordinated: bool) -> None:
    """Three processes run the same periodic task for 3 s on one SQLite queue, with one
    shared embedded Scheduler (lock files and state) or one each: no slot's task is
    enqueued twice, and slots were enqueued all along."""
    queue_path = tmp_path / "queue.sqlite3"
    procs = [
        python_process(
            [
                "-c",
                _REPLICA,
                str(queue_path),
                str(tmp_path / ("state" if coordinated else f"state-{n}")),
                "3",
            ]
        )
        for n in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    with sqlite3.connect(queue_path) as db:
        slots = [json.loads(payload) for (payload,) in db.execute("select payload from tasks")]
    assert len(slots) == len(set(slots)), "a slot was enqueued twice"
    assert len(slots) >= 4
