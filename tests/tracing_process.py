"""A process of the cross-process tracing test: ``python tests/tracing_process.py ROLE
BACKEND OUT``.

ROLE is ``producer`` (enqueues one ``greet`` task under a ``request`` span, then exits) or
``worker`` (runs tasks until ``greet`` has run once). BACKEND is ``sqlite:PATH``,
``pg:SCHEMA:DSN`` or ``redis:NAMESPACE:URL``. Each process writes the spans it made to OUT
as a JSON list of ``{name, trace_id, span_id, parent_id, kind, attributes}``, and prints
``done``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tasker
import tasker.tracing
from tasker.queue import Queue, QueueBackend, SQLiteQueueBackend


def _backend(spec: str) -> QueueBackend:
    kind, _, rest = spec.partition(":")
    if kind == "sqlite":
        return SQLiteQueueBackend(rest)
    name, _, address = rest.partition(":")
    if kind == "redis":
        from tasker_redis import RedisQueueBackend

        return RedisQueueBackend(address, namespace=name)
    from tasker_pg import PostgresQueueBackend

    return PostgresQueueBackend(address, schema=name)


async def _main(role: str, spec: str, out: Path, provider: TracerProvider) -> None:
    backend = _backend(spec)
    queue = Queue(backend)
    tasker.tracing.instrument(queue=queue, tracer_provider=provider)
    ran = anyio.Event()

    @queue.task("greet")
    async def greet(ctx: tasker.Context, payload: str) -> str:
        with provider.get_tracer("handler").start_as_current_span("inside"):
            ran.set()
        return f"hello {payload}"

    if role == "producer":
        if spec.startswith("pg:"):
            await backend.migrate()  # type: ignore[attr-defined]
        with provider.get_tracer("app").start_as_current_span("request"):
            await queue.enqueue("greet", "world")
        await backend.aclose()
    else:
        await tasker.run(queue.worker(poll=0.2), shutdown_trigger=ran.wait)


def main() -> None:
    role, spec, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    anyio.run(_main, role, spec, out, provider)
    spans: list[dict[str, Any]] = [
        {
            "name": span.name,
            "trace_id": f"{span.context.trace_id:032x}",
            "span_id": f"{span.context.span_id:016x}",
            "parent_id": None if span.parent is None else f"{span.parent.span_id:016x}",
            "kind": span.kind.name,
            "attributes": dict(span.attributes or {}),
        }
        for span in exporter.get_finished_spans()
        if span.context is not None
    ]
    out.write_text(json.dumps(spans))
    print("done", flush=True)


if __name__ == "__main__":
    main()
