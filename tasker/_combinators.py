"""``sequence`` and ``concurrence``: the two ways to compose jobs.

How failures surface from ``concurrence`` (a decision, see the docstring): a single failure is
raised as it is, so ``except ValueError`` works for the common case; only when several jobs
failed is an ``ExceptionGroup`` raised, so no failure is ever dropped. ``except*`` handles both
shapes. Cancellation of the siblings that *we* caused is never reported as a failure.
"""

from __future__ import annotations

import anyio

from ._budget import inherit_budget
from ._context import Context, StopReason
from ._job import Job, check_jobs, job_name

__all__ = ["concurrence", "sequence"]


def _named(job: Job, name: str, parts: tuple[Job, ...]) -> Job:
    label = f"{name}({', '.join(job_name(part) for part in parts)})"
    job.__name__ = job.__qualname__ = label if len(label) <= 200 else f"{name}(...)"
    inherit_budget(job, *parts)
    return job


async def _noop(ctx: Context) -> None:
    """A job that does nothing."""


def sequence(*jobs: Job) -> Job:
    """Return a job that runs ``jobs`` one after another, each receiving the same context.

    Each step starts only after the previous one returned. With no jobs it does nothing.

    - **On error**: the first failure stops the sequence and propagates as it is (not
      wrapped); later steps never start.
    - **On cancellation**: the running step is cancelled; later steps never start.
    - **On shutdown**: the running step sees ``ctx.done``; a step that has not started when the
      context is done never starts, and the sequence returns normally.

    Raises:
        TypeError: at construction, if an argument is not an async callable.
    """
    steps = check_jobs(jobs, "sequence()")

    async def sequence_job(ctx: Context) -> None:
        # A listener instead of ``ctx.done`` before each step: ``done`` walks the chain of
        # parents, which at 100,000 no-op steps cost a third of the run; the listener is
        # called synchronously by the stop, so no step starts after the context is done.
        stopped = False

        def on_done() -> None:
            nonlocal stopped
            stopped = True

        ctx._add_callback(on_done)
        try:
            for step in steps:
                if stopped:
                    return
                await step(ctx)
        finally:
            ctx._remove_callback(on_done)

    return _named(sequence_job, "sequence", steps)


def concurrence(*jobs: Job) -> Job:
    """Return a job that runs ``jobs`` at the same time and succeeds when all of them do.

    Each job gets its own child context. A job that returns early does not disturb the
    others; the combined job returns when every job has returned. If the context is already
    done when it starts, no job starts.

    - **On error**: the first failure makes every sibling's context done with
      :attr:`StopReason.SIBLING_FAILED`; siblings still running after the grace period are
      cancelled. When everything has stopped, a single failure is raised as it is; several
      failures (the first, plus siblings that failed while stopping) are raised together as
      an ``ExceptionGroup`` in the order they happened. Use ``except*`` to match either shape.
    - **On cancellation**: every job is cancelled and the cancellation propagates.
    - **On shutdown**: every job sees ``ctx.done``; the combined job returns once all have.

    Raises:
        TypeError: at construction, if an argument is not an async callable.
    """
    members = check_jobs(jobs, "concurrence()")
    if not members:
        return _named(_wrap_noop(), "concurrence", members)

    async def concurrence_job(ctx: Context) -> None:
        if ctx.done:  # as in sequence: nothing starts once the context is done
            return
        failures: list[Exception] = []
        children = [ctx.child() for _ in members]
        running = len(members)

        async with anyio.create_task_group() as tg:
            grace_scope = anyio.CancelScope()

            async def cancel_after_grace() -> None:
                with grace_scope:
                    await anyio.sleep(ctx.grace)
                    tg.cancel_scope.cancel()

            async def guard(job: Job, child: Context) -> None:
                nonlocal running
                try:
                    await job(child)
                except Exception as exc:
                    failures.append(exc)
                    if len(failures) == 1:
                        for sibling in children:
                            sibling.stop(StopReason.SIBLING_FAILED)
                        tg.start_soon(cancel_after_grace)
                finally:
                    running -= 1
                    if running == 0:
                        grace_scope.cancel()

            for job, child in zip(members, children, strict=True):
                tg.start_soon(guard, job, child)

        if len(failures) == 1:
            raise failures[0]
        if failures:
            raise ExceptionGroup(f"{len(failures)} jobs failed in concurrence", failures)

    return _named(concurrence_job, "concurrence", members)


def _wrap_noop() -> Job:
    async def noop(ctx: Context) -> None:
        await _noop(ctx)

    return noop
