"""`LogCleaner`: log compaction for topics with cleanup.policy=compact.

Theory of operation
-------------------
A compacted log keeps, for every key, at least the latest record. One cleaning of a log:

1. Find the cleanable range: sealed segments wholly below the first uncleanable offset (the active
   segment, the upper bound the caller gives, usually the high watermark, and min.compaction.lag.ms).
2. Build the offset map (key -> latest offset) over the dirty part of that range: from the first dirty
   offset (where the last cleaning stopped) to its end, bounded by `offset_map_keys_max` keys (the map
   then stops at a segment boundary and the rest waits for the next round).
3. Rewrite the segments from the log start to the end of the mapped part, in groups that fit one
   segment, keeping a record when its key is not in the map or its offset is the mapped one. Records
   keep their offsets (gaps are fine); a batch keeps its base offset, last offset delta, epoch and
   producer fields; an emptied batch is dropped unless it is its producer's last batch in the range
   (kept empty, so producer state survives a rebuild).
4. Tombstones (null value) and their keys are dropped once the segment holding them was last written
   more than delete.retention.ms ago, so a consumer that reads the log from the start within that time
   still sees every deletion.
5. Swap each group in with `PartitionLog.swap_cleaned_segment`, whose manifest makes the swap atomic
   across a crash: a restart finds the old segments or the new one, never a mix.

Reads, appends and retention go on while a log is cleaned: the cleaner reads under the log's lock a chunk
at a time and the swap checks that the segments it replaces are still there (else the round is dropped).

Thread-safety: `clean` may run on any thread; `start()` runs a background thread that cleans the
dirtiest registered log whenever its dirty ratio reaches min.cleanable.dirty.ratio.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from storage.log import PartitionLog, SegmentGoneError, SwapCommittedError
from storage.record_batch import NewRecord, decode_records, encode_batch, iter_batches, read_header
from storage.segment import CLEANED_SUFFIX, LogSegment

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 1024 * 1024
# Kafka sizes its offset map by memory (log.cleaner.dedupe.buffer.size, 128 MiB); we bound keys.
OFFSET_MAP_KEYS_MAX = 1_000_000


@dataclass(frozen=True, slots=True)
class CleanResult:
    cleaned_segments: int
    first_dirty_offset: int  # where the next cleaning starts its map
    records_kept: int
    records_dropped: int
    bytes_before: int
    bytes_after: int


class LogCleaner:
    def __init__(self, *, offset_map_keys_max: int = OFFSET_MAP_KEYS_MAX):
        self.offset_map_keys_max = offset_map_keys_max
        self.first_dirty: dict[str, int] = {}  # log directory -> first dirty offset
        self._truncations: dict[str, int] = {}  # log directory -> its truncation count at the last cleaning
        self._logs: dict[str, tuple[PartitionLog, Callable[[], int]]] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._registry_lock = threading.Lock()

    # -- one cleaning ----------------------------------------------------------------------------

    def clean(
        self, partition_log: PartitionLog, upper_bound_offset: int, now_ms: int | None = None
    ) -> CleanResult:
        """Clean `partition_log` once, below `upper_bound_offset` (the high watermark)."""
        now = partition_log.clock.now_ms() if now_ms is None else now_ms
        truncations = partition_log.truncations
        if self._truncations.get(partition_log.directory) != truncations:
            self.first_dirty.pop(partition_log.directory, None)  # truncated offsets may hold new records
            self._truncations[partition_log.directory] = truncations
        first_dirty = max(self.first_dirty.get(partition_log.directory, 0), partition_log.log_start_offset)
        uncleanable = partition_log.first_uncleanable_offset(upper_bound_offset, now)
        segments = partition_log.sealed_segments_below(uncleanable)
        if not segments:
            return CleanResult(0, first_dirty, 0, 0, 0, 0)
        try:
            offset_map, map_end, last_batch_of = self._build_offset_map(partition_log, segments, first_dirty)
        except SegmentGoneError:
            log.info("cleaning of %s dropped: a segment went away", partition_log.directory)
            return CleanResult(0, first_dirty, 0, 0, 0, 0)
        if map_end <= first_dirty:
            return CleanResult(0, first_dirty, 0, 0, 0, 0)
        to_clean = [s for s in segments if s.base_offset < map_end]
        kept = dropped = before = after = 0
        for group in self._group(to_clean, partition_log):
            result = self._clean_group(partition_log, group, offset_map, last_batch_of, now, truncations)
            if result is None:
                break
            kept += result[0]
            dropped += result[1]
            before += result[2]
            after += result[3]
        else:
            self.first_dirty[partition_log.directory] = map_end
        return CleanResult(
            len(to_clean), self.first_dirty.get(partition_log.directory, 0), kept, dropped, before, after
        )

    def _build_offset_map(
        self, partition_log: PartitionLog, segments: list[LogSegment], first_dirty: int
    ) -> tuple[dict[bytes | None, int], int, dict[int, int]]:
        """key -> latest offset over the dirty segments; the offset the map covers up to; and for each
        producer id the last offset of its last batch in the range."""
        offset_map: dict[bytes | None, int] = {}
        last_batch_of: dict[int, int] = {}
        map_end = first_dirty
        for segment in segments:
            segment_map: dict[bytes | None, int] = {}
            for header, view in self._batches(partition_log, segment):
                if header.producer_id >= 0:
                    last_batch_of[header.producer_id] = header.last_offset
                if header.last_offset < first_dirty:
                    continue
                for record in decode_records(view, header):
                    if record.offset >= first_dirty and record.key is not None:
                        segment_map[record.key] = record.offset
            if offset_map and len(offset_map.keys() | segment_map.keys()) > self.offset_map_keys_max:
                break
            offset_map.update(segment_map)
            map_end = max(map_end, partition_log.segment_upper_bound(segment))
        return offset_map, map_end, last_batch_of

    def _batches(self, partition_log: PartitionLog, segment: LogSegment):
        position = 0
        while position < segment.size:
            chunk = partition_log.read_segment_chunk(segment, position, READ_CHUNK_BYTES)
            if not chunk:
                return
            yield from iter_batches(chunk, verify=False)  # verified by read_segment_chunk
            position += len(chunk)

    def _group(self, segments: list[LogSegment], partition_log: PartitionLog) -> list[list[LogSegment]]:
        """Consecutive segments whose cleaned output fits one segment (by their size before cleaning)."""
        groups: list[list[LogSegment]] = []
        limit = partition_log.config.segment_bytes
        entries_max = partition_log.config.index_entries_max
        for segment in segments:
            if groups:
                last = groups[-1]
                size = sum(s.size for s in last) + segment.size
                entries = sum(len(s.offset_index) for s in last) + len(segment.offset_index)
                span = segment.next_offset - last[0].base_offset
                if size <= limit and entries < entries_max and span < 2**32:
                    last.append(segment)
                    continue
            groups.append([segment])
        return groups

    def _clean_group(
        self,
        partition_log: PartitionLog,
        group: list[LogSegment],
        offset_map: dict[bytes | None, int],
        last_batch_of: dict[int, int],
        now_ms: int,
        truncations: int,
    ) -> tuple[int, int, int, int] | None:
        config = partition_log.config
        cleaned = LogSegment(partition_log.directory, group[0].base_offset, config, suffix=CLEANED_SUFFIX)
        cleaned.reset()  # a leftover from an abandoned round must not be appended to
        kept = dropped = 0
        last_modified = 0
        try:
            for segment in group:
                last_modified = max(last_modified, segment.last_modified_ms())
                drop_tombstones = now_ms - segment.last_modified_ms() > config.delete_retention_ms
                for header, view in self._batches(partition_log, segment):
                    records = decode_records(view, header)
                    survivors = [
                        r
                        for r in records
                        if r.key is None
                        or (
                            offset_map.get(r.key, -1) <= r.offset
                            and not (drop_tombstones and r.value is None)
                        )
                    ]
                    dropped += len(records) - len(survivors)
                    kept += len(survivors)
                    keep_empty = (
                        header.producer_id >= 0
                        and last_batch_of.get(header.producer_id) == header.last_offset
                    )
                    if not survivors and not keep_empty:
                        continue  # also an empty batch kept earlier whose producer has a later one now
                    if len(survivors) == len(records):
                        cleaned.append(header, [view])
                        continue
                    rebuilt = encode_batch(
                        [NewRecord(r.key, r.value, r.timestamp_ms, r.headers) for r in survivors],
                        now_ms=header.first_timestamp,
                        base_offset=header.base_offset,
                        leader_epoch=header.leader_epoch,
                        producer_id=header.producer_id,
                        producer_epoch=header.producer_epoch,
                        base_sequence=header.base_sequence,
                        offset_deltas=[r.offset - header.base_offset for r in survivors],
                        last_offset_delta=header.last_offset_delta,
                    )
                    cleaned.append(read_header(rebuilt), [rebuilt])
            before = sum(s.size for s in group)
            after = cleaned.size
            cleaned.set_last_modified_ms(last_modified)
            partition_log.swap_cleaned_segment(group, cleaned, truncations)
            return kept, dropped, before, after
        except SegmentGoneError:
            log.info("cleaning of %s dropped: a segment went away", partition_log.directory)
            cleaned.delete()
            return None
        except SwapCommittedError:
            raise  # the cleaned files belong to the manifest: loading finishes the swap
        except BaseException:
            cleaned.delete()
            raise

    # -- background thread ----------------------------------------------------------------------

    def register(self, name: str, partition_log: PartitionLog, upper_bound: Callable[[], int]) -> None:
        """Clean `partition_log` in the background; `upper_bound()` gives its high watermark."""
        with self._registry_lock:
            self._logs[name] = (partition_log, upper_bound)
        self._wake.set()

    def unregister(self, name: str) -> None:
        with self._registry_lock:
            entry = self._logs.pop(name, None)
        if entry is not None:
            self.first_dirty.pop(entry[0].directory, None)

    def dirty_ratio(self, partition_log: PartitionLog, upper_bound_offset: int) -> float:
        first_dirty = max(self.first_dirty.get(partition_log.directory, 0), partition_log.log_start_offset)
        segments = partition_log.sealed_segments_below(
            partition_log.first_uncleanable_offset(upper_bound_offset)
        )
        total = sum(s.size for s in segments)
        if total == 0:
            return 0.0
        dirty = sum(s.size for s in segments if s.next_offset > first_dirty)
        return dirty / total

    def clean_dirtiest(self) -> CleanResult | None:
        with self._registry_lock:
            candidates = list(self._logs.values())
        best = None
        best_ratio = 0.0
        for partition_log, upper_bound in candidates:
            if partition_log.closed or not partition_log.config.compact:
                continue
            ratio = self.dirty_ratio(partition_log, upper_bound())
            if ratio >= partition_log.config.min_cleanable_dirty_ratio and ratio > best_ratio:
                best, best_ratio = (partition_log, upper_bound), ratio
        if best is None:
            return None
        return self.clean(best[0], best[1]())

    def start(self, interval_s: float = 15.0) -> None:
        """Clean in a daemon thread: the dirtiest log whenever there is one, else every `interval_s`."""

        def run() -> None:
            while not self._stop.is_set():
                try:
                    result = self.clean_dirtiest()
                except Exception:
                    log.exception("log cleaner round failed")
                    result = None
                if result is None or result.cleaned_segments == 0:
                    self._wake.wait(interval_s)
                    self._wake.clear()

        self._thread = threading.Thread(target=run, name="log-cleaner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
