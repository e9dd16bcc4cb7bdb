"""`TailCache`: the batches a leader appended above its high watermark, kept in memory for its
followers' next fetches. No IO.

Theory of operation
-------------------
With replication, every batch a leader appends is read back about once per in-sync follower, a few
milliseconds later, by the fetch that the append woke. Read from the log, each such read is a pread
of the batch and a checksum pass over it (LogSegment.read_at checks every batch it reads). Yet the
leader had those very bytes in hand when it appended them, checked: so it keeps them here, and a
follower's fetch from a batch start it holds is answered from memory (node/replica.py,
`Partition.read_for_follower`). What is not here (a follower far behind, a batch dropped for room)
is read from the log as before: the cache changes the cost of a read, never its answer.

- `add(base_offset, next_offset, data)` after each leader append (`data`: the batch as written,
  offsets and leader epoch stamped). The batches held are always contiguous: one that does not
  start where the last one ended empties the cache first.
- `drop_below(high_watermark)` when the HW moves: a batch every in-sync replica holds is no longer
  needed, so in steady state the cache holds the batches between the HW and the log end offset.
- `read(offset, max_bytes)`: the held batches from the one starting at `offset`, as many as fit
  in `max_bytes` but at least one (as the log's read does); None when no held batch starts there.
- `clear()` when the replica stops leading or leaves the node.

Limits: `TAIL_BYTES_MAX` per partition and a node-wide `TailCacheBudget` (`NODE_TAIL_BYTES_MAX`).
An add that does not fit drops the oldest held batches first; a batch larger than either limit is
not kept (the cache empties, so what it holds stays contiguous).

Thread-safety: none; the event loop owns every cache.
"""

from __future__ import annotations

from collections import deque

# Per partition: a few of the largest batches in flight (max.message.bytes is 1 MiB by default).
TAIL_BYTES_MAX = 4 << 20
# Per node: about what the in-flight produce requests of a busy node hold anyway.
NODE_TAIL_BYTES_MAX = 64 << 20


class TailCacheBudget:
    """The bytes every `TailCache` of a node holds together, against one limit."""

    def __init__(self, limit_bytes: int = NODE_TAIL_BYTES_MAX):
        self.limit_bytes = limit_bytes
        self.used_bytes = 0


class TailCache:
    def __init__(self, budget: TailCacheBudget, limit_bytes: int = TAIL_BYTES_MAX):
        self.budget = budget
        self.limit_bytes = limit_bytes
        self.bytes = 0
        self._batches: deque[tuple[int, int, bytes]] = deque()  # (base offset, next offset, data)

    def __len__(self) -> int:
        return len(self._batches)

    def add(self, base_offset: int, next_offset: int, data: bytes) -> None:
        if next_offset <= base_offset:
            raise ValueError(f"a batch from {base_offset} must end past it, not at {next_offset}")
        batches = self._batches
        if batches and batches[-1][1] != base_offset:
            self.clear()  # not contiguous with what is held (a gap or an overlap): start afresh
        size = len(data)
        budget = self.budget
        if size > self.limit_bytes or budget.used_bytes - self.bytes + size > budget.limit_bytes:
            self.clear()  # no room even with this cache emptied: not kept (still contiguous)
            return
        while self.bytes + size > self.limit_bytes or budget.used_bytes + size > budget.limit_bytes:
            self._drop_oldest()
        batches.append((base_offset, next_offset, data))
        self.bytes += size
        budget.used_bytes += size

    def drop_below(self, offset: int) -> None:
        """Drop the batches wholly below `offset`."""
        batches = self._batches
        while batches and batches[0][1] <= offset:
            self._drop_oldest()

    def read(self, offset: int, max_bytes: int) -> bytes | None:
        batches = self._batches
        if not batches or offset < batches[0][0] or offset >= batches[-1][1]:
            return None
        # Newest first: a follower in step asks for the last batch or the one before.
        for index in range(len(batches) - 1, -1, -1):
            if batches[index][0] == offset:
                break
        else:
            return None  # inside a held batch, not at its start: the log's read answers that
        first = batches[index][2]
        size = len(first)
        parts = [first]
        for position in range(index + 1, len(batches)):
            data = batches[position][2]
            if size + len(data) > max_bytes:
                break
            parts.append(data)
            size += len(data)
        return first if len(parts) == 1 else b"".join(parts)

    def clear(self) -> None:
        self.budget.used_bytes -= self.bytes
        self.bytes = 0
        self._batches.clear()

    def _drop_oldest(self) -> None:
        size = len(self._batches.popleft()[2])
        self.bytes -= size
        self.budget.used_bytes -= size
