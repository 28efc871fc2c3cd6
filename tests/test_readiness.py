"""Readiness and liveness: the API, the HTTP endpoints, and the preStop dance for real.

The process test runs a server with a shutdown delay next to ``serve_health`` on its own
port: ``/readyz`` turns 503 at SIGTERM while the server still accepts and answers, the
listener closes only after the delay, and ``/readyz`` answers until the server is gone.
"""

from __future__ import annotations

import json
import signal
import socket
import time

import anyio
import httpx
import pytest

import tasker
from tasker import Context

from .helpers import free_port, python_process
from .test_drain import _wait_for_line


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_readiness_turns_false_at_sigterm_before_the_listener_closes(backend: str) -> None:
    """503 from /readyz at once; the app still answers during the delay; then refused."""
    port, health = free_port(), free_port()
    proc = python_process(["tests/drain_program.py", str(port), backend, str(health), "2"])
    try:
        lines = _wait_for_line(proc, r"tasker: ready: ")
        ready = httpx.get(f"http://127.0.0.1:{health}/readyz", timeout=5)
        live = httpx.get(f"http://127.0.0.1:{health}/livez", timeout=5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        during = httpx.get(f"http://127.0.0.1:{health}/readyz", timeout=5)
        served = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)  # still accepting
        time.sleep(2.5)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "ready": True,
        "shutting_down": False,
        "probes": {f"serve_asgi(127.0.0.1:{port})": "ready"},
    }
    assert live.status_code == 200
    assert during.status_code == 503
    assert during.json()["shutting_down"] is True
    assert served.status_code == 200
    assert proc.returncode == 0, err
    assert any("ready: serve_asgi" in line for line in lines)


pytestmark = pytest.mark.anyio


async def test_ready_needs_every_probe_and_no_shutdown() -> None:
    """No probe: not ready. One not ready: not ready. All ready: ready. Shutdown: not."""
    seen: list[tuple[bool, dict[str, object]]] = []
    stop = anyio.Event()

    async def job(ctx: Context) -> None:
        readiness = tasker.current_readiness()
        seen.append((readiness.ready, readiness.report()))
        first, second = readiness.probe("one"), readiness.probe("two")
        first.set(True)
        seen.append((readiness.ready, readiness.report()))
        second.set(False, "connecting")
        seen.append((readiness.ready, readiness.report()))
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(readiness.wait)
                await anyio.sleep(0.01)
                second.set(True)
        seen.append((readiness.ready, readiness.report()))
        stop.set()
        await ctx.wait()
        seen.append((readiness.ready, readiness.report()))
        first.close()
        second.close()

    await tasker.run(job, shutdown_trigger=stop.wait)
    assert [ready for ready, _ in seen] == [False, False, False, True, False]
    assert seen[2][1]["probes"] == {"one": "ready", "two": "connecting"}
    assert seen[4][1]["shutting_down"] is True
    with pytest.raises(RuntimeError, match="no program is running"):
        tasker.current_readiness()


async def test_health_app_mounted_in_an_app_answers_livez_and_readyz() -> None:
    """The ASGI app answers under any prefix; 503 until ready; 404 elsewhere."""
    transport = httpx.ASGITransport(app=tasker.health_app)
    results: list[tuple[str, int, dict[str, object]]] = []

    async def job(ctx: Context) -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:

            async def get(path: str) -> None:
                response = await client.get(path)
                results.append((path, response.status_code, json.loads(response.text)))

            await get("/health/readyz")
            probe = tasker.current_readiness().probe("db")
            probe.set(True)
            await get("/health/readyz")
            await get("/livez")
            await get("/elsewhere")

    await tasker.run(job)
    assert [(path, status) for path, status, _ in results] == [
        ("/health/readyz", 503),
        ("/health/readyz", 200),
        ("/livez", 200),
        ("/elsewhere", 404),
    ]
    assert results[1][2] == {"ready": True, "shutting_down": False, "probes": {"db": "ready"}}


def test_serve_health_and_shutdown_delay_validate() -> None:
    """A missing port, a bad HEALTH_PORT, a negative delay: errors at construction."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("HEALTH_PORT", raising=False)
        with pytest.raises(ValueError, match="HEALTH_PORT"):
            tasker.serve_health()
        patch.setenv("HEALTH_PORT", "eighty")
        with pytest.raises(ValueError, match="not a port"):
            tasker.serve_health()
    with pytest.raises(ValueError, match="shutdown_delay must be non-negative"):
        tasker.serve_asgi(tasker.health_app, port=free_port(), shutdown_delay=-1)


async def test_a_scheduler_is_ready_once_its_backends_answered() -> None:
    """The Scheduler's probe: not ready until its state was read, ready after, gone at the end."""
    scheduler = tasker.Scheduler(
        locker_factory=tasker.MemoryLockerFactory(), repository=tasker.MemoryStateRepository()
    )
    reports: list[dict[str, object]] = []

    async def tick(ctx: Context) -> None:
        pass

    async def observe(ctx: Context) -> None:
        readiness = tasker.current_readiness()
        reports.append(readiness.report())
        with anyio.fail_after(5):
            await readiness.wait()
        reports.append(readiness.report())

    from tasker.schedule import Interval

    job = tasker.concurrence(observe, scheduler.with_schedule("tick", Interval(60), tick))
    await tasker.run(job, shutdown_trigger=lambda: anyio.sleep(0.2))
    assert reports[0]["ready"] is False
    assert reports[1] == {
        "ready": True,
        "shutting_down": False,
        "probes": {"schedule 'tick'": "ready"},
    }


async def test_a_worker_is_ready_once_it_claims() -> None:
    """The worker's probe: ready after its first claim, gone when it stops."""
    from tasker.queue import MemoryQueueBackend, Queue

    queue = Queue(MemoryQueueBackend())
    reports: list[dict[str, object]] = []
    worker = queue.worker(poll=0.05)

    async def observe(ctx: Context) -> None:
        readiness = tasker.current_readiness()
        with anyio.fail_after(5):
            await readiness.wait()
        reports.append(readiness.report())

    await tasker.run(tasker.concurrence(observe, worker), shutdown_trigger=lambda: anyio.sleep(0.3))
    assert reports == [
        {"ready": True, "shutting_down": False, "probes": {f"worker {worker.worker_id}": "ready"}}
    ]
