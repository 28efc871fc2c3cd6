"""The machine's plumbing: the backend under test on an event loop, its clock, the model."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis.stateful import RuleBasedStateMachine

from ...abc import QueueBackend, QueueCapability
from .._fake_clock import FakeClock
from ._model import Model

__all__ = ["MachineBase", "MachineConfig"]

#: Where the machine's time starts (far from real time: see ``backend_clock``).
START = 1_000_000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineConfig:
    make_backend: Callable[[], Any]
    anyio_backend: str
    allow_fake_clock: bool


class MachineBase(RuleBasedStateMachine):
    """One example: a fresh backend, the model beside it, and the time both are at."""

    config: ClassVar[MachineConfig]

    def __init__(self) -> None:
        super().__init__()
        self._portal_cm = start_blocking_portal(self.config.anyio_backend)
        self.portal: BlockingPortal = self._portal_cm.__enter__()
        self.backend: Any = self.portal.call(_make, self.config.make_backend)
        #: The capabilities the backend declares: the rules and invariants that need
        #: one run only when it is declared, and then they check it.
        self.caps: frozenset[QueueCapability] = self.backend.capabilities
        self.model = Model()
        self.last_clock = -math.inf
        # Outside the protocol, and only checked where a backend has them: the clock it was
        # built on when that is a FakeClock (the machine then moves it, and wait_for_work
        # is checked on it), and its own report of when work next falls due.
        clock = getattr(self.backend, "clock", None)
        self.fake_clock = clock if isinstance(clock, FakeClock) else None
        next_run_at = getattr(self.backend, "next_run_at", None)
        self.next_run_at: Callable[[list[str]], Any] | None = (
            next_run_at if callable(next_run_at) else None
        )
        self.fake_clock_allowed = self.config.allow_fake_clock or self.fake_clock is not None
        self.now = START
        if self.fake_clock is not None:
            self.portal.call(self.fake_clock.set, datetime.fromtimestamp(START, UTC))
            self.now = self.fake_clock.now().timestamp()

    def teardown(self) -> None:
        aclose = getattr(self.backend, "aclose", None)
        if callable(aclose):
            self.portal.call(aclose)
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()
        self._portal_cm.__exit__(None, None, None)

    def has(self, capability: QueueCapability) -> bool:
        return capability in self.caps

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        func = getattr(self.backend, method)
        return self.portal.call(lambda: func(*args, **kwargs))

    def advance(self, seconds: float) -> None:
        """Time passes: the machine's ``now``, and the backend's FakeClock with it."""
        clock = self.fake_clock
        if clock is None:
            self.now += seconds
            return
        self.portal.call(clock.advance, seconds)
        self.now = clock.now().timestamp()

    def tick(self) -> None:
        """Time moves on a little before an enqueue, as it does between two producers'
        calls: every task is enqueued at its own instant, so FIFO is defined everywhere."""
        self.advance(0.001)


async def _make(factory: Callable[[], Any]) -> QueueBackend:
    backend = factory()
    if inspect.isawaitable(backend):  # an async factory (it may migrate a database first)
        backend = await backend
    result: QueueBackend = backend
    return result
