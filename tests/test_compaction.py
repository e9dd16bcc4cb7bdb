"""Log compaction (storage/cleaner.py, PartitionLog's cleaner methods) against a plain Python model.

The model of a log is a dict offset -> Record of what it must hold, plus the header fields of every batch
appended. Compaction in the model is `compacted`: inside the cleanable range (below the first uncleanable
offset, which `expected_cleanable_end` works out from the segment boundaries, the upper bound and
min.compaction.lag.ms) a keyed record survives only if no later record in that range has its key, and a
tombstone only if its segment is younger than delete.retention.ms; everything else is untouched. A log
matches its model when reading it from the log start offset (one `read` call at a time, each returning
whole batches of one segment) gives exactly the model's records, every batch keeps its original header
fields, and every segment holds only offsets between its base and the next segment's base.

Crashes are real where it matters: tests/compaction_child.py is a cleaner that exits with os._exit in the
middle of a swap, or is SIGKILLed while it loops.
"""

from __future__ import annotations

import errno
import importlib.util
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_right
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import storage.log
from storage.cleaner import LogCleaner
from storage.clock import ManualClock
from storage.config import CleanupPolicy, LogConfig
from storage.log import SWAP_MANIFEST, PartitionLog, SegmentGoneError
from storage.record_batch import BatchHeader, NewRecord, Record, decode_records, encode_batch, iter_batches
from storage.segment import CLEANED_SUFFIX

CHILD = Path(__file__).with_name("compaction_child.py")
_spec = importlib.util.spec_from_file_location("compaction_child", CHILD)
assert _spec is not None
assert _spec.loader is not None
child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(child)

NOW_MS = 1_764_000_000_000
RETENTION_MS = 60 * 60 * 1000  # delete.retention.ms in these tests: one hour
BIG_SEGMENT_BYTES = 64 * 1024  # manual rolls only, and every sealed segment fits one cleaning group
KEYS = [b"k%02d" % i for i in range(16)] + [b""]  # the empty key is a key, distinct from a null key

Expiry = Callable[[int], bool]  # offset -> whether the tombstone at that offset is past delete.retention.ms


def never(_offset: int) -> bool:
    return False


def compact_config(**changes) -> LogConfig:
    settings_ = {
        "segment_bytes": 1024,
        "cleanup_policy": CleanupPolicy.COMPACT,
        "delete_retention_ms": RETENTION_MS,
        "min_compaction_lag_ms": 0,
        "min_cleanable_dirty_ratio": 0.0,
    }
    settings_.update(changes)
    return LogConfig(**settings_)


def open_log(directory: Path | str, config: LogConfig, clock: ManualClock) -> PartitionLog:
    return PartitionLog(str(directory), config, clock=clock, recovery_point=0, clean_shutdown=False)


# -- the model ------------------------------------------------------------------------------------------


def batch_fields(header: BatchHeader) -> tuple[int, int, int, int, int, int]:
    """What compaction must keep of a batch header."""
    return (
        header.base_offset,
        header.last_offset_delta,
        header.leader_epoch,
        header.producer_id,
        header.producer_epoch,
        header.base_sequence,
    )


class LogModel:
    """Every record appended, by offset; every batch's header fields, by base offset."""

    def __init__(self) -> None:
        self.records: dict[int, Record] = {}
        self.batches: dict[int, tuple[int, int, int, int, int, int]] = {}
        self.batch_of: dict[int, int] = {}  # offset -> base offset of its batch

    def append(
        self,
        partition_log: PartitionLog,
        records: list[NewRecord],
        *,
        epoch: int = 0,
        producer_id: int = -1,
        producer_epoch: int = -1,
        base_sequence: int = -1,
    ) -> int:
        batch = encode_batch(
            records,
            now_ms=NOW_MS,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            base_sequence=base_sequence,
        )
        expected_base = partition_log.log_end_offset
        info = partition_log.append_as_leader(batch, epoch)
        assert info.first_offset == expected_base
        assert info.last_offset == expected_base + len(records) - 1
        for i, new in enumerate(records):
            offset = info.first_offset + i
            self.records[offset] = Record(offset, new.timestamp_ms, new.key, new.value, tuple(new.headers))
            self.batch_of[offset] = info.first_offset
        self.batches[info.first_offset] = (
            info.first_offset,
            len(records) - 1,
            epoch,
            producer_id,
            producer_epoch,
            base_sequence,
        )
        return info.first_offset

    def truncate(self, offset: int) -> None:
        for mapping in (self.records, self.batch_of):
            for o in [o for o in mapping if o >= offset]:
                del mapping[o]
        for base in [b for b in self.batches if b >= offset]:
            del self.batches[base]


def compacted(records: dict[int, Record], cleanable_end: int, expired: Expiry) -> dict[int, Record]:
    """The records a compaction of [0, cleanable_end) keeps."""
    latest: dict[bytes, int] = {}
    for offset in sorted(records):
        record = records[offset]
        if offset < cleanable_end and record.key is not None:
            latest[record.key] = offset
    kept = {}
    for offset, record in records.items():
        if offset < cleanable_end:
            if record.key is not None and latest[record.key] != offset:
                continue
            if record.value is None and expired(offset):
                continue
        kept[offset] = record
    return kept


def expected_cleanable_end(
    partition_log: PartitionLog, upper_bound: int, now_ms: int, lag_ms: int, records: dict[int, Record]
) -> int:
    """The first offset a cleaning must not touch: segments lie wholly below the active segment and the
    upper bound, and are older than min.compaction.lag.ms (a segment's age is that of its newest record)."""
    bases = [s.base_offset for s in partition_log.segments]
    limit = min(bases[-1], upper_bound)
    for i, base in enumerate(bases):
        upper = bases[i + 1] if i + 1 < len(bases) else partition_log.log_end_offset
        if upper > limit:
            return base
        timestamps = [r.timestamp_ms for o, r in records.items() if base <= o < upper]
        if lag_ms > 0 and timestamps and now_ms - max(timestamps) < lag_ms:
            return base
    return limit


def age_sealed_segments(partition_log: PartitionLog, rng: random.Random, now_ms: int) -> Expiry:
    """Give each sealed segment a last-modified time older or younger than delete.retention.ms (the
    boundary itself included, which is still young); return which offsets lie in old segments."""
    old_ranges = []
    segments = list(partition_log.segments)
    for segment, following in itertools.pairwise(segments):
        if rng.random() < 0.4:
            segment.set_last_modified_ms(now_ms - RETENTION_MS - 1 - rng.randrange(1000))
            old_ranges.append((segment.base_offset, following.base_offset))
        else:
            segment.set_last_modified_ms(now_ms - rng.choice([0, RETENTION_MS, rng.randrange(RETENTION_MS)]))

    def expired(offset: int) -> bool:
        return any(low <= offset < high for low, high in old_ranges)

    return expired


