"""`LeaderEpochCache`: which leader epoch wrote which offsets (KIP-101/279).

Theory of operation
-------------------
Each entry (epoch, start_offset) says that the first batch written in `epoch` starts at `start_offset`;
the epoch ends where the next entry starts (or at the log end offset for the last one). A follower that
meets a new leader asks it for the end offset of the follower's latest epoch (`end_offset_for`) and
truncates to where the histories agree. The cache is truncated with the log: from the end when the log
is truncated, from the start when the log start offset advances.

On disk: `leader-epoch-checkpoint` in the partition directory, text, replaced atomically::

    0                 <- format version
    2                 <- number of entries
    0 0               <- epoch start_offset
    3 1200

Crash: the file is written with write-to-temp, fsync, rename, so it holds the old or the new entries.
A cache that runs ahead of a log cut by recovery is truncated to the log end offset on load.

Thread-safety: not thread-safe; the owning PartitionLog serializes access.
"""

from __future__ import annotations

import os
from bisect import bisect_right

from storage.fileio import write_atomic

FILE_NAME = "leader-epoch-checkpoint"
FORMAT_VERSION = 0
UNDEFINED_EPOCH = -1
UNDEFINED_OFFSET = -1


class LeaderEpochCache:
    def __init__(self, directory: str | None, *, durable: bool = True):
        self.path = os.path.join(directory, FILE_NAME) if directory else None
        self.durable = durable
        self._entries: list[tuple[int, int]] = []
        if self.path and os.path.exists(self.path):
            self._entries = _parse(self.path)

    @property
    def entries(self) -> list[tuple[int, int]]:
        return list(self._entries)

    def latest_epoch(self) -> int:
        return self._entries[-1][0] if self._entries else UNDEFINED_EPOCH

    def assign(self, epoch: int, start_offset: int) -> bool:
        """Record that `epoch` starts at `start_offset`; returns whether the cache changed.

        An epoch at or below the latest one is ignored (batches of an older leader appended by a
        follower are covered by the entry that already exists).
        """
        if epoch < 0:
            return False
        if self._entries:
            latest_epoch, latest_start = self._entries[-1]
            if epoch <= latest_epoch:
                return False
            if start_offset < latest_start:
                raise AssertionError(
                    f"epoch {epoch} starts at {start_offset}, before epoch {latest_epoch} at {latest_start}"
                )
            if start_offset == latest_start:
                # The older epoch wrote nothing that is still in the log (retention or a truncation took
                # it): the new epoch replaces it, as Kafka's cache drops entries at or past a new start.
                self._entries.pop()
        self._entries.append((epoch, start_offset))
        self._persist()
        return True

    def end_offset_for(self, epoch: int, log_end_offset: int) -> tuple[int, int]:
        """(largest known epoch <= `epoch`, its end offset) as KIP-279 defines it.

        The end offset is the start offset of the first later epoch, or the log end offset when
        `epoch` is the latest. (UNDEFINED_EPOCH, UNDEFINED_OFFSET) when every known epoch is larger.
        """
        if not self._entries:
            return UNDEFINED_EPOCH, UNDEFINED_OFFSET
        if epoch >= self._entries[-1][0]:
            return self._entries[-1][0], log_end_offset
        i = bisect_right(self._entries, (epoch, float("inf"))) - 1
        if i < 0:
            return UNDEFINED_EPOCH, UNDEFINED_OFFSET
        return self._entries[i][0], self._entries[i + 1][1]

    def epoch_for_offset(self, offset: int) -> int:
        """The epoch that wrote `offset` (or UNDEFINED_EPOCH when it is before the first entry)."""
        found = UNDEFINED_EPOCH
        for epoch, start in self._entries:
            if start > offset:
                break
            found = epoch
        return found

    def truncate_from_end(self, end_offset: int) -> None:
        """Forget epochs that start at or after `end_offset` (the log was truncated there)."""
        keep = [entry for entry in self._entries if entry[1] < end_offset]
        if keep != self._entries:
            self._entries = keep
            self._persist()

    def truncate_from_start(self, start_offset: int) -> None:
        """Drop epochs that end before `start_offset`; the epoch holding it now starts there."""
        i = bisect_right([start for _, start in self._entries], start_offset) - 1
        if i < 0:
            return
        kept = self._entries[i:]
        kept[0] = (kept[0][0], max(kept[0][1], start_offset))
        if kept != self._entries:
            self._entries = kept
            self._persist()

    def clear(self) -> None:
        if self._entries:
            self._entries = []
            self._persist()

    def _persist(self) -> None:
        if self.path is None:
            return
        lines = [str(FORMAT_VERSION), str(len(self._entries))]
        lines += [f"{epoch} {start}" for epoch, start in self._entries]
        write_atomic(self.path, ("\n".join(lines) + "\n").encode(), durable=self.durable)


def _parse(path: str) -> list[tuple[int, int]]:
    with open(path, encoding="ascii") as handle:
        lines = handle.read().split("\n")
    try:
        version = int(lines[0])
        count = int(lines[1])
        if version != FORMAT_VERSION:
            raise ValueError(f"unknown version {version}")
        entries = []
        for line in lines[2 : 2 + count]:
            epoch_text, start_text = line.split()
            entries.append((int(epoch_text), int(start_text)))
        if len(entries) != count:
            raise ValueError(f"expected {count} entries, found {len(entries)}")
    except (ValueError, IndexError) as exc:
        raise ValueError(f"{path}: malformed leader epoch checkpoint: {exc}") from None
    return entries
