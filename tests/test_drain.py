"""One stop budget, with every option at its default: a deploy drains what it promises.

Real processes, real signals, a real HTTP client: a request in flight when SIGTERM arrives
completes with 200 and the process exits 0, on asyncio (uvicorn) and on trio (hypercorn).
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import threading
import time

import httpx
import pytest

import tasker

from .helpers import free_port, python_process

pytestmark = pytest.mark.slow


def _wait_for_line(proc: subprocess.Popen[str], pattern: str, timeout: float = 20) -> list[str]:
    """Read stderr until a line matches ``pattern``; every line read so far."""
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"no line matching {pattern!r} in {lines!r}")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_slow_request_in_flight_at_sigterm_completes_and_the_exit_is_clean(
    backend: str,
) -> None:
    """An 8 s request, SIGTERM 1 s into it: 200, body intact, exit status 0.

    The listener closes at SIGTERM (a new connection is refused while the request drains),
    and the log says listening, shutting down and stopped cleanly, with timestamps.
    """
    port = free_port()
    proc = python_process(["tests/drain_program.py", str(port), backend])
    try:
        startup = _wait_for_line(proc, r"listening on http://127\.0\.0\.1:\d+")
        result: dict[str, object] = {}

        def slow_request() -> None:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/slow?seconds=8", timeout=30)
                result["status"], result["body"] = response.status_code, response.text
            except httpx.HTTPError as exc:
                result["error"] = repr(exc)

        client = threading.Thread(target=slow_request)
        started = time.monotonic()
        client.start()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        with pytest.raises(ConnectionRefusedError):  # the listener closed at SIGTERM
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        client.join(timeout=30)
        elapsed = time.monotonic() - started
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert result == {"status": 200, "body": "slow hello\n"}, (result, err)
    assert proc.returncode == 0, err
    assert 7.5 < elapsed < 15
    log = "".join(startup) + err
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO +tasker: starting", log, re.M), log
    assert "received SIGTERM: shutting down (grace 25s)" in log
    assert "stopped cleanly" in log
    assert "cut off" not in log


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_listening_line_comes_once_the_port_accepts(backend: str) -> None:
    """A client connecting the moment it reads "listening on" is accepted and answered."""
    port = free_port()
    proc = python_process(["tests/drain_program.py", str(port), backend])
    try:
        lines = _wait_for_line(proc, r"listening on")
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        response = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert response.status_code == 200
    assert sum("listening on" in line for line in lines + err.splitlines()) == 1
    assert proc.returncode == 0, err


def test_a_request_cut_off_by_the_hard_stop_is_logged_by_name() -> None:
    """A request longer than the grace: the log names it, method and path, when cut off."""
    port = free_port()
    proc = python_process(
        ["-c", _CUT_OFF_PROGRAM, str(port)],
    )
    try:
        _wait_for_line(proc, r"listening on")
        client = threading.Thread(
            target=lambda: _quiet_get(f"http://127.0.0.1:{port}/slow?seconds=30")
        )
        client.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        client.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert re.search(r"cut off 1 request\(s\) still in flight .*GET /slow \(running", err), err


_CUT_OFF_PROGRAM = """
import sys
sys.path.insert(0, "tests")
import tasker
from drain_program import app
tasker.main(tasker.serve_asgi(app, host="127.0.0.1", port=int(sys.argv[1])), grace=2)
"""


def _quiet_get(url: str) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(url, timeout=30)


def test_a_timeout_beyond_the_grace_is_rejected_at_construction() -> None:
    """main() names the server, its timeout and the grace; no process needed."""

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("never served")

    server = tasker.serve_asgi(app, port=free_port(), timeout=40)
    with pytest.raises(
        ValueError, match=r"serve_asgi\(0\.0\.0\.0:\d+\) drains for up to 40s.*grace is 25s"
    ):
        tasker.main(tasker.concurrence(tasker.with_retry(server)))
