"""The outcome a worker reports for an attempt: success (with a chain's next step), failure,
or cancelled."""

from __future__ import annotations

import logging
from dataclasses import replace

from .._backoff import Backoff
from ._chain import decode_chain, encode_chain
from ._failures import format_error
from ._records import NewTask, Outcome, OutcomeKind, TaskRecord
from ._registry import Registry

__all__ = ["cancelled", "failure", "success"]

logger = logging.getLogger("tasker.queue")


def success(
    registry: Registry,
    worker: str,
    record: TaskRecord,
    started: float,
    data: bytes | None,
    now: float,
) -> Outcome:
    """The outcome of an attempt that returned ``data``, with a chain's next step."""
    follow_ups: tuple[NewTask, ...] = ()
    if record.chain is not None:
        steps = decode_chain(record.chain)
        head, rest = steps[0], steps[1:]
        follow_ups = (
            registry.new_task(
                head.name,
                None,
                now=now,
                priority=head.priority,
                queue=head.queue,
                max_attempts=head.max_attempts,
                timeout=head.timeout,
                chain=encode_chain(rest),
                raw_payload=data if data is not None else registry.serialize(head.name, None),
            ),
        )
        if registry.tracer is not None:  # the next step continues this attempt's trace
            follow_ups = (replace(follow_ups[0], trace=registry.tracer.carrier()),)
    return Outcome(
        id=record.id,
        worker=worker,
        kind=OutcomeKind.SUCCEEDED,
        started_at=started,
        finished_at=now,
        result=data,
        result_expires=now + registry.result_ttl,
        follow_ups=follow_ups,
    )


def failure(
    worker: str,
    record: TaskRecord,
    started: float,
    exc: Exception,
    backoff: Backoff | None,
    now: float,
) -> Outcome:
    """The outcome of an attempt that raised ``exc``: a retry at its backoff, or dead."""
    error, trace = format_error(exc)
    retry_at: float | None = None
    if record.attempts < record.max_attempts and backoff is not None:
        delay = backoff.delay(record.attempts)
        retry_at = now + delay
        logger.warning(
            "task %s %s failed (attempt %d of %d), retrying in %.3gs: %s",
            record.name,
            record.id,
            record.attempts,
            record.max_attempts,
            delay,
            error,
        )
    else:
        logger.error(
            "task %s %s failed its last attempt (%d): %s\n%s",
            record.name,
            record.id,
            record.attempts,
            error,
            trace,
        )
    return Outcome(
        id=record.id,
        worker=worker,
        kind=OutcomeKind.DEAD if retry_at is None else OutcomeKind.RETRY,
        started_at=started,
        finished_at=now,
        error=error,
        traceback=trace,
        retry_at=retry_at,
    )


def cancelled(
    worker: str,
    record: TaskRecord,
    started: float,
    now: float,
    *,
    exc: Exception | None = None,
    why: str | None = None,
) -> Outcome:
    """The outcome of an attempt stopped because its cancel was requested: never retried.

    ``exc`` is what the handler raised as it stopped (kept as the task's error, for the
    record), ``why`` says how it ended otherwise (cut off after its grace period).
    """
    error, trace = format_error(exc) if exc is not None else (why, None)
    logger.info("task %s %s (attempt %d) cancelled", record.name, record.id, record.attempts)
    return Outcome(
        id=record.id,
        worker=worker,
        kind=OutcomeKind.CANCELLED,
        started_at=started,
        finished_at=now,
        error=error,
        traceback=trace,
    )
