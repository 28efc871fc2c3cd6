"""How the Postgres tests find a server, and an isolated schema per test.

Order: ``$TASKER_TEST_DSN``; else the local server on 127.0.0.1:5432 (database ``test``,
user ``postgres``) if it answers (``TASKER_TEST_EMBEDDED=1`` skips it); else an embedded
server started with the ``pgserver``
package (real Postgres binaries from PyPI). If none can be had the tests fail: they never
skip silently. These tests run on asyncio only (asyncpg is asyncio-only).

Restart and outage tests never touch the shared server: ``controlled_pg`` starts a private
one (see ``embedded.py``) in a temp dir on a free port.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from tasker_pg import PostgresLockerFactory, PostgresStateRepository

from .embedded import EmbeddedPostgres

# ``sslmode=disable``: the local server has no TLS, and asyncpg's default ``prefer`` leaves an
# unretrieved future behind when a connect is cancelled just as its TCP connection is made
# (see the Postgres guide, "Outages and secrets"); the test runner reports that as an error.
LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/test?sslmode=disable"


async def _answers(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A DSN for a running Postgres (see the module docstring)."""
    explicit = os.environ.get("TASKER_TEST_DSN")
    if explicit:
        yield explicit
        return
    if not os.environ.get("TASKER_TEST_EMBEDDED") and asyncio.run(_answers(LOCAL_DSN)):
        yield LOCAL_DSN
        return
    try:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR as root
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:  # pragma: no cover - pgserver is a dev dependency
        pytest.fail(f"no Postgres at {LOCAL_DSN} and pgserver is not installed: {exc}")
    directory = Path(tempfile.mkdtemp(prefix="tasker-pgserver-"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pgserver.get_server(directory, cleanup_mode="stop")  # type: ignore[attr-defined]
    except Exception as exc:
        pytest.fail(f"no Postgres at {LOCAL_DSN} and pgserver could not start one: {exc}")
    yield server.get_uri()


@pytest.fixture
def controlled_pg() -> Iterator[EmbeddedPostgres]:
    """A private, running Postgres that the test may stop and start (never the shared one)."""
    try:
        server = EmbeddedPostgres()
        server.start()
    except Exception as exc:
        pytest.fail(f"could not start an embedded Postgres for a restart test: {exc}")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg is asyncio-only."""
    return "asyncio"


@pytest.fixture
async def schema(pg_dsn: str) -> AsyncIterator[str]:
    """A fresh schema name, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f'drop schema if exists "{name}" cascade')
    finally:
        await conn.close()


@pytest.fixture
async def pg_backend(
    pg_dsn: str, schema: str
) -> AsyncIterator[tuple[PostgresLockerFactory, PostgresStateRepository]]:
    """A migrated locker factory and state repository in the test's own schema."""
    repository = PostgresStateRepository(pg_dsn, schema=schema)
    await repository.migrate()
    lockers = PostgresLockerFactory(pg_dsn, schema=schema, namespace=schema)
    yield lockers, repository
    await lockers.aclose()
    await repository.aclose()
