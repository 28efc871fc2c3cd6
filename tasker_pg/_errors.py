"""tasker_pg's exceptions, raised everywhere in the package from here."""

from __future__ import annotations

from tasker import TaskerError

__all__ = ["AsyncioRequiredError", "LockKeyCollisionError"]


class AsyncioRequiredError(TaskerError, RuntimeError):
    """tasker_pg runs on asyncio only: asyncpg, its driver, does not support trio."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        super().__init__(
            f"tasker_pg needs asyncio, but this code runs on {backend}: asyncpg (the Postgres"
            " driver) is asyncio-only. Run the program with tasker.main(..., backend='asyncio')"
            " or use the embedded backends on trio"
        )


class LockKeyCollisionError(TaskerError, ValueError):
    """Two schedule names hash to the same advisory lock key."""

    def __init__(self, key: int, name: str, other: str) -> None:
        self.key, self.name, self.other = key, name, other
        super().__init__(
            f"schedule names {name!r} and {other!r} have the same advisory lock key {key};"
            " rename one or use another namespace"
        )
