"""The rule of ``wait_for_work``: it returns by the next due time of the queues it is given.

The model knows when work next falls due in a set of queues: the earliest ``run_at`` of a
queued task or lease expiry of a running one there (a held task, or anything in another
queue, does not count). Three ways to check a backend against it, the strongest it allows:

- **On a FakeClock** (the backend exposes the :class:`tasker.testing.FakeClock` it was built
  on as ``clock``, as ``MemoryQueueBackend(clock=...)`` does): the machine's time *is* that
  clock. A wait returns at once when something is due; otherwise it is still waiting after
  a moment, and still waiting just before the due time, and returns when the clock reaches
  it (time then stays there). With nothing due it keeps waiting (and is cancelled).
- **A backend that reports its next due time** (``next_run_at(queues)``, sync or async, as
  tasker's backends have): the report must equal the model's, and a wait while something
  is due by the backend's own clock returns at once, not at its timeout.
- **Any backend**: a wait returns by its timeout.
"""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
from hypothesis import strategies as st
from hypothesis.stateful import rule

from ...queue._records import TaskState
from ._base import MachineBase
from ._base import awaited as _awaited
from ._core import QUEUE_SETS

__all__ = ["WaitRules"]

#: A wait expected to end early is given this timeout, and this long in real time to end.
_LONG = 60.0
_PROMPT = 5.0
#: Less than any two distinct times of the machine apart (they move by 1 ms at least).
_JUST = 0.0005


class WaitRules(MachineBase):
    """``wait_for_work`` against the model's next due time."""

    @rule(queues=st.sampled_from(QUEUE_SETS))
    def wait_for_work(self, queues: tuple[str, ...]) -> None:
        if any(t.limbo for t in self.model.tasks.values() if t.queue in queues):
            return  # a task that may have died unseen: when work falls due is not known
        due = self.model.next_due(queues, self.now)
        # A limited task's due time depends on the time it is asked at: a backend that
        # reads its own clock there (not the machine's) is only checked without one.
        limited = any(
            t.rate or t.key
            for t in self.model.tasks.values()
            if t.queue in queues and t.state is TaskState.QUEUED
        )
        if self.next_run_at is not None and (self.fake_clock is not None or not limited):
            next_run_at = self.next_run_at
            reported = self.portal.call(_awaited, lambda: next_run_at(list(queues)))
            assert reported == due, f"next due time in {queues}: {reported}, expected {due}"
        if limited and self.fake_clock is None:
            assert self._returns(queues, 0.001), "a wait ends by its timeout"
            return
        if self.fake_clock is not None:
            self._wait_on_the_fake_clock(queues, due)
        elif self.next_run_at is not None and due is not None and due <= self.call("time"):
            assert self._returns(queues, _LONG), f"work is due in {queues}: the wait must end"
        else:
            assert self._returns(queues, 0.001), "a wait ends by its timeout"

    def _returns(self, queues: tuple[str, ...], timeout: float) -> bool:
        """Whether ``wait_for_work(queues, timeout)`` returns within ``_PROMPT`` seconds."""

        async def wait() -> bool:
            with anyio.move_on_after(_PROMPT) as scope:
                await self.backend.wait_for_work(list(queues), timeout)
            return not scope.cancelled_caught

        returned: bool = self.portal.call(wait)
        return returned

    def _wait_on_the_fake_clock(self, queues: tuple[str, ...], due: float | None) -> None:
        clock = self.fake_clock
        assert clock is not None
        now = self.now
        seen: dict[str, bool] = {}

        async def scenario() -> None:
            returned = anyio.Event()

            async def wait() -> None:
                await self.backend.wait_for_work(list(queues), _LONG)
                returned.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                if due is None or due > now:
                    await _let_run()
                    seen["early"] = returned.is_set()
                    if due is None:
                        tg.cancel_scope.cancel()
                        return
                    if due - _JUST > now:
                        clock.set(_moment(due - _JUST))
                        await _let_run()
                        seen["just before"] = returned.is_set()
                    clock.set(_moment(due + _JUST))
                with anyio.move_on_after(_PROMPT):
                    await returned.wait()
                seen["by the due time"] = returned.is_set()
                tg.cancel_scope.cancel()

        self.portal.call(scenario)
        self.now = clock.now().timestamp()
        assert not seen.get("early"), f"woke in {queues} with nothing due (next: {due})"
        assert not seen.get("just before"), f"woke in {queues} before the due time {due}"
        if due is not None:
            assert seen["by the due time"], f"did not wake in {queues} at the due time {due}"


async def _let_run() -> None:
    # Enough turns of the loop for a waiter in the loop to get where it waits.
    for _ in range(20):
        await anyio.lowlevel.checkpoint()


def _moment(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
