"""examples/scheduler.py as two real processes sharing one state directory."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from .helpers import python_process


@pytest.mark.slow
def test_two_processes_share_the_slots(tmp_path: Path) -> None:
    """Two copies of the example run each every-second slot once between them and exit 0."""
    args = ["examples/scheduler.py", "--state-dir", str(tmp_path), "--for", "4"]
    first, second = python_process(args), python_process(args)
    (out1, err1), (out2, err2) = first.communicate(timeout=30), second.communicate(timeout=30)
    assert (first.returncode, second.returncode) == (0, 0), err1 + err2
    runs = re.findall(r"ran every-second for slot (\S+) in pid (\d+)", out1 + out2)
    slots = Counter(slot for slot, _ in runs)
    assert len(slots) >= 3
    assert max(slots.values()) == 1
    assert "stopped: ran" in out1
    assert "stopped: ran" in out2
    # The nightly schedule's first run (first_run="immediately"): once, in one process.
    assert len(re.findall(r"ran nightly for slot", out1 + out2)) == 1
    # compact runs under with_no_overlap: at most one process per two-second turn.
    turns = Counter(re.findall(r"compact at (\S+) in pid", out1 + out2))
    assert len(turns) >= 2
    assert max(turns.values()) == 1, turns
