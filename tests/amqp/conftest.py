"""The AMQP tests: a RabbitMQ virtual host of their own (see ``broker.py``), names of their
own per test. aiormq is asyncio only, so these tests run on asyncio; the trio tests check
that every entry point says so."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from .broker import amqp_url, delete_queues


@pytest.fixture
def anyio_backend() -> str:
    """aiormq is asyncio only: the AMQP tests run on asyncio (trio is tested apart)."""
    return "asyncio"


@pytest.fixture(scope="session")
def url() -> str:
    """The URL of the session's virtual host."""
    return amqp_url()


@pytest.fixture
def names() -> str:
    """A prefix for this test's queues and exchange."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def cleanup(names: str) -> AsyncIterator[list[str]]:
    """Queue names (without the namespace) to delete after the test."""
    made: list[str] = []
    yield made
    await delete_queues(amqp_url(), *(f"{names}.{q}" for q in made), f"{names}.dead")
