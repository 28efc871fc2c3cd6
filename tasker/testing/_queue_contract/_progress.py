"""The rules of ``PROGRESS``: reports by the lease holder, by other workers and for tasks
nobody holds, checked against the model.

What the model holds a backend to (``_model``): ``report_progress`` stores a value and a
text on a task only for the worker that holds it (running under its lease, an expired one
not yet taken included, as for ``heartbeat``), and answers whether it did; every claim
clears the progress (each attempt starts without one), and no outcome does (a task waiting
for its retry, or finished, keeps its last attempt's). Each lookup compares the progress
with the model's (``ModelTask.mismatch``).
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from ...abc import QueueCapability
from ...queue._records import TaskState
from ._core import WORKERS, CoreRules

__all__ = ["ProgressRules"]

_PROGRESS = QueueCapability.PROGRESS

#: Texts a backend must store as given: any printable text up to 200 characters (Postgres
#: refuses NUL in text, and the queue never passes one: ``report_progress`` is for humans).
_TEXTS = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=200
) | st.sampled_from(["", "resized 4 of 10"])


class ProgressRules(CoreRules):
    """``report_progress`` (on top of the core rules, whose claims and outcomes clear and
    keep it)."""

    @precondition(lambda self: self.has(_PROGRESS))
    @rule(
        pick=st.integers(0, 1000),
        holder=st.sampled_from([True, True, True, False]),
        other=st.sampled_from(WORKERS),
        unknown=st.sampled_from([False] * 7 + [True]),
        value=st.sampled_from([0.0, 1.0, 0.5]) | st.floats(0.0, 1.0),
        text=_TEXTS,
    )
    def report_progress(
        self, pick: int, holder: bool, other: str, unknown: bool, value: float, text: str
    ) -> None:
        # A running task's holder most of the time; else another worker, or any task
        # (held, queued, finished), or an id nobody enqueued.
        model = self.model
        running = model.running()
        pool = running if holder and running else [t for t in model.tasks.values() if not t.limbo]
        t = None if unknown or not pool else pool[pick % len(pool)]
        task_id = "no-such-task" if t is None else t.id
        worker = t.owner if holder and t is not None and t.owner is not None else other
        expected = t is not None and t.state is TaskState.RUNNING and t.owner == worker
        stored = self.call("report_progress", worker, task_id, value, text, now=self.now)
        assert stored is expected, (
            f"report_progress({worker}, {task_id}) answered {stored!r}, expected {expected}"
            f" (task {None if t is None else t.state} held by"
            f" {None if t is None else t.owner})"
        )
        if t is not None and expected:
            t.progress = (value, text)
        if t is not None and self.has(QueueCapability.INSPECTION):
            record = self.call("get", task_id)
            problem = t.mismatch(record)
            assert problem is None, problem
            if expected:
                assert record.progress.updated_at == self.now, (
                    f"task {task_id}: progress stored at {record.progress.updated_at},"
                    f" reported at {self.now}"
                )
