"""The quick-start demonstration as a real process."""

from __future__ import annotations

import re

import pytest

from .helpers import python_process


@pytest.mark.slow
def test_demo_runs_and_stops_cleanly() -> None:
    """The demo serves requests, runs its schedule, survives its own SIGTERM and exits 0."""
    proc = python_process(["examples/demo.py", "--seconds", "2.5"])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "[client] in-flight request finished: 200" in out
    assert out.index("sending SIGTERM") < out.index("in-flight request finished")
    summary = re.search(r"stopped cleanly: (\d+) requests served, (\d+) scheduled runs", out)
    assert summary is not None
    assert int(summary.group(1)) >= 2
    assert int(summary.group(2)) >= 1
    assert "Traceback" not in err
