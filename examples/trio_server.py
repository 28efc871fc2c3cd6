"""The HTTP server example on trio, served by hypercorn.

Shows: hypercorn's ``serve(app, config, shutdown_trigger=...)`` wrapped with
``tasker.with_shutdown`` next to a repeating job, run by ``tasker.main(..., backend="trio")``.
The first SIGTERM or Ctrl-C triggers hypercorn's graceful shutdown (in-flight requests
finish), the heartbeat stops, and the process exits 0; a second signal stops it at once.

Needs: the ``trio`` and ``asgi`` extras (trio, hypercorn).

Run: ``PORT=8000 python examples/trio_server.py``, then
``curl 'localhost:8000/slow?seconds=3'`` and press Ctrl-C while it runs.

Prints: ``listening on http://127.0.0.1:8000`` once the server accepts connections,
``heartbeat`` every second, ``bye`` at the end.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import anyio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

import tasker
from tasker.schedule import Interval


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A tiny ASGI app: ``/`` answers at once, ``/slow?seconds=N`` after N seconds."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b"hello from trio\n"
    if scope["path"] == "/slow":
        query = dict(
            part.split("=", 1) for part in scope["query_string"].decode().split("&") if "=" in part
        )
        await anyio.sleep(float(query.get("seconds", "1")))
        body = b"slow hello from trio\n"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def http_job(port: int) -> tasker.Job:
    """hypercorn as a job: its shutdown trigger is an event that ``shutdown`` sets."""
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.graceful_timeout = 10
    stop = anyio.Event()

    async def serve() -> None:
        # hypercorn reports through task_status once its sockets listen: only then is the
        # address announced (a client that connects on that line is never refused).
        async with anyio.create_task_group() as tg:
            await tg.start(
                functools.partial(hypercorn_serve, app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
            )
            print(f"listening on http://127.0.0.1:{port}", flush=True)

    async def shutdown() -> None:
        stop.set()

    return tasker.with_shutdown(serve, shutdown, timeout=10)


async def heartbeat(ctx: tasker.Context) -> None:
    """A short job repeated every second."""
    print("heartbeat", flush=True)


def main() -> None:
    """Run the server and the heartbeat on trio until a signal arrives."""
    port = int(os.environ.get("PORT", "8000"))
    tasker.main(
        http_job(port), tasker.with_repeat(Interval(1), heartbeat), grace=15, backend="trio"
    )
    print("bye", flush=True)


if __name__ == "__main__":
    main()
