"""The application the CLI tests point ``tasker`` at (``--app tests.cli_app``).

Its state lives in ``$TASKER_STATE_DIR``; ``slow`` writes a marker file once it runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio

import tasker
from tasker.queue import Queue, SQLiteQueueBackend
from tasker.schedule import Daily, Interval

STATE = Path(os.environ.get("TASKER_STATE_DIR", ".tasker"))
scheduler = tasker.Scheduler(state_dir=STATE)
queue = Queue(SQLiteQueueBackend(STATE / "queue.sqlite3"))


@queue.task(name="slow")
async def slow(ctx: tasker.Context, seconds: float) -> str:
    """Sleep ``seconds`` (after saying so in a file), then return "done"."""
    (STATE / "slow-started").write_text("yes")
    await anyio.sleep(seconds)
    return "done"


async def tick(ctx: tasker.Context) -> None:
    """A scheduled job that does nothing."""


jobs = [
    scheduler.with_schedule("nightly", Daily(3), tick),
    scheduler.with_schedule("tick", Interval(3600), tick),
]
