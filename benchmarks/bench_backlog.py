"""Does a claim cost the same with a small or a huge backlog? Drain rate against backlog size.

Run: ``python benchmarks/bench_backlog.py [--sizes 5000,100000] [--backends memory,sqlite]
[--json PATH]`` (or ``nox -s bench``; ``--sizes 5000,100000,1000000`` for the issue's full
table, which takes minutes on SQLite; ``--json PATH`` also writes the figures in
``benchmarks/_report.py``'s shape). Every size is at least the 5,000 tasks drained.

For each backend, backlog size and kind of ``run_at``, the backlog is enqueued in bulk
(batches of 5,000 through ``QueueBackend.enqueue``), then one worker with concurrency 10
drains the first 5,000 no-op tasks: tasks/s over those. **Tied**: every task shares one
``run_at`` (a bulk enqueue, a ``dispatch``, a newsletter at 09:00); **distinct**: each its
own. The ratio of the largest backlog's rate to the smallest's, per backend and kind, is
what the issue asks to stay near 1 ("claims must cost the same with 1,000 or 1,000,000
tasks waiting"); it is reported, never asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import _report
import anyio

import tasker
from tasker.queue import MemoryQueueBackend, NewTask, Queue, QueueBackend, SQLiteQueueBackend

DRAINED = 5000
BATCH = 5000


async def drain(backend: QueueBackend, backlog: int, tied: bool) -> float:
    queue = Queue(backend, retention=None) if _has_admin(backend) else Queue(backend)
    done = 0
    finished = anyio.Event()

    @queue.task("noop", max_attempts=1)
    async def noop(ctx: tasker.Context, payload: None) -> None:
        nonlocal done
        done += 1
        if done == DRAINED:
            finished.set()

    now = await backend.time()
    for start in range(0, backlog, BATCH):
        await backend.enqueue(
            [
                NewTask(
                    id=uuid.uuid4().hex,
                    name="noop",
                    queue="default",
                    payload=b"null",
                    run_at=now if tied else now - (backlog - start - i) * 1e-3,
                    created_at=now + (start + i) * 1e-6,
                )
                for i in range(min(BATCH, backlog - start))
            ],
            now=now,
        )
    began = time.perf_counter()
    await tasker.run(queue.worker(concurrency=10, poll=0.5), shutdown_trigger=finished.wait)
    rate = DRAINED / (time.perf_counter() - began)
    await queue.aclose()
    return rate


def _has_admin(backend: QueueBackend) -> bool:
    from tasker.abc import QueueCapability

    return QueueCapability.ADMINISTRATION in backend.capabilities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="5000,100000", help="backlog sizes, comma-separated")
    parser.add_argument("--backends", default="memory,sqlite")
    _report.add_json_option(parser)
    args = parser.parse_args()
    report = _report.Report.of(__file__)
    sizes = [int(size) for size in args.sizes.split(",")]
    for name in args.backends.split(","):
        for tied in (True, False):
            rates = []
            for size in sizes:
                with tempfile.TemporaryDirectory() as directory:
                    backend: QueueBackend = (
                        MemoryQueueBackend()
                        if name == "memory"
                        else SQLiteQueueBackend(Path(directory) / "q.sqlite3")
                    )
                    rates.append(anyio.run(drain, backend, size, tied))
            kind = "tied" if tied else "distinct"
            figures = ", ".join(
                f"{size}: {rate:7.0f}/s" for size, rate in zip(sizes, rates, strict=True)
            )
            print(
                f"{name:7} {kind:8} {figures}; largest/smallest {rates[-1] / rates[0]:5.2f}"
                " (target: about 1)"
            )
            report.ratio(
                f"{name}, {kind} run_at: drain rate with {sizes[-1]:,} / {sizes[0]:,} waiting",
                rates[-1] / rates[0],
                "≈ 1",
            )
            by_size = ", ".join(
                f"{size:,}: {rate:.0f}" for size, rate in zip(sizes, rates, strict=True)
            )
            report.note(f"{name}, {kind} run_at, tasks/s by backlog: {by_size}")
    report.write(args.json_path)


if __name__ == "__main__":
    main()
