"""Sparse indexes of one segment: `OffsetIndex` (offset -> file position) and `TimeIndex`
(timestamp -> offset).

Theory of operation
-------------------
Both are sorted arrays of fixed-size entries kept in memory (two `array` columns) and mirrored to an
append-only file. The segment adds an entry after roughly every `index_interval_bytes` of log, so a
lookup is a bisect followed by a short scan of the log from the returned position.

Offsets are stored relative to the segment's base offset (uint32), which bounds a segment to 2**32
offsets; the segment rolls before that.

On disk (little-endian, no header):
- `<base>.index`: entries of (relative_offset uint32, position uint32), 8 bytes, strictly increasing.
- `<base>.timeindex`: entries of (timestamp int64, relative_offset uint32), 12 bytes; the timestamp is
  the largest record timestamp seen up to and including the batch at that offset, so both columns
  strictly increase.

Crash: entries are written with plain writes and fsynced only by `flush`. After a crash an index may
end with a torn entry or lack recent entries; `load` refuses a file whose size is not a multiple of
the entry size or whose entries do not increase, and the segment then rebuilds it from the log.
Segments at or above the recovery point always rebuild their indexes.

Thread-safety: not thread-safe; the owning `PartitionLog` serializes access under its lock.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from bisect import bisect_left, bisect_right

from storage.fileio import remove_if_exists

_LITTLE = sys.byteorder == "little"


class CorruptIndexError(Exception):
    """An index file that cannot be trusted; the caller rebuilds it from the log."""


class _IndexFile:
    """Two sorted columns mirrored to a file of fixed-size little-endian entries."""

    entry: struct.Struct
    key_type: str
    value_type: str

    def __init__(self, path: str, base_offset: int, entries_max: int):
        self.path = path
        self.base_offset = base_offset
        self.entries_max = entries_max
        self._keys = array(self.key_type)
        self._values = array(self.value_type)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    # -- life cycle ---------------------------------------------------------------------------

    def load(self) -> None:
        """Read the file into memory; raise CorruptIndexError if it cannot be trusted."""
        size = os.fstat(self._fd).st_size
        if size % self.entry.size:
            raise CorruptIndexError(f"{self.path}: size {size} is not a multiple of {self.entry.size}")
        raw = os.pread(self._fd, size, 0) if size else b""
        if len(raw) != size:
            raise CorruptIndexError(f"{self.path}: short read")
        keys = array(self.key_type)
        values = array(self.value_type)
        for key, value in self.entry.iter_unpack(raw):
            keys.append(key)
            values.append(value)
        for i in range(1, len(keys)):
            if keys[i] <= keys[i - 1] or values[i] <= values[i - 1]:
                raise CorruptIndexError(f"{self.path}: entry {i} does not increase")
        self._keys = keys
        self._values = values

    def reset(self) -> None:
        """Drop every entry (before a rebuild from the log)."""
        self._keys = array(self.key_type)
        self._values = array(self.value_type)
        os.ftruncate(self._fd, 0)

    def flush(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def rename(self, path: str) -> None:
        os.replace(self.path, path)
        self.path = path

    def delete(self) -> None:
        self.close()
        remove_if_exists(self.path)

    # -- queries -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def is_full(self) -> bool:
        return len(self._keys) >= self.entries_max

    def last_entry(self) -> tuple[int, int] | None:
        if not self._keys:
            return None
        return self._keys[-1], self._values[-1]

    # -- changes -------------------------------------------------------------------------------

    def _append(self, key: int, value: int) -> None:
        if self._keys and (key <= self._keys[-1] or value <= self._values[-1]):
            raise AssertionError(
                f"{self.path}: index entry ({key}, {value}) does not follow "
                f"({self._keys[-1]}, {self._values[-1]})"
            )
        os.pwrite(self._fd, self.entry.pack(key, value), len(self._keys) * self.entry.size)
        self._keys.append(key)
        self._values.append(value)

    def _truncate_entries(self, keep: int) -> None:
        if keep >= len(self._keys):
            return
        del self._keys[keep:]
        del self._values[keep:]
        os.ftruncate(self._fd, keep * self.entry.size)


class OffsetIndex(_IndexFile):
    """Maps an offset to the file position of the batch holding it (or of an earlier batch)."""

    entry = struct.Struct("<II")
    key_type = "I"
    value_type = "I"

    def append(self, offset: int, position: int) -> None:
        self._append(offset - self.base_offset, position)

    def lookup(self, offset: int) -> tuple[int, int]:
        """(indexed offset, position) of the last entry at or below `offset`, else (base, 0)."""
        relative = offset - self.base_offset
        if relative < 0 or not self._keys:
            return self.base_offset, 0
        i = bisect_right(self._keys, min(relative, 2**32 - 1)) - 1
        if i < 0:
            return self.base_offset, 0
        return self.base_offset + self._keys[i], self._values[i]

    def truncate_to(self, offset: int) -> None:
        """Remove every entry for offsets >= `offset`."""
        relative = offset - self.base_offset
        self._truncate_entries(0 if relative <= 0 else bisect_left(self._keys, relative))

    def last_offset(self) -> int:
        return self.base_offset + self._keys[-1] if self._keys else self.base_offset


class TimeIndex(_IndexFile):
    """Maps a timestamp to an offset before which every record is older than it."""

    entry = struct.Struct("<qI")
    key_type = "q"
    value_type = "I"

    def append(self, timestamp: int, offset: int) -> None:
        self._append(timestamp, offset - self.base_offset)

    def lookup(self, timestamp: int) -> int:
        """An offset from which a scan finds the first record with a timestamp >= `timestamp`.

        It is the offset of the last entry whose timestamp is below `timestamp` (every record up to
        that batch is older), or the base offset.
        """
        i = bisect_left(self._keys, timestamp) - 1
        if i < 0:
            return self.base_offset
        return self.base_offset + self._values[i]

    def truncate_to(self, offset: int) -> None:
        """Remove every entry for offsets >= `offset`."""
        relative = offset - self.base_offset
        keep = len(self._values)
        while keep and self._values[keep - 1] >= relative:
            keep -= 1
        self._truncate_entries(keep)

    def max_timestamp(self) -> int | None:
        return self._keys[-1] if self._keys else None
