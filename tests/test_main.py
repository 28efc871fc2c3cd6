"""tasker.main as a program entrypoint: exit statuses, signals, backends (real processes)."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest

import tasker

from .helpers import Recorder, python_process

BACKENDS = [
    pytest.param(["--backend", "asyncio"], id="asyncio"),
    pytest.param(["--backend", "asyncio", "--uvloop"], id="uvloop"),
    pytest.param(["--backend", "trio"], id="trio"),
]


def _start(args: list[str]) -> subprocess.Popen[str]:
    proc = python_process(["tests/main_program.py", *args])
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"program did not start: {line}{out}\n{err}")
    return proc


def test_main_without_jobs_returns_at_once() -> None:
    """main() with no jobs returns immediately (no loop, no signal handlers)."""
    started = time.monotonic()
    tasker.main()
    assert time.monotonic() - started < 1


def test_main_validates_before_running() -> None:
    """Bad jobs, backends and options are rejected before the loop starts."""
    with pytest.raises(TypeError, match="main"):
        tasker.main(print)  # type: ignore[arg-type]
    job = Recorder().job("x")
    with pytest.raises(ValueError, match="backend"):
        tasker.main(job, backend="curio")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uvloop"):
        tasker.main(job, backend="trio", uvloop=True)
    with pytest.raises(ValueError, match="grace"):
        tasker.main(job, grace=-1)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_cleanly(backend: list[str], signum: int) -> None:
    """1,000 jobs waiting on ctx stop on one signal; exit 0, no traceback."""
    proc = _start(["wait", "--jobs", "1000", *backend])
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "clean exit" in out
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_failure_exits_1_with_traceback(backend: list[str]) -> None:
    """A failing job stops the others and the program exits 1, its traceback logged."""
    proc = python_process(["tests/main_program.py", "fail", *backend])
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert "ValueError: disk is full" in err
    assert "Traceback" in err
    assert "clean exit" not in out


@pytest.mark.slow
def test_grace_expiry_exits_with_signal_status() -> None:
    """A job that ignores the shutdown is cancelled after the grace; exit 128+SIGTERM."""
    proc = _start(["stubborn", "--grace", "0.3"])
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGTERM
    assert 0.3 <= time.monotonic() - sent < 10
    assert "did not stop within its 0.3s grace period" in err


_LOGGING_PROGRAM = """
import logging, sys
import tasker

async def job(ctx):
    logging.getLogger("tasker.example").debug("a debug line")
    logging.getLogger("tasker.example").info("an info line")

if sys.argv[1] == "configured":
    logging.basicConfig(level=logging.WARNING, format="app: %(message)s")
tasker.main(job, log_level=None if sys.argv[2] == "-" else sys.argv[2])
"""


@pytest.mark.parametrize(
    ("setup", "level", "env", "shown", "hidden"),
    [
        ("default", "-", None, ["INFO    tasker: starting job", "an info line"], ["a debug line"]),
        ("default", "debug", None, ["a debug line", "an info line"], []),
        ("default", "-", "WARNING", [], ["an info line", "starting"]),
        ("default", "-", "DEBUG", ["DEBUG   tasker.example: a debug line"], []),
        ("configured", "-", "-", [], ["an info line", "starting"]),
        ("configured", "-", "DEBUG", ["app: a debug line", "app: an info line"], []),
        ("configured", "INFO", None, ["app: an info line"], ["a debug line"]),
    ],
)
def test_main_configures_logging_unless_the_application_did(
    setup: str, level: str, env: str | None, shown: list[str], hidden: list[str]
) -> None:
    """A default handler with time, level and logger name, at log_level, else
    $TASKER_LOG_LEVEL, else INFO; an application's own configuration wins (only a level
    asked for, by log_level or the variable, reaches the tasker loggers)."""
    extra = {"TASKER_LOG_LEVEL": env if env and env != "-" else ""}
    proc = python_process(["-c", _LOGGING_PROGRAM, setup, level], env=extra)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    for text in shown:
        assert text in err, err
    for text in hidden:
        assert text not in err, err
    if setup == "default" and shown:
        assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", err, re.M), err


def test_a_bad_log_level_is_rejected_before_running() -> None:
    """A level that is not a name or a number fails at once, naming where it came from."""
    job = Recorder().job("x")
    with pytest.raises(ValueError, match="log_level must be one of"):
        tasker.main(job, log_level="LOUD")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TASKER_LOG_LEVEL", "verbose")
        with pytest.raises(ValueError, match="the TASKER_LOG_LEVEL environment variable"):
            tasker.main(job)