def random_records(rng: random.Random, count: int) -> list[NewRecord]:
    records = []
    for _ in range(count):
        key = None if rng.random() < 0.06 else rng.choice(KEYS)
        if key is not None and rng.random() < 0.15:
            value = None
        else:
            value = rng.choice([b"", rng.randbytes(rng.randrange(1, 40))])
        headers = tuple((f"h{i}", rng.choice([None, b"", rng.randbytes(3)])) for i in range(rng.randrange(3)))
        records.append(NewRecord(key, value, NOW_MS - rng.randrange(10_000), headers))
    return records


def fill(partition_log: PartitionLog, model: LogModel, rng: random.Random, batches: int) -> None:
    for i in range(batches):
        model.append(partition_log, random_records(rng, rng.randrange(1, 6)), epoch=i // 40)
        if rng.random() < 0.03:
            partition_log.roll()


def build_segmented_log(
    directory: Path, rng: random.Random, clock: ManualClock, config: LogConfig, sealed: int, per_segment: int
) -> tuple[PartitionLog, LogModel]:
    """`sealed` segments (rolled by hand) of `per_segment` one-record batches, then a few in the active one."""
    partition_log = open_log(directory, config, clock)
    model = LogModel()
    for _ in range(sealed):
        for _ in range(per_segment):
            model.append(partition_log, random_records(rng, 1))
        partition_log.roll()
    for _ in range(3):
        model.append(partition_log, random_records(rng, 1))
    return partition_log, model


# -- reading and checking a log -------------------------------------------------------------------------


def read_log(
    partition_log: PartitionLog, rng: random.Random | None = None
) -> tuple[list[Record], list[BatchHeader]]:
    """Every record and batch header from the log start offset, one `read` call at a time."""
    records: list[Record] = []
    headers: list[BatchHeader] = []
    bases = [s.base_offset for s in partition_log.segments]
    offset = partition_log.log_start_offset
    while offset < partition_log.log_end_offset:
        max_bytes = rng.choice([1, 150, 700, 1 << 20]) if rng else 1 << 20
        data = partition_log.read(offset, max_bytes)
        if not data:
            break  # the rest of the log was compacted away
        batches = list(iter_batches(data))
        first, last = batches[0][0], batches[-1][0]
        assert first.last_offset >= offset, f"read({offset}) returned a batch ending at {first.last_offset}"
        segment_index = bisect_right(bases, first.base_offset) - 1
        if segment_index + 1 < len(bases):
            assert last.last_offset < bases[segment_index + 1], f"read({offset}) spans two segments"
        for header, view in batches:
            headers.append(header)
            records.extend(
                r for r in decode_records(view, header) if r.offset >= partition_log.log_start_offset
            )
        offset = last.next_offset
    return records, headers


def check_structure(partition_log: PartitionLog) -> None:
    """Segment by segment, straight from the files: offsets strictly increase and stay inside their
    segment; the active segment ends at the log end offset."""
    segments = list(partition_log.segments)
    previous_last = -1
    for i, segment in enumerate(segments):
        upper = segments[i + 1].base_offset if i + 1 < len(segments) else partition_log.log_end_offset
        for _position, header, _view in segment.batches():
            assert header.base_offset >= segment.base_offset, f"batch {header.base_offset} below {segment}"
            assert header.base_offset > previous_last, f"offset {header.base_offset} repeated or out of order"
            assert header.last_offset < upper, f"batch {header.base_offset} runs into the next segment"
            previous_last = header.last_offset
    assert segments[-1].next_offset == partition_log.log_end_offset


def swap_leftovers(directory: Path | str) -> list[str]:
    return sorted(
        name
        for name in os.listdir(directory)
        if name.endswith((CLEANED_SUFFIX, ".tmp")) or name.startswith(SWAP_MANIFEST)
    )


def assert_log_matches(
    partition_log: PartitionLog,
    expected: dict[int, Record],
    model: LogModel,
    rng: random.Random | None = None,
    empty_batches: frozenset[int] = frozenset(),
    log_start: int = 0,
) -> None:
    """The log starts at `log_start` and holds exactly the records of `expected` from there, in batches
    that keep their original header fields; a batch whose records are all gone is gone too, except
    those in `empty_batches`."""
    assert partition_log.log_start_offset == log_start, "the log start offset moved"
    records, headers = read_log(partition_log, rng)
    offsets = [r.offset for r in records]
    assert all(a < b for a, b in itertools.pairwise(offsets)), "offsets do not strictly increase"
    start = log_start
    want = [expected[o] for o in sorted(expected) if o >= start]
    missing = sorted({r.offset for r in want} - set(offsets))
    extra = sorted(set(offsets) - {r.offset for r in want})
    assert not missing, f"records lost at offsets {missing[:20]}"
    assert not extra, f"records that should be gone at offsets {extra[:20]}"
    assert records == want
    for header in headers:
        assert batch_fields(header) == model.batches[header.base_offset], (
            f"batch {header.base_offset} changed"
        )
    want_batches = {model.batch_of[o] for o in expected if o >= start} | {
        b for b in empty_batches if b >= start
    }
    assert {h.base_offset for h in headers} == want_batches
    check_structure(partition_log)


def active_segment_state(partition_log: PartitionLog) -> tuple[object, int, bytes]:
    active = partition_log.segments.active
    return active, active.base_offset, Path(active.log_path).read_bytes()


# -- 1. the latest record of every key ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_clean_keeps_the_latest_record_of_every_key(tmp_path, seed):
    rng = random.Random(seed)
    clock = ManualClock(NOW_MS)
    config = compact_config()
    partition_log = open_log(tmp_path / "log", config, clock)
    model = LogModel()
    fill(partition_log, model, rng, batches=rng.randrange(70, 130))
    leo = partition_log.log_end_offset
    upper = leo if seed % 2 == 0 else rng.randrange(leo // 2, leo)
    expired = age_sealed_segments(partition_log, rng, NOW_MS)
    end = expected_cleanable_end(partition_log, upper, NOW_MS, 0, model.records)
    expected = compacted(model.records, end, expired)
    assert end > 0, "the workload must give the cleaner something to do"
    assert len(expected) < len(model.records), "the workload must supersede some records"
    _, headers_before = read_log(partition_log)
    active_before = active_segment_state(partition_log)
    null_keys_before = sum(1 for r in model.records.values() if r.key is None)

    cleaner = LogCleaner()
    result = cleaner.clean(partition_log, upper_bound_offset=upper, now_ms=NOW_MS)

    assert result.records_dropped == len(model.records) - len(expected)
    assert_log_matches(partition_log, expected, model, rng)
    records, headers_after = read_log(partition_log)
    assert sum(1 for r in records if r.key is None) == null_keys_before
    untouched_before = [h for h in headers_before if h.base_offset >= end]
    assert [h for h in headers_after if h.base_offset >= end] == untouched_before
    assert active_segment_state(partition_log) == active_before

    again = cleaner.clean(partition_log, upper_bound_offset=upper, now_ms=NOW_MS)
    assert again.records_dropped == 0
    assert_log_matches(partition_log, expected, model, rng)
    fresh = LogCleaner().clean(partition_log, upper_bound_offset=upper, now_ms=NOW_MS)
    assert fresh.records_dropped == 0
    assert_log_matches(partition_log, expected, model, rng)

    # Now up to the log end: the same cleaner goes on from where it stopped.
    end_all = expected_cleanable_end(partition_log, leo, NOW_MS, 0, expected)
    expected_all = compacted(expected, end_all, expired)
    cleaner.clean(partition_log, upper_bound_offset=leo, now_ms=NOW_MS)
    assert_log_matches(partition_log, expected_all, model, rng)
    assert active_segment_state(partition_log) == active_before

    partition_log.close()
    reopened = open_log(tmp_path / "log", config, clock)
    assert_log_matches(reopened, expected_all, model, rng)
    reopened.close()


def test_records_with_a_null_key_are_all_kept(tmp_path):
    partition_log = open_log(
        tmp_path / "log", compact_config(segment_bytes=BIG_SEGMENT_BYTES), ManualClock(NOW_MS)
    )
    model = LogModel()
    for i in range(10):
        model.append(
            partition_log, [NewRecord(None, b"n%d" % i, NOW_MS), NewRecord(b"k", b"v%d" % i, NOW_MS)]
        )
    partition_log.roll()
    model.append(partition_log, [NewRecord(b"k", b"last", NOW_MS)])

    LogCleaner().clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=NOW_MS)

    records, _ = read_log(partition_log)
    assert [r.value for r in records] == [b"n%d" % i for i in range(10)] + [b"v9", b"last"]
    assert_log_matches(partition_log, compacted(model.records, 20, never), model)


def test_offset_map_key_cap_cleans_in_rounds_that_end_at_the_full_compaction(tmp_path):
    rng = random.Random(99)
    partition_log = open_log(tmp_path / "log", compact_config(), ManualClock(NOW_MS))
    model = LogModel()
    fill(partition_log, model, rng, batches=70)
    for segment in list(partition_log.segments)[:-1]:
        segment.set_last_modified_ms(NOW_MS)
    leo = partition_log.log_end_offset
    end = expected_cleanable_end(partition_log, leo, NOW_MS, 0, model.records)
    cleaner = LogCleaner(offset_map_keys_max=8)
    rounds = 0
    while cleaner.clean(partition_log, upper_bound_offset=leo, now_ms=NOW_MS).cleaned_segments:
        rounds += 1
        assert rounds < 200, "the cleaner does not make progress"
        check_structure(partition_log)
    assert rounds > 1, "the cap must split the cleaning into rounds"
    assert cleaner.first_dirty[partition_log.directory] == end
    assert_log_matches(partition_log, compacted(model.records, end, never), model)


# -- 2. tombstones ---------------------------------------------------------------------------------------


def test_tombstones_stay_for_delete_retention_then_go_with_their_key(tmp_path):
    directory = tmp_path / "log"
    config = compact_config(segment_bytes=BIG_SEGMENT_BYTES)
    partition_log = open_log(directory, config, ManualClock(NOW_MS))
    model = LogModel()
    for key, value in [(b"a", b"a1"), (b"b", b"b1"), (b"c", b"c1"), (b"a", None), (b"b", None)]:
        model.append(partition_log, [NewRecord(key, value, NOW_MS)])
    partition_log.roll()
    model.append(partition_log, [NewRecord(b"d", b"d1", NOW_MS)])
    sealed = partition_log.segments.first
    written_ms = NOW_MS - 5_000
    sealed.set_last_modified_ms(written_ms)

    # Exactly delete.retention.ms old: still kept, so every reader from the start sees the deletion.
    cleaner = LogCleaner()
    cleaner.clean(
        partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=written_ms + RETENTION_MS
    )
    records, _ = read_log(partition_log)
    assert [(r.key, r.value) for r in records] == [(b"c", b"c1"), (b"a", None), (b"b", None), (b"d", b"d1")]
    assert partition_log.segments.first.last_modified_ms() == written_ms, "cleaning keeps the modified time"

    # One millisecond later the tombstones go, and their keys with them.
    LogCleaner().clean(
        partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=written_ms + RETENTION_MS + 1
    )
    records, _ = read_log(partition_log)
    assert [(r.key, r.value) for r in records] == [(b"c", b"c1"), (b"d", b"d1")]
    expected = compacted(model.records, 5, lambda offset: True)
    assert_log_matches(partition_log, expected, model)
    partition_log.close()
    reopened = open_log(directory, config, ManualClock(NOW_MS))
    assert_log_matches(reopened, expected, model)
    reopened.close()


def test_tombstone_expiry_is_judged_per_segment(tmp_path):
    partition_log = open_log(
        tmp_path / "log", compact_config(segment_bytes=BIG_SEGMENT_BYTES), ManualClock(NOW_MS)
    )
    model = LogModel()
    model.append(partition_log, [NewRecord(b"old", b"1", NOW_MS), NewRecord(b"young", b"1", NOW_MS)])
    model.append(partition_log, [NewRecord(b"old", None, NOW_MS)])
    partition_log.roll()
    model.append(partition_log, [NewRecord(b"young", None, NOW_MS)])
    partition_log.roll()
    model.append(partition_log, [NewRecord(b"active", b"1", NOW_MS)])
    first, second, _active = partition_log.segments
    first.set_last_modified_ms(NOW_MS - RETENTION_MS - 1)
    second.set_last_modified_ms(NOW_MS - RETENTION_MS + 1)

    LogCleaner().clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=NOW_MS)

    records, _ = read_log(partition_log)
    assert [(r.key, r.value) for r in records] == [(b"young", None), (b"active", b"1")]
    assert_log_matches(partition_log, compacted(model.records, 4, lambda offset: offset < 3), model)


