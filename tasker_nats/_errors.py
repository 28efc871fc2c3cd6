"""tasker_nats' exceptions and its fault classifier: which NATS errors retrying cannot fix."""

from __future__ import annotations

import nats.errors
import nats.js.errors

from tasker import TaskerError, redact_dsn
from tasker.backends import PermanentFault, register_fault_classifier

__all__ = ["AsyncioRequiredError", "NatsSetupError", "classify_fault"]

#: JetStream API error codes that retrying cannot fix, with what to do about them.
_API_FAULTS: dict[int, tuple[str, str]] = {
    10039: (
        "JetStream is not enabled for this NATS account",
        "enable JetStream for the account (`jetstream: enabled` in its configuration, or"
        " JetStream limits in its JWT)",
    ),
    10058: (
        "a stream or bucket of this namespace exists with another configuration",
        "use another namespace, or delete the old stream (`nats stream rm NAME`) if nothing"
        " in it is needed",
    ),
    10052: (
        "the server refused a setting tasker_nats needs (per-message TTL, replicas)",
        "use NATS server 2.11 or newer, with as many JetStream servers as the replicas asked",
    ),
    10165: (
        "the stream does not allow per-message TTLs",
        "let tasker_nats create its buckets (delete the old ones), or enable"
        " `allow_msg_ttl` on them",
    ),
}


class AsyncioRequiredError(TaskerError, RuntimeError):
    """tasker_nats runs on asyncio only: nats-py, its driver, does not support trio."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        super().__init__(
            f"tasker_nats needs asyncio, but this code runs on {backend}: nats-py (the NATS"
            " client) is asyncio-only. Run the program with tasker.main(..., backend='asyncio'),"
            " or use tasker_redis or the embedded backends on trio"
        )


class NatsSetupError(TaskerError, RuntimeError):
    """The NATS server or account cannot serve tasker_nats as configured (a refused login,
    no JetStream, a server too old): retrying cannot fix it."""

    def __init__(self, problem: str, fix: str) -> None:
        self.fault = PermanentFault(problem, fix)
        super().__init__(f"{problem}: {fix}")


@register_fault_classifier
def classify_fault(exc: BaseException) -> PermanentFault | None:
    """nats-py's errors that retrying cannot fix, with their fix (see
    :func:`tasker.backends.permanent_fault`); an outage or anything else is None."""
    if isinstance(exc, NatsSetupError):
        return exc.fault
    if isinstance(exc, AsyncioRequiredError):
        return PermanentFault(str(exc), "run the program on asyncio")
    if isinstance(exc, nats.errors.AuthorizationError) or (
        isinstance(exc, nats.errors.Error) and "authorization violation" in str(exc).lower()
    ):
        return login_refused(redact_dsn(str(exc)))
    if isinstance(exc, nats.js.errors.APIError) and exc.err_code in _API_FAULTS:
        problem, fix = _API_FAULTS[exc.err_code]
        return PermanentFault(f"{problem} ({redact_dsn(str(exc))})", fix)
    return None


def login_refused(detail: str) -> PermanentFault:
    """The fault of a login the server refused."""
    return PermanentFault(
        f"NATS refused the login ({detail})",
        # No URL-shaped example here: a redactor would take it for a secret's end.
        "check the credentials: the user and password or the token in the URL, the"
        " `.creds` file or the nkey seed file",
    )
