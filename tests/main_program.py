"""A program run by the tests as a real process: ``python tests/main_program.py MODE ...``.

Modes: ``wait`` (N jobs that wait on ctx), ``stubborn`` (a job that ignores ctx),
``fail`` (a job that raises). Prints ``ready`` once every job has started.
"""

from __future__ import annotations

import argparse
import logging

import anyio

import tasker


def build(mode: str, count: int) -> list[tasker.Job]:
    started = 0

    async def waiting(ctx: tasker.Context) -> None:
        nonlocal started
        started += 1
        if started == count:
            print("ready", flush=True)
        await ctx.wait()

    async def stubborn(ctx: tasker.Context) -> None:
        print("ready", flush=True)
        await anyio.sleep_forever()

    async def failing(ctx: tasker.Context) -> None:
        await anyio.sleep(0.05)
        raise ValueError("disk is full")

    if mode == "wait":
        return [waiting] * count
    if mode == "stubborn":
        return [stubborn]
    return [waiting, failing]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["wait", "stubborn", "fail"])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--backend", default="asyncio")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--grace", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    tasker.main(
        *build(args.mode, args.jobs),
        backend=args.backend,
        uvloop=args.uvloop,
        grace=args.grace,
    )
    print("clean exit", flush=True)


if __name__ == "__main__":
    main()
