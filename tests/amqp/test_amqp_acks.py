"""Acknowledgements in runs: ``multiple`` never covers a delivery that is not settled, no tag
is acknowledged twice, and a delivery settled behind a running one is acknowledged at once.

The channel is a model of RabbitMQ's (``rabbit_channel``'s ``collect_acks``): an unknown
tag, or one acknowledged before, closes the channel with PRECONDITION_FAILED."""

from __future__ import annotations

import itertools
from typing import cast

import aiormq.abc
import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasker_amqp._acks import Acks, ack_all


class ModelChannel:
    """What the broker knows of a consumer channel's deliveries."""

    is_closed = False

    def __init__(self) -> None:
        self.unacked: list[int] = []
        self.frames = 0

    def deliver(self, tag: int) -> None:
        self.unacked.append(tag)

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        assert not wait
        assert tag in self.unacked, f"PRECONDITION_FAILED: unknown delivery tag {tag}"
        self.frames += 1
        if multiple:
            self.unacked = [t for t in self.unacked if t > tag]
        else:
            self.unacked.remove(tag)


def tracker(channel: ModelChannel) -> Acks:
    return Acks(cast(aiormq.abc.AbstractChannel, channel))


@given(
    st.integers(1, 60).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.permutations(range(1, n + 1)),
            st.lists(st.integers(1, 6), min_size=1, max_size=60),
        )
    )
)
def test_runs_ack_exactly_what_is_settled(case: tuple[int, list[int], list[int]]) -> None:
    """Whatever order deliveries are settled in, and in whatever batches, the broker holds
    unacknowledged exactly the deliveries not settled yet, after every batch."""
    count, order, sizes = case

    async def main() -> None:
        channel = ModelChannel()
        acks = tracker(channel)
        for tag in range(1, count + 1):
            channel.deliver(tag)
            acks.delivered(tag)
        settled: set[int] = set()
        position = 0
        for size in itertools.cycle(sizes):
            if position >= count:
                break
            batch = order[position : position + size]
            position += size
            await acks.ack(batch)
            settled.update(batch)
            assert set(channel.unacked) == set(range(1, count + 1)) - settled

    anyio.run(main)


@pytest.mark.anyio
async def test_one_frame_for_a_run() -> None:
    """Ten deliveries settled together, in order, cost one frame; one settled behind a
    running delivery is acknowledged alone, and the run after it still in one frame."""
    channel = ModelChannel()
    acks = tracker(channel)
    for tag in range(1, 21):
        channel.deliver(tag)
        acks.delivered(tag)
    await acks.ack(range(1, 11))
    assert channel.frames == 1
    assert channel.unacked == list(range(11, 21))
    await acks.ack([15])  # 11 still runs
    assert channel.frames == 2
    assert 15 not in channel.unacked
    await acks.ack([11, 12, 13, 14, 16])  # the head moves past 15, acknowledged before
    assert channel.frames == 3
    assert channel.unacked == list(range(17, 21))
    await acks.ack([12, 15])  # acknowledged before: nothing sent
    assert channel.frames == 3


@pytest.mark.anyio
async def test_tags_acknowledged_alone_do_not_pile_up() -> None:
    """Behind one long-running delivery, the tags acknowledged alone are not kept for
    ever (the tracker's memory stays bounded by what is unacknowledged)."""
    channel = ModelChannel()
    acks = tracker(channel)
    for tag in range(1, 10_001):
        channel.deliver(tag)
        acks.delivered(tag)
        if tag > 1:
            await acks.ack([tag])
    assert channel.unacked == [1]
    assert len(acks._order) <= 4 * 1 + 64 + 1
    await acks.ack([1])
    assert channel.unacked == []


@pytest.mark.anyio
async def test_each_channel_its_own_tags() -> None:
    """Deliveries of two channels (before and after a reconnection) settled together are
    acknowledged each on its own channel."""
    old, new = ModelChannel(), ModelChannel()
    old_acks, new_acks = tracker(old), tracker(new)
    for channel, acks in ((old, old_acks), (new, new_acks)):
        for tag in (1, 2):
            channel.deliver(tag)
            acks.delivered(tag)
    pairs: list[tuple[Acks, int]] = [(old_acks, 1), (new_acks, 1), (old_acks, 2)]
    await ack_all(pairs)
    assert old.unacked == []
    assert new.unacked == [2]
