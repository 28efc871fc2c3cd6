"""The context handed to every job: a soft stop signal with a reason, in a tree.

Design notes:

- Stopping is two-phase. ``Context`` carries only the *soft* signal (``done``/``wait()``);
  the *hard* stop is anyio cancellation, applied by whoever stopped the context once the
  grace period has passed. A context therefore never cancels anything by itself.
- Contexts form a tree: a child is done when it is stopped or when any ancestor is. ``done``
  walks the (short) chain of parents instead of keeping a flag per child, so creating a child
  costs one small object and nothing else; ``concurrence`` of 10,000 jobs creates 10,000 of
  them.
- Only contexts somebody waits on are linked into their parent's listeners; the link is
  removed when the last waiter leaves, so long-running trees do not accumulate dead children.
- A listener (``_add_callback``) hears a context become done exactly once: at once, inside
  ``_add_callback``, if the context is already done, and otherwise on the first stop of the
  context or of an ancestor. A later stop higher up does not call it again: the propagation
  stops at the first node that was stopped on its own, whose listeners have heard it already.
  The alternative, "callers check ``done`` first", left every caller one forgotten check away
  from waiting forever on a context that can no longer fire (``with_shutdown`` did).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, final

import anyio

from ._clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from typing import Self

__all__ = ["DEFAULT_GRACE", "Context", "StopReason", "to_seconds"]

#: The default grace: 25 s, which fits Kubernetes' default ``terminationGracePeriodSeconds``
#: of 30 s with time to spare for the hard stop and the exit.
DEFAULT_GRACE = 25.0


def to_seconds(value: float | timedelta, name: str, *, allow_zero: bool = True) -> float:
    """Normalise a duration given as seconds or a ``timedelta``; reject negative, NaN, inf."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{name} must be a number of seconds or a timedelta, got {value!r}")
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return seconds


class StopReason(enum.Enum):
    """Why a context is done."""

    #: The program is shutting down: a signal arrived, or the shutdown trigger fired.
    SHUTDOWN = "shutdown"
    #: A sibling in the same :func:`tasker.concurrence` failed.
    SIBLING_FAILED = "sibling failed"
    #: A time limit was reached (:func:`tasker.with_timeout`, a shutdown deadline).
    TIMEOUT = "timeout"
    #: The enclosing job stopped this one (the default of :meth:`Context.stop`).
    PARENT_STOPPED = "parent stopped"
    #: The scheduler lost the lock this run held; another replica may take over.
    LOCK_LOST = "lock lost"
    #: A queue worker lost (or can no longer renew) the lease on the task this context
    #: runs: another worker may be running it now, and this attempt's outcome is discarded.
    LEASE_LOST = "lease lost"
    #: The queue task this context runs was cancelled (``Queue.cancel``): stop and raise
    #: (the task is then recorded cancelled, never retried); a handler that returns anyway
    #: is recorded as succeeded. It is cancelled after its grace period.
    CANCELLED = "cancelled"


