"""Stop budgets: how long a part of the program needs once a shutdown starts.

A server built with :func:`tasker.with_shutdown` (or :func:`tasker.serve_asgi`) drains its
in-flight work for a ``timeout``; the enclosing context gives the whole program a ``grace``
before the hard stop cancels what is left. The rule, one for every job:

- **No timeout given** (the default): the server drains for its context's grace less a
  margin (a fifth of it, at most a second), so that what is still in flight at the end is
  closed by the server itself, politely, before the hard stop cancels it.
- **A timeout that exceeds the grace** is rejected by :func:`tasker.main` at construction,
  with a message naming both values. Jobs composed with tasker's combinators carry their
  budget up to ``main`` (a combinator of the user's own hides it); a budget ``main`` could
  not see is cut to fit at run time, with a warning that names both values.
"""

from __future__ import annotations

import logging
from typing import Any

from ._job import Job, job_name

__all__ = [
    "check_budget",
    "declare_budget",
    "drain_time",
    "grace_margin",
    "inherit_budget",
    "stop_budget",
]

logger = logging.getLogger("tasker")

_ATTRIBUTE = "_tasker_stop_budget"


def grace_margin(grace: float) -> float:
    """The part of a grace kept back for the polite forced close: a fifth, at most 1 s."""
    return min(1.0, grace * 0.2)


def declare_budget(job: Job, seconds: float, name: str) -> None:
    """Record that ``job`` (named ``name`` in messages) needs ``seconds`` once stopped."""
    setattr(job, _ATTRIBUTE, (seconds, name))


def stop_budget(job: object) -> tuple[float, str] | None:
    """The largest stop budget ``job`` declares or carries, with the name of its owner."""
    budget: Any = getattr(job, _ATTRIBUTE, None)
    return budget if isinstance(budget, tuple) else None


def inherit_budget(outer: Job, *inner: Job) -> None:
    """Carry the largest budget of ``inner`` up to ``outer`` (a combinator of them)."""
    budgets = [budget for budget in map(stop_budget, inner) if budget is not None]
    if budgets:
        setattr(outer, _ATTRIBUTE, max(budgets, key=lambda budget: budget[0]))


def drain_time(timeout: float | None, grace: float, owner: object) -> float:
    """The seconds ``owner`` may drain for, given its ``timeout`` and its context's grace.

    See the module docstring: ``None`` is the grace less its margin; a timeout within the
    grace is kept (cut only by the margin); one beyond it is cut to fit, with a warning.
    """
    fit = max(0.0, grace - grace_margin(grace))
    if timeout is None:
        return fit
    if timeout > grace:
        logger.warning(
            "%s: its shutdown timeout (%gs) exceeds the grace of its context (%gs); it drains"
            " for %gs. Give main() a grace of at least %gs, or a smaller timeout",
            job_name(owner) if callable(owner) else owner,
            timeout,
            grace,
            fit,
            timeout,
        )
    return min(timeout, fit)


def check_budget(job: Job, grace: float, where: str) -> None:
    """Reject, at construction, a ``job`` whose stop budget exceeds the program's grace.

    Raises:
        ValueError: naming the part that needs more, its timeout and the grace.
    """
    budget = stop_budget(job)
    if budget is not None and budget[0] > grace:
        seconds, name = budget
        raise ValueError(
            f"{where}: {name} drains for up to {seconds:g}s once stopped (its timeout), but the"
            f" grace is {grace:g}s, after which it would be cancelled; give grace={seconds:g}"
            " or more, or a smaller timeout"
        )
