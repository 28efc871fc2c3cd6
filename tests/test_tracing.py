"""OpenTelemetry traces (``tasker.tracing``): enqueue and attempt spans in one trace, the
outcome on each attempt, scheduled runs, and a producer and a worker in two processes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import tasker
import tasker.tracing
from tasker import Context, MemoryLockerFactory, MemoryStateRepository, Scheduler
from tasker.queue import MemoryQueueBackend, Queue, QueueBackend, SQLiteQueueBackend
from tasker.schedule import Interval
from tasker.tracing._otel import _Propagation

from .helpers import python_process
from .test_queue import Running, finished, until

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> QueueBackend:
    if request.param == "memory":
        return MemoryQueueBackend()
    return SQLiteQueueBackend(tmp_path / "queue.sqlite3")


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


async def _true(value: bool) -> bool:
    return value


async def test_enqueue_and_attempt_are_one_trace(
    backend: QueueBackend, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A request span, the enqueue span under it, the attempt span under the enqueue's and
    the handler's own span under the attempt's: one trace, with the messaging attributes."""
    queue = Queue(backend)
    tasker.tracing.instrument(queue=queue, tracer_provider=provider)
    tracer = provider.get_tracer("test")

    @queue.task("greet", queue="mail")
    async def greet(ctx: Context, payload: str) -> str:
        with tracer.start_as_current_span("inside"):
            return f"hello {payload}"

    with tracer.start_as_current_span("request"):
        enqueued = await greet.enqueue("world")
    async with Running(queue, queues="mail"):
        await until(lambda: finished(queue, enqueued.id))
    await until(lambda: _true(bool(named(exporter, "inside"))))
    (request,) = named(exporter, "request")
    (enqueue,) = named(exporter, "enqueue greet")
    (run,) = named(exporter, "run greet")
    (inside,) = named(exporter, "inside")
    assert {trace_id(s) for s in (request, enqueue, run, inside)} == {trace_id(request)}
    assert parent_id(enqueue) == span_id(request)
    assert parent_id(run) == span_id(enqueue)
    assert parent_id(inside) == span_id(run)
    assert enqueue.kind is SpanKind.PRODUCER
    assert run.kind is SpanKind.CONSUMER
    common = {
        "messaging.system": "tasker",
        "messaging.destination.name": "mail",
        "messaging.message.id": enqueued.id,
        "tasker.task.name": "greet",
    }
    assert common.items() <= dict(enqueue.attributes or {}).items()
    assert dict(enqueue.attributes or {})["tasker.deduplicated"] is False
    attributes = dict(run.attributes or {})
    assert common.items() <= attributes.items()
    assert attributes["tasker.task.attempt"] == 1
    assert attributes["tasker.task.outcome"] == "succeeded"
    assert run.status.status_code is StatusCode.UNSET


