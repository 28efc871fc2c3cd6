"""The one JSON shape every benchmark writes with ``--json PATH``, for ``report.py``.

A benchmark collects the figures it already computes into a :class:`Report` and writes it
beside its printed output, which stays as it was::

    {"benchmark": "bench_queue",
     "ratios": [{"measurement": "...", "value": 2.4, "target": "<= 3", "met": true,
                 "runs": [2.4, 2.6]}],
     "throughput": [{"backend": "sqlite", "tool": "tasker", "tasks_per_s": 11500.0}],
     "latency": [{"backend": "sqlite", "tool": "tasker", "p50_ms": 0.44, "p99_ms": 1.45}],
     "notes": ["..."]}

``ratios`` holds every ratio a benchmark reports against its in-run baseline or peer, with
the target it states (``"<= 3"``, ``">= 0.8"``, ``"< 30"``; ``null`` where it states none;
free text such as ``"≈ 1"`` where the target is no inequality, ``met`` then ``null``).
Targets on absolute figures (a p50 in ms, a floor in tasks/s) are no ratios: they go to
``notes`` with their verdict. ``backend`` is one of :data:`BACKENDS`; ``tool`` is
``"tasker"`` (or a named variant of it), a peer's name, or ``"raw ..."`` for a baseline that
is no task queue. A figure that is not finite (no samples) is left out with a note saying
so: JSON has no NaN.

The three broker benchmarks (Redis, NATS, RabbitMQ) had a ``--json`` flag that prints their
own, richer document instead of the table; :func:`add_json_option` keeps it: ``--json``
alone still does that, ``--json PATH`` writes this report besides the usual table.
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The ``backend`` values a report may name.
BACKENDS = ("memory", "sqlite", "postgres", "redis", "nats", "rabbitmq")

_TARGET = re.compile(r"\s*(<=|>=|<|>)\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*")
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}


def met(value: float, target: str | None) -> bool | None:
    """Whether ``value`` meets ``target`` (``"<= 3"``, ``">= 0.8"``); None when there is
    no target or it is no inequality."""
    if target is None:
        return None
    match = _TARGET.fullmatch(target)
    if match is None:
        return None
    return _COMPARE[match[1]](value, float(match[2]))


def verdict(value: float, target: str) -> str:
    """``"met"`` or ``"missed"``, for a note on an absolute figure."""
    return "met" if met(value, target) else "missed"


class _JsonAction(argparse.Action):
    """``--json PATH`` sets ``json_path``; ``--json`` alone (the broker benchmarks' own
    document) sets ``json``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if values is None:
            namespace.json = True
        else:
            namespace.json_path = Path(str(values))


def add_json_option(parser: argparse.ArgumentParser, *, document: bool = False) -> None:
    """Add ``--json PATH`` (``args.json_path``, None when not given). With ``document``,
    ``--json`` without a path keeps its old meaning (``args.json``: print the benchmark's
    own JSON document instead of the table)."""
    parser.set_defaults(json=False, json_path=None)
    if document:
        parser.add_argument(
            "--json",
            nargs="?",
            action=_JsonAction,
            metavar="PATH",
            help="PATH: also write the report's JSON there (benchmarks/_report.py); without"
            " PATH: print this benchmark's own JSON document instead of the table (progress"
            " goes to stderr)",
        )
    else:
        parser.add_argument(
            "--json",
            action=_JsonAction,
            dest="json_path",
            metavar="PATH",
            help="also write the figures as JSON to PATH (benchmarks/report.py reads them)",
        )


@dataclass
class Report:
    """One benchmark's figures in the shape ``report.py`` reads (see the module)."""

    benchmark: str
    ratios: list[dict[str, Any]] = field(default_factory=list)
    throughput: list[dict[str, Any]] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, script: str) -> Report:
        """An empty report named after ``script`` (a benchmark's ``__file__``)."""
        return cls(Path(script).stem)

    def ratio(
        self,
        measurement: str,
        value: float,
        target: str | None = None,
        runs: Iterable[float] = (),
    ) -> None:
        """Record a ratio, and whether it meets ``target``; ``runs``: one per round."""
        if not math.isfinite(value):
            self.notes.append(f"{measurement}: no figure")
            return
        entry: dict[str, Any] = {
            "measurement": measurement,
            "value": value,
            "target": target,
            "met": met(value, target),
        }
        rounds = [run for run in runs if math.isfinite(run)]
        if rounds:
            entry["runs"] = rounds
        self.ratios.append(entry)

    def rate(self, backend: str, tool: str, tasks_per_s: float) -> None:
        """Record a throughput, in tasks per second."""
        if backend not in BACKENDS:
            raise ValueError(f"backend: one of {', '.join(BACKENDS)}, not {backend!r}")
        if not math.isfinite(tasks_per_s):
            self.notes.append(f"{tool} on {backend}: no throughput figure")
            return
        self.throughput.append({"backend": backend, "tool": tool, "tasks_per_s": tasks_per_s})

    def latency_ms(self, backend: str, tool: str, p50: float, p99: float) -> None:
        """Record a latency's p50 and p99, in milliseconds."""
        if backend not in BACKENDS:
            raise ValueError(f"backend: one of {', '.join(BACKENDS)}, not {backend!r}")
        if not (math.isfinite(p50) and math.isfinite(p99)):
            self.notes.append(f"{tool} on {backend}: no latency samples")
            return
        self.latency.append({"backend": backend, "tool": tool, "p50_ms": p50, "p99_ms": p99})

    def tools(
        self,
        results: Iterable[Any],
        *,
        backend: str,
        largest: int,
        concurrency: int,
        tool_of: Callable[[str], str],
    ) -> dict[str, Any]:
        """Each broker benchmark's tools (its ``ToolResult``s: ``tool``, ``status``,
        ``drains``, ``latencies_ms``, ``p50``, ``p99``, ``errors``): the rate of the
        ``largest`` drain and the latency of each tool that ran, on ``backend`` (``memory``
        for the in-process memory backend), named by ``tool_of``; a failure as a note.
        Returns the tools that ran, by name."""
        ran: dict[str, Any] = {}
        for result in results:
            if result.status != "ok":
                self.note(f"{result.tool}: {result.status}")
                continue
            ran[result.tool] = result
            where = "memory" if result.tool == "memory" else backend
            name = tool_of(result.tool)
            if largest in result.drains:
                self.rate(where, name, result.drains[largest].rate)
            if result.latencies_ms:
                self.latency_ms(where, name, result.p50, result.p99)
            self.notes.extend(f"{result.tool}: {error}" for error in result.errors)
        self.note(
            f"throughput: the {largest:,}-task drains, one worker with concurrency {concurrency}"
        )
        return ran

    def note(self, text: str) -> None:
        """Record a line of context: a target on an absolute figure, a failure, a caveat."""
        self.notes.append(text)

    def as_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "ratios": self.ratios,
            "throughput": self.throughput,
            "latency": self.latency,
            "notes": self.notes,
        }

    def write(self, path: Path | None) -> None:
        """Write the report to ``path`` (nothing when None), its directory made if needed."""
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_json(), indent=1, allow_nan=False) + "\n")
