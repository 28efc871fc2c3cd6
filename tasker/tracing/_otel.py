"""OpenTelemetry spans of a queue's enqueues and attempts and a Scheduler's runs.

Design notes:

- **One trace from the request to the task.** An enqueue opens a PRODUCER span per task and
  injects its context, through the global propagator (W3C ``traceparent``/``tracestate`` by
  default), into ``NewTask.trace``: compact JSON the backend stores with the task. The
  worker extracts it and opens the attempt's CONSUMER span as its child, so the two share a
  trace across processes. A retry's attempts are all children of the one enqueue; a chain's
  next step carries the context of the attempt that enqueued it; a group's callback, its
  own enqueue span's.
- **The attempt span is current while the handler runs** (OTel's context is a contextvar:
  it follows asyncio and trio tasks), so the handler's spans, and the httpx or asyncpg
  spans of instrumented libraries, are its children.
- **Zero cost when off**: the hooks sit on ``Registry.tracer`` and ``Scheduler._tracer``;
  with none set the worker reads one attribute per attempt, and this module (and
  ``opentelemetry``) is never imported.
- **What a span holds is what a task's record shows**: the error recorded is the task's
  stored error and traceback (DSN passwords redacted by ``format_error``), not ``str(exc)``;
  never a payload or a result.
- **A carrier that cannot be read** (stored by hand, cut short) gives an attempt span
  without a parent, never a failed attempt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import baggage, propagate, trace
    from opentelemetry import context as otel_context
    from opentelemetry.trace import (
        NonRecordingSpan,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
    )
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "tasker.tracing needs opentelemetry-api: pip install 'tasker-jobs[tracing]'"
    ) from exc

from ..queue._records import EnqueueResult, GroupSpec, NewTask, Outcome, OutcomeKind, TaskRecord

if TYPE_CHECKING:
    from ..queue import Queue
    from ..scheduler import Scheduler

__all__ = ["Tracing", "instrument"]

#: ``messaging.system`` of every queue span.
SYSTEM = "tasker"
_FAILED = (OutcomeKind.RETRY, OutcomeKind.DEAD)


def _dumps(carrier: dict[str, str]) -> str | None:
    return json.dumps(carrier, separators=(",", ":")) if carrier else None


#: What a W3C Trace Context propagator (with W3C baggage, or not) reads and writes.
_W3C_FIELDS = frozenset({"traceparent", "tracestate", "baggage"})
#: The carrier that propagator writes for a span with no trace state and no baggage, the
#: usual one: exactly what ``_dumps`` makes of ``{"traceparent": "00-<trace>-<span>-<flags>"}``.
_W3C_CARRIER = re.compile(r'\{"traceparent":"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})"\}\Z')


class _Propagation:
    """The global propagator, with a fast path for the usual W3C carrier.

    While the global propagator is W3C Trace Context (OpenTelemetry's default, alone or
    with W3C baggage: its ``fields`` say so), the usual carrier is written and read here
    directly, as that propagator would, for a few microseconds less per task; anything
    else (trace state, baggage, another propagator, a carrier stored by hand) goes through
    the propagator itself.
    """

    __slots__ = ("_textmap", "_w3c")

    def __init__(self) -> None:
        self._textmap: object = None
        self._w3c = False

    def _is_w3c(self) -> bool:
        textmap = propagate.get_global_textmap()
        if textmap is not self._textmap:  # set (again) since last looked at
            fields = textmap.fields
            self._w3c = "traceparent" in fields and fields <= _W3C_FIELDS
            self._textmap = textmap
        return self._w3c

    def inject(self, context: otel_context.Context | None = None) -> str | None:
        """The carrier of ``context`` (default: the current one), as a task keeps it."""
        if self._is_w3c() and not baggage.get_all(context):
            span_context = trace.get_current_span(context).get_span_context()
            if span_context.is_valid and not span_context.trace_state:
                return (
                    f'{{"traceparent":"00-{span_context.trace_id:032x}-'
                    f'{span_context.span_id:016x}-{span_context.trace_flags:02x}"}}'
                )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=context)
        return _dumps(carrier)

    def extract(self, text: str | None) -> otel_context.Context | None:
        """The context a task's carrier holds (None: none, or one that cannot be read)."""
        if text is None:
            return None
        match = _W3C_CARRIER.match(text)
        if match is not None and self._is_w3c():
            trace_id, span_id, flags = match.groups()
            if trace_id != "0" * 32 and span_id != "0" * 16:
                span_context = SpanContext(
                    int(trace_id, 16), int(span_id, 16), True, TraceFlags(int(flags, 16))
                )
                return trace.set_span_in_context(NonRecordingSpan(span_context), _EMPTY)
        try:
            carrier = json.loads(text)
        except ValueError:
            return None
        if not isinstance(carrier, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in carrier.items()
        ):
            return None
        return propagate.extract(carrier)


