"""The queue backend contract on NATS JetStream: the state machine (asyncio; nats-py is
asyncio only)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import pytest

from tasker.testing import queue_backend_machine
from tasker_nats import NatsQueueBackend

from .conftest import delete_namespace
from .servers import PrivateNats

_SERVER: list[PrivateNats] = []
_NAMESPACES: list[str] = []


def _url() -> str:
    explicit = os.environ.get("TASKER_TEST_NATS_URL")
    if explicit:
        return explicit
    if not _SERVER:
        server = PrivateNats()
        server.start()
        _SERVER.append(server)
    return _SERVER[0].url


def _fresh_backend() -> NatsQueueBackend:
    namespace = f"m{uuid.uuid4().hex[:10]}"
    _NAMESPACES.append(namespace)
    return NatsQueueBackend(_url(), namespace=namespace)


@pytest.fixture(scope="module", autouse=True)
def _server() -> Iterator[None]:
    yield
    url = _url()
    for namespace in _NAMESPACES:
        asyncio.run(delete_namespace(url, namespace))
    for server in _SERVER:
        server.close()


TestNatsQueueMachine = queue_backend_machine(_fresh_backend).TestCase