def test_new_dirty_data_lets_the_same_cleaner_drop_expired_tombstones(tmp_path):
    partition_log = open_log(
        tmp_path / "log", compact_config(segment_bytes=BIG_SEGMENT_BYTES), ManualClock(NOW_MS)
    )
    model = LogModel()
    model.append(partition_log, [NewRecord(b"a", b"1", NOW_MS), NewRecord(b"a", None, NOW_MS)])
    partition_log.roll()
    partition_log.segments.first.set_last_modified_ms(NOW_MS)
    cleaner = LogCleaner()
    cleaner.clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=NOW_MS)
    assert [r.offset for r in read_log(partition_log)[0]] == [1]

    model.append(partition_log, [NewRecord(b"b", b"1", NOW_MS)])
    partition_log.roll()
    for segment in list(partition_log.segments)[:-1]:
        segment.set_last_modified_ms(NOW_MS)
    later = NOW_MS + RETENTION_MS + 1
    cleaner.clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=later)
    assert [(r.key, r.value) for r in read_log(partition_log)[0]] == [(b"b", b"1")]


# -- 3. what must not be cleaned ---------------------------------------------------------------------------


def test_min_compaction_lag_keeps_young_segments_and_those_after_them(tmp_path):
    lag_ms = 10_000
    clock = ManualClock(NOW_MS)
    config = compact_config(segment_bytes=BIG_SEGMENT_BYTES, min_compaction_lag_ms=lag_ms)
    partition_log = open_log(tmp_path / "log", config, clock)
    model = LogModel()
    for age_ms in (30_000, 20_000, 5_000, 30_000):  # the third segment is young, the fourth old again
        for i in range(6):
            model.append(partition_log, [NewRecord(b"k%d" % (i % 2), b"v", NOW_MS - age_ms)])
        partition_log.roll()
    model.append(partition_log, [NewRecord(b"k0", b"v", NOW_MS)])
    bases = [s.base_offset for s in partition_log.segments]
    _, headers_before = read_log(partition_log)

    cleaner = LogCleaner()
    cleaner.clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=clock.now_ms())
    assert_log_matches(partition_log, compacted(model.records, bases[2], never), model)
    _, headers_after = read_log(partition_log)
    assert [h for h in headers_after if h.base_offset >= bases[2]] == [
        h for h in headers_before if h.base_offset >= bases[2]
    ]

    clock.advance(4_999)  # the young segment is 9,999 ms old: still too young
    cleaner.clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=clock.now_ms())
    assert_log_matches(partition_log, compacted(model.records, bases[2], never), model)

    clock.advance(1)
    cleaner.clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=clock.now_ms())
    assert_log_matches(partition_log, compacted(model.records, bases[4], never), model)


