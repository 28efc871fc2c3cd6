"""Task and group ids: UUIDv7 hex, time-ordered by the millisecond, unique."""

from __future__ import annotations

import time
import uuid

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasker.queue import MemoryQueueBackend, Queue
from tasker.queue._ids import new_id, uuid7


def test_an_id_is_a_uuid7_in_32_lowercase_hex_digits() -> None:
    before = time.time_ns() // 1_000_000
    task_id = new_id()
    after = time.time_ns() // 1_000_000
    assert len(task_id) == 32
    assert task_id == task_id.lower()
    parsed = uuid.UUID(task_id)
    assert parsed.hex == task_id
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert before <= int(task_id[:12], 16) <= after  # its first 48 bits: Unix milliseconds


def test_ids_are_unique_and_sort_by_their_millisecond() -> None:
    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    millis = [int(i[:12], 16) for i in ids]
    assert millis == sorted(millis)  # made later: never sorts before


@given(st.integers(0, 2**48 - 1), st.integers(0, 2**80 - 1))
def test_the_time_and_the_random_bits_fill_only_their_fields(millis: int, random: int) -> None:
    parsed = uuid.UUID(uuid7(millis, random))
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == millis
    assert (parsed.int >> 64) & 0xFFF == (random >> 62) & 0xFFF
    assert parsed.int & ((1 << 62) - 1) == random & ((1 << 62) - 1)


@pytest.mark.anyio
async def test_enqueued_tasks_and_their_groups_get_them() -> None:
    backend = MemoryQueueBackend()
    queue = Queue(backend)

    @queue.task("t")
    async def t(ctx: object, payload: int) -> None:
        await anyio.lowlevel.checkpoint()

    handle = await queue.enqueue("t", 1)
    members = await queue.enqueue_group([queue.step("t", 1), queue.step("t", 2)])
    for task_id in [handle.id, *(m.id for m in members)]:
        assert uuid.UUID(task_id).version == 7
    groups = {r.group_id for r in await backend.tasks()} - {None}
    assert len(groups) == 1
    assert uuid.UUID(groups.pop() or "").version == 7
