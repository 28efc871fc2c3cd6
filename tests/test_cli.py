"""The ``tasker`` command, run as a real process (``python -m tasker``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from .helpers import ROOT

pytestmark = pytest.mark.slow


def tasker_cmd(
    *args: str, state: Path, wait: bool = True
) -> subprocess.Popen[str] | subprocess.CompletedProcess[str]:
    """``python -m tasker ARGS`` with the repository importable and ``state`` as state dir."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TASKER_STATE_DIR=str(state))
    env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-m", "tasker", *args]
    if wait:
        return subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
        )
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def completed(result: object) -> subprocess.CompletedProcess[str]:
    assert isinstance(result, subprocess.CompletedProcess)
    return result


def test_status_shows_schedules_that_never_ran_and_json_parses(tmp_path: Path) -> None:
    """Both registered schedules, with their next slot and no run yet; --json parses."""
    result = completed(tasker_cmd("status", "--app", "tests.cli_app", "--json", state=tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    names = [row["name"] for row in report["schedules"]]
    assert names == ["nightly", "tick"]
    assert all(row["runs"] == 0 and row["next_slot"] for row in report["schedules"])
    table = completed(tasker_cmd("status", "--app", "tests.cli_app", state=tmp_path))
    assert table.returncode == 0, table.stderr
    assert "nightly" in table.stdout
    assert "(no worker running)" in table.stdout


def test_worker_drains_on_sigterm(tmp_path: Path) -> None:
    """A 2 s task running at SIGTERM finishes; the worker exits 0; status shows it done."""

    async def enqueue() -> None:
        os.environ["TASKER_STATE_DIR"] = str(tmp_path)
        sys.path.insert(0, str(ROOT))
        from tests import cli_app

        await cli_app.queue.enqueue("slow", 2.0)
        await cli_app.queue.aclose()

    anyio.run(enqueue)
    proc = tasker_cmd(
        "worker", "tests.cli_app:queue", "--concurrency", "2", state=tmp_path, wait=False
    )
    assert isinstance(proc, subprocess.Popen)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "slow-started").exists():
            assert time.monotonic() < deadline, "the task never started"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    report = json.loads(
        completed(
            tasker_cmd("status", "--app", "tests.cli_app:queue", "--json", state=tmp_path)
        ).stdout
    )
    assert report["queues"] == {"default": {"succeeded": 1}}


def test_run_runs_the_jobs_until_sigterm(tmp_path: Path) -> None:
    """tasker run module:attr runs a list of jobs as main() would: logs, exit 0."""
    proc = tasker_cmd("run", "tests.cli_app:jobs", "--grace", "5", state=tmp_path, wait=False)
    assert isinstance(proc, subprocess.Popen)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "starting scheduled('nightly'), scheduled('tick')" in line, line
        line = proc.stderr.readline()  # signals are handled by now
        assert "ready: schedule 'nightly', schedule 'tick'" in line, line
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "stopped cleanly" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "tests.cli_app"], "expected module:attribute"),
        (["run", "tests.no_such_module:x"], "cannot import"),
        (["worker", "tests.cli_app:jobs"], "not a tasker.queue.Queue"),
        (["worker", "tests.cli_app:queue", "--concurrency", "0"], "0<=x|x>=1|1<=x"),
        (["status", "--app", "tests.cli_app:tick"], "names no tasker.Scheduler"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tmp_path: Path, args: list[str], message: str) -> None:
    """Usage errors: exit status 2 (1 for a failed command), the problem named."""
    result = completed(tasker_cmd(*args, state=tmp_path))
    assert result.returncode in (1, 2), result
    import re

    assert re.search(message, result.stderr), result.stderr


def test_help_is_plain_prose(tmp_path: Path) -> None:
    """Every command's --help renders: no raw reST markup."""
    for command in ([], ["run"], ["worker"], ["status"], ["migrate"]):
        result = completed(tasker_cmd(*command, "--help", state=tmp_path))
        assert result.returncode == 0, result.stderr
        assert "``" not in result.stdout
        assert ":func:" not in result.stdout


def test_status_shows_an_idle_worker(tmp_path: Path) -> None:
    """A worker with nothing to do is listed (the registry), then gone once it stopped."""
    proc = tasker_cmd(
        "worker", "tests.cli_app:queue", "--queue", "emails", state=tmp_path, wait=False
    )
    assert isinstance(proc, subprocess.Popen)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 20
        while "ready: worker" not in proc.stderr.readline():
            assert time.monotonic() < deadline, "the worker never said it was ready"
        running = json.loads(
            completed(
                tasker_cmd("status", "--app", "tests.cli_app:queue", "--json", state=tmp_path)
            ).stdout
        )
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    (worker,) = running["workers"]
    assert worker["queues"] == ["emails"]
    assert (worker["running"], worker["concurrency"], worker["tasks"]) == (0, 10, 0)
    stopped = json.loads(
        completed(
            tasker_cmd("status", "--app", "tests.cli_app:queue", "--json", state=tmp_path)
        ).stdout
    )
    assert stopped["workers"] == []
