"""Acknowledgements on a consumer channel: one frame for a run of settled deliveries.

A worker settles its outcomes in batches, and each acknowledgement alone is a frame, a
write to the socket and a turn of aiormq's writer: with no-op tasks, that was a tenth of a
task's cost on the client. ``basic.ack`` with ``multiple`` acknowledges every delivery of
the channel up to a tag, so the tracker keeps the channel's unacknowledged tags in delivery
order and sends one frame for the settled run at their head; a delivery settled while an
older one still runs is acknowledged alone, at once (a delivery left unacknowledged after
its outcome would hold a prefetch slot, and come back after a crash though it finished).

``multiple`` is only safe if no delivery of the channel below the tag is unsettled, so
every delivery is registered (:meth:`Acks.delivered`) before the next one is read:
aiormq reads a channel's deliveries in tag order and starts their callbacks in that order,
and the backend registers each delivery in its callback's first step.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterable, Sequence

import aiormq.abc
import aiormq.exceptions

__all__ = ["Acks", "ack_all"]


class Acks:
    """The unacknowledged deliveries of one consumer channel, and their acknowledgement."""

    __slots__ = ("_open", "_order", "channel")

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        # Tags in delivery order (increasing), with those acknowledged alone left in until
        # the head passes them; ``_open`` holds the ones not yet acknowledged.
        self._order: collections.deque[int] = collections.deque()
        self._open: set[int] = set()

    def delivered(self, tag: int) -> None:
        """Register a delivery, before any later one of the channel is registered."""
        self._order.append(tag)
        self._open.add(tag)

    async def ack(self, tags: Iterable[int]) -> None:
        """Acknowledge settled deliveries, if the channel is still open (a delivery on a
        closed channel went back to its queue with it); a tag acknowledged before, or not
        registered, is skipped.

        Queued for the connection's writer without waiting for the socket to drain: waiting
        would say only that the frame reached the kernel, not the broker, so it guarantees
        nothing more (a connection lost before the broker reads the frame redelivers the
        message either way).
        """
        unacked = self._open
        settled = [tag for tag in tags if tag in unacked]
        if not settled:
            return
        unacked.difference_update(settled)
        order = self._order
        # The run of settled tags at the head: one frame for all of them.
        top, run = 0, 0
        mine = set(settled)
        while order and order[0] not in unacked:
            tag = order.popleft()
            if tag in mine:
                top, run = tag, run + 1
        alone = [tag for tag in settled if tag > top] if run else settled
        if len(order) > 4 * len(unacked) + 64:
            # Tags acknowledged alone behind a long-running delivery: drop them now rather
            # than when it ends.
            self._order = collections.deque(tag for tag in order if tag in unacked)
        channel = self.channel
        if channel.is_closed:
            return
        with contextlib.suppress(
            aiormq.exceptions.ChannelInvalidStateError, aiormq.exceptions.AMQPError
        ):
            if run:
                await channel.basic_ack(top, multiple=run > 1, wait=False)
            for tag in alone:
                await channel.basic_ack(tag, wait=False)


async def ack_all(deliveries: Sequence[tuple[Acks, int]]) -> None:
    """Acknowledge settled deliveries, given as (their channel's tracker, tag): one frame
    per run of them on a channel."""
    if not deliveries:
        return
    acks = deliveries[0][0]
    if all(tracker is acks for tracker, _ in deliveries):  # one channel: the common case
        await acks.ack([tag for _, tag in deliveries])
        return
    # Tags are per channel: a channel's tracker only ever sees its own.
    for tracker, tag in deliveries:
        await tracker.ack((tag,))
