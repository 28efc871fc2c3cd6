"""A holder for the cross-process ``with_no_overlap`` test: ``python tests/no_overlap_process.py``.

Runs ``with_no_overlap(FileLockerFactory(--dir), "guarded", job)`` once. The job prints
``running``, waits until the file ``--release`` exists, and prints ``ran``; after the guarded
call returns the process prints ``returned``. A process that found the lock held prints only
``returned``.
"""

from __future__ import annotations

import argparse
import logging
import sys

import anyio

import tasker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--release", required=True)
    args = parser.parse_args()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    logging.getLogger("tasker").addHandler(handler)
    logging.getLogger("tasker").setLevel(logging.DEBUG)
    release = anyio.Path(args.release)

    async def job(ctx: tasker.Context) -> None:
        print("running", flush=True)
        while not await release.exists():  # noqa: ASYNC110 - another process makes the file
            await anyio.sleep(0.005)
        print("ran", flush=True)

    guarded = tasker.with_no_overlap(tasker.FileLockerFactory(args.dir), "guarded", job)
    anyio.run(tasker.run, guarded)
    print("returned", flush=True)


if __name__ == "__main__":
    main()
