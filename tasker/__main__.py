"""``python -m tasker``: the ``tasker`` command."""

from __future__ import annotations

from ._cli import cli

cli(prog_name="tasker")
