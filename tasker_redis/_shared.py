"""What the Scheduler's Redis backends share: their client, and Lua scripts bound to it.

- :func:`source_of`: a locker factory and a state repository built from a URL each own a
  :class:`RedisSource`; :func:`tasker_redis.scheduler` builds one and hands it to both, so
  a Scheduler holds one connection pool. Closing either closes it; the other starts it
  again on its next call (a source starts its client lazily).
- :class:`ScriptSet`: a script's source is fixed text. Every name arrives in ``KEYS`` (keys
  built in Python from the namespace's prefix) or ``ARGV`` (tokens, values), never spliced
  into Lua. Scripts run with ``EVALSHA``; coredis loads one again when the server lost its
  script cache (a restart), so a script outlives the server it was first sent to.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import coredis
from coredis.commands.script import Script

from ._connection import RedisSource

__all__ = ["ScriptSet", "source_of"]


def source_of(
    url_or_source: str | RedisSource, ssl_context: ssl.SSLContext | None, client_name: str
) -> RedisSource:
    """``url_or_source`` if it is a source already, else a new source for the URL.

    Raises:
        ValueError: for a URL that is not ``redis://``, ``rediss://`` or ``unix://``, or an
            ``ssl_context`` given with a source (the source has its own).
        TypeError: for something that is neither a URL string nor a source.
    """
    if isinstance(url_or_source, RedisSource):
        if ssl_context is not None:
            raise ValueError("ssl_context is for a URL; a shared RedisSource has its own")
        return url_or_source
    return RedisSource(url_or_source, ssl_context=ssl_context, client_name=client_name)


class ScriptSet:
    """Named scripts, registered on the source's current client (again after it changed)."""

    __slots__ = ("_client", "_registered", "_source", "_texts")

    def __init__(self, source: RedisSource, texts: Mapping[str, str]) -> None:
        self._source = source
        self._texts = dict(texts)
        self._client: coredis.Redis[bytes] | None = None
        self._registered: dict[str, Script[bytes]] = {}

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run script ``name`` with ``keys`` and ``args``.

        Raises:
            tasker.BackendConfigurationError: see :meth:`RedisSource.client`.
            coredis.exceptions.RedisError, OSError: the server refused or cannot be reached.
        """
        client = await self._source.client()
        if client is not self._client:
            # The first call, or a client started after the old one failed or was closed:
            # a Script is bound to the client it was registered on.
            self._registered = {key: client.register_script(t) for key, t in self._texts.items()}
            self._client = client
        return await self._registered[name](keys=list(keys), args=list(args))
