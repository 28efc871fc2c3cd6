"""What the Scheduler's backends share: a source from a URL or a source, and their buckets."""

from __future__ import annotations

import ssl
from typing import Any

import nats.js
import nats.js.api
import nats.js.errors
from nats.js.kv import KeyValue

from ._connection import NatsSource

__all__ = ["KV_DEL", "KV_OP", "KV_PURGE", "Bucket", "is_wrong_last_sequence", "source_of"]

#: The header of a KV delete or purge marker, and its values.
KV_OP = "KV-Operation"
KV_DEL = "DEL"
KV_PURGE = "PURGE"

#: JetStream's "wrong last sequence" codes: a compare-and-set that lost.
_WRONG_LAST_SEQUENCE = frozenset({10071, 10164})


def is_wrong_last_sequence(exc: BaseException) -> bool:
    """Whether ``exc`` says an expected-last-sequence publish found another sequence."""
    if isinstance(exc, nats.js.errors.KeyWrongLastSequenceError):
        return True
    return isinstance(exc, nats.js.errors.APIError) and exc.err_code in _WRONG_LAST_SEQUENCE


def source_of(
    url_or_source: Any, tls: ssl.SSLContext | None, name: str, **options: Any
) -> NatsSource:
    """The source a backend object connects through: ``url_or_source`` itself, or a new one
    built from a URL."""
    if isinstance(url_or_source, NatsSource):
        if tls is not None or any(v is not None for v in options.values()):
            raise ValueError(
                "give the TLS context and credentials to the NatsSource, not beside it"
            )
        return url_or_source
    if not isinstance(url_or_source, str | list | tuple):
        raise TypeError(
            "expected a nats:// URL or a tasker_nats.NatsSource,"
            f" got {type(url_or_source).__name__}"
        )
    return NatsSource(url_or_source, tls=tls, name=name, **options)


class Bucket:
    """A KV bucket of the namespace, looked up (or created, with ``history=1``) once per
    connection. An existing bucket is used as it is: an operator may have changed its
    replicas or placement."""

    __slots__ = ("_cached", "name", "replicas", "source", "stream", "subject_prefix")

    def __init__(self, source: NatsSource, name: str, *, replicas: int = 1) -> None:
        self.source = source
        self.name = name
        self.replicas = replicas
        self.stream = f"KV_{name}"
        self.subject_prefix = f"$KV.{name}."
        self._cached: tuple[nats.js.JetStreamContext, KeyValue] | None = None

    async def get(self) -> tuple[nats.js.JetStreamContext, KeyValue]:
        """The JetStream context and the bucket on the current connection."""
        js = await self.source.jetstream()
        self.source.raise_if_denied()
        cached = self._cached
        if cached is not None and cached[0] is js:
            return cached
        try:
            kv = await js.key_value(self.name)
        except nats.js.errors.BucketNotFoundError:
            kv = await js.create_key_value(
                bucket=self.name,
                history=1,
                replicas=self.replicas,
                direct=True,
                storage=nats.js.api.StorageType.FILE,
            )
        self._cached = (js, kv)
        return self._cached

    async def entries(self, pattern: str = ">") -> list[tuple[str, int, bytes]]:
        """The live keys matching ``pattern`` (a subject pattern of keys, such as ``s.>``),
        with their revision and value, by key: for status displays (one request to list the
        subjects, one per key to read it)."""
        js, kv = await self.get()
        info = await js.stream_info(self.stream, subjects_filter=self.subject_prefix + pattern)
        subjects = sorted(info.state.subjects or {})
        found: list[tuple[str, int, bytes]] = []
        for subject in subjects:
            key = subject.removeprefix(self.subject_prefix)
            try:
                entry = await kv.get(key, validate_keys=False)
            except nats.js.errors.KeyNotFoundError:
                continue  # deleted, purged or expired
            if entry.value and entry.revision is not None:
                found.append((key, entry.revision, entry.value))
        return found
