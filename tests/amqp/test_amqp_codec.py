"""A task as an AMQP message and back: tasker's fields in one header, the task's own beside it,
and a message another producer wrote refused as not a task (then kept as a dead letter)."""

from __future__ import annotations

import math
from typing import Any

import aiormq
import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pamqp import decode as wire_decode
from pamqp import encode as wire_encode
from pamqp.commands import Basic

from tasker_amqp import AmqpQueueBackend
from tasker_amqp._codec import Meta, NotATaskError, decode, encode

from .broker import amqp_url

names = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1
).filter(str.isprintable)
micros = st.integers(0, 2**53).map(lambda us: us / 1_000_000)
user_headers = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True).filter(
        lambda k: k != "tasker" and not k.startswith(("tasker-", "x-", "d"))
    ),
    st.text(max_size=20) | st.integers(-(2**63), 2**63 - 1) | st.booleans(),
    max_size=4,
)
metas = st.builds(
    Meta,
    id=st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True),
    name=names,
    queue=names,
    priority=st.integers(-(2**31), 2**31 - 1),
    run_at=micros,
    attempts=st.integers(0, 1000),
    max_attempts=st.integers(1, 1000),
    timeout=st.none() | micros.filter(lambda s: s > 0),
    created_at=micros,
    headers=user_headers,
    callback=st.none() | st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
)


def _over_the_wire(properties: Basic.Properties) -> Basic.Properties:
    """The properties as a consumer decodes them from the frame the producer encoded."""
    assert properties.headers is not None
    table = wire_encode.field_table(properties.headers)
    _, headers = wire_decode.field_table(table)
    return Basic.Properties(
        message_id=properties.message_id, message_type=properties.message_type, headers=headers
    )


@given(meta=metas, redelivered=st.integers(0, 50))
def test_a_task_survives_the_trip(meta: Meta, redelivered: int) -> None:
    """Every field comes back as it was (times to the microsecond), the task's own headers
    as themselves, and the broker's delivery count beside them."""
    properties = _over_the_wire(encode(meta))
    if redelivered:
        assert properties.headers is not None
        properties.headers["x-delivery-count"] = redelivered
    back, count = decode(properties)
    assert count == redelivered
    assert back.headers == dict(meta.headers)
    # Rounded down to the microsecond: up to 1 us early, and a hair more where the float
    # times a million lands just under a whole microsecond (536780.922328 -> ...327).
    assert back.run_at == pytest.approx(meta.run_at, abs=1.001e-6)
    assert back.created_at == pytest.approx(meta.created_at, abs=1e-6)
    assert (back.timeout is None) == (meta.timeout is None)
    expected = (meta.id, meta.name, meta.queue, meta.priority, meta.attempts)
    assert (back.id, back.name, back.queue, back.priority, back.attempts) == expected
    assert (back.max_attempts, back.callback) == (meta.max_attempts, meta.callback)
    # A due time is rounded down, never up: a claim at run_at exactly finds it due.
    assert back.run_at <= meta.run_at


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"tasker": "2\x1fdefault\x1f0\x1f0\x1f0\x1f1\x1f0\x1f\x1f"},  # a newer format
        {"tasker": "1\x1fdefault\x1f0\x1f0"},  # fields missing
        {"tasker": "1\x1fdefault\x1fhigh\x1f0\x1f0\x1f1\x1f0\x1f\x1f"},  # not a number
        {"tasker": "1\x1f\x1f0\x1f0\x1f0\x1f1\x1f0\x1f\x1f"},  # no queue
        {"tasker": 42},
        {"tasker-queue": "default", "tasker-priority": 0},  # some other shape
    ],
)
def test_what_tasker_did_not_write_is_not_a_task(headers: dict[str, Any]) -> None:
    properties = Basic.Properties(message_id="m1", message_type="job", headers=headers)
    with pytest.raises(NotATaskError, match="not a tasker_amqp task message"):
        decode(properties)


def test_an_infinite_or_absent_timeout_is_none() -> None:
    meta = Meta(
        id="a", name="n", queue="q", priority=0, run_at=0, attempts=0, max_attempts=1,
        timeout=None, created_at=0,
    )  # fmt: skip
    assert decode(_over_the_wire(encode(meta)))[0].timeout is None
    assert not math.isinf(decode(_over_the_wire(encode(meta)))[0].run_at)


@pytest.mark.anyio
async def test_another_producers_message_is_kept_as_a_dead_letter(
    names: str, cleanup: list[str]
) -> None:
    """A message in a work queue that tasker did not write is never run nor dropped: it
    moves to the dead-letter queue with the reason, and the worker goes on."""
    cleanup += ["default"]
    backend = AmqpQueueBackend(
        amqp_url(), exchange=names, namespace=names, dead_queue=f"{names}.dead"
    )
    now = await backend.time()
    assert await backend.claim(["default"], 10, worker="w", lease=30, now=now) == []
    connection = await aiormq.connect(amqp_url())
    try:
        channel = await connection.channel()
        await channel.basic_publish(
            b"<not a task>",
            exchange="",
            routing_key=f"{names}.default",
            properties=Basic.Properties(headers={"producer": "legacy"}),
        )
        with anyio.fail_after(20):
            while True:
                got = await channel.basic_get(f"{names}.dead", no_ack=True)
                if got.delivery_tag is not None:  # a GetOk: the dead letter is there
                    break
                await anyio.sleep(0.02)
        assert got.body == b"<not a task>"
        dead_headers = got.header.properties.headers or {}
        assert "not a tasker_amqp task message" in str(dead_headers["tasker-error"])
        assert dead_headers["producer"] == "legacy"
    finally:
        await connection.close()
    assert await backend.claim(["default"], 10, worker="w", lease=30, now=now) == []
    await backend.aclose()
