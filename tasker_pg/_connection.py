"""Connections: a DSN or an asyncpg pool, asyncio only, never a password in sight."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import anyio
import asyncpg

from tasker import RedactingFilter, redact_dsn

from ._errors import AsyncioRequiredError

logger = logging.getLogger("tasker_pg")
# Every tasker_pg module logs here; driver errors it logs may quote a DSN.
logger.addFilter(RedactingFilter())

__all__ = [
    "AsyncioRequiredError",
    "PoolSource",
    "check_asyncio",
    "check_dsn",
    "quote_identifier",
]

#: Seconds a new connection may take (asyncpg's default is 60).
CONNECT_TIMEOUT = 10.0
#: Seconds any statement tasker_pg sends may take (they are all short).
COMMAND_TIMEOUT = 30.0

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_PORT = re.compile(r"[0-9]*")


def check_asyncio() -> None:
    """Raise AsyncioRequiredError when called under an event loop that is not asyncio."""
    try:
        import sniffio
    except ImportError:  # pragma: no cover - no trio installed: only asyncio can run
        return
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return  # not in an event loop (construction at import time): fine
    if library != "asyncio":
        raise AsyncioRequiredError(library)


def quote_identifier(name: str, what: str) -> str:
    """Validate a schema or table name (lower case, digits, underscores) and quote it."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(
            f"{what} must be a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63"
            f" characters), got {name!r}"
        )
    return f'"{name}"'


def check_dsn(dsn: str) -> None:
    """Raise ValueError unless asyncpg can read ``dsn`` as the URL it appears to be.

    asyncpg takes only URLs (``postgresql://user:password@host:port/dbname?option=value``),
    not libpq's key=value form (``host=db user=app``): translating that form would mean
    re-implementing libpq's keywords, and asyncpg sends any query option it does not know to
    the server as a setting. A password holding a raw ``@``, ``/``, ``?`` or ``#`` is
    rejected too: asyncpg would split the URL inside it and quote a piece of the password
    in its error (``invalid literal for int() with base 10: 'pa'``). Every message shows the
    DSN redacted.
    """
    shown = redact_dsn(dsn)
    if not dsn.startswith(("postgres://", "postgresql://")):
        raise ValueError(
            "tasker_pg: expected a postgresql:// DSN or an asyncpg pool (asyncpg does not read"
            f" libpq's key=value form), got {shown!r}"
        )
    try:
        parts = urlsplit(dsn)
        if parts.query:
            parse_qs(parts.query, strict_parsing=True)
    except ValueError:
        raise ValueError(f"tasker_pg: cannot parse the DSN {shown!r}") from None
    hosts = parts.netloc.rpartition("@")[2]
    if parts.netloc.count("@") > 1 or not all(map(_valid_host, hosts.split(","))):
        raise ValueError(
            f"tasker_pg: cannot parse the hosts of the DSN {shown!r}: a port is digits, and an"
            " @ / ? # in the user name or password must be percent-encoded (%40 %2F %3F %23)"
        )


def _valid_host(spec: str) -> bool:
    """Whether asyncpg reads ``spec`` as ``host[:port]`` or ``[v6][:port]`` (port digits)."""
    if spec.startswith("["):
        _, bracket, rest = spec.partition("]")
        if not bracket or rest[:1] not in ("", ":"):
            return False
        port = rest[1:]
    else:
        port = spec.partition(":")[2]
    return _PORT.fullmatch(unquote(port)) is not None


async def _light_reset(connection: asyncpg.Connection[Any]) -> None:
    """Replace asyncpg's reset on release, which costs one more round trip per query.

    The pools tasker_pg creates hold no session state: statements are autocommit or in a
    transaction block, ``LISTEN`` and session advisory locks live on dedicated connections.
    Only a transaction left open (a block cut off by cancellation) needs undoing. A pool
    given by the user keeps its own reset.
    """
    if connection.is_in_transaction():
        await connection.execute("rollback")


