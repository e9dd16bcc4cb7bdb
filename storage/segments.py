"""`LogSegments`: the segments of one log, ordered by base offset.

Thread-safety: not thread-safe; `PartitionLog` serializes access under its lock.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Iterator

from storage.segment import LogSegment


class LogSegments:
    """An ordered map base offset -> LogSegment with floor/higher lookups."""

    def __init__(self) -> None:
        self._bases: list[int] = []
        self._by_base: dict[int, LogSegment] = {}

    def add(self, segment: LogSegment) -> None:
        if segment.base_offset in self._by_base:
            raise AssertionError(f"two segments with base offset {segment.base_offset}")
        insort(self._bases, segment.base_offset)
        self._by_base[segment.base_offset] = segment

    def remove(self, base_offset: int) -> LogSegment:
        segment = self._by_base.pop(base_offset)
        self._bases.remove(base_offset)
        return segment

    def floor(self, offset: int) -> LogSegment | None:
        """The segment with the largest base offset <= `offset`."""
        i = bisect_right(self._bases, offset) - 1
        return self._by_base[self._bases[i]] if i >= 0 else None

    def higher(self, base_offset: int) -> LogSegment | None:
        """The segment after the one at `base_offset`."""
        i = bisect_right(self._bases, base_offset)
        return self._by_base[self._bases[i]] if i < len(self._bases) else None

    def from_offset(self, offset: int) -> Iterator[LogSegment]:
        """Segments that may hold `offset` or later offsets, in order."""
        i = max(bisect_right(self._bases, offset) - 1, 0)
        for base in self._bases[i:]:
            yield self._by_base[base]

    @property
    def active(self) -> LogSegment:
        return self._by_base[self._bases[-1]]

    @property
    def first(self) -> LogSegment:
        return self._by_base[self._bases[0]]

    def __iter__(self) -> Iterator[LogSegment]:
        return iter([self._by_base[base] for base in self._bases])

    def __len__(self) -> int:
        return len(self._bases)

    def __bool__(self) -> bool:
        return bool(self._bases)

    def size_bytes(self) -> int:
        return sum(segment.size for segment in self._by_base.values())
