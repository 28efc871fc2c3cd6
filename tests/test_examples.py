"""The core examples, each run as a real process; servers get real requests and signals."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time

import httpx
import pytest

from .helpers import free_port, python_process

SERVER_EXAMPLES = ["examples/http_server.py", "examples/trio_server.py"]


def _wait_for_port(port: int, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"server exited early ({proc.returncode}):\n{out}\n{err}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("server did not start listening")


def _slow_request(port: int, seconds: float, results: list[object]) -> None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/slow?seconds={seconds}", timeout=30)
        results.append(response.status_code)
    except httpx.HTTPError as exc:
        results.append(exc)


@pytest.mark.slow
@pytest.mark.parametrize("example", SERVER_EXAMPLES)
def test_sigterm_lets_in_flight_request_finish(example: str) -> None:
    """A request in flight at SIGTERM completes with 200 and the process exits 0 in time."""
    port = free_port()
    proc = python_process([example], env={"PORT": str(port)})
    try:
        _wait_for_port(port, proc)
        results: list[object] = []
        client = threading.Thread(target=_slow_request, args=(port, 1.5, results))
        client.start()
        time.sleep(0.4)  # the request is now in flight inside the app
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        exited = time.monotonic() - sent
        client.join(10)
    finally:
        proc.kill()
    assert results == [200], err
    assert proc.returncode == 0, err
    assert exited < 15  # the grace period
    assert "heartbeat" in out
    assert out.rstrip().endswith("bye")
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("example", SERVER_EXAMPLES)
def test_second_sigint_stops_promptly(example: str) -> None:
    """A second Ctrl-C during the grace period ends the process at once, without traceback."""
    port = free_port()
    proc = python_process([example], env={"PORT": str(port)})
    try:
        _wait_for_port(port, proc)
        results: list[object] = []
        client = threading.Thread(target=_slow_request, args=(port, 30, results), daemon=True)
        client.start()
        time.sleep(0.4)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        exited = time.monotonic() - sent
    finally:
        proc.kill()
    assert exited < 5
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err
    assert "KeyboardInterrupt" not in err


@pytest.mark.slow
def test_migrations_pipeline_order() -> None:
    """Group 2 starts after group 1 ended; the program exits 0."""
    proc = python_process(["examples/migrations.py"])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    group_one_ends = [
        lines.index(f"end {n}")
        for n in ("create users table", "create orders table", "backfill audit log")
    ]
    group_two_starts = [
        lines.index(f"start {n}")
        for n in ("add orders.user_id foreign key", "create reporting view")
    ]
    assert max(group_one_ends) < min(group_two_starts)
    assert lines[-1] == "pipeline done"


@pytest.mark.slow
def test_migrations_failure_stops_siblings_and_exits_1() -> None:
    """A failing step stops its running siblings; group 2 never starts; exit 1 with traceback."""
    proc = python_process(["examples/migrations.py", "--fail"])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "stopped backfill audit log (sibling failed)" in out
    assert "start add orders.user_id foreign key" not in out
    assert "pipeline done" not in out
    assert "RuntimeError: create orders table failed" in err
    assert "Traceback" in err