class PoolSource:
    """A pool given by the user, or one created lazily (in the running loop) from a DSN."""

    def __init__(
        self,
        dsn_or_pool: str | asyncpg.Pool,
        *,
        min_size: int = 1,
        max_size: int = 4,
        server_settings: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(dsn_or_pool, str):
            check_dsn(dsn_or_pool)
            self._dsn: str | None = dsn_or_pool
            self._pool: asyncpg.Pool | None = None
        elif isinstance(dsn_or_pool, asyncpg.Pool):
            self._dsn, self._pool = None, dsn_or_pool
        else:
            # The type only: the repr of a DSN as bytes or as a mapping shows its password.
            raise TypeError(
                "tasker_pg: expected a DSN string or an asyncpg pool, got"
                f" {type(dsn_or_pool).__qualname__}"
            )
        self._sizes = (min_size, max_size)
        self._server_settings = dict(server_settings or {})
        self._lock: anyio.Lock | None = None
        check_asyncio()

    @property
    def dsn(self) -> str | None:
        """The DSN, if one was given (it may contain a password: never log it)."""
        return self._dsn

    async def pool(self) -> asyncpg.Pool:
        """The pool, created on first use."""
        check_asyncio()
        if self._pool is None:
            if self._lock is None:
                self._lock = anyio.Lock()
            async with self._lock:  # concurrent first calls create one pool, not several
                if self._pool is None:
                    try:
                        self._pool = await self._create_pool(self._server_settings)
                    except asyncpg.PostgresError as exc:
                        # A pooler such as PgBouncer refuses startup parameters it does not
                        # know; the settings are an optimisation, so go on without them.
                        if not self._server_settings or "startup parameter" not in str(exc):
                            raise
                        logger.info(
                            "tasker_pg: the server refused %s (%s); connecting without them",
                            ", ".join(sorted(self._server_settings)),
                            redact_dsn(str(exc)),
                        )
                        self._server_settings = {}
                        self._pool = await self._create_pool({})
        return self._pool

    async def _create_pool(self, settings: Mapping[str, str]) -> asyncpg.Pool:
        assert self._dsn is not None
        pool: asyncpg.Pool = await asyncpg.create_pool(
            self._dsn,
            min_size=self._sizes[0],
            max_size=self._sizes[1],
            reset=_light_reset,
            timeout=CONNECT_TIMEOUT,
            command_timeout=COMMAND_TIMEOUT,
            server_settings=dict(settings) or None,
        )
        return pool

    async def connect(self, application_name: str | None = None) -> asyncpg.Connection[Any]:
        """A new dedicated connection (not from the pool).

        ``application_name`` labels it in ``pg_stat_activity`` (so ``status`` can say which
        replica holds a lock) unless the DSN or pool already sets one.
        """
        check_asyncio()
        if self._dsn is not None:
            args: tuple[Any, ...] = (self._dsn,)
            kwargs: dict[str, Any] = {}
        else:
            pool = await self.pool()
            # Same server and credentials as the pool's connections.
            args = tuple(pool._connect_args)  # type: ignore[attr-defined]
            kwargs = dict(pool._connect_kwargs)  # type: ignore[attr-defined]
        # Without these a silent network drop would hang a connect for a minute and a
        # query until the kernel gives up on the socket (many minutes).
        kwargs.setdefault("timeout", CONNECT_TIMEOUT)
        kwargs.setdefault("command_timeout", COMMAND_TIMEOUT)
        if application_name and "application_name" not in (self._dsn or ""):
            settings = dict(kwargs.get("server_settings") or {})
            settings.setdefault("application_name", application_name[:63])
            kwargs["server_settings"] = settings
        connection: asyncpg.Connection[Any] = await asyncpg.connect(*args, **kwargs)
        return connection

    async def close(self) -> None:
        """Close the pool if this object created it."""
        if self._dsn is not None and self._pool is not None:
            await self._pool.close()
            self._pool = None

    def __repr__(self) -> str:
        if self._dsn is not None:
            return f"PoolSource({redact_dsn(self._dsn)!r})"
        return "PoolSource(<asyncpg pool>)"
