"""examples/task_queue.py as a real process."""

from __future__ import annotations

import pytest

from .helpers import python_process


@pytest.mark.slow
def test_queue_example_runs_every_feature() -> None:
    """Retry, dedupe, chain and group all show up, and the program exits 0 when done."""
    proc = python_process(["examples/task_queue.py"])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "unique key: second enqueue deduplicated=True" in out
    assert "send-email: SMTP timeout, will retry" in out
    assert out.index("SMTP timeout") < out.index("sent to flaky@example.com")
    assert "report: got [5, 10, 15]" in out  # the group's callback
    assert "report: got 1024" in out  # the end of the chain 4096 -> 2048 -> 1024
    assert "done: {'default': {'succeeded': 11}}" in out