@pytest.mark.parametrize(
    "where",
    ["inside_first_segment", "at_a_segment_boundary", "inside_a_later_segment", "at_active", "at_end"],
)
def test_upper_bound_and_active_segment_are_never_cleaned(tmp_path, where):
    rng = random.Random(where)
    config = compact_config(segment_bytes=BIG_SEGMENT_BYTES)
    partition_log, model = build_segmented_log(tmp_path / "log", rng, ManualClock(NOW_MS), config, 4, 12)
    # The active segment holds its own superseded records: they must stay.
    model.append(partition_log, [NewRecord(b"k00", b"x", NOW_MS), NewRecord(b"k00", b"y", NOW_MS)])
    bases = [s.base_offset for s in partition_log.segments]
    upper, end = {
        "inside_first_segment": (bases[1] - 1, 0),
        "at_a_segment_boundary": (bases[2], bases[2]),
        "inside_a_later_segment": (bases[2] + 1, bases[2]),
        "at_active": (bases[4], bases[4]),
        "at_end": (partition_log.log_end_offset, bases[4]),
    }[where]
    assert expected_cleanable_end(partition_log, upper, NOW_MS, 0, model.records) == end
    active_before = active_segment_state(partition_log)

    result = LogCleaner().clean(partition_log, upper_bound_offset=upper, now_ms=NOW_MS)

    assert result.cleaned_segments == bases.index(end)
    assert_log_matches(partition_log, compacted(model.records, end, never), model)
    assert active_segment_state(partition_log) == active_before


# -- 4. idempotent producers ---------------------------------------------------------------------------


def delete_producer_snapshots(directory: Path) -> None:
    for path in directory.glob("*.snapshot"):
        path.unlink()


def test_emptied_last_batch_of_a_producer_is_kept_empty_and_rebuilds_its_state(tmp_path):
    directory = tmp_path / "log"
    config = compact_config(segment_bytes=BIG_SEGMENT_BYTES)
    clock = ManualClock(NOW_MS)
    partition_log = open_log(directory, config, clock)
    model = LogModel()
    p, q = 1000, 2000

    def produce(pid: int, sequence: int, keys: list[bytes]) -> int:
        records = [NewRecord(k, b"%d-%d" % (pid, sequence), NOW_MS) for k in keys]
        return model.append(partition_log, records, producer_id=pid, producer_epoch=3, base_sequence=sequence)

    p_first = produce(p, 0, [b"a", b"b"])  # emptied, not p's last batch: dropped
    p_last = produce(p, 2, [b"c", b"d"])  # emptied, p's last batch in the range: kept empty
    q_first = produce(q, 0, [b"e"])  # emptied, not q's last in the range: dropped
    produce(q, 1, [b"f"])  # survives
    for key in (b"a", b"b", b"c", b"d", b"e"):
        model.append(partition_log, [NewRecord(key, b"plain", NOW_MS)])
    partition_log.roll()
    produce(q, 2, [b"g"])  # in the active segment
    for segment in list(partition_log.segments)[:-1]:
        segment.set_last_modified_ms(NOW_MS)

    LogCleaner().clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=NOW_MS)

    end = partition_log.segments.active.base_offset
    assert_log_matches(
        partition_log, compacted(model.records, end, never), model, empty_batches=frozenset({p_last})
    )
    _, headers = read_log(partition_log)
    empty = next(h for h in headers if h.base_offset == p_last)
    assert empty.record_count == 0
    assert empty.last_sequence == 3
    assert p_first not in {h.base_offset for h in headers}
    assert q_first not in {h.base_offset for h in headers}

    partition_log.close()
    delete_producer_snapshots(directory)  # the state must come from the batches themselves
    reopened = open_log(directory, config, clock)
    assert reopened.producer_state.producers[p].last_sequence == 3
    assert reopened.producer_state.producers[q].last_sequence == 2
    retry = reopened.append_as_leader(
        encode_batch(
            [NewRecord(b"c", b"1000-2", NOW_MS), NewRecord(b"d", b"1000-2", NOW_MS)],
            now_ms=NOW_MS,
            producer_id=p,
            producer_epoch=3,
            base_sequence=2,
        ),
        0,
    )
    assert retry.duplicate
    assert (retry.first_offset, retry.last_offset) == (p_last, p_last + 1)
    leo = reopened.log_end_offset
    following = reopened.append_as_leader(
        encode_batch(
            [NewRecord(b"h", b"x", NOW_MS)], now_ms=NOW_MS, producer_id=p, producer_epoch=3, base_sequence=4
        ),
        0,
    )
    assert not following.duplicate
    assert following.first_offset == leo
    reopened.close()


