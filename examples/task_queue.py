"""Background tasks on the embedded SQLite queue, processed by workers that are jobs.

Shows: handlers registered with ``@queue.task``, enqueues with a delay, a unique key (the
second enqueue is deduplicated), a retry after a failure, a chain that passes results along
and a group with a callback, processed by ``queue.worker(...)`` under ``tasker.main``. The
program stops itself with SIGTERM once every task has finished; the worker drains first.

Needs: nothing beyond tasker (the queue lives in a temporary SQLite file).

Run: ``python examples/task_queue.py`` (not ``queue.py``: that would shadow the stdlib)

Prints: one line per task as it runs, then the counts per state and the task history size.
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import anyio

import tasker
from tasker.queue import Queue, SQLiteQueueBackend


def main() -> None:
    """Enqueue a few tasks, run a worker until they are done, then stop."""
    path = Path(tempfile.mkdtemp(prefix="tasker-queue-")) / "queue.sqlite3"
    queue = Queue(SQLiteQueueBackend(path))
    attempts: dict[str, int] = {}

    @queue.task("send-email", max_attempts=3, backoff=0.2)
    async def send_email(ctx: tasker.Context, payload: dict[str, str]) -> str:
        attempts[payload["to"]] = attempts.get(payload["to"], 0) + 1
        if payload["to"] == "flaky@example.com" and attempts[payload["to"]] == 1:
            print("send-email: SMTP timeout, will retry", flush=True)
            raise ConnectionError("SMTP timeout")
        print(f"send-email: sent to {payload['to']}", flush=True)
        return f"sent:{payload['to']}"

    @queue.task("resize")
    async def resize(ctx: tasker.Context, payload: int) -> int:
        print(f"resize: {payload} -> {payload // 2}", flush=True)
        return payload // 2

    @queue.task("report")
    async def report(ctx: tasker.Context, payload: object) -> None:
        print(f"report: got {payload}", flush=True)

    async def enqueue_all() -> None:
        await queue.enqueue("send-email", {"to": "ada@example.com"})
        await queue.enqueue("send-email", {"to": "flaky@example.com"})
        await queue.enqueue("send-email", {"to": "later@example.com"}, delay=0.5)
        first = await queue.enqueue("report", "nightly", unique_key="report-2026-11-24")
        second = await queue.enqueue("report", "nightly", unique_key="report-2026-11-24")
        print(f"unique key: second enqueue deduplicated={second.deduplicated}", flush=True)
        assert second.id == first.id
        await queue.enqueue_chain(
            queue.step("resize", 4096), queue.step("resize"), queue.step("report")
        )
        await queue.enqueue_group(
            [queue.step("resize", n) for n in (10, 20, 30)], then=queue.step("report")
        )

    async def stop_when_done(ctx: tasker.Context) -> None:
        await enqueue_all()
        while not ctx.done:
            counts = await queue.counts()
            pending = sum(
                n
                for states in counts.values()
                for state, n in states.items()
                if state in ("queued", "running", "held")
            )
            if not pending:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            await anyio.sleep(0.1)

    tasker.main(queue.worker(concurrency=4, poll=0.2), stop_when_done)
    counts = anyio.run(queue.counts)
    history = anyio.run(lambda: queue.history(limit=1000))
    print(f"done: {counts}; {len(history)} attempts in the history", flush=True)


if __name__ == "__main__":
    main()
