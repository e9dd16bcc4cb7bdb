"""`PartitionLog`: the append-only log of one partition replica.

Theory of operation
-------------------
The log is a run of segments (`LogSegments`); only the last, the active segment, takes appends. Offsets
are assigned here: a leader append stamps the batch with the log end offset (LEO) and its leader epoch,
rewriting 17 header bytes and nothing else; a follower append keeps the offsets the leader gave. Every
append also feeds the leader epoch cache and the producer state.

The log start offset (LSO) and the LEO bound what can be read. Retention deletes whole segments from
the front, and only segments that lie entirely below an upper bound the caller gives (the high
watermark), so nothing a consumer might still be owed is deleted. Truncation removes a suffix (a
follower meeting a new leader), or everything (a replica too far behind).

Loading a log is recovery: swaps left by a crashed cleaning are completed or discarded, segments below
the recovery point are trusted (their indexes loaded, rebuilt if bad), and every segment from the one
holding the recovery point on is re-scanned, verified batch by batch and cut at the first bad byte,
together with every later segment. Then the epoch cache is cut to the LEO and the producer state rebuilt
from its newest snapshot plus the batches after it.

On disk, in `<data dir>/<topic>-<partition>/`: the segment files (storage/segment.py),
`leader-epoch-checkpoint` (storage/epoch_cache.py), `<offset>.snapshot` producer snapshots
(storage/producer_state.py) and, only during a cleaner swap, `cleaner-swap.json`. The recovery point and
log start offset live in the LogManager's checkpoint files, one per data directory.

Crash: see "Loading" above; every multi-file change is ordered so that a crash between two steps
leaves a state that loading repairs (segments deleted from the highest down, swap committed by the
manifest before old files go).

Thread-safety: thread-safe. Every public method runs under the log's lock; the log cleaner (a thread)
reads segment chunks and swaps segments through the methods marked for it.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import orjson

from storage.clock import SYSTEM_CLOCK, Clock
from storage.config import FlushPolicy, LogConfig
from storage.epoch_cache import LeaderEpochCache
from storage.errors import (
    BatchTooLargeError,
    CorruptLogError,
    LogClosedError,
    OffsetOutOfRangeError,
    ProducerSequenceError,
    StaleLeaderEpochError,
)
from storage.fileio import fsync_dir, remove_if_exists, write_atomic
from storage.producer_state import PRODUCER_ID_EXPIRATION_MS, ProducerStateManager, Verdict
from storage.record_batch import (
    BatchHeader,
    InvalidBatchError,
    check_batch,
    iter_batches,
    stamp_prefix,
)
from storage.segment import (
    CLEANED_SUFFIX,
    INDEX_SUFFIX,
    LOG_SUFFIX,
    TIME_INDEX_SUFFIX,
    FoundRecord,
    LogSegment,
    segment_file_name,
)
from storage.segments import LogSegments

log = logging.getLogger(__name__)

SWAP_MANIFEST = "cleaner-swap.json"
DELETED_SUFFIX = ".deleted"


# Not frozen: a frozen dataclass's __init__ costs ~1.7 us (object.__setattr__ per field), a tenth of a
# whole one-record append (scripts/bench_storage.py).
@dataclass(slots=True)
class AppendInfo:
    first_offset: int
    last_offset: int
    max_timestamp: int
    log_start_offset: int
    batches: int = 1
    duplicate: bool = False  # a retry of a recent batch: these are its original offsets


@dataclass(frozen=True, slots=True)
class LoadReport:
    clean: bool
    segments: int
    recovered_segments: int
    truncated_bytes: int
    deleted_segments: int
    error: str | None


class SegmentGoneError(Exception):
    """The cleaner's segment was deleted or replaced under it (retention or truncation won the race)."""


class SwapCommittedError(Exception):
    """A cleaner swap failed after its manifest was written: the log is closed, and loading it finishes
    the swap. The cleaned files belong to the manifest now and must not be deleted."""


