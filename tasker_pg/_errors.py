"""tasker_pg's exceptions, raised everywhere in the package from here."""

from __future__ import annotations

import asyncpg

from tasker import TaskerError
from tasker.backends import PermanentFault, register_fault_classifier

__all__ = ["AsyncioRequiredError", "LockKeyCollisionError", "classify_fault"]

#: The command that creates tasker_pg's tables, as every message about missing ones says.
MIGRATE_HINT = (
    "run `tasker migrate --dsn postgresql://...` (or `python -m tasker_pg migrate --dsn ...`)"
    " once against this database, or call `await tasker_pg.migrate(dsn)` before starting"
)


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


@register_fault_classifier
def classify_fault(exc: BaseException) -> PermanentFault | None:
    """asyncpg's errors that retrying cannot fix, with their fix (see
    :func:`tasker.backends.permanent_fault`); an outage or anything else is None."""
    if not isinstance(exc, asyncpg.PostgresError):
        return None
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return PermanentFault(
            f"Postgres refused the login ({exc.sqlstate}: {exc})",
            "check the user name and password in the DSN (or the role's pg_hba.conf entry)",
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return PermanentFault(
            f"the database does not exist ({exc})",
            "create it (`createdb NAME`) or fix the database name in the DSN",
        )
    if isinstance(
        exc,
        asyncpg.UndefinedTableError | asyncpg.InvalidSchemaNameError | asyncpg.UndefinedColumnError,
    ):
        return PermanentFault(
            f"tasker_pg's tables are missing or out of date ({exc})", MIGRATE_HINT
        )
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return PermanentFault(
            f"the role lacks a permission ({exc})",
            "grant the role usage of the schema and access to tasker_pg's tables, or connect"
            " as their owner",
        )
    return None