_EMPTY = otel_context.Context()


def attempt_attributes(record: TaskRecord, worker: str) -> dict[str, str | int]:
    """The attributes of an attempt's CONSUMER span."""
    return {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "run",
        "messaging.destination.name": record.queue,
        "messaging.message.id": record.id,
        "tasker.task.name": record.name,
        "tasker.task.attempt": record.attempts,
        "tasker.worker.id": worker,
    }


def _record_error(span: trace.Span, error: str, stacktrace: str | None) -> None:
    """``span`` failed with the task's stored ``error`` (``"Type: message"``)."""
    kind, _, message = error.partition(": ")
    attributes = {"exception.type": kind, "exception.message": message}
    if stacktrace:
        attributes["exception.stacktrace"] = stacktrace
    span.add_event("exception", attributes)
    span.set_status(Status(StatusCode.ERROR, error))


class _OpenSpan:
    """A span made the current one until :meth:`detach` (in the task that opened it)."""

    __slots__ = ("span", "token")

    def __init__(self, span: trace.Span, parent: otel_context.Context | None) -> None:
        self.span = span
        self.token: object | None = otel_context.attach(trace.set_span_in_context(span, parent))

    def detach(self) -> None:
        if self.token is not None:
            otel_context.detach(self.token)  # type: ignore[arg-type]
            self.token = None


class _AttemptSpan(_OpenSpan):
    __slots__ = ()

    def end(self, outcome: Outcome) -> None:
        span = self.span
        span.set_attribute("tasker.task.outcome", outcome.kind.value)
        if outcome.kind in _FAILED:
            _record_error(span, outcome.error or "failed", outcome.traceback)
        span.end()

    def cut(self) -> None:
        self.span.set_attribute("tasker.task.outcome", "cut")
        self.span.end()


class _RunSpan(_OpenSpan):
    __slots__ = ()

    def end(self, outcome: str, error: BaseException | None) -> None:
        span = self.span
        span.set_attribute("tasker.schedule.outcome", outcome)
        if error is not None:
            from ..queue._failures import format_error

            _record_error(span, *format_error(error))
        span.end()


