"""Small jobs and recorders shared by the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from tasker import Context, Job

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    """Collects events from jobs, in the order they happen."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def job(self, name: str, *, sleep: float = 0.0, fail: BaseException | None = None) -> Job:
        """A job that records its start and end, optionally sleeps and then raises."""

        async def recorded(ctx: Context) -> None:
            self.events.append(f"start {name}")
            if sleep:
                await anyio.sleep(sleep)
            if fail is not None:
                self.events.append(f"fail {name}")
                raise fail
            self.events.append(f"end {name}")

        recorded.__name__ = recorded.__qualname__ = name
        return recorded

    def waiter(self, name: str) -> Job:
        """A long-lived job that waits for its context and records why it stopped."""

        async def waiting(ctx: Context) -> None:
            self.events.append(f"start {name}")
            await ctx.wait()
            reason = ctx.reason.value if ctx.reason else "?"
            self.events.append(f"stopped {name}: {reason}")

        waiting.__name__ = waiting.__qualname__ = name
        return waiting

    def stubborn(self, name: str) -> Job:
        """A job that ignores its context; only cancellation stops it."""

        async def ignoring(ctx: Context) -> None:
            self.events.append(f"start {name}")
            try:
                await anyio.sleep_forever()
            finally:
                self.events.append(f"cancelled {name}")

        ignoring.__name__ = ignoring.__qualname__ = name
        return ignoring


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def python_process(
    args: Sequence[str], *, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start ``python args...`` with the project on the path, capturing output as text."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [full_env.get("PYTHONPATH")])]
    )
    full_env["PYTHONUNBUFFERED"] = "1"
    if env:
        full_env.update(env)
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=ROOT,
    )


async def check_chosen_task_ids(backend: Any) -> None:
    """``enqueue(task_id=...)`` on ``backend`` (fresh, declaring ``TASK_IDS``): enqueued
    twice, the task runs once; enqueued again once it succeeded, it stays succeeded."""
    import tasker
    from tasker.queue import Queue, TaskState

    queue = Queue(backend)
    ran: list[int] = []

    @queue.task("t")
    async def t(ctx: Context, payload: int) -> int:
        ran.append(payload)
        return payload

    first = await queue.enqueue("t", 1, task_id="order-42")
    assert (first.id, first.deduplicated) == ("order-42", False)
    again = await t.enqueue(2, task_id="order-42")
    assert (again.id, again.deduplicated) == ("order-42", True)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: tasker.run(queue.worker(poll=0.1), shutdown_trigger=stop.wait))
        with anyio.fail_after(10):
            # The worker records the outcome after the handler returned.
            info = await queue.get("order-42")
            while info is None or info.state is not TaskState.SUCCEEDED:
                await anyio.sleep(0.02)
                info = await queue.get("order-42")
        stop.set()
    after = await queue.enqueue("t", 3, task_id="order-42")
    assert (after.id, after.deduplicated) == ("order-42", True)
    info = await queue.get("order-42")
    assert info is not None
    assert (info.state, info.result, info.attempts) == (TaskState.SUCCEEDED, 1, 1)
    assert ran == [1]
    assert await queue.counts() == {"default": {"succeeded": 1}}
