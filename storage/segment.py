"""`LogSegment`: one `.log` file of whole record batches with its sparse offset and time indexes.

Theory of operation
-------------------
A segment holds the batches whose offsets start at its base offset, up to the base offset of the next
segment. Batches are appended with one `writev` of the stamped 17-byte prefix and the untouched rest of
the producer's bytes, so appending costs no copy and no hashing beyond the producer-side check. Every
`index_interval_bytes` of log the segment adds an offset index entry (batch base offset -> position) and,
when the largest timestamp grew, a time index entry.

Reads locate the starting batch through the offset index and a short header scan, then return whole
batches with one `pread`, after checking every returned batch's checksum: a batch that fails it is
reported and never served.

On disk: `<base offset, 20 digits>.log` (concatenated batches, see storage/record_batch.py),
`<base>.index` and `<base>.timeindex` (see storage/index.py). While the log cleaner writes a replacement,
the same three names carry a `.cleaned` suffix.

Crash: an append is a single `writev` at the end of the file; a crash can leave a torn batch at the
tail, which `recover` finds (bad length or checksum) and cuts off, rebuilding both indexes. Nothing is
fsynced except by `flush`.

Thread-safety: not thread-safe; `PartitionLog` serializes every call under its lock.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from storage.config import LogConfig
from storage.errors import CorruptLogError
from storage.fileio import remove_if_exists
from storage.index import CorruptIndexError, OffsetIndex, TimeIndex
from storage.record_batch import (
    HEADER_SIZE,
    LOG_OVERHEAD,
    BatchHeader,
    InvalidBatchError,
    check_batch,
    check_header,
    decode_records,
    read_header,
    read_size,
)

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIME_INDEX_SUFFIX = ".timeindex"
CLEANED_SUFFIX = ".cleaned"
SCAN_CHUNK_BYTES = 1024 * 1024
RELATIVE_OFFSET_MAX = 2**32 - 1
SEGMENT_POSITION_MAX = 2**32 - 1  # positions are uint32 in the offset index


def segment_file_name(base_offset: int, suffix: str) -> str:
    return f"{base_offset:020d}{suffix}"


@dataclass(frozen=True, slots=True)
class FoundRecord:
    offset: int
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class RecoveryResult:
    valid_bytes: int
    truncated_bytes: int
    batches: int
    error: str | None
    epoch_runs: tuple[tuple[int, int, int], ...] = ()  # (leader epoch, first offset, end offset)


RECENT_BATCHES_MAX = 8  # batch starts a segment remembers (LogSegment._recent)


class LogSegment:
    """One segment file and its indexes."""

    def __init__(self, directory: str, base_offset: int, config: LogConfig, suffix: str = ""):
        self.directory = directory
        self.base_offset = base_offset
        self.suffix = suffix
        self.log_path = os.path.join(directory, segment_file_name(base_offset, LOG_SUFFIX + suffix))
        self._fd = os.open(self.log_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self._fd).st_size
        entries_max = config.index_entries_max
        self.offset_index = OffsetIndex(
            os.path.join(directory, segment_file_name(base_offset, INDEX_SUFFIX + suffix)),
            base_offset,
            entries_max,
        )
        self.time_index = TimeIndex(
            os.path.join(directory, segment_file_name(base_offset, TIME_INDEX_SUFFIX + suffix)),
            base_offset,
            entries_max,
        )
        self.index_interval_bytes = config.index_interval_bytes
        self.next_offset = base_offset
        self.max_timestamp = -1
        self.first_batch_timestamp: int | None = None
        self._bytes_since_index_entry = 0
        self._time_index_max = -1
        self.deleted = False
        # Where the last few appended batches start: base offset -> (position, header). A follower
        # fetches from the batch boundary it reached, nearly always one of these, so its read skips
        # the index lookup and the header reads (`_locate`). Emptied by every truncation.
        self._recent: dict[int, tuple[int, BatchHeader]] = {}

    # -- loading and recovery ------------------------------------------------------------------

    def load(self) -> str | None:
        """Trust the log bytes (below the recovery point) and load the indexes, rebuilding a bad one.

        Damaged log bytes found on the way are not cut (that would open a hole in the middle of the log):
        they stay, reads of them raise CorruptLogError, and the damage is returned for the load report.
        """
        try:
            self.offset_index.load()
            self.time_index.load()
            if self.size and (len(self.offset_index) == 0 or len(self.time_index) == 0):
                # The first batch of a segment always gets an entry in both: an empty file was lost.
                raise CorruptIndexError(f"{self.offset_index.path}: empty index for a non-empty log")
            last = self.offset_index.last_entry()
            if last is not None and last[1] >= self.size:
                raise CorruptIndexError(f"{self.offset_index.path}: entry past the end of the log")
        except CorruptIndexError:
            return self.recover(truncate=False).error
        try:
            self._scan_tail()
        except InvalidBatchError as exc:
            return f"{self.log_path}: {exc}"
        last_time = self.time_index.last_entry()
        if last_time is not None and self.base_offset + last_time[1] >= self.next_offset:
            return self.recover(truncate=False).error
        return None

    def recover(self, *, truncate: bool = True, offset_limit: int | None = None) -> RecoveryResult:
        """Re-scan the whole file, verify every batch, rebuild both indexes, cut at the first bad byte
        (or, with `truncate=False`, only report it). Base offsets must increase and, when the next
        segment's base is given as `offset_limit`, every offset must stay below it: the base offset is
        outside the checksum, so these order checks are what catch a damaged one."""
        self.offset_index.reset()
        self.time_index.reset()
        self._reset_tail_state()
        valid = 0
        batches = 0
        error = None
        expected_min = self.base_offset
        epoch_runs: list[tuple[int, int, int]] = []
        try:
            for position, header, _view in self._scan(0, verify=True):
                if header.base_offset < expected_min:
                    raise InvalidBatchError(
                        f"base offset {header.base_offset} does not follow offset {expected_min - 1}"
                    )
                if offset_limit is not None and header.last_offset >= offset_limit:
                    raise InvalidBatchError(
                        f"batch offsets {header.base_offset}..{header.last_offset} run into the next segment at {offset_limit}"
                    )
                if header.last_offset - self.base_offset > RELATIVE_OFFSET_MAX:
                    raise InvalidBatchError(f"offset {header.last_offset} too far from the segment base")
                self._index_batch(header, position)
                if epoch_runs and epoch_runs[-1][0] == header.leader_epoch:
                    epoch_runs[-1] = (header.leader_epoch, epoch_runs[-1][1], header.next_offset)
                else:
                    epoch_runs.append((header.leader_epoch, header.base_offset, header.next_offset))
                expected_min = header.next_offset
                valid = position + header.size
                batches += 1
        except InvalidBatchError as exc:
            error = f"{self.log_path} at position {valid}: {exc}"
        truncated = self.size - valid if truncate else 0
        if truncated:
            os.ftruncate(self._fd, valid)
            self.size = valid
            self._recent.clear()
        return RecoveryResult(valid, truncated, batches, error, tuple(epoch_runs))

    def reset(self) -> None:
        """Empty the segment: log and both indexes."""
        os.ftruncate(self._fd, 0)
        self.size = 0
        self.offset_index.reset()
        self.time_index.reset()
        self._reset_tail_state()

    def _reset_tail_state(self) -> None:
        self._recent.clear()
        self.next_offset = self.base_offset
        self.max_timestamp = -1
        self.first_batch_timestamp = None
        self._bytes_since_index_entry = 0
        self._time_index_max = -1

    def _scan_tail(self) -> None:
        """Derive next offset, largest timestamp and index spacing from the indexes plus a scan of the
        batches after the last offset index entry."""
        self._reset_tail_state()
        indexed_max = self.time_index.max_timestamp()
        if indexed_max is not None:
            self.max_timestamp = indexed_max
            self._time_index_max = indexed_max
        last = self.offset_index.last_entry()
        start = 0 if last is None else last[1]
        if self.size:
            self.first_batch_timestamp = read_header(os.pread(self._fd, HEADER_SIZE, 0)).max_timestamp
        since = 0
        for _position, header, _view in self._scan(start, verify=False):
            since += header.size
            self.next_offset = header.next_offset
            if header.max_timestamp > self.max_timestamp:
                self.max_timestamp = header.max_timestamp
        self._bytes_since_index_entry = since

    def _index_batch(self, header: BatchHeader, position: int) -> None:
        """Account for a batch appended or scanned at `position`: indexes and tail state."""
        max_timestamp = header.max_timestamp
        if self.first_batch_timestamp is None:
            self.first_batch_timestamp = max_timestamp
        if max_timestamp > self.max_timestamp:
            self.max_timestamp = max_timestamp
        if self._bytes_since_index_entry >= self.index_interval_bytes or len(self.offset_index) == 0:
            self.offset_index.append(header.base_offset, position)
            if self.max_timestamp > self._time_index_max:
                self.time_index.append(self.max_timestamp, header.base_offset)
                self._time_index_max = self.max_timestamp
            self._bytes_since_index_entry = 0
        self._bytes_since_index_entry += header.batch_length + LOG_OVERHEAD
        self.next_offset = header.base_offset + header.last_offset_delta + 1

    # -- appends -------------------------------------------------------------------------------

    def append(self, header: BatchHeader, buffers: list) -> int:
        """Append one batch given as buffers whose bytes are `header.size` long; return its position.

        On a failed or short write the file is cut back to its old size, so nothing is half-written.
        """
        position = self.size
        expected = header.size
        try:
            written = os.writev(self._fd, buffers)
            if written != expected:
                raise OSError(f"short write of {written} of {expected} bytes to {self.log_path}")
        except BaseException:
            os.ftruncate(self._fd, position)
            raise
        self.size = position + expected
        self._index_batch(header, position)
        recent = self._recent
        recent[header.base_offset] = (position, header)
        if len(recent) > RECENT_BATCHES_MAX:
            del recent[next(iter(recent))]
        return position

    def can_hold(self, header: BatchHeader, segment_bytes: int) -> bool:
        """Whether a batch still fits in this segment (size, index room, relative offsets)."""
        if self.size == 0:
            return header.last_offset - self.base_offset <= RELATIVE_OFFSET_MAX
        end = self.size + header.batch_length + LOG_OVERHEAD
        return (
            end <= segment_bytes
            and end <= SEGMENT_POSITION_MAX
            and not self.offset_index.is_full
            and not self.time_index.is_full
            and header.base_offset + header.last_offset_delta - self.base_offset <= RELATIVE_OFFSET_MAX
        )

    # -- reads ---------------------------------------------------------------------------------

    def _scan(
        self, position: int, *, verify: bool, end: int | None = None
    ) -> Iterator[tuple[int, BatchHeader, memoryview]]:
        """Yield (position, header, batch bytes) for whole batches from `position`, reading in chunks.

        A header that cannot be valid, or (with `verify`) a checksum that fails, raises InvalidBatchError;
        a torn batch at the end of the file raises too.
        """
        end = self.size if end is None else end
        while position < end:
            chunk = os.pread(self._fd, min(SCAN_CHUNK_BYTES, end - position), position)
            view = memoryview(chunk)
            offset = 0
            while offset < len(view):
                if len(view) - offset < HEADER_SIZE:
                    if position + offset + HEADER_SIZE > end:
                        raise InvalidBatchError(f"torn batch header: {end - position - offset} bytes left")
                    break
                header = read_header(view, offset)
                check_header(header)
                if position + offset + header.size > end:
                    raise InvalidBatchError(
                        f"torn batch: {header.size} bytes declared, {end - position - offset} on disk"
                    )
                if offset + header.size > len(view):
                    if offset == 0:  # one batch larger than the chunk: read it whole
                        view = memoryview(os.pread(self._fd, header.size, position))
                    else:
                        break
                batch = view[offset : offset + header.size]
                if verify:
                    check_batch(batch)
                yield position + offset, header, batch
                offset += header.size
            position += offset

    def _locate(self, offset: int) -> tuple[int, BatchHeader] | None:
        """Position and header of the first batch whose last offset is >= `offset`, or None."""
        recent = self._recent.get(offset)
        if recent is not None:
            return recent
        _, position = self.offset_index.lookup(offset)
        for pos, header, _view in self._scan_headers(position):
            if header.last_offset >= offset:
                return pos, header
        return None

    def _scan_headers(self, position: int) -> Iterator[tuple[int, BatchHeader, None]]:
        """Walk batch headers from `position` with one small read per batch (short walks only)."""
        while position < self.size:
            header = self._header_at(position)
            yield position, header, None
            position += header.size

    def _header_at(self, position: int) -> BatchHeader:
        """The checked header of the batch at `position`; CorruptLogError if it cannot be one."""
        try:
            header = read_header(os.pread(self._fd, HEADER_SIZE, position))
            check_header(header, self.size - position)
        except InvalidBatchError as exc:
            raise CorruptLogError(f"{self.log_path} at position {position}: {exc}") from None
        return header

    def read(
        self, offset: int, max_bytes: int, max_offset: int | None = None, min_one: bool = True
    ) -> bytes | None:
        """Whole batches starting with the one holding `offset`, at most `max_bytes` of them (but at least
        one batch when `min_one`), none with a base offset at or above `max_offset`. None when this
        segment holds no batch at or after `offset` (the caller goes on to the next segment); b"" when it
        does but nothing may be returned (the first batch is too big, or at `max_offset`).

        Every returned batch passed its checksum; a batch that fails raises CorruptLogError if it would be
        the first one returned, and otherwise ends the read before it.
        """
        located = self._locate(offset)
        if located is None:
            return None
        return self.read_at(located[0], max_bytes, max_offset, min_one, located[1])

    def read_at(
        self,
        start: int,
        max_bytes: int,
        max_offset: int | None = None,
        min_one: bool = True,
        first: BatchHeader | None = None,
    ) -> bytes:
        """Whole, checksum-verified batches from file position `start` (see `read`); `first`: the
        checked header of the batch there, when the caller has it."""
        if start >= self.size:
            return b""
        if first is None:
            first = self._header_at(start)
        if max_offset is not None and first.base_offset >= max_offset:
            return b""
        want = max(max_bytes, first.size) if min_one else max_bytes
        data = os.pread(self._fd, min(want, self.size - start), start)
        view = memoryview(data)
        end = len(view)
        pos = 0
        while pos + HEADER_SIZE <= end:
            # read_size is one small unpack; check_batch then parses and checks the header once.
            base_offset, size = read_size(view, pos)
            if max_offset is not None and base_offset >= max_offset:
                break
            if pos + size > end:
                break
            try:
                check_batch(view[: pos + size], pos)
            except InvalidBatchError as exc:
                if pos == 0:
                    raise CorruptLogError(f"{self.log_path} at position {start}: {exc}") from None
                break
            pos += size
        return data[:pos]

    def find_by_timestamp(self, timestamp: int, start_offset: int) -> FoundRecord | None:
        """The first record at or after `start_offset` with a timestamp >= `timestamp`."""
        if self.max_timestamp < timestamp:
            return None
        from_offset = max(self.time_index.lookup(timestamp), start_offset)
        located = self._locate(from_offset)
        if located is None:
            return None
        for _pos, header, view in self._scan(located[0], verify=True):
            if header.max_timestamp < timestamp:
                continue
            for record in decode_records(view, header):
                if record.offset >= start_offset and record.timestamp_ms >= timestamp:
                    return FoundRecord(record.offset, record.timestamp_ms)
        return None

    def batches(self, start_position: int = 0) -> Iterator[tuple[int, BatchHeader, memoryview]]:
        """Every batch from `start_position`, checksum-verified (cleaner, producer state rebuild)."""
        try:
            yield from self._scan(start_position, verify=True)
        except InvalidBatchError as exc:
            raise CorruptLogError(f"{self.log_path}: {exc}") from None

    def position_of(self, offset: int) -> int:
        """File position of the first batch whose last offset is >= `offset` (the size if none)."""
        located = self._locate(offset)
        return self.size if located is None else located[0]

    # -- changes -------------------------------------------------------------------------------

    def truncate_to(self, offset: int) -> int:
        """Remove every batch whose last offset is >= `offset`; return the bytes removed."""
        located = self._locate(offset)
        if located is None:
            return 0
        position = located[0]
        removed = self.size - position
        os.ftruncate(self._fd, position)
        self.size = position
        self.offset_index.truncate_to(located[1].base_offset)
        self.time_index.truncate_to(located[1].base_offset)
        self._scan_tail()
        return removed

    def flush(self) -> None:
        os.fsync(self._fd)
        self.offset_index.flush()
        self.time_index.flush()

    def last_modified_ms(self) -> int:
        return os.fstat(self._fd).st_mtime_ns // 1_000_000

    def set_last_modified_ms(self, ms: int) -> None:
        os.utime(self.log_path, ns=(ms * 1_000_000, ms * 1_000_000))

    def change_suffix(self, new_suffix: str) -> None:
        """Rename the three files from their current suffix to `new_suffix` (log last)."""
        for index, suffix in ((self.offset_index, INDEX_SUFFIX), (self.time_index, TIME_INDEX_SUFFIX)):
            index.rename(
                os.path.join(self.directory, segment_file_name(self.base_offset, suffix + new_suffix))
            )
        new_log = os.path.join(self.directory, segment_file_name(self.base_offset, LOG_SUFFIX + new_suffix))
        os.replace(self.log_path, new_log)
        self.log_path = new_log
        self.suffix = new_suffix

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.offset_index.close()
        self.time_index.close()

    def delete(self) -> None:
        """Remove the files (log first, so a crash never leaves indexes without their log mattering)."""
        self.deleted = True
        self.close()
        for path in (self.log_path, self.offset_index.path, self.time_index.path):
            remove_if_exists(path)

    def __repr__(self) -> str:
        return f"LogSegment(base={self.base_offset}, size={self.size}, next={self.next_offset})"