def log_dir_name(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


def parse_log_dir_name(name: str) -> tuple[str, int] | None:
    topic, sep, partition = name.rpartition("-")
    if not sep or not topic or not partition.isdigit():
        return None
    return topic, int(partition)


class PartitionLog:
    def __init__(
        self,
        directory: str,
        config: LogConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        recovery_point: int = 0,
        log_start_offset: int = 0,
        clean_shutdown: bool = False,
        producer_id_expiration_ms: int = PRODUCER_ID_EXPIRATION_MS,
        background_flush: bool = False,
    ):
        """`background_flush`: something calls `maybe_flush` periodically from another thread (the
        LogManager's owner does), so appends never fsync for flush.policy=interval themselves, and a
        roll leaves the fsync of the segment it seals to that sweep."""
        self.directory = directory
        self.config = config
        self.clock = clock
        self.lock = threading.RLock()
        os.makedirs(directory, exist_ok=True)
        self.segments = LogSegments()
        self.epoch_cache = LeaderEpochCache(directory)
        self.producer_state = ProducerStateManager(directory, producer_id_expiration_ms)
        self.log_start_offset = log_start_offset
        self.log_end_offset = 0
        self.recovery_point = recovery_point
        self.closed = False
        self.truncations = 0  # bumped by every truncation: a cleaning that spans one is dropped
        self._last_flush_ms = clock.now_ms()
        self.background_flush = background_flush
        self._sealed_unflushed = False  # a roll left its sealed segment's fsync to maybe_flush
        self.load_report = self._load(clean_shutdown)

    # -- loading -----------------------------------------------------------------------------------

    def _load(self, clean_shutdown: bool) -> LoadReport:
        self._finish_interrupted_swap()
        bases = self._discover_segment_files()
        if not bases:
            bases = [self.log_start_offset]
        for base in bases:
            self.segments.add(LogSegment(self.directory, base, self.config))
        recovered = truncated = deleted = 0
        error = None
        recovered_epochs: list[tuple[int, int, int]] = []
        recover_from = None
        if not clean_shutdown:
            recover_from = self.segments.floor(self.recovery_point) or self.segments.first
        for segment in list(self.segments):
            if segment.deleted:
                continue
            if recover_from is None or segment.base_offset < recover_from.base_offset:
                damage = segment.load()
                if damage:
                    log.error("damaged batch kept unserved in %s: %s", segment.log_path, damage)
                    error = error or damage
                continue
            following = self.segments.higher(segment.base_offset)
            result = segment.recover(offset_limit=following.base_offset if following else None)
            recovered += 1
            recovered_epochs.extend(result.epoch_runs)
            if result.error:
                error = result.error
                truncated += result.truncated_bytes
                log.warning("recovery cut %s: %s", segment.log_path, result.error)
                later = [s for s in self.segments if s.base_offset > segment.base_offset]
                for victim in reversed(later):
                    truncated += victim.size
                    self.segments.remove(victim.base_offset).delete()
                    deleted += 1
                break
        self.log_end_offset = self.segments.active.next_offset
        self.log_start_offset = min(
            max(self.log_start_offset, self.segments.first.base_offset), self.log_end_offset
        )
        self.epoch_cache.truncate_from_end(self.log_end_offset)
        # A crash between appending the first batch of a new epoch and persisting the cache leaves the
        # batch without its epoch entry: learn the epochs of the re-scanned batches again (as Kafka does).
        for epoch, start, end in recovered_epochs:
            if end > self.log_start_offset:
                self.epoch_cache.assign(epoch, max(start, self.log_start_offset))
        self.epoch_cache.truncate_from_start(self.log_start_offset)
        self._rebuild_producer_state()
        if clean_shutdown:
            self.recovery_point = self.log_end_offset
        else:
            self._flush_segments(self.recovery_point)
            self.recovery_point = self.log_end_offset
        return LoadReport(clean_shutdown, len(self.segments), recovered, truncated, deleted, error)

    def _discover_segment_files(self) -> list[int]:
        """Base offsets of the .log files; removes leftovers that no longer belong to a segment."""
        names = os.listdir(self.directory)
        bases = set()
        for name in names:
            if name.endswith(LOG_SUFFIX) and name[: -len(LOG_SUFFIX)].isdigit():
                bases.add(int(name[: -len(LOG_SUFFIX)]))
        for name in names:
            path = os.path.join(self.directory, name)
            stem, _, suffix = name.partition(".")
            if name.endswith((".tmp", DELETED_SUFFIX, CLEANED_SUFFIX)) or (
                ("." + suffix) in (INDEX_SUFFIX, TIME_INDEX_SUFFIX)
                and stem.isdigit()
                and int(stem) not in bases
            ):
                remove_if_exists(path)
        return sorted(bases)

    def _finish_interrupted_swap(self) -> None:
        """Complete a cleaner swap whose manifest was committed; otherwise its files are discarded later."""
        manifest_path = os.path.join(self.directory, SWAP_MANIFEST)
        if not os.path.exists(manifest_path):
            return
        with open(manifest_path, "rb") as handle:
            manifest = orjson.loads(handle.read())
        new_base = int(manifest["new"])
        for base in manifest["replaces"]:
            if int(base) == new_base:
                continue
            for suffix in (LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX):
                remove_if_exists(os.path.join(self.directory, segment_file_name(int(base), suffix)))
        for suffix in (INDEX_SUFFIX, TIME_INDEX_SUFFIX, LOG_SUFFIX):
            cleaned = os.path.join(self.directory, segment_file_name(new_base, suffix + CLEANED_SUFFIX))
            if os.path.exists(cleaned):
                os.replace(cleaned, os.path.join(self.directory, segment_file_name(new_base, suffix)))
        fsync_dir(self.directory)
        os.unlink(manifest_path)
        log.info("completed an interrupted cleaner swap in %s", self.directory)

    def _rebuild_producer_state(self) -> None:
        start = self.producer_state.load_latest_snapshot(self.log_end_offset, self.log_start_offset)
        self._replay_producer_state(start)

    def _replay_producer_state(self, start: int) -> None:
        for segment in self.segments.from_offset(start):
            position = segment.position_of(start) if segment.base_offset <= start else 0
            for _pos, header, _view in segment.batches(position):
                if header.last_offset >= start:
                    self.producer_state.update(header)
        self.producer_state.map_end_offset = self.log_end_offset

    # -- appends -----------------------------------------------------------------------------------

    def append_as_leader(
        self,
        batch: bytes | bytearray | memoryview,
        leader_epoch: int,
        checked_header: BatchHeader | None = None,
    ) -> AppendInfo:
        """Give one producer batch the next offsets and `leader_epoch`, and append it.

        An idempotent batch (producer id and base sequence set) is checked against the producer state
        first: a retry of one of the producer's last five batches returns their original offsets with
        `duplicate=True` and appends nothing; a gap, an old epoch or an unknown producer raises
        ProducerSequenceError.

        The batch must be a single dense batch with a valid checksum (the HTTP edge checks its records);
        otherwise InvalidBatchError is raised and nothing is written. `checked_header` is what
        `check_batch` (or `check_producer_batch`) returned for these very bytes just before this call: it
        saves hashing the batch a second time, and is used only when `batch` is immutable `bytes`.
        """
        # check_batch already ran on these same bytes, and bytes cannot change since.
        reuse = checked_header is not None and type(batch) is bytes
        header = checked_header if reuse else check_batch(batch)
        size = header.size
        if size != len(batch):
            raise InvalidBatchError(f"batch_length says {size} bytes but {len(batch)} were given")
        if header.record_count != header.last_offset_delta + 1 or header.record_count == 0:
            raise InvalidBatchError("a produced batch must hold records at every offset it spans")
        self._check_size(header)
        with self.lock:
            self._check_open()
            latest_epoch = self.epoch_cache.latest_epoch()
            if leader_epoch < latest_epoch:
                raise StaleLeaderEpochError(
                    f"append with leader epoch {leader_epoch} to a log that has seen epoch {latest_epoch}"
                )
            if header.producer_id >= 0 and header.base_sequence >= 0:
                verdict = self.producer_state.check(
                    header.producer_id, header.producer_epoch, header.base_sequence, header.last_sequence
                )
                if verdict.verdict is Verdict.DUPLICATE:
                    return AppendInfo(
                        verdict.first_offset, verdict.last_offset, -1, self.log_start_offset, duplicate=True
                    )
                if verdict.verdict is not Verdict.APPEND:
                    raise ProducerSequenceError(verdict.verdict, verdict.message)
            base = self.log_end_offset
            # tuple.__new__ instead of NamedTuple._replace: 0.5 us instead of 1.3-2 us.
            stamped = tuple.__new__(BatchHeader, (base, header[1], leader_epoch, *header[3:]))
            now_ms = self.clock.now_ms()
            segment = self._segment_for(stamped, now_ms)
            view = memoryview(batch)
            segment.append(stamped, [stamp_prefix(view, base, leader_epoch), view[17:]])
            self._after_append(stamped, now_ms)
            return AppendInfo(base, stamped.last_offset, stamped.max_timestamp, self.log_start_offset)

    def append_as_follower(self, data: bytes | bytearray | memoryview) -> AppendInfo | None:
        """Append batches copied from the leader, offsets and epochs as they are.

        Every batch is checked first (checksum, offsets at or past the LEO and increasing); one bad batch
        refuses the whole call and nothing is written.
        """
        headers: list[tuple[BatchHeader, memoryview]] = []
        with self.lock:
            self._check_open()
            expected = self.log_end_offset
            for header, view in iter_batches(data, verify=True):
                if header.base_offset < expected:
                    raise InvalidBatchError(
                        f"batch at offset {header.base_offset} does not follow offset {expected - 1}"
                    )
                self._check_size(header)
                expected = header.next_offset
                headers.append((header, view))
            if not headers:
                return None
            for header, view in headers:
                now_ms = self.clock.now_ms()
                self._segment_for(header, now_ms).append(header, [view])
                self._after_append(header, now_ms)
            first, last = headers[0][0], headers[-1][0]
            max_ts = max(h.max_timestamp for h, _ in headers)
            return AppendInfo(
                first.base_offset, last.last_offset, max_ts, self.log_start_offset, len(headers)
            )

    def _check_size(self, header: BatchHeader) -> None:
        if header.size > self.config.max_message_bytes:
            raise BatchTooLargeError(
                f"batch of {header.size} bytes exceeds max.message.bytes = {self.config.max_message_bytes}"
            )
        if header.size > self.config.segment_bytes:
            raise BatchTooLargeError(
                f"batch of {header.size} bytes exceeds segment.bytes = {self.config.segment_bytes}"
            )

    def _segment_for(self, header: BatchHeader, now_ms: int) -> LogSegment:
        """The active segment, rolled first when the batch does not fit or the segment is too old."""
        active = self.segments.active
        if active.size == 0 and active.can_hold(header, self.config.segment_bytes):
            return active
        too_old = (
            active.first_batch_timestamp is not None
            and header.max_timestamp - active.first_batch_timestamp > self.config.segment_ms
        )
        if too_old or not active.can_hold(header, self.config.segment_bytes):
            return self._roll(header.base_offset)
        return active

    def _roll(self, base_offset: int) -> LogSegment:
        """Seal the active segment and start a new one at `base_offset` (>= the LEO)."""
        active = self.segments.active
        if active.size == 0 and active.base_offset == base_offset:
            return active
        if base_offset < self.log_end_offset:
            raise AssertionError(f"roll at {base_offset} below the log end offset {self.log_end_offset}")
        new = LogSegment(self.directory, base_offset, self.config)
        self.segments.add(new)
        # Flush what the sealed segment holds so recovery after a crash only re-scans the active one.
        if self.background_flush:
            # By the next sweep (maybe_flush), in its thread: here the fsync would hold the appender,
            # the node's event loop, for as long as the disk takes to write up to a flush interval of
            # data (a quarter of a second was measured). The recovery point moves once it is done.
            self._sealed_unflushed = True
        else:
            active.flush()
            fsync_dir(self.directory)
            self.recovery_point = max(self.recovery_point, self.log_end_offset)
        self.producer_state.map_end_offset = self.log_end_offset
        self.producer_state.take_snapshot()
        return new

    def _after_append(self, header: BatchHeader, now_ms: int) -> None:
        self.epoch_cache.assign(header.leader_epoch, header.base_offset)
        self.producer_state.update(header)
        self.log_end_offset = header.next_offset
        self._maybe_flush_after_append(now_ms)

    def _maybe_flush_after_append(self, now_ms: int) -> None:
        policy = self.config.flush_policy
        if policy is FlushPolicy.BATCH:
            self._flush_active_log()
        elif (
            policy is FlushPolicy.INTERVAL
            and not self.background_flush
            and now_ms - self._last_flush_ms >= self.config.flush_interval_ms
        ):
            self.flush()

    def _flush_active_log(self) -> None:
        os.fsync(self.segments.active._fd)
        self.recovery_point = self.log_end_offset
        self._last_flush_ms = self.clock.now_ms()

    def roll(self) -> None:
        """Seal the active segment now (if it holds anything)."""
        with self.lock:
            self._check_open()
            if self.segments.active.size:
                self._roll(self.log_end_offset)

    # -- reads -------------------------------------------------------------------------------------

    def read(self, offset: int, max_bytes: int, max_offset: int | None = None, min_one: bool = True) -> bytes:
        """Whole batches from the one holding `offset`: at most `max_bytes` (at least one batch when
        `min_one`), none at or above `max_offset` (the high watermark, for consumers).

        Raises OffsetOutOfRangeError below the log start offset or above the log end offset.
        """
        with self.lock:
            self._check_open()
            if offset < self.log_start_offset or offset > self.log_end_offset:
                raise OffsetOutOfRangeError(offset, self.log_start_offset, self.log_end_offset)
            if offset == self.log_end_offset or (max_offset is not None and offset >= max_offset):
                return b""
            for segment in self.segments.from_offset(offset):
                data = segment.read(offset, max_bytes, max_offset, min_one)
                if data is not None:  # the batch holding `offset` is here, whether or not it fitted
                    return data
                if max_offset is not None and segment.next_offset >= max_offset:
                    break
            return b""

    def offset_for_timestamp(self, timestamp_ms: int) -> FoundRecord | None:
        """The first record (offset, timestamp) whose timestamp is >= `timestamp_ms`, or None."""
        with self.lock:
            self._check_open()
            for segment in self.segments:
                if segment.max_timestamp < timestamp_ms or segment.next_offset <= self.log_start_offset:
                    continue
                found = segment.find_by_timestamp(timestamp_ms, self.log_start_offset)
                if found is not None:
                    return found
            return None

    @property
    def size_bytes(self) -> int:
        with self.lock:
            return self.segments.size_bytes()

    # -- truncation --------------------------------------------------------------------------------

    def truncate_to(self, offset: int) -> int:
        """Remove every batch whose last offset is >= `offset`; return the bytes removed."""
        with self.lock:
            self._check_open()
            if offset >= self.log_end_offset:
                return 0
            self.truncations += 1
            if offset <= self.log_start_offset:
                removed = self.segments.size_bytes()
                self._truncate_fully_and_start_at(offset if offset >= 0 else 0)
                return removed
            removed = 0
            for segment in reversed(list(self.segments)):
                if segment.base_offset <= offset or len(self.segments) == 1:
                    break
                removed += segment.size
                self.segments.remove(segment.base_offset).delete()
            removed += self.segments.active.truncate_to(offset)
            self.log_end_offset = self.segments.active.next_offset
            # Whole batches go: the batch holding the log start offset may begin below it, and removing
            # it must not leave the start above the end.
            self.log_start_offset = min(self.log_start_offset, self.log_end_offset)
            self.recovery_point = min(self.recovery_point, self.log_end_offset)
            self.epoch_cache.truncate_from_end(self.log_end_offset)
            self.producer_state.delete_snapshots_above(self.log_end_offset)
            self._rebuild_producer_state()
            return removed

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Delete every segment and restart the log, empty, at `offset`."""
        with self.lock:
            self._check_open()
            self._truncate_fully_and_start_at(offset)

    def _truncate_fully_and_start_at(self, offset: int) -> None:
        if offset < 0:
            raise ValueError(f"cannot start a log at negative offset {offset}")
        self.truncations += 1
        for segment in reversed(list(self.segments)):
            self.segments.remove(segment.base_offset).delete()
        self.segments.add(LogSegment(self.directory, offset, self.config))
        fsync_dir(self.directory)
        self.log_start_offset = self.log_end_offset = self.recovery_point = offset
        self.epoch_cache.clear()
        self.producer_state.delete_snapshots_above(-1)
        self.producer_state.reset(offset)

    # -- retention ---------------------------------------------------------------------------------

    def remove_expired_producers(self, now_ms: int) -> list[int]:
        """Forget producers whose last batch is older than producer_id_expiration_ms (under the lock:
        appends on the event loop read and change the same state)."""
        with self.lock:
            return self.producer_state.remove_expired(now_ms)

    def delete_old_segments(self, upper_bound_offset: int) -> int:
        """Apply retention.ms and retention.bytes, then the log start offset; delete only segments that
        lie wholly below `upper_bound_offset` (the high watermark). Returns the segments deleted."""
        with self.lock:
            self._check_open()
            now = self.clock.now_ms()
            deletable = []
            if self.config.delete:
                total = self.segments.size_bytes()
                cutoff = now - self.config.retention_ms if self.config.retention_ms >= 0 else None
                for segment in self.segments:
                    upper = self._segment_upper_bound(segment)
                    if upper > upper_bound_offset or (segment is self.segments.active and segment.size == 0):
                        break
                    by_time = cutoff is not None and segment.max_timestamp < cutoff
                    by_size = 0 <= self.config.retention_bytes <= total - segment.size
                    if not (by_time or by_size):
                        break
                    deletable.append(segment)
                    total -= segment.size
            for segment in self.segments:
                if segment in deletable:
                    continue
                if segment is self.segments.active and segment.size == 0:
                    break
                if self._segment_upper_bound(segment) <= self.log_start_offset:
                    deletable.append(segment)
                else:
                    break
            return self._delete_segments(deletable)

    def _segment_upper_bound(self, segment: LogSegment) -> int:
        following = self.segments.higher(segment.base_offset)
        return following.base_offset if following is not None else self.log_end_offset

    def _delete_segments(self, victims: list[LogSegment]) -> int:
        if not victims:
            return 0
        if victims[-1] is self.segments.active:
            self._roll(self.log_end_offset)
        new_start = self._segment_upper_bound(victims[-1])
        self.log_start_offset = max(self.log_start_offset, new_start)
        for segment in victims:
            self.segments.remove(segment.base_offset).delete()
        self.epoch_cache.truncate_from_start(self.log_start_offset)
        self.producer_state.delete_snapshots_below(self.segments.first.base_offset)
        return len(victims)

    def advance_log_start_offset(self, offset: int, upper_bound_offset: int) -> None:
        """Make offsets below `offset` unreadable (Kafka's DeleteRecords); `offset` may not pass the
        upper bound (the high watermark). Whole segments below it are deleted."""
        with self.lock:
            self._check_open()
            if offset > upper_bound_offset or offset > self.log_end_offset:
                raise OffsetOutOfRangeError(
                    offset, self.log_start_offset, min(upper_bound_offset, self.log_end_offset)
                )
            if offset <= self.log_start_offset:
                return
            self.log_start_offset = offset
            self.epoch_cache.truncate_from_start(offset)
            victims = []
            for segment in self.segments:
                if segment is not self.segments.active and self._segment_upper_bound(segment) <= offset:
                    victims.append(segment)
                else:
                    break
            self._delete_segments(victims)

    # -- flushing and closing ------------------------------------------------------------------------

    def flush(self) -> None:
        """fsync everything up to the log end offset and move the recovery point there."""
        with self.lock:
            self._check_open()
            self._flush_segments(self.recovery_point)
            if self._sealed_unflushed:
                fsync_dir(self.directory)
                self._sealed_unflushed = False
            self.recovery_point = self.log_end_offset
            self._last_flush_ms = self.clock.now_ms()

    def _flush_segments(self, from_offset: int) -> None:
        for segment in self.segments.from_offset(from_offset):
            segment.flush()

    def maybe_flush(self) -> bool:
        """Flush if the interval policy says it is time, or a roll left its sealed segment to flush
        (called periodically, from a worker thread; the latter under every policy).

        The fsyncs run without the log's lock, so appends (on the node's event loop) never wait for
        the disk: the lock is held only to pick the segments and, afterwards, to move the recovery
        point, which moves only if no truncation happened meanwhile (the bytes fsynced may then not
        be the ones now at those offsets)."""
        with self.lock:
            if self.closed or self.recovery_point >= self.log_end_offset:
                return False
            due = (
                self.config.flush_policy is not FlushPolicy.OS
                and self.clock.now_ms() - self._last_flush_ms >= self.config.flush_interval_ms
            )
            sealed = self._sealed_unflushed
            if not (due or sealed):
                return False
            segments = list(self.segments.from_offset(self.recovery_point))
            target = self.log_end_offset
            if not due:  # only what the rolls sealed
                active = self.segments.active
                segments = [segment for segment in segments if segment is not active]
                target = active.base_offset
            self._sealed_unflushed = False
            truncations = self.truncations
        try:
            for segment in segments:
                try:
                    segment.flush()
                except (OSError, ValueError):
                    # Closed or deleted meanwhile (retention, truncation, a cleaner swap, shutdown):
                    # nothing to flush there; anything else is a real disk error.
                    if not segment.closed:
                        raise
            if sealed:
                fsync_dir(self.directory)  # the new segments' names
        except BaseException:
            if sealed:
                with self.lock:
                    self._sealed_unflushed = True  # the next sweep tries again
            raise
        with self.lock:
            if not self.closed and self.truncations == truncations:
                self.recovery_point = max(self.recovery_point, min(target, self.log_end_offset))
            if due:
                self._last_flush_ms = self.clock.now_ms()
        return True

    def close(self) -> None:
        """Flush, snapshot the producer state and close every file (a clean shutdown of this log)."""
        with self.lock:
            if self.closed:
                return
            self.flush()
            self.producer_state.map_end_offset = self.log_end_offset
            self.producer_state.take_snapshot()
            for segment in self.segments:
                segment.close()
            self.closed = True

    def close_unflushed(self) -> None:
        """Close the files without flushing (tests that simulate a crash, deletion of the log)."""
        with self.lock:
            for segment in self.segments:
                segment.close()
            self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise LogClosedError(f"log {self.directory} is closed")

    # -- the log cleaner's view ----------------------------------------------------------------------

    def read_segment_chunk(self, segment: LogSegment, position: int, max_bytes: int) -> bytes:
        """Whole verified batches of `segment` from `position` (at least one), for the cleaner."""
        with self.lock:
            if segment.deleted or self.segments.floor(segment.base_offset) is not segment:
                raise SegmentGoneError(f"segment {segment.base_offset} is gone")
            return segment.read_at(position, max_bytes)

    def swap_cleaned_segment(self, old: list[LogSegment], cleaned: LogSegment, truncations: int) -> None:
        """Replace `old` (consecutive sealed segments) with `cleaned`, crash-safely.

        The manifest is the commit point: before it exists the old segments are intact and the cleaned
        files are discarded on load; after it, loading finishes the swap.
        """
        with self.lock:
            self._check_open()
            if truncations != self.truncations:  # the segments may hold other records than were cleaned
                raise SegmentGoneError(f"log {self.directory} was truncated during the cleaning")
            for segment in old:
                if segment.deleted or self.segments.floor(segment.base_offset) is not segment:
                    raise SegmentGoneError(f"segment {segment.base_offset} is gone")
                if segment is self.segments.active:
                    raise AssertionError("the cleaner never touches the active segment")
            if cleaned.base_offset != old[0].base_offset:
                raise AssertionError("a cleaned segment keeps the base offset of the first it replaces")
            cleaned.flush()
            manifest = {"new": cleaned.base_offset, "replaces": [s.base_offset for s in old]}
            manifest_path = os.path.join(self.directory, SWAP_MANIFEST)
            write_atomic(manifest_path, orjson.dumps(manifest))
            try:
                for segment in old:
                    self.segments.remove(segment.base_offset).delete()
                cleaned.change_suffix("")
                self.segments.add(cleaned)
                fsync_dir(self.directory)
                os.unlink(manifest_path)
            except BaseException as exc:
                self.close_unflushed()  # memory no longer matches the files; loading finishes the swap
                raise SwapCommittedError(f"cleaner swap in {self.directory} failed after its commit") from exc

    def first_uncleanable_offset(self, upper_bound_offset: int, now_ms: int | None = None) -> int:
        """Where cleaning must stop: the active segment, the upper bound (high watermark) and
        min.compaction.lag.ms, rounded down to a segment boundary."""
        with self.lock:
            now = self.clock.now_ms() if now_ms is None else now_ms
            limit = min(self.segments.active.base_offset, upper_bound_offset)
            for segment in self.segments:
                upper = self._segment_upper_bound(segment)
                if upper > limit:
                    return segment.base_offset
                lag = self.config.min_compaction_lag_ms
                if lag > 0 and now - segment.max_timestamp < lag:
                    return segment.base_offset
            return limit

    def segment_upper_bound(self, segment: LogSegment) -> int:
        """The offset where `segment` ends: the next segment's base offset (or the log end offset)."""
        with self.lock:
            return self._segment_upper_bound(segment)

    def sealed_segments_below(self, offset: int) -> list[LogSegment]:
        with self.lock:
            return [
                s
                for s in self.segments
                if self._segment_upper_bound(s) <= offset and s is not self.segments.active
            ]

    def __repr__(self) -> str:
        return (
            f"PartitionLog({self.directory}, start={self.log_start_offset}, end={self.log_end_offset}, "
            f"segments={len(self.segments)})"
        )


__all__ = [
    "AppendInfo",
    "CorruptLogError",
    "LoadReport",
    "PartitionLog",
    "SegmentGoneError",
    "SwapCommittedError",
]
