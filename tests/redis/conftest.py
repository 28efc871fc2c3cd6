"""How the Redis tests find a server, and a namespace of their own per test.

Order: ``$TASKER_TEST_REDIS_URL``; else the local server on 127.0.0.1:6379 (database 9) if
it answers; else a private ``redis-server`` from PATH on a free port. If none can be had
the tests fail: they never skip silently. Each test works in a fresh namespace (its keys'
prefix), deleted afterwards, so tests never see each other's keys.

Restart and outage tests never touch the shared server: ``private_redis`` starts one of
the test's own, with AOF, in a temp dir (see ``servers.py``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import anyio
import coredis
import pytest

from .servers import PrivateRedis, answers

LOCAL_URL = "redis://127.0.0.1:6379/9"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A URL of a running Redis (see the module docstring)."""
    explicit = os.environ.get("TASKER_TEST_REDIS_URL")
    if explicit:
        yield explicit
        return
    if answers("127.0.0.1", 6379):
        yield LOCAL_URL
        return
    try:
        server = PrivateRedis()
        server.start()
    except Exception as exc:
        pytest.fail(f"no Redis at 127.0.0.1:6379 and no private redis-server could start: {exc}")
    try:
        yield server.url
    finally:
        server.cleanup()


async def delete_namespace(url: str, namespace: str) -> None:
    """Delete every key of ``namespace``."""
    client: coredis.Redis[bytes] = coredis.Redis.from_url(url)
    async with client:
        keys = [key async for key in client.scan_iter(match="{" + namespace + "}:*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(keys[start : start + 500])


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A fresh namespace, deleted after the test."""
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    anyio.run(delete_namespace, redis_url, name)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A private, running Redis with AOF that the test may stop and start."""
    try:
        server = PrivateRedis()
        server.start()
    except Exception as exc:
        pytest.fail(f"could not start a private redis-server: {exc}")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[coredis.Redis[bytes]]:
    """A plain client of the test server, for looking at keys."""
    client: coredis.Redis[bytes] = coredis.Redis.from_url(redis_url)
    async with client:
        yield client
