"""tasker in one program: an HTTP server, a scheduled job and a client, stopped by SIGTERM.

Shows: ``tasker.main`` running an ASGI app (``serve_asgi``), a ``Scheduler`` job on the
embedded default (lock files and SQLite in a temporary directory; no server needed) and a
client job that calls the app, then sends the program a SIGTERM after a few seconds: the
server lets its in-flight request finish, every job stops, and the program exits 0.

Needs: the ``asgi`` extra (uvicorn), installed by ``pip install -e ".[dev]"``.

Run: ``python examples/demo.py`` (``--seconds N`` to run longer; ``PORT`` to pick the port).

Prints: the scheduled runs, the client's requests and their answers, and a summary.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import tempfile
from typing import Any

import anyio
import httpx

import tasker
from tasker.schedule import Interval

COUNTER = {"requests": 0, "scheduled": 0}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app that counts requests; ``/slow`` takes a second."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/slow":
        await anyio.sleep(1)
    COUNTER["requests"] += 1
    body = f"hello #{COUNTER['requests']} from {scope['path']}\n".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    """Build the program and run it until the SIGTERM it sends itself."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    port = int(os.environ.get("PORT") or free_port())
    state_dir = tempfile.mkdtemp(prefix="tasker-demo-")

    async def housekeeping(ctx: tasker.Context) -> None:
        COUNTER["scheduled"] += 1
        print(f"[scheduler] housekeeping for slot {tasker.scheduled_slot():%H:%M:%S}", flush=True)

    async def client(ctx: tasker.Context) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            while not ctx.done:
                try:
                    response = await http.get("/")
                except httpx.TransportError:  # the server is still starting
                    await anyio.sleep(0.05)
                    continue
                print(f"[client] {response.status_code} {response.text.strip()}", flush=True)
                if not await ctx.sleep(0.7):
                    return

    async def deploy_after(ctx: tasker.Context) -> None:
        if await ctx.sleep(args.seconds):
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
                anyio.create_task_group() as tg,
            ):

                async def slow_request() -> None:
                    response = await http.get("/slow", timeout=10)
                    print(f"[client] in-flight request finished: {response.status_code}")

                tg.start_soon(slow_request)
                await anyio.sleep(0.3)
                print("[demo] sending SIGTERM to myself, as a deployment would", flush=True)
                os.kill(os.getpid(), signal.SIGTERM)

    scheduler = tasker.Scheduler(state_dir=state_dir)
    print(f"[demo] serving on http://127.0.0.1:{port}, state in {state_dir}", flush=True)
    tasker.main(
        tasker.serve_asgi(app, host="127.0.0.1", port=port, log_level="warning"),
        scheduler.with_schedule("housekeeping", Interval(1), housekeeping),
        client,
        deploy_after,
    )
    print(
        f"[demo] stopped cleanly: {COUNTER['requests']} requests served,"
        f" {COUNTER['scheduled']} scheduled runs",
        flush=True,
    )


if __name__ == "__main__":
    main()