@final
class Context:
    """What a job receives: tells it when to stop, why, and how long it has.

    A context is *done* once it or any of its ancestors has been stopped. ``done`` and
    ``reason`` are the polling interface; ``await ctx.wait()`` is the blocking one. After a
    context is done, the job has ``grace`` seconds to return before it is cancelled by anyio
    (the hard stop), so a job that never looks at its context is still stopped.

    Contexts are created by tasker (:func:`tasker.run`, :func:`tasker.main`, the combinators);
    a combinator of your own derives children with :meth:`child`. A context belongs to the
    event loop thread that created it.
    """

    __slots__ = ("_callbacks", "_clock", "_deadline", "_grace", "_parent", "_reason")

    _parent: Context | None
    _reason: StopReason | None
    _callbacks: set[Callable[[], object]] | None
    _grace: float
    _clock: Clock
    _deadline: float | None

    if not TYPE_CHECKING:  # keeps mypy's view of the class intact

        def __new__(cls, *args: Any, **kwargs: Any) -> NoReturn:
            raise TypeError(
                "Context has no public constructor: tasker.run() and tasker.main() create the"
                " root context, and Context.child() derives new ones"
            )

    @classmethod
    def _create(
        cls,
        *,
        parent: Context | None = None,
        grace: float = DEFAULT_GRACE,
        clock: Clock = SYSTEM_CLOCK,
        deadline: float | None = None,
    ) -> Self:
        self = object.__new__(cls)
        self._parent = parent
        self._reason = None
        self._callbacks = None
        self._grace = grace
        self._clock = clock
        self._deadline = deadline
        return self

    # -- reading -----------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once this context or an ancestor has been stopped."""
        node: Context | None = self
        while node is not None:
            if node._reason is not None:
                return True
            node = node._parent
        return False

    @property
    def reason(self) -> StopReason | None:
        """Why the context is done, or None while it is not.

        A context stopped through an ancestor reports the ancestor's reason, so a job deep in a
        tree sees ``SHUTDOWN`` when the program is shutting down.
        """
        node: Context | None = self
        while node is not None:
            if node._reason is not None:
                return node._reason
            node = node._parent
        return None

    @property
    def grace(self) -> float:
        """Seconds a job has, once this context is done, before it is cancelled."""
        return self._grace

    @property
    def clock(self) -> Clock:
        """The wall clock schedules use (the system clock unless a test injected one)."""
        return self._clock

    @property
    def deadline(self) -> float | None:
        """The :func:`anyio.current_time` by which the job is cut off, if one is set.

        Set on the context :func:`tasker.with_shutdown` hands to ``shutdown``.
        """
        return self._deadline

    async def wait(self) -> None:
        """Return once the context is done (at once if it already is).

        On cancellation: propagates the cancellation and leaves no listener behind.
        """
        if self.done:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        self._add_callback(event.set)
        try:
            await event.wait()
        finally:
            self._remove_callback(event.set)

    async def sleep(self, seconds: float | timedelta) -> bool:
        """Sleep for ``seconds`` of the context's clock unless the context is done first.

        Returns:
            True if the full time passed, False if the context was (or became) done.
        """
        delay = to_seconds(seconds, "seconds")
        return await self.sleep_until(self._clock.now() + timedelta(seconds=delay))

    async def sleep_until(self, moment: datetime) -> bool:
        """Sleep until ``moment`` on the context's clock unless the context is done first.

        Returns:
            True if ``moment`` was reached, False if the context was (or became) done.
        """
        if self.done:
            await anyio.lowlevel.checkpoint()
            return False
        with anyio.CancelScope() as scope:
            self._add_callback(scope.cancel)
            try:
                await self._clock.sleep_until(moment)
            finally:
                self._remove_callback(scope.cancel)
        return not scope.cancelled_caught and not self.done

    # -- deriving and stopping ---------------------------------------------------------

    def child(self, *, grace: float | timedelta | None = None) -> Context:
        """Return a new context that is done when this one is, and can be stopped alone.

        Args:
            grace: the child's grace period; by default the parent's.
        """
        return Context._create(
            parent=self,
            grace=self._grace if grace is None else to_seconds(grace, "grace"),
            clock=self._clock,
        )

    def stop(self, reason: StopReason = StopReason.PARENT_STOPPED) -> None:
        """Make this context and its descendants done, waking everything waiting on them.

        Stopping is idempotent: the first reason is kept. It never cancels by itself: the
        caller applies the hard stop after :attr:`grace` if the job has not returned.
        """
        if self.done:
            return
        self._reason = reason
        self._fire()

    def _fire(self) -> None:
        callbacks = self._callbacks
        if callbacks:
            for callback in list(callbacks):
                callback()

    def _on_parent_done(self) -> None:
        # An ancestor was stopped. A context stopped on its own before has told its
        # listeners then; telling them again would make a one-shot signal fire twice.
        if self._reason is None:
            self._fire()

    def _add_callback(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once, when the context becomes done (at once if it already is).

        Called at once, the callback is not registered, so a later ``_remove_callback`` of it is
        a no-op; either way a caller may always pair the two calls. Callers must tolerate the
        callback running before ``_add_callback`` returns.
        """
        if self.done:
            callback()
            return
        # Linking into the parent happens only for contexts that are waited on.
        if self._callbacks is None:
            self._callbacks = set()
            if self._parent is not None:
                self._parent._add_callback(self._on_parent_done)
        self._callbacks.add(callback)

    def _remove_callback(self, callback: Callable[[], object]) -> None:
        callbacks = self._callbacks
        if callbacks is None:
            return
        callbacks.discard(callback)
        if not callbacks:
            self._callbacks = None
            if self._parent is not None:
                self._parent._remove_callback(self._on_parent_done)

    def __repr__(self) -> str:
        reason = self.reason
        state = "running" if reason is None else f"done ({reason.value})"
        return f"<tasker.Context {state} grace={self._grace:g}s>"