def test_kept_empty_batch_goes_once_its_producer_has_a_later_batch(tmp_path):
    directory = tmp_path / "log"
    config = compact_config(segment_bytes=BIG_SEGMENT_BYTES)
    partition_log = open_log(directory, config, ManualClock(NOW_MS))
    model = LogModel()
    cleaner = LogCleaner()
    pid = 7
    empties = []
    for sequence, key in enumerate([b"a", b"b", b"c"]):
        empties.append(
            model.append(
                partition_log,
                [NewRecord(key, b"idempotent", NOW_MS)],
                producer_id=pid,
                producer_epoch=0,
                base_sequence=sequence,
            )
        )
        model.append(partition_log, [NewRecord(key, b"plain", NOW_MS)])
        partition_log.roll()
        for segment in list(partition_log.segments)[:-1]:
            segment.set_last_modified_ms(NOW_MS)
        cleaner.clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=NOW_MS)
        # Only the producer's newest batch is needed to rebuild its state; older emptied ones go.
        assert_log_matches(
            partition_log,
            compacted(model.records, partition_log.log_end_offset, never),
            model,
            empty_batches=frozenset({empties[-1]}),
        )
    partition_log.close()
    delete_producer_snapshots(directory)
    reopened = open_log(directory, config, ManualClock(NOW_MS))
    assert reopened.producer_state.producers[pid].last_sequence == 2
    reopened.close()


# -- 5. cleaning beside appends and reads -------------------------------------------------------------------


def generated(seed: int, offset: int) -> Record:
    new = child.record_at(seed, offset, NOW_MS)
    return Record(offset, new.timestamp_ms, new.key, new.value, tuple(new.headers))


def check_generated_log(partition_log: PartitionLog, seed: int) -> list[Record]:
    """A log of child.record_at records: every record is the one appended at its offset, and compaction
    never lost the latest record of a key (nor a record with a null key) below the log end."""
    assert partition_log.log_start_offset == 0, "the log start offset moved"
    records, _ = read_log(partition_log)
    offsets = [r.offset for r in records]
    assert all(a < b for a, b in itertools.pairwise(offsets)), "offsets do not strictly increase"
    for record in records:
        assert record == generated(seed, record.offset)
    present = set(offsets)
    must_have: dict[bytes | None, int] = {}
    for offset in range(partition_log.log_end_offset):
        key = generated(seed, offset).key
        if key is None:
            assert offset in present, f"null-key record {offset} lost"
        else:
            must_have[key] = offset
    lost = sorted(o for o in must_have.values() if o not in present)
    assert not lost, f"latest records lost at offsets {lost}"
    check_structure(partition_log)
    return records


def test_cleaning_in_a_thread_does_not_block_appends_or_reads(tmp_path):
    seed = 5
    config = compact_config(segment_bytes=4096)
    partition_log = open_log(tmp_path / "log", config, ManualClock(NOW_MS))
    stop = threading.Event()
    errors: list[BaseException] = []
    swaps_while_appending = []
    reads = 0

    def clean_loop() -> None:
        cleaner = LogCleaner()
        try:
            while not stop.is_set():
                result = cleaner.clean(
                    partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=NOW_MS
                )
                if result.cleaned_segments:
                    swaps_while_appending.append(partition_log.log_end_offset)
        except BaseException as exc:
            errors.append(exc)

    def read_loop() -> None:
        nonlocal reads
        try:
            while not stop.is_set():
                offset, previous = partition_log.log_start_offset, -1
                while offset < partition_log.log_end_offset:
                    data = partition_log.read(offset, 2000)
                    if not data:
                        break
                    for header, view in iter_batches(data):
                        for record in decode_records(view, header):
                            assert record.offset > previous
                            assert record == generated(seed, record.offset)
                            previous = record.offset
                        offset = header.next_offset
                reads += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=clean_loop), threading.Thread(target=read_loop)]
    for thread in threads:
        thread.start()
    rng = random.Random(seed)
    try:
        while partition_log.log_end_offset < 1500:
            base = partition_log.log_end_offset
            records = [child.record_at(seed, base + i, NOW_MS) for i in range(rng.randrange(1, 4))]
            info = partition_log.append_as_leader(encode_batch(records, now_ms=NOW_MS), 0)
            assert info.first_offset == base
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, errors
    assert len(set(swaps_while_appending)) >= 3, (
        "the cleaner must have swapped segments while appends went on"
    )
    assert reads > 0

    LogCleaner().clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=NOW_MS)
    expected = {o: generated(seed, o) for o in range(partition_log.log_end_offset)}
    end = partition_log.segments.active.base_offset
    records, _ = read_log(partition_log)
    assert records == [expected[o] for o in sorted(compacted(expected, end, never))]
    check_structure(partition_log)


def test_background_cleaner_thread_compacts_while_appends_go_on(tmp_path):
    seed = 6
    partition_log = open_log(tmp_path / "log", compact_config(segment_bytes=4096), ManualClock(NOW_MS))
    cleaner = LogCleaner()
    cleaner.register("t-0", partition_log, lambda: partition_log.log_end_offset)
    cleaner.start(interval_s=0.01)
    try:
        while partition_log.log_end_offset < 1000:
            base = partition_log.log_end_offset
            partition_log.append_as_leader(
                encode_batch([child.record_at(seed, base, NOW_MS)], now_ms=NOW_MS), 0
            )
        deadline = time.monotonic() + 20
        while cleaner.first_dirty.get(partition_log.directory, 0) < partition_log.segments.active.base_offset:
            assert time.monotonic() < deadline, "the background cleaner never caught up"
            time.sleep(0.01)
    finally:
        cleaner.stop()
    expected = {o: generated(seed, o) for o in range(partition_log.log_end_offset)}
    end = partition_log.segments.active.base_offset
    records, _ = read_log(partition_log)
    assert records == [expected[o] for o in sorted(compacted(expected, end, never))]
    check_structure(partition_log)


