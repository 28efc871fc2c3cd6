"""A migration pipeline: groups of steps that run concurrently, one group after another.

Shows: ``tasker.sequence`` of ``tasker.concurrence`` groups. Group 2 starts only once every
step of group 1 succeeded; a failing step stops its siblings (they see ``ctx.done``) and the
pipeline, and ``tasker.main`` exits 1 after logging the failure with its traceback.

Needs: nothing beyond tasker.

Run: ``python examples/migrations.py`` (all steps succeed, exit 0) or
``python examples/migrations.py --fail`` (a step of group 1 fails, exit 1).

Prints: one line as each step starts and ends, then ``pipeline done`` on success.
"""

from __future__ import annotations

import logging
import sys

import anyio

import tasker


def step(name: str, seconds: float, *, fail: bool = False) -> tasker.Job:
    """A migration step that takes ``seconds`` and may fail."""

    async def migrate(ctx: tasker.Context) -> None:
        print(f"start {name}", flush=True)
        if not await ctx.sleep(seconds):
            print(f"stopped {name} ({ctx.reason.value if ctx.reason else '?'})", flush=True)
            return
        if fail:
            raise RuntimeError(f"{name} failed: column already exists")
        print(f"end {name}", flush=True)

    migrate.__qualname__ = name
    return migrate


def main() -> None:
    """Build and run the pipeline."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    fail = "--fail" in sys.argv[1:]
    pipeline = tasker.sequence(
        tasker.concurrence(
            step("create users table", 0.2),
            step("create orders table", 0.3, fail=fail),
            step("backfill audit log", 2.0),
        ),
        tasker.concurrence(
            step("add orders.user_id foreign key", 0.1),
            step("create reporting view", 0.1),
        ),
    )

    async def announce(ctx: tasker.Context) -> None:
        await anyio.lowlevel.checkpoint()
        print("pipeline done", flush=True)

    tasker.main(tasker.sequence(pipeline, announce))


if __name__ == "__main__":
    main()
