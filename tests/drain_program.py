"""A service with every option at its default, run by the tests as a real process.

``python tests/drain_program.py PORT BACKEND``: ``serve_asgi`` of an app whose ``/slow``
answers after ``?seconds=N``, run by ``tasker.main`` with nothing but the backend given (the
health server on a port of its own and a shutdown delay when asked).
"""

from __future__ import annotations

import sys
from pathlib import Path

import tasker

# The example's app: ``/`` answers at once, ``/slow?seconds=N`` after N seconds.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from http_server import app


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