# -- 6. crashes in the middle of a swap -------------------------------------------------------------------


def prepare_crash_log(directory: Path) -> tuple[LogConfig, LogModel, dict[int, Record], dict[int, Record]]:
    """Three sealed segments (one cleaning group) and an active one, closed cleanly; the first sealed
    segment is past delete.retention.ms, so its tombstones go too. Returns the uncleaned and cleaned models."""
    rng = random.Random(42)
    config = compact_config(segment_bytes=BIG_SEGMENT_BYTES)
    partition_log, model = build_segmented_log(directory, rng, ManualClock(NOW_MS), config, 3, 15)
    first, second, third, active = partition_log.segments
    first.set_last_modified_ms(NOW_MS - RETENTION_MS - 1)
    for segment in (second, third):
        segment.set_last_modified_ms(NOW_MS)
    cleaned = compacted(model.records, active.base_offset, lambda offset: offset < second.base_offset)
    assert cleaned != model.records
    partition_log.close()
    return config, model, dict(model.records), cleaned


def run_swap_crash_child(directory: Path, config: LogConfig, crash_at: int) -> subprocess.CompletedProcess:
    config_json = orjson.dumps(config.to_topic_configs()).decode()
    return subprocess.run(
        [sys.executable, str(CHILD), "swap-crash", str(directory), config_json, str(NOW_MS), str(crash_at)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def describe_step(calls: list[str], crash_at: int) -> str:
    if crash_at > len(calls):
        return "after the swap completed"
    done = calls[: crash_at - 1]
    return f"crash before call {crash_at} ({calls[crash_at - 1]}), after {done}"


def test_crash_at_every_step_of_the_swap_leaves_the_old_or_the_new_segments(tmp_path):
    prepared = tmp_path / "prepared"
    config, model, uncleaned, cleaned = prepare_crash_log(prepared)
    counting = tmp_path / "count"
    shutil.copytree(prepared, counting)
    run = run_swap_crash_child(counting, config, 0)
    assert run.returncode == 0, run.stderr
    calls = run.stdout.splitlines()
    # The commit point: the manifest renamed in. Everything before it must leave the old segments.
    assert calls[:2] == [f"write_atomic {SWAP_MANIFEST}", f"replace {SWAP_MANIFEST}"]
    assert calls[-1] == f"unlink {SWAP_MANIFEST}"
    assert len([c for c in calls if c.startswith("unlink")]) == 3 * 3 + 1, calls

    for crash_at in range(1, len(calls) + 2):
        directory = tmp_path / f"crash-{crash_at}"
        shutil.copytree(prepared, directory)
        run = run_swap_crash_child(directory, config, crash_at)
        step = describe_step(calls, crash_at)
        assert run.returncode == child.CRASH_EXIT_STATUS, f"{step}: {run.stderr}"
        reopened = open_log(directory, config, ManualClock(NOW_MS))
        expected = uncleaned if crash_at <= 2 else cleaned
        try:
            assert_log_matches(reopened, expected, model)
        except AssertionError as exc:
            raise AssertionError(f"{step}: {exc}") from exc
        assert swap_leftovers(directory) == [], step
        # The recovered log cleans on to the compacted state.
        LogCleaner().clean(reopened, upper_bound_offset=reopened.log_end_offset, now_ms=NOW_MS)
        assert_log_matches(reopened, cleaned, model)
        reopened.close()


class InjectedIOError(OSError):
    pass


SWAP_FAILURE_STEPS = {
    # name: (which hooked call fails, whether the manifest was committed before it)
    "before_the_manifest": (lambda name, path, unlinks: name == "write_atomic", False),
    "after_the_manifest_before_deleting": (
        lambda name, path, unlinks: name == "unlink" and unlinks == 1,
        True,
    ),
    "after_some_old_segments_deleted": (lambda name, path, unlinks: name == "unlink" and unlinks == 5, True),
    "after_the_renames_before_removing_the_manifest": (
        lambda name, path, unlinks: name == "unlink" and path.endswith(SWAP_MANIFEST),
        True,
    ),
}


@pytest.mark.parametrize("step", sorted(SWAP_FAILURE_STEPS))
def test_io_error_in_the_swap_then_crash_leaves_the_old_or_the_new_segments(tmp_path, monkeypatch, step):
    """In-process: one call of the swap fails with EIO, then the process "crashes" (close_unflushed)."""
    directory = tmp_path / "log"
    config, model, uncleaned, cleaned = prepare_crash_log(directory)
    fails, committed = SWAP_FAILURE_STEPS[step]
    partition_log = open_log(directory, config, ManualClock(NOW_MS))
    state = {"in_swap": False, "unlinks": 0, "failed": False}
    real_unlink, real_replace, real_write_atomic = os.unlink, os.replace, storage.log.write_atomic

    def hook(name: str, path: str) -> None:
        if not state["in_swap"] or state["failed"]:
            return
        if name == "unlink":
            state["unlinks"] += 1
        if fails(name, os.fspath(path), state["unlinks"]):
            state["failed"] = True
            raise InjectedIOError(errno.EIO, f"injected failure of {name} {path}")

    def unlink(path, *args, **kwargs):
        hook("unlink", path)
        return real_unlink(path, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        hook("replace", dst)
        return real_replace(src, dst, *args, **kwargs)

    def write_atomic(path, data, **kwargs):
        hook("write_atomic", path)
        return real_write_atomic(path, data, **kwargs)

    real_swap = partition_log.swap_cleaned_segment

    def swap(*args, **kwargs):
        state["in_swap"] = True
        try:
            real_swap(*args, **kwargs)
        finally:
            state["in_swap"] = False

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(storage.log, "write_atomic", write_atomic)
    monkeypatch.setattr(partition_log, "swap_cleaned_segment", swap)
    with pytest.raises(Exception) as raised:
        LogCleaner().clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=NOW_MS)
    chain = [raised.value]
    while chain[-1].__cause__ or chain[-1].__context__:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    assert any(isinstance(exc, InjectedIOError) for exc in chain), "the I/O error must surface"
    partition_log.close_unflushed()
    monkeypatch.undo()
    reopened = open_log(directory, config, ManualClock(NOW_MS))
    assert_log_matches(reopened, cleaned if committed else uncleaned, model)
    assert swap_leftovers(directory) == []
    reopened.close()


def test_random_sigkills_of_a_cleaning_child_never_lose_or_repeat_a_record(tmp_path):
    directory = tmp_path / "log"
    seed = 20251126
    rng = random.Random(seed)
    cleanings = 0
    interrupted_swaps = 0
    for _ in range(7):
        process = subprocess.Popen(
            [sys.executable, str(CHILD), "kill-loop", str(directory), str(seed), str(NOW_MS)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.05, 0.5))
        process.send_signal(signal.SIGKILL)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL
        cleanings += output.count("cleaned")
        interrupted_swaps += SWAP_MANIFEST in os.listdir(directory)
        reopened = open_log(directory, child.kill_loop_config(), ManualClock(NOW_MS))
        assert swap_leftovers(directory) == []
        check_generated_log(reopened, seed)
        reopened.close()
    assert cleanings > 0, "the child never finished a cleaning"

    final = open_log(directory, child.kill_loop_config(), ManualClock(NOW_MS))
    LogCleaner().clean(final, upper_bound_offset=final.log_end_offset, now_ms=NOW_MS)
    expected = {o: generated(seed, o) for o in range(final.log_end_offset)}
    records = check_generated_log(final, seed)
    assert records == [
        expected[o] for o in sorted(compacted(expected, final.segments.active.base_offset, never))
    ]
    final.close()
    print(f"{cleanings} cleanings, {interrupted_swaps} kills inside a committed swap")


# -- 7. truncation and retention racing a cleaning ---------------------------------------------------------


def run_before_swap(monkeypatch, partition_log: PartitionLog, action: Callable[[], None]) -> None:
    """Run `action` (the race) after the cleaner has read its segments, right before its first swap."""
    real_swap = partition_log.swap_cleaned_segment
    done = []

    def swap(*args, **kwargs):
        if not done:
            done.append(True)
            action()
        return real_swap(*args, **kwargs)

    monkeypatch.setattr(partition_log, "swap_cleaned_segment", swap)


def racing_log(tmp_path: Path, config: LogConfig | None = None, old_ms: int = 0):
    """Five sealed segments of twelve records (the first two with timestamps `old_ms` in the past)."""
    rng = random.Random(7)
    clock = ManualClock(NOW_MS)
    config = config or compact_config(segment_bytes=BIG_SEGMENT_BYTES)
    partition_log = open_log(tmp_path / "log", config, clock)
    model = LogModel()
    for segment_index in range(5):
        for record in random_records(rng, 12):
            if segment_index < 2:
                record = record._replace(timestamp_ms=NOW_MS - old_ms)
            model.append(partition_log, [record])
        partition_log.roll()
    for record in random_records(rng, 3):
        model.append(partition_log, [record])
    for segment in list(partition_log.segments)[:-1]:
        segment.set_last_modified_ms(NOW_MS)
    return partition_log, model, clock


@pytest.mark.parametrize("retention", ["delete_records", "retention_ms"])
def test_retention_during_the_swap_drops_the_round(tmp_path, monkeypatch, retention):
    if retention == "retention_ms":
        config = compact_config(
            segment_bytes=BIG_SEGMENT_BYTES, cleanup_policy=CleanupPolicy.COMPACT_DELETE, retention_ms=60_000
        )
        partition_log, model, _ = racing_log(tmp_path, config, old_ms=120_000)
    else:
        partition_log, model, _ = racing_log(tmp_path)
    third = list(partition_log.segments)[2].base_offset

    def retention_wins() -> None:
        if retention == "retention_ms":
            assert partition_log.delete_old_segments(partition_log.log_end_offset) == 2
        else:
            partition_log.advance_log_start_offset(third, partition_log.log_end_offset)

    run_before_swap(monkeypatch, partition_log, retention_wins)
    cleaner = LogCleaner()
    cleaner.clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=NOW_MS)

    assert swap_leftovers(partition_log.directory) == []
    assert_log_matches(partition_log, model.records, model, log_start=third)
    monkeypatch.undo()
    cleaner.clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=NOW_MS)
    remaining = {o: r for o, r in model.records.items() if o >= third}
    end = partition_log.segments.active.base_offset
    assert_log_matches(partition_log, compacted(remaining, end, never), model, log_start=third)