async def test_a_failed_attempt_is_an_error_and_its_retry_the_same_trace(
    backend: QueueBackend, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The first attempt raises: its span has status ERROR and the exception event; the
    retry's attempt is a second child of the same enqueue span; the last one dies."""
    queue = Queue(backend)
    tasker.tracing.instrument(queue=queue, tracer_provider=provider)

    @queue.task("flaky", max_attempts=2, backoff=0)
    async def flaky(ctx: Context, payload: None) -> None:
        raise ValueError("not today")

    enqueued = await flaky.enqueue(None)
    async with Running(queue):
        await until(lambda: finished(queue, enqueued.id))
    await until(lambda: _true(len(named(exporter, "run flaky")) == 2))
    (enqueue,) = named(exporter, "enqueue flaky")
    runs = sorted(named(exporter, "run flaky"), key=lambda s: s.start_time or 0)
    assert [dict(r.attributes or {})["tasker.task.attempt"] for r in runs] == [1, 2]
    assert [dict(r.attributes or {})["tasker.task.outcome"] for r in runs] == ["retry", "dead"]
    for run in runs:
        assert trace_id(run) == trace_id(enqueue)
        assert parent_id(run) == span_id(enqueue)
        assert run.status.status_code is StatusCode.ERROR
        (event,) = [e for e in run.events if e.name == "exception"]
        assert dict(event.attributes or {})["exception.type"] == "ValueError"
        assert dict(event.attributes or {})["exception.message"] == "not today"
        assert "not today" in str(dict(event.attributes or {})["exception.stacktrace"])


async def test_chain_steps_and_group_callbacks_continue_the_trace(
    backend: QueueBackend, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A chain's second step runs as a child of the first step's attempt; a group's
    callback, enqueued by the backend, runs as a child of its own enqueue span; all in the
    caller's trace."""
    queue = Queue(backend)
    tasker.tracing.instrument(queue=queue, tracer_provider=provider)

    @queue.task("double")
    async def double(ctx: Context, payload: int) -> int:
        return payload * 2

    @queue.task("total")
    async def total(ctx: Context, payload: list[int]) -> int:
        return sum(payload)

    with provider.get_tracer("test").start_as_current_span("request"):
        chain = await queue.enqueue_chain(queue.step("double", 1), queue.step("double"))
        await queue.enqueue_group(
            [queue.step("double", 2), queue.step("double", 3)], then=queue.step("total")
        )
    async with Running(queue):
        await until(lambda: finished(queue, chain.id))
        await until(lambda: _true(len(named(exporter, "run total")) == 1))
    (request,) = named(exporter, "request")
    assert {trace_id(s) for s in exporter.get_finished_spans()} == {trace_id(request)}
    runs = {span_id(s): s for s in named(exporter, "run double")}
    enqueues = {span_id(s): s for s in exporter.get_finished_spans() if s.name.startswith("enq")}
    assert len(runs) == 4
    assert len(enqueues) == 4
    # The second step of the chain: its parent is the attempt of the first step.
    (second,) = [r for r in runs.values() if parent_id(r) in runs]
    assert dict(runs[parent_id(second) or 0].attributes or {})["tasker.task.outcome"] == (
        "succeeded"
    )
    (callback,) = named(exporter, "run total")
    assert enqueues[parent_id(callback) or 0].name == "enqueue total"
    assert "tasker.group.id" in dict(enqueues[parent_id(callback) or 0].attributes or {})


async def test_scheduled_runs_have_spans(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Each run of a schedule is a ``schedule <name>`` span with its slot and outcome; a
    failed run has status ERROR; a span the job makes is its child."""
    scheduler = Scheduler(locker_factory=MemoryLockerFactory(), repository=MemoryStateRepository())
    tasker.tracing.instrument(scheduler=scheduler, tracer_provider=provider)
    tracer = provider.get_tracer("test")

    async def tick(ctx: Context) -> None:
        with tracer.start_as_current_span("tick work"):
            pass

    async def boom(ctx: Context) -> None:
        raise ValueError("no")

    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: tasker.run(
                tasker.concurrence(
                    scheduler.with_schedule("tick", Interval(60), tick, first_run="immediately"),
                    scheduler.with_schedule(
                        "boom", Interval(60), boom, first_run="immediately", retry_delay=60
                    ),
                ),
                shutdown_trigger=stop.wait,
            )
        )
        await until(lambda: _true(scheduler.statistics().runs_failed == 1))
        await until(lambda: _true(scheduler.statistics().runs_succeeded == 1))
        stop.set()
    (tick_span,) = named(exporter, "schedule tick")
    (boom_span,) = named(exporter, "schedule boom")
    (work,) = named(exporter, "tick work")
    assert tick_span.kind is SpanKind.INTERNAL
    attributes = dict(tick_span.attributes or {})
    assert attributes["tasker.schedule.name"] == "tick"
    assert attributes["tasker.schedule.outcome"] == "succeeded"
    assert "T" in str(attributes["tasker.schedule.slot"])  # ISO 8601
    assert parent_id(work) == span_id(tick_span)
    assert dict(boom_span.attributes or {})["tasker.schedule.outcome"] == "failed"
    assert boom_span.status.status_code is StatusCode.ERROR


async def test_an_untraced_task_and_a_bad_carrier_give_a_root_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A task enqueued before tracing was on (no carrier) still gets an attempt span, as a
    root; a carrier that is not a JSON object of strings is ignored, never an error."""
    queue = Queue(MemoryQueueBackend())

    @queue.task("t")
    async def t(ctx: Context, payload: None) -> None:
        pass

    enqueued = await t.enqueue(None)
    tasker.tracing.instrument(queue=queue, tracer_provider=provider)
    async with Running(queue):
        await until(lambda: finished(queue, enqueued.id))
    (run,) = named(exporter, "run t")
    assert run.parent is None
    for bad in ("not json", "[1]", '{"traceparent": 1}', None):
        assert _Propagation().extract(bad) is None


ids = st.integers(min_value=0, max_value=2**128 - 1)


@settings(max_examples=300, deadline=None)
@given(
    trace=ids,
    span=st.integers(min_value=0, max_value=2**64 - 1),
    flags=st.integers(min_value=0, max_value=255),
    state=st.sampled_from([None, "vendor=value", "a=1,b=2"]),
    bag=st.sampled_from([None, "k", "k v"]),
)
def test_the_fast_carrier_is_what_the_propagator_reads_and_writes(
    trace: int, span: int, flags: int, state: str | None, bag: str | None
) -> None:
    """The carrier the fast path writes is the global propagator's, byte for byte, and what
    it reads back is what the propagator would read: for every id (zeros included), flag,
    trace state and baggage."""
    from opentelemetry import baggage, propagate
    from opentelemetry import trace as api
    from opentelemetry.context import Context as OtelContext
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    span_context = SpanContext(
        trace, span, False, TraceFlags(flags), TraceState.from_header([state]) if state else None
    )
    context = api.set_span_in_context(NonRecordingSpan(span_context), OtelContext())
    if bag is not None:
        context = baggage.set_baggage(bag, "v", context)
    expected: dict[str, str] = {}
    propagate.inject(expected, context=context)
    propagation = _Propagation()
    text = propagation.inject(context)
    assert (json.loads(text) if text else {}) == expected
    if text is None:
        return
    got = propagation.extract(text)
    want = propagate.extract(json.loads(text))
    assert got is not None
    assert (
        api.get_current_span(got).get_span_context()
        == api.get_current_span(want).get_span_context()
    )
    assert baggage.get_all(got) == baggage.get_all(want)
    for bad in (text.replace('"00-', '"ff-'), text.upper(), text[:-3] + '"}'):
        if bad != text:
            bad_got = propagation.extract(bad)
            bad_want = propagate.extract(json.loads(bad)) if bad.startswith("{") else None
            if bad_got is None or bad_want is None:
                continue
            assert (
                api.get_current_span(bad_got).get_span_context()
                == api.get_current_span(bad_want).get_span_context()
            )


def test_another_propagator_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a global propagator other than W3C Trace Context, the carrier is that one's,
    not the fast path's."""
    from opentelemetry import propagate
    from opentelemetry import trace as api
    from opentelemetry.propagators.textmap import TextMapPropagator

    class Custom(TextMapPropagator):
        def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
            return api.set_span_in_context(api.NonRecordingSpan(span_context))

        def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
            carrier["x-custom"] = "1"

        @property
        def fields(self) -> set[str]:
            return {"x-custom"}

    span_context = api.SpanContext(1, 2, True, api.TraceFlags(1))
    propagation = _Propagation()
    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", Custom())
    assert propagation.inject() == '{"x-custom":"1"}'
    got = propagation.extract('{"traceparent":"00-' + "1" * 32 + "-" + "2" * 16 + '-01"}')
    assert got is not None
    assert api.get_current_span(got).get_span_context() is span_context


def test_instrument_checks_its_arguments() -> None:
    """Neither a queue nor a scheduler, the wrong types, or tracing twice: refused."""
    queue = Queue(MemoryQueueBackend())
    with pytest.raises(ValueError, match="give a queue, a scheduler, or both"):
        tasker.tracing.instrument()
    with pytest.raises(TypeError, match="queue must be a Queue"):
        tasker.tracing.instrument(queue=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="scheduler must be a Scheduler"):
        tasker.tracing.instrument(scheduler=object())  # type: ignore[arg-type]
    tracing = tasker.tracing.instrument(queue=queue)
    assert repr(tracing) == "<tasker.tracing.Tracing queue=True scheduler=False>"
    with pytest.raises(ValueError, match="traced already"):
        tasker.tracing.instrument(queue=queue)


def test_an_untraced_queue_has_no_tracer() -> None:
    """Without instrument(), the hooks are absent: the worker reads None once per attempt."""
    queue = Queue(MemoryQueueBackend())
    assert queue._registry.tracer is None


def run_processes(spec: str, tmp_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The producer, then the worker, as two OS processes on ``spec``: their spans."""
    spans = []
    for role in ("producer", "worker"):
        out = tmp_path / f"{role}.json"
        proc = python_process(["tests/tracing_process.py", role, spec, str(out)])
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert stdout.strip() == "done"
        spans.append(json.loads(out.read_text()))
    return spans[0], spans[1]


def check_one_trace(produced: list[dict[str, Any]], consumed: list[dict[str, Any]]) -> None:
    by_name = {span["name"]: span for span in [*produced, *consumed]}
    request, enqueue = by_name["request"], by_name["enqueue greet"]
    run, inside = by_name["run greet"], by_name["inside"]
    assert {s["name"] for s in produced} == {"request", "enqueue greet"}
    assert {s["name"] for s in consumed} == {"run greet", "inside"}
    assert len({s["trace_id"] for s in (request, enqueue, run, inside)}) == 1
    assert enqueue["parent_id"] == request["span_id"]
    assert run["parent_id"] == enqueue["span_id"]
    assert inside["parent_id"] == run["span_id"]
    assert run["kind"] == "CONSUMER"
    assert enqueue["kind"] == "PRODUCER"
    assert (
        run["attributes"]["messaging.message.id"] == enqueue["attributes"]["messaging.message.id"]
    )


@pytest.mark.slow
def test_a_trace_crosses_processes_on_sqlite(tmp_path: Path) -> None:
    """A producer process enqueues under a span into a SQLite queue; a worker process runs
    it: their exported spans share the trace, the run's parent the enqueue span."""
    produced, consumed = run_processes(f"sqlite:{tmp_path / 'queue.sqlite3'}", tmp_path)
    check_one_trace(produced, consumed)


def test_the_nats_and_amqp_codecs_carry_the_context() -> None:
    """tasker_nats's record message and tasker_amqp's headers keep ``trace``; without one,
    nothing is added (older messages decode as untraced)."""
    from tasker.queue import TaskRecord, TaskState
    from tasker_amqp._codec import Meta, decode, encode
    from tasker_nats._codec import decode_record, encode_record

    carrier = '{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}'
    record = TaskRecord(
        id="t1",
        name="n",
        queue="q",
        payload=b"{}",
        priority=0,
        run_at=1.0,
        state=TaskState.QUEUED,
        attempts=0,
        max_attempts=1,
        timeout=None,
        unique_key=None,
        created_at=1.0,
        trace=carrier,
    )
    assert decode_record(encode_record(record)).trace == carrier
    untraced = decode_record(encode_record(replace(record, trace=None)))
    assert untraced == replace(record, trace=None)
    meta = Meta(
        id="t1",
        name="n",
        queue="q",
        priority=0,
        run_at=1.0,
        attempts=0,
        max_attempts=1,
        timeout=None,
        created_at=1.0,
        trace=carrier,
    )
    decoded, _ = decode(encode(meta))
    assert decoded.trace == carrier
    assert decoded.headers == {}  # reserved: not one of the task's own headers
    assert decode(encode(replace(meta, trace=None)))[0].trace is None
