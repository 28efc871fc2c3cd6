"""``CLAIM_BY_ID`` on Redis: claims of named tasks against each other and against ``claim``,
and the overdue list read from the ready and lease sets (asyncio and trio)."""

from __future__ import annotations

import anyio
import coredis
import pytest

from tasker.queue import GroupSpec, NewTask, QueueCapability, TaskRecord, TaskState
from tasker_redis import RedisQueueBackend

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _task(
    task_id: str,
    *,
    queue: str = "default",
    run_at: float,
    priority: int = 0,
    max_attempts: int = 3,
    group_id: str | None = None,
    group_index: int | None = None,
) -> NewTask:
    return NewTask(
        id=task_id,
        name="t",
        queue=queue,
        payload=b"null",
        priority=priority,
        run_at=run_at,
        max_attempts=max_attempts,
        created_at=run_at,
        group_id=group_id,
        group_index=group_index,
    )


async def _take(
    got: dict[str, list[TaskRecord]],
    backend: RedisQueueBackend,
    worker: str,
    ids: list[str],
    now: float,
) -> None:
    got[worker] = await backend.claim_ids(ids, worker=worker, lease=30, now=now)


async def test_the_backend_declares_claim_by_id(redis_url: str, namespace: str) -> None:
    backend = RedisQueueBackend(redis_url, namespace=namespace)
    assert QueueCapability.CLAIM_BY_ID in backend.capabilities


async def test_concurrent_claims_of_the_same_ids_never_share_a_task(
    redis_url: str, namespace: str
) -> None:
    """Two workers (on two connections) naming the same tasks at once: each task goes to
    one of them, once, and every due one goes to somebody."""
    one = RedisQueueBackend(redis_url, namespace=namespace)
    two = RedisQueueBackend(redis_url, namespace=namespace)
    try:
        now = await one.time()
        for round_ in range(20):
            ids = [f"r{round_}-{i}" for i in range(8)]
            await one.enqueue([_task(i, run_at=now - 1) for i in ids], now=now)
            got: dict[str, list[TaskRecord]] = {}
            async with anyio.create_task_group() as tg:
                tg.start_soon(_take, got, one, "w1", ids, now)
                tg.start_soon(_take, got, two, "w2", [*reversed(ids), *ids], now)
            first = {r.id for r in got["w1"]}
            second = {r.id for r in got["w2"]}
            assert not first & second
            assert first | second == set(ids)
            for worker, records in got.items():
                assert len(records) == len({r.id for r in records})
                for record in records:
                    assert record.state is TaskState.RUNNING
                    assert record.lease_owner == worker
                    assert record.attempts == 1
        counts = await one.counts()
        assert counts == {"default": {TaskState.RUNNING: 20 * 8}}
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_task_claimed_by_id_is_claimed_again_only_after_its_lease(
    redis_url: str, namespace: str, redis_client: coredis.Redis[bytes]
) -> None:
    backend = RedisQueueBackend(redis_url, namespace=namespace)
    prefix = "{" + namespace + "}:"
    try:
        now = await backend.time()
        await backend.enqueue([_task("a", run_at=now), _task("b", run_at=now)], now=now)
        (claimed,) = await backend.claim_ids(["a"], worker="w1", lease=10, now=now)
        assert (claimed.id, claimed.attempts, claimed.lease_until) == ("a", 1, now + 10)
        # Its ready-set entry is gone: a claim takes the other task only, as long as it lasts.
        assert await redis_client.zcard(prefix + "r:0:default") == 1
        (other,) = await backend.claim(["default"], 10, worker="w2", lease=10, now=now + 1)
        assert other.id == "b"
        assert await backend.claim(["default"], 10, worker="w2", lease=10, now=now + 9) == []
        assert await redis_client.exists([prefix + "p:default"]) == 0
        # Under a live lease, a claim by id leaves it too.
        assert await backend.claim_ids(["a"], worker="w3", lease=10, now=now + 9) == []
        # The lease expired (b's too: its claim was at now + 1): a claim takes both back.
        again = await backend.claim(["default"], 10, worker="w3", lease=10, now=now + 11)
        assert sorted((r.id, r.attempts, r.lease_owner) for r in again) == [
            ("a", 2, "w3"),
            ("b", 2, "w3"),
        ]
        # And by id, after that lease expired as well.
        (third,) = await backend.claim_ids(["a", "a"], worker="w4", lease=10, now=now + 22)
        assert (third.id, third.attempts, third.lease_owner) == ("a", 3, "w4")
        # b's lease expired too (at now + 21), a's (now + 32) did not: a claim takes b only.
        late = await backend.claim(["default"], 10, worker="w5", lease=10, now=now + 23)
        assert [(r.id, r.attempts) for r in late] == [("b", 3)]
    finally:
        await backend.aclose()


