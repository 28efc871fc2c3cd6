"""The AMQP tests: a RabbitMQ virtual host of their own (see ``broker.py``), names of their
own per test. aiormq is asyncio only, so these tests run on asyncio; the trio tests check
that every entry point says so."""

from __future__ import annotations

import uuid

import pytest

from .broker import amqp_url


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
