"""Small jobs and recorders shared by the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

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
