"""tasker_redis' fault classifier: which Redis errors retrying cannot fix."""

from __future__ import annotations

import coredis.exceptions as errors

from tasker import redact_dsn
from tasker.backends import PermanentFault, register_fault_classifier

__all__ = ["classify_fault"]


@register_fault_classifier
def classify_fault(exc: BaseException) -> PermanentFault | None:
    """coredis' errors that retrying cannot fix, with their fix (see
    :func:`tasker.backends.permanent_fault`); an outage or anything else is None."""
    if not isinstance(exc, errors.RedisError):
        return None
    text = redact_dsn(str(exc))
    if isinstance(exc, errors.AuthenticationError) or text.startswith(
        ("WRONGPASS", "NOAUTH", "invalid password", "invalid username")
    ):
        return PermanentFault(
            f"Redis refused the login ({text})",
            "check the user name and password in the URL (redis://user:password@host),"
            " or the user's ACL (ACL SETUSER ... on)",
        )
    if isinstance(exc, errors.AuthorizationError) or "NOPERM" in text:
        return PermanentFault(
            f"the Redis user lacks a permission ({text})",
            "grant the user the commands and keys tasker_redis uses, e.g."
            " `ACL SETUSER <user> on +@all ~{<namespace>}:*` (`~{tasker}:*` for the default"
            " namespace)",
        )
    if isinstance(exc, errors.UnknownCommandError | errors.CommandNotSupportedError) or (
        "unknown command" in text
    ):
        return PermanentFault(
            f"the Redis server lacks a command tasker_redis uses ({text})",
            "use Redis 6.2 or newer, with the commands not renamed or disabled",
        )
    return None
