"""``claim_ids`` and ``overdue`` on a real server: what the contract machine cannot show.

The machine calls one backend at a time; here several backends (each its own pool, so
its own connections) name the same tasks at once, as a broker's redeliveries do.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from tasker.backends import LEASE_EXPIRED
from tasker.queue import NewTask, TaskState
from tasker_pg import PostgresQueueBackend

pytestmark = pytest.mark.anyio


@pytest.fixture
async def backends(pg_dsn: str, schema: str) -> AsyncIterator[list[PostgresQueueBackend]]:
    """Four backends on one schema, their pools open before the test races them."""
    found = [PostgresQueueBackend(pg_dsn, schema=schema) for _ in range(4)]
    await found[0].migrate()
    for backend in found:
        await backend.overdue(before=0.0)
    yield found
    for backend in found:
        await backend.aclose()


def _task(
    task_id: str, queue: str, run_at: float, *, max_attempts: int = 3, priority: int = 0
) -> NewTask:
    return NewTask(
        id=task_id,
        name="t",
        queue=queue,
        payload=b"",
        priority=priority,
        run_at=run_at,
        max_attempts=max_attempts,
        created_at=run_at,
    )


async def test_concurrent_claim_ids_never_both_take_a_task(
    backends: list[PostgresQueueBackend],
) -> None:
    """Four workers claim the same ids at once, each in its own order and with duplicates:
    every claimable task goes to exactly one of them, one attempt more, and an expired
    lease on its last attempt dies once and goes to nobody."""
    first = backends[0]
    rng = random.Random(7)
    for round_ in range(10):
        now = await first.time()
        r = f"r{round_}"
        due = [_task(f"{r}-due-{i}", "q1" if i % 2 else "q2", now - 100) for i in range(30)]
        expired = [_task(f"{r}-exp-{i}", "q3", now - 100) for i in range(20)]
        spent = [_task(f"{r}-spent-{i}", "q4", now - 100, max_attempts=1) for i in range(10)]
        later = [_task(f"{r}-later", "q1", now + 100)]
        await first.enqueue([*due, *expired, *spent, *later], now=now)
        # A worker that died 30 s ago held these: their leases expired.
        for queue, count in (("q3", 20), ("q4", 10)):
            gone = await first.claim([queue], count, worker="gone", lease=30, now=now - 60)
            assert len(gone) == count
        ids = [t.id for t in (*due, *expired, *spent, *later)] + [f"{r}-unknown"]
        orders = []
        for _ in backends:
            order = ids + rng.sample(ids, 10)  # redelivered copies
            rng.shuffle(order)
            orders.append(order)

        results = await asyncio.gather(
            *(
                backend.claim_ids(order, worker=f"w{n}", lease=30, now=now)
                for n, (backend, order) in enumerate(zip(backends, orders, strict=True))
            )
        )

        taken = [record.id for records in results for record in records]
        assert len(taken) == len(set(taken)), f"a task was claimed twice: {sorted(taken)}"
        assert set(taken) == {t.id for t in (*due, *expired)}
        for n, (records, order) in enumerate(zip(results, orders, strict=True)):
            got = [record.id for record in records]
            assert got == [i for i in dict.fromkeys(order) if i in set(got)]  # the order given
            for record in records:
                assert record.state is TaskState.RUNNING
                assert record.lease_owner == f"w{n}"
                assert record.lease_until == now + 30
                assert record.attempts == (1 if "-due-" in record.id else 2)
                stored = await first.get(record.id)
                assert stored is not None
                assert (stored.lease_owner, stored.attempts) == (f"w{n}", record.attempts)
        for task in spent:
            stored = await first.get(task.id)
            assert stored is not None
            assert stored.state is TaskState.DEAD
            assert (stored.attempts, stored.last_error) == (1, LEASE_EXPIRED)
        stored = await first.get(later[0].id)
        assert stored is not None
        assert (stored.state, stored.attempts) == (TaskState.QUEUED, 0)


async def test_overdue_merges_priorities_queues_and_leases(
    backends: list[PostgresQueueBackend],
) -> None:
    """The queued half reads the claim index one priority at a time: the longest overdue
    come first whatever their priority, queue or state, and a long backlog is cut at the
    limit."""
    backend = backends[0]
    now = await backend.time()
    rng = random.Random(3)
    tasks = [
        _task(
            f"t{i:03d}", f"q{i % 3}", now - rng.uniform(1, 1000), priority=rng.choice([-5, 0, 10])
        )
        for i in range(300)
    ]
    await backend.enqueue(tasks, now=now)
    running = await backend.claim(["q0", "q1", "q2"], 40, worker="gone", lease=10, now=now - 500)
    since = {t.id: t.run_at for t in tasks} | {r.id: now - 490 for r in running}

    def expected(queues: set[str] | None, before: float, limit: int) -> list[float]:
        return sorted(
            s
            for t in tasks
            if (s := since[t.id]) <= before and (queues is None or t.queue in queues)
        )[:limit]

    for queues, before, limit in (
        (None, now, 25),
        (None, now - 600, 300),
        (["q1", "q2", "q1"], now - 100, 7),
        (["q0"], now, 1000),
        (["nowhere"], now, 10),
    ):
        records = await backend.overdue(before=before, queues=queues, limit=limit)
        ids = [r.id for r in records]
        assert len(ids) == len(set(ids))
        wanted = None if queues is None else set(queues)
        assert [since[i] for i in ids] == expected(wanted, before, limit)
    assert await backend.overdue(before=now, queues=[], limit=10) == []
    assert await backend.overdue(before=now, limit=0) == []
