"""The reply path of tasker_nats's writes (``tasker_nats._wire.Acks``): replies matched to
their messages, one sweep for deadlines, waiters failed on close; and the queue's batched
finish and claim writing every outcome's history once."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import anyio
import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from tasker.queue import NewTask, Outcome, OutcomeKind, TaskState
from tasker_nats import NatsQueueBackend
from tasker_nats._wire import Acks

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[Client]:
    connection = await nats.connect(nats_url)
    yield connection
    await connection.close()


async def test_replies_come_back_in_the_order_of_their_messages(client: Client) -> None:
    """Each message's reply is returned at its message's place, whatever order they come in."""
    subject = f"echo.{uuid.uuid4().hex}"

    async def answer(msg: Msg) -> None:
        await client.publish(msg.reply, msg.data[::-1])

    await client.subscribe(subject, cb=answer)
    acks = Acks(client)
    await acks.start()
    try:
        replies = await acks.request_many(
            [(subject, f"m{i}".encode(), None) for i in range(20)], timeout=5.0
        )
        assert [r.data for r in replies] == [f"m{i}".encode()[::-1] for i in range(20)]
        one = await acks.request(subject, b"ab", {"X-Test": "1"}, timeout=5.0)
        assert one.data == b"ba"
    finally:
        await acks.close()


async def test_a_missing_reply_times_out_and_close_fails_waiters(client: Client) -> None:
    """No reply raises nats-py's TimeoutError near the deadline; closing fails who waits."""
    subject = f"silent.{uuid.uuid4().hex}"
    await client.subscribe(subject, cb=_ignore)
    acks = Acks(client)
    await acks.start()
    started = time.monotonic()
    with pytest.raises(nats.errors.TimeoutError):
        await acks.request(subject, b"x", None, timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 2.0
    async with anyio.create_task_group() as tg:
        failed: list[BaseException] = []

        async def wait() -> None:
            try:
                await acks.request(subject, b"x", None, timeout=30.0)
            except nats.errors.ConnectionClosedError as exc:
                failed.append(exc)

        tg.start_soon(wait)
        await anyio.sleep(0.1)
        await acks.close()
    assert len(failed) == 1
    with pytest.raises(nats.errors.ConnectionClosedError):
        await acks.request(subject, b"x", None, timeout=1.0)


async def _ignore(msg: Msg) -> None:
    return None


async def test_finish_and_claim_records_each_outcome_and_its_history_once(
    nats_url: str, namespace: str
) -> None:
    """Outcomes sent together with the next claim are each stored with one history entry,
    the lost lease's outcome is ignored, and the claim takes the next tasks."""
    backend = NatsQueueBackend(nats_url, namespace=namespace)
    try:
        now = await backend.time()
        tasks = [
            NewTask(
                id=f"t{i}",
                name="n",
                queue="q",
                payload=b"1",
                run_at=now + i * 1e-3,
                created_at=now,
                max_attempts=3,
            )
            for i in range(6)
        ]
        await backend.enqueue(tasks, now=now)
        claimed = await backend.claim(["q"], 3, worker="w", lease=30, now=now + 1)
        assert [r.id for r in claimed] == ["t0", "t1", "t2"]
        # t2's lease expires and another worker takes it: its outcome from w is ignored.
        taken = await backend.claim(
            ["q"], 1, worker="x", lease=30, now=now + 40, exclude=["t0", "t1"]
        )
        assert [r.id for r in taken] == ["t2"]
        outcomes = [
            Outcome(
                id=r.id,
                worker="w",
                kind=OutcomeKind.SUCCEEDED,
                started_at=now + 1,
                finished_at=now + 2,
                result=b"ok",
            )
            for r in claimed
        ]
        more = await backend.finish_and_claim(
            outcomes, now=now + 2, queues=["q"], limit=2, worker="w", lease=30
        )
        assert [r.id for r in more] == ["t3", "t4"]
        assert all(r.state is TaskState.RUNNING and r.lease_owner == "w" for r in more)
        for task_id, state in (("t0", TaskState.SUCCEEDED), ("t1", TaskState.SUCCEEDED)):
            stored = await backend.get(task_id)
            assert stored is not None
            assert stored.state is state
            assert stored.result == b"ok"
            assert len(await backend.history(task_id=task_id)) == 1
        t2 = await backend.get("t2")
        assert t2 is not None
        assert t2.state is TaskState.RUNNING
        assert t2.lease_owner == "x"
        assert await backend.history(task_id="t2") == []
        # Reported again (its answer lost): nothing is stored twice.
        await backend.finish(outcomes[:2], now=now + 3)
        assert len(await backend.history(task_id="t0")) == 1
    finally:
        await backend.aclose()
