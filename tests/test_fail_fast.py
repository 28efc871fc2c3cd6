"""Fail fast on what retrying cannot fix: the program exits non-zero, naming the fix.

Real processes: a Scheduler (and a queue worker) whose state directory the process may not
write stops the whole program within seconds, where it used to log a warning and retry
forever while the service looked healthy. Postgres' cases are in tests/pg/test_pg_fail_fast.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasker import BackendConfigurationError
from tasker.backends import PermanentFault, permanent_fault, register_fault_classifier

from .helpers import ROOT

pytestmark = pytest.mark.slow


def run_program(mode: str, target: str, *, prefix: tuple[str, ...] = ()) -> tuple[int, str, float]:
    """Run tests/fail_fast_program.py; its exit status, stderr and run time (at most 30 s)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    started = time.monotonic()
    proc = subprocess.run(
        [*prefix, sys.executable, "tests/fail_fast_program.py", mode, target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.returncode, proc.stderr, time.monotonic() - started


def _unwritable_dir(tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    """A directory the child may read but not write, and the command prefix that makes it so.

    Root writes anywhere: as root, the child runs under ``setpriv`` without the capabilities
    that override file permissions.
    """
    directory = tmp_path / "state"
    directory.mkdir()
    directory.chmod(0o555)
    if os.geteuid() != 0:
        return directory, ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root: these tests need util-linux's setpriv to drop privileges")
    caps = "-dac_override,-dac_read_search"
    return directory, (setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}")


@pytest.mark.parametrize("mode", ["embedded", "sqlite-queue"])
def test_an_unwritable_state_dir_stops_the_program(tmp_path: Path, mode: str) -> None:
    """Exit 1 within seconds; the message says what is wrong and how to fix it."""
    directory, prefix = _unwritable_dir(tmp_path)
    status, err, elapsed = run_program(mode, str(directory), prefix=prefix)
    assert status == 1, err
    assert elapsed < 20
    assert "retrying cannot help" in err, err
    assert "TASKER_STATE_DIR" in err, err


def test_an_outage_is_not_permanent_and_a_configuration_error_is() -> None:
    """The classification: refused connections and timeouts pass; permissions do not."""
    assert permanent_fault(ConnectionRefusedError(111, "Connection refused")) is None
    assert permanent_fault(TimeoutError()) is None
    assert permanent_fault(ValueError("a bug, not a backend fault")) is None
    fault = permanent_fault(PermissionError(13, "Permission denied", "/srv/state"))
    assert fault is not None
    assert "/srv/state" in fault.problem
    wrapped = RuntimeError("while saving")
    wrapped.__cause__ = BackendConfigurationError("store", "it is read-only", "remount it")
    assert permanent_fault(ExceptionGroup("two", [TimeoutError(), wrapped])) == PermanentFault(
        "it is read-only", "remount it"
    )


def test_a_backend_teaches_the_classification_its_driver_errors() -> None:
    """register_fault_classifier: consulted for every error, once registered (idempotent)."""

    class DriverAuthError(Exception):
        pass

    def classify(exc: BaseException) -> PermanentFault | None:
        if isinstance(exc, DriverAuthError):
            return PermanentFault("login refused", "check the password")
        return None

    assert permanent_fault(DriverAuthError()) is None
    assert register_fault_classifier(classify) is classify
    register_fault_classifier(classify)
    assert permanent_fault(DriverAuthError()) == PermanentFault(
        "login refused", "check the password"
    )
    with pytest.raises(TypeError, match="not callable"):
        register_fault_classifier(42)  # type: ignore[arg-type]
