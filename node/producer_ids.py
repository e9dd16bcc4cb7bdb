"""Producer ids for idempotent producers: `POST /v1/producers` on any node.

Theory of operation
-------------------
The active controller hands out blocks of ids through the metadata log (`AllocateProducerIds`: the
image's `next_producer_id` moves past the block, so no two blocks overlap, also across controller
failovers: the next controller reads the same image). Each node takes a block for its current broker
incarnation (`POST /v1/internal/brokers/{id}/producer-ids`) and gives out its ids one by one; when
the block runs out it asks for another. Ids left in a block when the node restarts are never used:
ids are 63-bit, so skipping is cheap, and reusing one could mix two producers' sequences.

A new producer gets epoch 0. The epoch is the producer's to raise (the client raises it per partition
to start that partition's sequences again at 0, see raftka/client/accumulator.py): a partition
leader accepts a higher epoch that starts at sequence 0 and fences lower ones (40902).

Thread-safety: event loop only.
"""

from __future__ import annotations

import asyncio


class ProducerIdBlock:
    """The ids [next, end) this node may still give out (pure)."""

    def __init__(self) -> None:
        self.next = 0
        self.end = 0

    def take(self) -> int | None:
        if self.next >= self.end:
            return None
        value = self.next
        self.next += 1
        return value

    def replace(self, first: int, size: int) -> None:
        if size < 1 or first < 0:
            raise ValueError(f"bad producer id block: first {first}, size {size}")
        self.next, self.end = first, first + size


class ProducerIds:
    """The node's shell: a block, refilled from the controller through the broker lifecycle."""

    def __init__(self, lifecycle) -> None:
        self.lifecycle = lifecycle
        self.block = ProducerIdBlock()
        self._refill = asyncio.Lock()

    async def new_id(self) -> int:
        while True:
            value = self.block.take()
            if value is not None:
                return value
            async with self._refill:
                if self.block.next >= self.block.end:  # nobody refilled it while we waited
                    first, size = await self.lifecycle.allocate_producer_ids()
                    self.block.replace(first, size)
