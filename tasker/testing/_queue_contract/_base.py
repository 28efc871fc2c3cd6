"""The machine's plumbing: the backend under test on an event loop, its clock, the model."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis.stateful import RuleBasedStateMachine

from ...abc import QueueBackend, QueueCapability
from .._fake_clock import FakeClock
from ._model import Model

__all__ = ["MachineBase", "MachineConfig", "awaited"]

#: Where the machine's time starts (far from real time: see ``backend_clock``).
START = 1_000_000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineConfig:
    make_backend: Callable[[], Any]
    anyio_backend: str
    allow_fake_clock: bool
    #: Run in real time, every duration scaled by this factor (None: the machine's own
    #: time, moved at will).
    real_time: float | None = None


#: In real time, each passing of time sleeps this much longer than it says, so the
#: backend's timers (which round up to a millisecond) have fired when the machine looks.
_MARGIN = 0.005


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
        self.real_time = self.config.real_time
        self.scale = self.real_time if self.real_time is not None else 1.0
        self.model = Model(self.scale)
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
        self.now = START if self.real_time is None else time.time()
        # A backend whose deliveries arrive on their own (a message broker) can be asked to
        # wait until what it published and is due has arrived, before a claim is checked.
        wait_delivered = getattr(self.backend, "wait_delivered", None)
        self.wait_delivered: Callable[[], Any] | None = (
            wait_delivered if callable(wait_delivered) else None
        )
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

    def delivered(self) -> None:
        """Before a claim is checked: a backend with ``wait_delivered`` has what is due."""
        if self.wait_delivered is not None:
            arrived = self.portal.call(awaited, self.wait_delivered)
            assert arrived is not False, "what the backend published did not arrive"

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        func = getattr(self.backend, method)
        return self.portal.call(lambda: func(*args, **kwargs))

    def seconds(self, value: float) -> float:
        """A duration of the rules in this run's time (scaled in real time)."""
        return value * self.scale

    def advance(self, seconds: float) -> None:
        """Time passes: the machine's ``now``, and the backend's FakeClock with it (in real
        time, by sleeping: ``now`` then never runs ahead of the clock)."""
        clock = self.fake_clock
        if self.real_time is not None:
            time.sleep(seconds + (_MARGIN if seconds >= 0.01 else 0.0))
            self.now += seconds
            return
        if clock is None:
            self.now += seconds
            return
        self.portal.call(clock.advance, seconds)
        self.now = clock.now().timestamp()

    def tick(self) -> None:
        """Time moves on a little before an enqueue, as it does between two producers'
        calls: every task is enqueued at its own instant, so FIFO is defined everywhere."""
        self.advance(0.001)


async def awaited(func: Callable[[], Any]) -> Any:
    """``func()``, awaited when it returns an awaitable (a backend's optional extras may
    be sync or async)."""
    value = func()
    if inspect.isawaitable(value):
        value = await value
    return value


async def _make(factory: Callable[[], Any]) -> QueueBackend:
    backend = factory()
    if inspect.isawaitable(backend):  # an async factory (it may migrate a database first)
        backend = await backend
    result: QueueBackend = backend
    return result
