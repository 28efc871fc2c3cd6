"""Fail fast on Postgres: a database never migrated, a refused password, an unknown database.

Real processes (tests/fail_fast_program.py): the program exits 1 within 20 s and its last
words name the fix, where it used to log a warning and retry forever. An outage (nothing
listening) is still retried: the program is still running when the test stops it.
"""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from ..helpers import free_port, python_process
from ..test_fail_fast import run_program
from .embedded import EmbeddedPostgres

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", ["pg-scheduler", "pg-queue"])
def test_a_database_never_migrated_stops_the_program_and_says_migrate(
    pg_dsn: str, mode: str
) -> None:
    """Exit 1 within 20 s; the message names the migration command."""
    status, err, elapsed = run_program(mode, pg_dsn)
    assert status == 1, err
    assert elapsed < 20
    assert "tables are missing" in err, err
    assert "tasker migrate --dsn" in err, err


@pytest.mark.parametrize("mode", ["pg-scheduler", "pg-queue"])
def test_a_refused_password_stops_the_program_without_showing_it(mode: str) -> None:
    """A server with password auth, the wrong password: exit 1, the fix named, no password."""
    secret = f"right-{uuid.uuid4().hex[:8]}"
    server = EmbeddedPostgres(password=secret)
    try:
        server.start()
        wrong = server.dsn.replace(secret, "wrong-horse-battery")
        status, err, elapsed = run_program(mode, wrong)
    finally:
        server.cleanup()
    assert status == 1, err
    assert elapsed < 20
    assert "refused the login" in err, err
    assert "check the user name and password" in err, err
    assert "wrong-horse-battery" not in err
    assert secret not in err


def test_an_unknown_database_stops_the_program(pg_dsn: str) -> None:
    """A DSN naming a database that does not exist: exit 1, "create it"."""
    base, _, _ = pg_dsn.rpartition("/")
    status, err, elapsed = run_program("pg-scheduler", f"{base}/no_such_db_{uuid.uuid4().hex[:6]}")
    assert status == 1, err
    assert elapsed < 20
    assert "does not exist" in err, err


def test_an_outage_is_retried_not_fatal() -> None:
    """Nothing listens on the port: the program keeps running (and stops cleanly on SIGTERM)."""
    proc = python_process(
        [
            "tests/fail_fast_program.py",
            "pg-scheduler",
            f"postgresql://postgres@127.0.0.1:{free_port()}/x",
        ]
    )
    try:
        time.sleep(4)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "cannot check its lock key yet (ConnectionRefusedError" in err, err
