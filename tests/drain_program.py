"""A service with every option at its default, run by the tests as a real process.

``python tests/drain_program.py PORT BACKEND``: ``serve_asgi`` of an app whose ``/slow``
answers after ``?seconds=N``, run by ``tasker.main`` with nothing but the backend given (the
health server on a port of its own and a shutdown delay when asked).
"""

from __future__ import annotations

import sys
from typing import Any

import anyio

import tasker


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/`` answers at once; ``/slow?seconds=N`` after N seconds."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b"hello\n"
    if scope["path"] == "/slow":
        query = dict(
            part.split("=", 1) for part in scope["query_string"].decode().split("&") if "=" in part
        )
        await anyio.sleep(float(query.get("seconds", "1")))
        body = b"slow hello\n"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    """``PORT BACKEND [HEALTH_PORT SHUTDOWN_DELAY]``: the health server and the delay are
    added only when given."""
    port, backend = int(sys.argv[1]), sys.argv[2]
    jobs = []
    if len(sys.argv) > 3:
        jobs.append(tasker.serve_health(host="127.0.0.1", port=int(sys.argv[3])))
        server = tasker.serve_asgi(
            app, host="127.0.0.1", port=port, shutdown_delay=float(sys.argv[4])
        )
    else:
        server = tasker.serve_asgi(app, host="127.0.0.1", port=port)
    tasker.main(server, *jobs, backend="trio" if backend == "trio" else "asyncio")


if __name__ == "__main__":
    main()
