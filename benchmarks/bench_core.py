"""Core overhead: tasker's combinators against raw anyio, and shutdown latency.

Run: ``python benchmarks/bench_core.py [--json PATH]`` (or ``nox -s bench``). Prints, for
asyncio and trio: ``concurrence`` of 10,000 no-op jobs against a raw anyio task group doing
the same, and ``sequence`` of 100,000 no-op steps against a plain loop of awaits, each as the
best of several repetitions and as a ratio to the baseline measured in the same run (targets:
at most 1.5x and 2x). Then the median time from SIGTERM to process exit for a program running
1,000 jobs that wait on their context (target: under 100 ms). ``--json PATH`` also writes the
figures in ``benchmarks/_report.py``'s shape.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import _report
import anyio

import tasker

ROOT = Path(__file__).resolve().parent.parent


async def noop(ctx: tasker.Context) -> None:
    """A job that does nothing."""


async def raw_noop() -> None:
    """The same, for the raw baseline."""


async def raw_group(n: int) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(raw_noop)


async def raw_loop(n: int) -> None:
    for _ in range(n):
        await raw_noop()


def best_of(repeat: int, backend: str, func: Callable[[], Awaitable[None]]) -> float:
    """The fastest of ``repeat`` timed runs of ``func`` on ``backend``."""

    async def timed() -> float:
        start = time.perf_counter()
        await func()
        return time.perf_counter() - start

    return min(anyio.run(timed, backend=backend) for _ in range(repeat))


def bench_combinators(repeat: int, report: _report.Report) -> None:
    n_con, n_seq = 10_000, 100_000
    con = tasker.concurrence(*[noop] * n_con)
    seq = tasker.sequence(*[noop] * n_seq)

    async def raw_c() -> None:
        await raw_group(n_con)

    async def ours_c() -> None:
        await tasker.run(con)

    async def raw_s() -> None:
        await raw_loop(n_seq)

    async def ours_s() -> None:
        await tasker.run(seq)

    for backend in ("asyncio", "trio"):
        t_raw_c, t_ours_c = best_of(repeat, backend, raw_c), best_of(repeat, backend, ours_c)
        t_raw_s, t_ours_s = best_of(repeat, backend, raw_s), best_of(repeat, backend, ours_s)
        print(
            f"{backend:8} concurrence x{n_con}: raw {t_raw_c * 1e3:7.1f} ms, tasker"
            f" {t_ours_c * 1e3:7.1f} ms, ratio {t_ours_c / t_raw_c:4.2f} (target <= 1.5)"
        )
        print(
            f"{backend:8} sequence x{n_seq}:   raw {t_raw_s * 1e3:7.1f} ms, tasker"
            f" {t_ours_s * 1e3:7.1f} ms, ratio {t_ours_s / t_raw_s:4.2f} (target <= 2.0)"
        )
        report.ratio(
            f"{backend}: concurrence of {n_con:,} no-op jobs / raw anyio task group",
            t_ours_c / t_raw_c,
            "<= 1.5",
        )
        report.ratio(
            f"{backend}: sequence of {n_seq:,} no-op steps / plain loop of awaits",
            t_ours_s / t_raw_s,
            "<= 2",
        )


def bench_shutdown(runs: int, backend: str, report: _report.Report) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    latencies = []
    for _ in range(runs):
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "main_program.py"),
                "wait",
                "--jobs",
                "1000",
                "--backend",
                backend,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("program did not start")
        # A blocking wait (waitpid), not ``wait(timeout)``: that one polls with sleeps growing
        # to 50 ms, which rounded every figure up (42 ms read as 64 ms). A timer kills a
        # program that hangs.
        watchdog = threading.Timer(30, proc.kill)
        watchdog.start()
        start = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        latencies.append(time.perf_counter() - start)
        watchdog.cancel()
        if proc.returncode != 0:
            raise RuntimeError(f"program exited {proc.returncode}")
    print(
        f"{backend:8} shutdown of 1,000 waiting jobs: median"
        f" {statistics.median(latencies) * 1e3:6.1f} ms, max {max(latencies) * 1e3:6.1f} ms"
        f" over {runs} runs (target < 100 ms; includes interpreter teardown)"
    )
    median = statistics.median(latencies) * 1e3
    report.note(
        f"{backend}: SIGTERM to exit with 1,000 jobs waiting, median {median:.1f} ms over"
        f" {runs} runs (target < 100 ms: {_report.verdict(median, '< 100')})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--shutdown-runs", type=int, default=9)
    _report.add_json_option(parser)
    args = parser.parse_args()
    report = _report.Report.of(__file__)
    bench_combinators(args.repeat, report)
    for backend in ("asyncio", "trio"):
        bench_shutdown(args.shutdown_runs, backend, report)
    report.write(args.json_path)


if __name__ == "__main__":
    main()
