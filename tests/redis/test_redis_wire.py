"""The queue's own connections (``tasker_redis._wire``): binary records through the claims'
JSON replies, idle connections the server closed, and lease fields left by a finish
(asyncio and trio)."""

from __future__ import annotations

import coredis
import pytest

from tasker.queue import NewTask, Outcome, OutcomeKind, TaskState
from tasker_redis import RedisQueueBackend
from tasker_redis._wire import _Incomplete, _parse, encode_command

pytestmark = pytest.mark.anyio

#: Every byte value, a NUL, JSON's escapes and bytes that are not UTF-8.
AWKWARD = bytes(range(256)) + b'\x00"\\/\xff\xfe' + "é€".encode()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _task(task_id: str, now: float, *, payload: bytes = b"null", name: str = "t") -> NewTask:
    return NewTask(
        id=task_id, name=name, queue="default", payload=payload, run_at=now, created_at=now
    )


async def test_binary_fields_survive_the_claims_json(redis_url: str, namespace: str) -> None:
    """A payload of every byte value and non-UTF-8 text come back from ``claim`` and
    ``finish_and_claim`` (JSON replies) exactly as stored."""
    backend = RedisQueueBackend(redis_url, namespace=namespace)
    try:
        now = await backend.time()
        await backend.enqueue(
            [_task("a", now, payload=AWKWARD), _task("b", now + 0.001, payload=AWKWARD[::-1])],
            now=now,
        )
        (first,) = await backend.claim(["default"], 1, worker="w", lease=30, now=now + 1)
        assert first.payload == AWKWARD
        outcome = Outcome(
            id="a",
            worker="w",
            kind=OutcomeKind.SUCCEEDED,
            started_at=now + 1,
            finished_at=now + 1,
            result=AWKWARD,
        )
        (second,) = await backend.finish_and_claim(
            [outcome], now=now + 1, queues=["default"], limit=1, worker="w", lease=30
        )
        assert second.payload == AWKWARD[::-1]
        stored = await backend.get("a")
        assert stored is not None
        assert stored.result == AWKWARD
    finally:
        await backend.aclose()


async def test_a_finished_task_has_no_lease(redis_url: str, namespace: str) -> None:
    """A finish leaves the lease's fields stored (one command fewer), yet the record of a
    task that no longer runs shows no lease owner or expiry."""
    backend = RedisQueueBackend(redis_url, namespace=namespace)
    try:
        now = await backend.time()
        await backend.enqueue([_task("a", now)], now=now)
        (claimed,) = await backend.claim(["default"], 1, worker="w", lease=30, now=now)
        assert claimed.lease_owner == "w"
        assert claimed.lease_until == pytest.approx(now + 30)
        done = Outcome(
            id="a", worker="w", kind=OutcomeKind.SUCCEEDED, started_at=now, finished_at=now
        )
        await backend.finish([done], now=now)
        stored = await backend.get("a")
        assert stored is not None
        assert stored.state is TaskState.SUCCEEDED
        assert (stored.lease_owner, stored.lease_until) == (None, None)
        (listed,) = await backend.tasks()
        assert (listed.lease_owner, listed.lease_until) == (None, None)
    finally:
        await backend.aclose()


async def test_excluding_is_by_id_only(redis_url: str, namespace: str) -> None:
    """A task whose id is ``n`` is claimed like any other (the exclusion set holds ids
    only), and an excluded task is passed over however many are."""
    backend = RedisQueueBackend(redis_url, namespace=namespace)
    try:
        now = await backend.time()
        ids = ["x1", "x2", "n", "x3"]
        await backend.enqueue([_task(i, now + k * 0.001) for k, i in enumerate(ids)], now=now)
        claimed = await backend.claim(
            ["default"], 2, worker="w", lease=30, now=now + 1, exclude=["x1", "x2", "zz"]
        )
        assert [t.id for t in claimed] == ["n", "x3"]
    finally:
        await backend.aclose()


async def test_a_killed_idle_connection_is_not_used(
    redis_url: str, namespace: str, redis_client: coredis.Redis[bytes]
) -> None:
    """An idle connection the server closed (``CLIENT KILL``) is replaced before a call is
    sent on it, so the call neither fails nor runs twice."""
    client_name = f"tasker-wire-{namespace}"
    backend = RedisQueueBackend(f"{redis_url}?client_name={client_name}", namespace=namespace)
    try:
        now = await backend.time()
        await backend.enqueue([_task("a", now)], now=now)
        killed = 0
        for info in await redis_client.client_list():
            if info["name"] == client_name:
                await redis_client.client_kill(identifier=int(info["id"]))
                killed += 1
        assert killed >= 2  # the driver's and the queue's own
        claimed = await backend.claim(["default"], 1, worker="w", lease=30, now=now)
        assert [t.id for t in claimed] == ["a"]
    finally:
        await backend.aclose()


def test_replies_parse_in_pieces() -> None:
    """A reply split anywhere parses only once whole; errors come back as coredis'."""
    reply = b"*3\r\n$3\r\nabc\r\n$-1\r\n*2\r\n:7\r\n+OK\r\n"
    for cut in range(len(reply)):
        buf = bytearray(reply[:cut])
        with pytest.raises(_Incomplete):
            _parse(buf, 0)
    assert _parse(bytearray(reply), 0) == ([b"abc", None, [7, b"OK"]], len(reply))
    error, _ = _parse(bytearray(b"-NOSCRIPT No matching script\r\n"), 0)
    assert isinstance(error, coredis.exceptions.NoScriptError)
    assert encode_command(["GET", b"k"]) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