def test_retention_while_the_offset_map_is_built_drops_the_round(tmp_path, monkeypatch):
    partition_log, model, _ = racing_log(tmp_path)
    third = list(partition_log.segments)[2].base_offset
    real_read = partition_log.read_segment_chunk
    done = []

    def read_segment_chunk(segment, position, max_bytes):
        if not done:
            done.append(True)
            partition_log.advance_log_start_offset(third, partition_log.log_end_offset)
        return real_read(segment, position, max_bytes)

    monkeypatch.setattr(partition_log, "read_segment_chunk", read_segment_chunk)
    cleaner = LogCleaner()
    try:
        cleaner.clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=NOW_MS)
    except SegmentGoneError as exc:
        pytest.fail(
            f"a segment deleted by retention while the offset map was built failed the clean: {exc!r}"
        )
    assert swap_leftovers(partition_log.directory) == []
    assert_log_matches(partition_log, model.records, model, log_start=third)
    monkeypatch.undo()
    cleaner.clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=NOW_MS)
    remaining = {o: r for o, r in model.records.items() if o >= third}
    end = partition_log.segments.active.base_offset
    assert_log_matches(partition_log, compacted(remaining, end, never), model, log_start=third)


@pytest.mark.parametrize("then", ["nothing", "append_and_roll"])
@pytest.mark.parametrize("into", ["last_segment_of_the_group", "earlier_segment_of_the_group"])
def test_truncation_during_the_swap_drops_the_round(tmp_path, monkeypatch, into, then):
    partition_log, model, _ = racing_log(tmp_path)  # the five sealed segments make one cleaning group
    sealed = list(partition_log.segments)[:-1]
    truncate_at = (sealed[-1] if into == "last_segment_of_the_group" else sealed[-2]).base_offset + 5
    rng = random.Random(3)

    def truncation_wins() -> None:
        partition_log.truncate_to(truncate_at)
        model.truncate(truncate_at)
        if then == "append_and_roll":  # a new leader's records take the truncated offsets
            for record in random_records(rng, 10):
                model.append(partition_log, [record], epoch=1)
            partition_log.roll()
            model.append(partition_log, random_records(rng, 1), epoch=1)

    run_before_swap(monkeypatch, partition_log, truncation_wins)
    cleaner = LogCleaner()
    try:
        cleaner.clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=NOW_MS)
    except AssertionError as exc:
        pytest.fail(f"a truncation racing the cleaner failed the clean: {exc!r}")

    assert swap_leftovers(partition_log.directory) == []
    end = partition_log.segments.active.base_offset
    records, _ = read_log(partition_log)
    assert records in (
        [model.records[o] for o in sorted(model.records)],
        [model.records[o] for o in sorted(compacted(model.records, end, never))],
    ), "the log holds neither the truncated records nor their compaction"
    assert_log_matches(partition_log, {r.offset: r for r in records}, model)
    monkeypatch.undo()
    cleaner.clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=NOW_MS)
    assert_log_matches(partition_log, compacted(model.records, end, never), model)


