"""The rules of ``QueueCapability.WORKERS``: the worker registry keeps the live entries."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from ...abc import QueueCapability
from ...queue._records import WorkerInfo
from ._base import MachineBase
from ._model import QUEUES

__all__ = ["RegistryRules"]

_WORKERS = QueueCapability.WORKERS
_IDS = ("host:1:aaaaaa", "host:2:bbbbbb", "other:7:cccccc")


class RegistryRules(MachineBase):
    """Heartbeats replace an entry, a goodbye removes it, expired entries are not listed."""

    @property
    def registry(self) -> dict[str, WorkerInfo]:
        registry: dict[str, WorkerInfo] | None = getattr(self, "_registry", None)
        if registry is None:
            registry = {}
            self._registry = registry
        return registry

    @precondition(lambda self: self.has(_WORKERS))
    @rule(
        worker=st.sampled_from(_IDS),
        queues=st.lists(st.sampled_from(QUEUES), min_size=1, max_size=2, unique=True),
        running=st.integers(0, 4),
        ttl=st.floats(0.5, 60),
    )
    def worker_seen(self, worker: str, queues: list[str], running: int, ttl: float) -> None:
        previous = self.registry.get(worker)
        info = WorkerInfo(
            id=worker,
            queues=tuple(queues),
            concurrency=4,
            running=running,
            started_at=previous.started_at if previous else self.now,
            last_seen=self.now,
            expires_at=self.now + self.seconds(ttl),
        )
        self.call("worker_seen", info)
        self.registry[worker] = info

    @precondition(lambda self: self.has(_WORKERS))
    @rule(worker=st.sampled_from(_IDS))
    def worker_gone(self, worker: str) -> None:
        self.call("worker_gone", worker)  # a worker never seen: a no-op
        self.registry.pop(worker, None)

    @invariant()
    def workers_listed(self) -> None:
        if not self.has(_WORKERS):
            return
        live = sorted(
            (w for w in self.registry.values() if w.expires_at > self.now), key=lambda w: w.id
        )
        assert self.call("workers", now=self.now) == live