class Tracing:
    """The spans of one queue (its workers included) and one Scheduler.

    Made by :func:`instrument`; no public constructor. Its methods are the hooks the queue,
    its workers and the Scheduler call; a user never calls them.
    """

    def __init__(
        self, *, queue: Queue | None, scheduler: Scheduler | None, tracer: trace.Tracer
    ) -> None:
        self._queue = queue
        self._scheduler = scheduler
        self._tracer = tracer
        self._propagation = _Propagation()

    # -- the queue's hooks (QueueTracer) -------------------------------------------------

    async def enqueue(
        self,
        store: Callable[[Sequence[NewTask], GroupSpec | None], Awaitable[list[EnqueueResult]]],
        tasks: Sequence[NewTask],
        group: GroupSpec | None,
    ) -> list[EnqueueResult]:
        """``store(tasks, group)`` under a PRODUCER span per task (and one for a group's
        callback), each task carrying the context of its own span."""
        start = self._tracer.start_span
        inject = self._propagation.inject
        spans: list[trace.Span] = []
        traced: list[NewTask] = []
        members = [(task, task.group_id) for task in tasks]
        if group is not None and group.callback is not None:
            members.append((group.callback, group.id))
        for task, group_id in members:
            attributes: dict[str, Any] = {
                "messaging.system": SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": "enqueue",
                "messaging.destination.name": task.queue,
                "messaging.message.id": task.id,
                "tasker.task.name": task.name,
            }
            if group_id is not None:
                attributes["tasker.group.id"] = group_id
            span = start(f"enqueue {task.name}", kind=SpanKind.PRODUCER, attributes=attributes)
            spans.append(span)
            traced.append(replace(task, trace=inject(trace.set_span_in_context(span))))
        if group is not None and group.callback is not None:
            group = replace(group, callback=traced.pop())
        # One task: its span is current while the backend stores it (an instrumented
        # driver's spans are its children); several are siblings under the caller's.
        token = (
            otel_context.attach(trace.set_span_in_context(spans[0])) if len(tasks) == 1 else None
        )
        try:
            results = await store(traced, group)
        except BaseException as exc:
            for span in spans:
                span.record_exception(exc, escaped=True)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.end()
            raise
        finally:
            if token is not None:
                otel_context.detach(token)
        for span, result in zip(spans, results, strict=False):
            span.set_attribute("messaging.message.id", result.id)
            span.set_attribute("tasker.deduplicated", result.deduplicated)
        for span in spans:
            span.end()
        return results

    def attempt(self, record: TaskRecord, worker: str) -> _AttemptSpan:
        """Start the CONSUMER span of an attempt of ``record``, a child of its enqueue's."""
        parent = self._propagation.extract(record.trace)
        span = self._tracer.start_span(
            f"run {record.name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attempt_attributes(record, worker),
        )
        return _AttemptSpan(span, parent)

    def carrier(self) -> str | None:
        """The current context, as a task carries it (a chain's next step)."""
        return self._propagation.inject()

    # -- the Scheduler's hook (ScheduleTracer) -------------------------------------------

    def run(self, name: str, slot: datetime) -> _RunSpan:
        """Start the INTERNAL span of a run of schedule ``name`` for ``slot``."""
        span = self._tracer.start_span(
            f"schedule {name}",
            kind=SpanKind.INTERNAL,
            attributes={"tasker.schedule.name": name, "tasker.schedule.slot": slot.isoformat()},
        )
        return _RunSpan(span, None)

    def __repr__(self) -> str:
        return (
            f"<tasker.tracing.Tracing queue={self._queue is not None}"
            f" scheduler={self._scheduler is not None}>"
        )


def instrument(
    *,
    queue: Queue | None = None,
    scheduler: Scheduler | None = None,
    tracer_provider: trace.TracerProvider | None = None,
) -> Tracing:
    """Trace what ``queue`` (and every worker it makes, before or after) and ``scheduler``
    do, with a tracer of ``tracer_provider`` (default: OpenTelemetry's global one).

    Spans: ``enqueue <task>`` (PRODUCER) around each enqueue, whose context the task
    carries; ``run <task>`` (CONSUMER) around each attempt, a child of its enqueue's span
    (the handler's own spans are its children), with ``tasker.task.outcome`` and, on a
    failure, the task's error and status ERROR; ``schedule <name>`` (INTERNAL) around each
    scheduled run. Realtime tasks (``Worker.spawn``) are not traced. A backend that does not
    store the carrier gives attempt spans without a parent (see the tracing guide).

    Raises:
        ValueError: a queue or scheduler that is traced already, or neither given.
        TypeError: a queue or scheduler of the wrong type.
    """
    from ..queue import Queue
    from ..scheduler import Scheduler

    if queue is None and scheduler is None:
        raise ValueError("tasker.tracing.instrument(): give a queue, a scheduler, or both")
    if queue is not None and not isinstance(queue, Queue):
        raise TypeError(f"tasker.tracing.instrument(): queue must be a Queue, got {queue!r}")
    if scheduler is not None and not isinstance(scheduler, Scheduler):
        raise TypeError(
            f"tasker.tracing.instrument(): scheduler must be a Scheduler, got {scheduler!r}"
        )
    if queue is not None and queue._registry.tracer is not None:
        raise ValueError(f"tasker.tracing.instrument(): {queue!r} is traced already")
    if scheduler is not None and scheduler._tracer is not None:
        raise ValueError(f"tasker.tracing.instrument(): {scheduler!r} is traced already")
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("tasker-jobs")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        own = None
    tracer = trace.get_tracer("tasker", own, tracer_provider=tracer_provider)
    tracing = Tracing(queue=queue, scheduler=scheduler, tracer=tracer)
    if queue is not None:
        queue._registry.tracer = tracing
    if scheduler is not None:
        scheduler._tracer = tracing
    return tracing