def test_full_truncation_during_the_swap_drops_the_round(tmp_path, monkeypatch):
    partition_log, _model, _ = racing_log(tmp_path)
    restart_at = partition_log.log_end_offset + 100

    def truncation_wins() -> None:
        partition_log.truncate_fully_and_start_at(restart_at)

    run_before_swap(monkeypatch, partition_log, truncation_wins)
    LogCleaner().clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=NOW_MS)

    assert swap_leftovers(partition_log.directory) == []
    assert [s.base_offset for s in partition_log.segments] == [restart_at]
    assert partition_log.log_start_offset == partition_log.log_end_offset == restart_at
    assert read_log(partition_log) == ([], [])
    info = partition_log.append_as_leader(encode_batch([NewRecord(b"k", b"v", NOW_MS)], now_ms=NOW_MS), 1)
    assert info.first_offset == restart_at


def test_records_appended_after_truncating_below_the_cleaned_point_are_compacted(tmp_path):
    partition_log, model, _ = racing_log(tmp_path)
    cleaner = LogCleaner()
    cleaner.clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=NOW_MS)
    first_end = partition_log.segments.active.base_offset
    model.records = compacted(model.records, first_end, never)

    truncate_at = first_end - 20
    partition_log.truncate_to(truncate_at)
    model.truncate(truncate_at)
    # A new leader's records, past the old cleaned point: keys x* repeat below it only, y* above it only.
    for i in range(40):
        key = (b"x%d" if i < 20 else b"y%d") % (i % 4)
        model.append(partition_log, [NewRecord(key, b"new%d" % i, NOW_MS)], epoch=1)
        if i % 10 == 9:
            partition_log.roll()
    for segment in list(partition_log.segments)[:-1]:
        segment.set_last_modified_ms(NOW_MS)
    assert partition_log.log_end_offset > first_end

    cleaner.clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=NOW_MS)
    end = partition_log.segments.active.base_offset
    assert_log_matches(partition_log, compacted(model.records, end, never), model)


# -- the whole life of a compacted log, against the model (hypothesis) --------------------------------------

record_specs = st.lists(
    st.tuples(
        st.one_of(st.none(), st.integers(0, 7)),  # key index; None: null key
        st.sampled_from(["value", "empty", "tombstone"]),
        st.integers(0, 3_000),  # how far before the clock's now the record's timestamp lies
    ),
    min_size=1,
    max_size=4,
)


class CompactedLogMachine(RuleBasedStateMachine):
    """Appends, rolls, cleanings (any upper bound, same or fresh cleaner), clock moves and restarts."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="compaction-")
        self.clock = ManualClock(NOW_MS)
        self.model = LogModel()
        self.cleaner = LogCleaner()
        self.values = 0
        self.epoch = 0

    @initialize(
        segment_bytes=st.sampled_from([1024, 1500, 4096]),
        tombstones_expire=st.booleans(),
        lag_ms=st.sampled_from([0, 2_000]),
    )
    def open(self, segment_bytes: int, tombstones_expire: bool, lag_ms: int) -> None:
        self.config = compact_config(segment_bytes=segment_bytes, min_compaction_lag_ms=lag_ms)
        self.tombstones_expire = tombstones_expire
        self.log = open_log(self.directory, self.config, self.clock)

    @rule(batches=st.lists(record_specs, min_size=1, max_size=8), new_epoch=st.booleans())
    def append(self, batches, new_epoch: bool) -> None:
        self.epoch += new_epoch
        for specs in batches:
            records = []
            for key_index, kind, age_ms in specs:
                self.values += 1
                key = None if key_index is None else KEYS[key_index]
                value = {"value": b"v%d" % self.values, "empty": b"", "tombstone": None}[kind]
                if key is None and value is None:
                    value = b"n%d" % self.values
                headers = (("n", b"%d" % self.values),)
                records.append(NewRecord(key, value, self.clock.now_ms() - age_ms, headers))
            self.model.append(self.log, records, epoch=self.epoch)

    @rule()
    def roll(self) -> None:
        self.log.roll()

    @rule(ms=st.integers(1, 5_000))
    def advance_clock(self, ms: int) -> None:
        self.clock.advance(ms)

    @precondition(lambda self: len(self.log.segments) > 1)  # something sealed to clean
    @rule(upper_fraction=st.sampled_from([0.3, 0.7, 1.0]), fresh=st.booleans())
    def clean(self, upper_fraction: float, fresh: bool) -> None:
        if fresh:
            self.cleaner = LogCleaner()
        now = self.clock.now_ms()
        for segment in list(self.log.segments)[:-1]:
            segment.set_last_modified_ms(now - RETENTION_MS - 1 if self.tombstones_expire else now)
        upper = int(self.log.log_end_offset * upper_fraction)
        end = expected_cleanable_end(
            self.log, upper, now, self.config.min_compaction_lag_ms, self.model.records
        )
        before = len(self.model.records)
        self.model.records = compacted(self.model.records, end, lambda offset: self.tombstones_expire)
        self.cleaner.clean(self.log, upper_bound_offset=upper, now_ms=now)
        event(f"a cleaning dropped records: {len(self.model.records) < before}")

    @rule()
    def restart(self) -> None:
        self.log.close()
        self.log = open_log(self.directory, self.config, self.clock)

    @invariant()
    def matches_the_model(self) -> None:
        if hasattr(self, "log"):
            assert_log_matches(self.log, self.model.records, self.model)

    def teardown(self) -> None:
        if hasattr(self, "log"):
            self.log.close()
        shutil.rmtree(self.directory, ignore_errors=True)


TestCompactedLogMachine = CompactedLogMachine.TestCase
TestCompactedLogMachine.settings = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
