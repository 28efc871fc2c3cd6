"""The queue backend contract: a hypothesis state machine against a small reference model.

Usage in a test module::

    from tasker.testing import queue_backend_machine

    TestMyBackend = queue_backend_machine(lambda: MyBackend(...)).TestCase

Each example gets a fresh backend from the factory and drives it through enqueue, claim,
heartbeat, finish (success, retry, dead, release; several in one report; a report sent
twice), dispatch, requeue, purge, waiting for work and the passing of time (leases expire),
checking every answer against the model (``_model``). Each capability is checked when the
backend declares it (``QueueBackend.capabilities``), and a backend that declares fewer gets
fewer rules: lookups after every step (``INSPECTION``), requeue, held tasks and purge
(``ADMINISTRATION``), unique keys, chains and groups (``WORKFLOWS``), ``finish_and_claim``,
the worker registry (``WORKERS``: ``_registry``), claims by id and the overdue list
(``CLAIM_BY_ID``: ``_claim_by_id``), cancels (``CANCEL``, with ``INSPECTION``:
``_cancel``), rate limits and concurrency keys (``RATE_LIMITS``, ``CONCURRENCY_KEYS``:
``_limits``), progress reports (``PROGRESS``: ``_progress``) and bounded enqueues
(``BOUNDED_QUEUES``: ``_bounded``). The backend's coroutines run on an event loop in a
helper thread (anyio's blocking portal), on ``anyio_backend``.

The rules, one module per part of the contract: the core protocol (``_core``: claims in
priority, then FIFO, order), the administration and inspection capabilities (``_admin``:
dispatch in priority, then FIFO, order), workflows (``_workflows``: chains and groups) and
``wait_for_work`` (``_waiting``: it returns by the next due time of its queues, which a
backend that offers ``next_run_at(queues)`` must also report). Every example starts with a
few held tasks, a chain and a group (where declared), and a ``work`` rule runs a worker's
whole round (claim, run, report) in one step, so that 30 examples of at most 25 steps carry
chains and groups through to their ends.

Time: the machine passes ``now`` to every call, as the queue does with its reading of the
backend's clock, and moves it forward itself. A backend must compare leases and due times
with the ``now`` it is given, never with a clock of the calling process; its own clock,
``time()``, is checked to be a plain, never-decreasing timestamp near the real time. A
backend built on a :class:`tasker.testing.FakeClock` that it exposes as ``clock`` has that
clock moved with the machine's time instead: ``time()`` must read it, and ``wait_for_work``
is checked on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine

from ._admin import AdminRules
from ._base import MachineConfig
from ._bounded import BoundedRules
from ._cancel import CancelRules
from ._claim_by_id import ClaimByIdRules
from ._core import CoreRules
from ._limits import LimitRules
from ._progress import ProgressRules
from ._registry import RegistryRules
from ._waiting import WaitRules
from ._workflows import WorkflowRules

__all__ = ["queue_backend_machine"]


def queue_backend_machine(
    make_backend: Callable[[], Any],
    *,
    anyio_backend: str = "asyncio",
    allow_fake_clock: bool = False,
    real_time: float | None = None,
    max_examples: int = 30,
) -> type[RuleBasedStateMachine]:
    """Build the state machine for backends made by ``make_backend`` (sync or async).

    ``allow_fake_clock``: the backend's ``time()`` may be far from real time (a backend
    built with a fake clock); it must still never go back. A backend that exposes the
    :class:`tasker.testing.FakeClock` it was built on as ``clock`` needs no flag: the
    machine moves that clock itself.

    ``real_time``: the backend keeps time with timers of its own that the machine cannot
    move (a message broker's TTL delays): the machine then runs in real time, every
    duration of its rules scaled by this factor (``0.02``: a 10 s lease lasts 0.2 s, a 5 s
    retry delay 0.1 s), and time passes by sleeping. Before each claim is checked, a
    backend with a ``wait_delivered()`` method (sync or async) is asked to wait until what
    it published and is due has arrived; it returns False if that did not happen.

    ``max_examples``: how many examples hypothesis runs (fewer for a slow real-time run).

    Returns:
        A ``RuleBasedStateMachine`` subclass; its ``TestCase`` attribute is a unittest case
        that pytest collects.
    """

    class QueueBackendMachine(
        BoundedRules,
        ProgressRules,
        LimitRules,
        CancelRules,
        ClaimByIdRules,
        RegistryRules,
        WaitRules,
        WorkflowRules,
        AdminRules,
        CoreRules,
    ):
        config = MachineConfig(
            make_backend=make_backend,
            anyio_backend=anyio_backend,
            allow_fake_clock=allow_fake_clock,
            real_time=real_time,
        )

    QueueBackendMachine.TestCase.settings = settings(
        max_examples=max_examples, stateful_step_count=25, deadline=None
    )
    return QueueBackendMachine