async def test_claim_ids_leaves_what_a_claim_could_not_take(redis_url: str, namespace: str) -> None:
    backend = RedisQueueBackend(redis_url, namespace=namespace)
    try:
        now = await backend.time()
        held = NewTask(
            id="held",
            name="t",
            queue="other",
            payload=b"null",
            priority=0,
            run_at=now,
            max_attempts=3,
            created_at=now,
            held=True,
        )
        await backend.enqueue(
            [_task("later", run_at=now + 60), _task("due", queue="other", run_at=now), held],
            now=now,
        )
        got = await backend.claim_ids(
            ["unknown", "later", "held", "due"], worker="w", lease=10, now=now
        )
        assert [r.id for r in got] == ["due"]
        assert await backend.counts() == {
            "default": {TaskState.QUEUED: 1},
            "other": {TaskState.RUNNING: 1, TaskState.HELD: 1},
        }
        # The delayed task is still claimed when it falls due.
        (later,) = await backend.claim(["default"], 10, worker="w", lease=10, now=now + 60)
        assert later.id == "later"
    finally:
        await backend.aclose()


async def test_an_expired_last_attempt_named_by_id_dies_and_runs_its_group_callback(
    redis_url: str, namespace: str
) -> None:
    backend = RedisQueueBackend(redis_url, namespace=namespace)
    try:
        now = await backend.time()
        member = _task("m", run_at=now, max_attempts=1, group_id="g", group_index=0)
        callback = _task("cb", run_at=now)
        await backend.enqueue([member], group=GroupSpec(id="g", size=1, callback=callback), now=now)
        (claimed,) = await backend.claim_ids(["m"], worker="w1", lease=10, now=now)
        assert claimed.attempts == 1
        assert await backend.claim_ids(["m"], worker="w2", lease=10, now=now + 11) == []
        record = await backend.get("m")
        assert record is not None
        assert record.state is TaskState.DEAD
        assert record.last_error == "lease expired (the worker stopped responding)"
        assert record.lease_owner is None
        (cb,) = await backend.claim(["default"], 10, worker="w3", lease=10, now=now + 11)
        assert (cb.id, cb.payload) == ("cb", b"[null]")
    finally:
        await backend.aclose()


async def test_overdue_lists_the_longest_overdue_first(
    redis_url: str, namespace: str, redis_client: coredis.Redis[bytes]
) -> None:
    backend = RedisQueueBackend(redis_url, namespace=namespace)
    prefix = "{" + namespace + "}:"
    try:
        now = await backend.time()
        await backend.enqueue(
            [
                _task("q-old", run_at=now - 30, priority=5),
                _task("q-new", run_at=now - 10),
                _task("q-later", run_at=now + 30),
                _task("o-1", queue="other", run_at=now - 20),
                _task("run", queue="other", run_at=now - 40),
            ],
            now=now,
        )
        (running,) = await backend.claim_ids(["run"], worker="w", lease=5, now=now - 40)
        assert running.lease_until == now - 35
        # A stale entry (its task finished long ago) is never listed.
        await redis_client.zadd(prefix + "l:other", {"gone": now - 100})
        listed = await backend.overdue(before=now)
        assert [r.id for r in listed] == ["run", "q-old", "o-1", "q-new"]
        assert listed[0].state is TaskState.RUNNING
        assert [r.id for r in await backend.overdue(before=now, limit=2)] == ["run", "q-old"]
        assert [r.id for r in await backend.overdue(before=now - 15)] == ["run", "q-old", "o-1"]
        assert [r.id for r in await backend.overdue(before=now, queues=["default"])] == [
            "q-old",
            "q-new",
        ]
        assert await backend.overdue(before=now, queues=[]) == []
        assert await backend.overdue(before=now, queues=["nobody"]) == []
        assert await backend.overdue(before=now, limit=0) == []
        # Read only: everything is as it was.
        assert await backend.counts() == {
            "default": {TaskState.QUEUED: 3},
            "other": {TaskState.QUEUED: 1, TaskState.RUNNING: 1},
        }
    finally:
        await backend.aclose()
