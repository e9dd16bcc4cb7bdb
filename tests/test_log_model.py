"""Model-based test of `PartitionLog`: a hypothesis state machine against a plain Python model.

Theory of operation
-------------------
`LogModel` is what the log promises, with no IO: the batches still on disk (each with its offsets,
leader epoch, records and encoded size), the base offset of the first segment, the log start offset
(LSO), the log end offset (LEO) and the leader epoch cache as (epoch, first offset written in it).
`PartitionLogMachine` drives a real log in a fresh directory and the model side by side with appends,
reads, timestamp lookups, truncations, rolls, retention, log start offset advances and restarts (clean,
and after closing without a flush); after every step it checks that both agree and that the log's
invariants hold.

Where segments roll is the log's choice (size, age, index room), so the model takes the segment base
offsets from the log and checks that they are consistent with the batches: each segment holds exactly
the model batches between its base and the next segment's, byte for byte. Retention decisions are then
predicted from that layout with Kafka's rules.

The deterministic tests at the end replay the shortest step sequences the machine found for bugs in
storage/, so each bug has a test of its own.
"""

from __future__ import annotations

import bisect
import itertools
import os
import random
import shutil
import tempfile
from dataclasses import dataclass

import pytest
from hypothesis import note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from storage.clock import ManualClock
from storage.config import CleanupPolicy, FlushPolicy, LogConfig
from storage.errors import BatchTooLargeError, OffsetOutOfRangeError, StaleLeaderEpochError
from storage.log import PartitionLog
from storage.record_batch import (
    NewRecord,
    Record,
    decode_batches,
    decode_records,
    encode_batch,
    iter_batches,
)

# Every record of a batch costs at most 24 + 12 + 48 + 2 * (6 + 9 + 8) = 130 bytes, so a batch of
# RECORDS_PER_BATCH_MAX records (65 + 6 * 130 = 845 bytes) always fits the smallest segment (1024).
RECORDS_PER_BATCH_MAX = 6
# In memory where the machine has it: the log fsyncs on every roll and epoch change, which costs
# milliseconds on a disk and would take most of the time budget; nothing here tests durability.
SCRATCH_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None
READ_BYTES_MAX = 2500  # a little more than two of the largest segments: reads span many batches

HEADER_NAMES = ["", "trace-id", "é", "\u00df\u4e2d\U0001f600"]


def make_records(count: int, seed: int, now_ms: int) -> list[NewRecord]:
    """`count` records from a seeded generator: keys and values null, empty or random bytes, up to two
    headers (null and empty values too), timestamps around `now_ms` or left to the batch (None).

    Hypothesis draws the seed, not every byte: a step then costs a handful of choices instead of dozens,
    which keeps generation and shrinking fast; the codec has tests of its own for record contents."""
    rng = random.Random(seed)

    def some_bytes(size_max: int) -> bytes | None:
        kind = rng.random()
        if kind < 0.2:
            return None
        if kind < 0.35:
            return b""
        return rng.randbytes(rng.randint(1, size_max))

    records = []
    for _ in range(count):
        headers = [(rng.choice(HEADER_NAMES), some_bytes(8)) for _ in range(rng.randint(0, 2))]
        timestamp = None if rng.random() < 0.3 else now_ms + rng.randint(-300_000, 30_000)
        records.append(NewRecord(some_bytes(12), some_bytes(48), timestamp, headers))
    return records


# One step's appends: several batches, since truncation and retention remove many at once. The clock
# moves before each batch, so segments age and retention.ms bites; a roll before a batch makes segment
# boundaries that size alone would not.
appends = st.lists(
    st.tuples(
        st.integers(1, RECORDS_PER_BATCH_MAX),  # how many records
        st.integers(0, 2**32 - 1),  # the seed of their contents
        st.sampled_from([0, 0, 0, 1, 2]),  # how much the leader epoch grows
        st.just(0) | st.integers(0, 120_000),  # how far the clock moves, in ms
        st.sampled_from([False, False, False, True]),  # whether to roll first
    ),
    min_size=1,
    max_size=4,
)

# Draws whose range depends on the log's state (an offset between the LSO and the LEO) go through
# `pick`: the choice hypothesis records has the same range whatever the state, so when the shrinker
# changes an earlier step the later choices still fit instead of wasting the attempt. The value a step
# uses is written to the failure report with `note`.
PICK_MAX = 2**16 - 1


def pick(data, low: int, high: int, label: str) -> int:
    """An int in [low, high] (low when the range is empty); smaller choices give values nearer `low`."""
    choice = data.draw(st.integers(0, PICK_MAX), label=label)
    return low + choice % (high - low + 1) if high > low else low


def pick_from(data, items: list, label: str):
    return items[pick(data, 0, len(items) - 1, label)]


log_configs = st.builds(
    LogConfig,
    segment_bytes=st.integers(1024, 4096),
    segment_ms=st.sampled_from([7 * 24 * 3600 * 1000, 200_000, 20_000]),
    index_interval_bytes=st.sampled_from([0, 100, 400, 4096]),
    # 32 bytes is 4 index entries: segments also roll because their index is full.
    segment_index_bytes=st.sampled_from([32, 64, 10 * 1024 * 1024]),
    # The first choice is the one hypothesis draws most: keep data unless a step asks otherwise.
    retention_ms=st.sampled_from([-1, 400_000, 60_000, 0]),
    retention_bytes=st.sampled_from([-1, 6000, 1500, 0]),
    cleanup_policy=st.sampled_from(CleanupPolicy),
    flush_policy=st.sampled_from(FlushPolicy),
    flush_interval_ms=st.sampled_from([0, 50_000]),
)


# -- the model ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelBatch:
    leader_epoch: int
    records: tuple[Record, ...]
    size: int  # bytes on disk

    @property
    def base_offset(self) -> int:
        return self.records[0].offset

    @property
    def last_offset(self) -> int:
        return self.records[-1].offset

    @property
    def next_offset(self) -> int:
        return self.last_offset + 1

    @property
    def max_timestamp(self) -> int:
        return max(record.timestamp_ms for record in self.records)


@dataclass(frozen=True, slots=True)
class SegmentView:
    """One segment as the model sees it: the log's boundaries filled with the model's batches."""

    base_offset: int
    upper_offset: int  # the next segment's base offset, or the LEO for the active segment
    batches: tuple[ModelBatch, ...]
    active: bool

    @property
    def size(self) -> int:
        return sum(batch.size for batch in self.batches)

    @property
    def max_timestamp(self) -> int:
        return max((batch.max_timestamp for batch in self.batches), default=-1)


class LogModel:
    def __init__(self) -> None:
        self.batches: list[ModelBatch] = []  # every batch on disk, those below the LSO included
        self.first_base = 0  # base offset of the first segment
        self.log_start_offset = 0
        self.log_end_offset = 0
        self.epochs: list[tuple[int, int]] = []  # (leader epoch, first offset written in it)

    def latest_epoch(self) -> int:
        return self.epochs[-1][0] if self.epochs else -1

    def append(self, leader_epoch: int, new_records: list[NewRecord], size: int) -> ModelBatch:
        base = self.log_end_offset
        batch = ModelBatch(
            leader_epoch,
            tuple(
                Record(base + i, r.timestamp_ms, r.key, r.value, tuple(r.headers))
                for i, r in enumerate(new_records)
            ),
            size,
        )
        self.batches.append(batch)
        self.log_end_offset = batch.next_offset
        if leader_epoch > self.latest_epoch():
            # An epoch left with no offset (the LSO moved its start up to the LEO) is replaced, as in
            # Kafka's LeaderEpochFileCache.assign: no two epochs start at the same offset.
            self.epochs = [(epoch, start) for epoch, start in self.epochs if start < base]
            self.epochs.append((leader_epoch, base))
        return batch

    def index_holding(self, offset: int) -> int:
        """Index of the batch holding `offset` (the first whose last offset is >= it)."""
        return bisect.bisect_left([batch.last_offset for batch in self.batches], offset)

    def records_from(self, offset: int) -> list[Record]:
        """Every record of the batches from the one holding `offset` (what a reader gets)."""
        return [r for batch in self.batches[self.index_holding(offset) :] for r in batch.records]

    def first_record_at_or_after(self, timestamp_ms: int) -> tuple[int, int] | None:
        for batch in self.batches:
            for record in batch.records:
                if record.offset >= self.log_start_offset and record.timestamp_ms >= timestamp_ms:
                    return record.offset, record.timestamp_ms
        return None

    def segment_views(self, bases: list[int]) -> list[SegmentView]:
        uppers = [*bases[1:], self.log_end_offset]
        starts = [batch.base_offset for batch in self.batches]
        return [
            SegmentView(
                base,
                upper,
                tuple(self.batches[bisect.bisect_left(starts, base) : bisect.bisect_left(starts, upper)]),
                active=i == len(bases) - 1,
            )
            for i, (base, upper) in enumerate(zip(bases, uppers, strict=True))
        ]

    def size_bytes(self) -> int:
        return sum(batch.size for batch in self.batches)

    # -- changes ---------------------------------------------------------------------------------

    def truncate_to(self, offset: int) -> int:
        """Remove every batch whose last offset is >= `offset`; return the bytes removed.

        At or below the LSO nothing readable would be left: the log restarts empty at `offset`."""
        if offset >= self.log_end_offset:
            return 0
        if offset <= self.log_start_offset:
            removed = self.size_bytes()
            self.start_empty_at(max(offset, 0))
            return removed
        kept = [batch for batch in self.batches if batch.last_offset < offset]
        removed = self.size_bytes() - sum(batch.size for batch in kept)
        self.batches = kept
        self.log_end_offset = kept[-1].next_offset if kept else self.first_base
        # The batch holding the LSO may start below it; removing that batch must not leave LSO > LEO.
        self.log_start_offset = min(self.log_start_offset, self.log_end_offset)
        self.cut_epochs_from_end()
        return removed

    def start_empty_at(self, offset: int) -> None:
        self.batches = []
        self.first_base = self.log_start_offset = self.log_end_offset = offset
        self.epochs = []

    def delete_segments_below(self, new_first_base: int) -> None:
        """Whole segments were deleted from the front; the LSO moves to at least the first one left."""
        self.batches = [batch for batch in self.batches if batch.base_offset >= new_first_base]
        self.first_base = new_first_base
        self.log_start_offset = max(self.log_start_offset, new_first_base)
        self.cut_epochs_from_start()

    def advance_log_start_offset(self, offset: int) -> None:
        self.log_start_offset = offset
        self.cut_epochs_from_start()

    def cut_epochs_from_start(self) -> None:
        """Epochs that end at or before the LSO go; the one holding it now starts there."""
        starts = [start for _, start in self.epochs]
        holding = bisect.bisect_right(starts, self.log_start_offset) - 1
        if holding < 0:
            return
        self.epochs = self.epochs[holding:]
        epoch, start = self.epochs[0]
        self.epochs[0] = (epoch, max(start, self.log_start_offset))

    def cut_epochs_from_end(self) -> None:
        self.epochs = [(epoch, start) for epoch, start in self.epochs if start < self.log_end_offset]


def expected_retention_victims(
    views: list[SegmentView], config: LogConfig, now_ms: int, upper_bound_offset: int, log_start_offset: int
) -> int:
    """How many segments from the front `delete_old_segments` removes (Kafka's rules, in order):
    retention.ms by a segment's largest timestamp and retention.bytes by what would be left, both only
    for segments wholly below the upper bound; then every segment wholly below the LSO."""
    count = 0
    if config.delete:
        total = sum(view.size for view in views)
        cutoff = now_ms - config.retention_ms if config.retention_ms >= 0 else None
        for view in views:
            if view.upper_offset > upper_bound_offset or (view.active and not view.batches):
                break
            expired = cutoff is not None and view.max_timestamp < cutoff
            over_size = 0 <= config.retention_bytes <= total - view.size
            if not (expired or over_size):
                break
            count += 1
            total -= view.size
    for view in views[count:]:
        if (view.active and not view.batches) or view.upper_offset > log_start_offset:
            break
        count += 1
    return count


# -- the machine -------------------------------------------------------------------------------------


class PartitionLogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="raftka-log-model-", dir=SCRATCH_DIR)
        self.clock = ManualClock()
        self.model = LogModel()
        self.leader_epoch = 0  # the leader epochs this replica is given never decrease
        self.log: PartitionLog | None = None

    def teardown(self) -> None:
        if self.log is not None:
            self.log.close_unflushed()
        shutil.rmtree(self.directory, ignore_errors=True)

    # Hypothesis turns a random subset of the rules off in each example (swarm testing), so the log is
    # filled as it is opened and two rules append: few examples then run on an empty log.
    @initialize(config=log_configs, batches=appends)
    def open_log(self, config: LogConfig, batches) -> None:
        self.config = config
        self.log = PartitionLog(self.directory, config, clock=self.clock)
        self.append_batches(batches)

    def segment_bases(self) -> list[int]:
        return [segment.base_offset for segment in self.log.segments]

    def segment_views(self) -> list[SegmentView]:
        return self.model.segment_views(self.segment_bases())

    # -- appends ---------------------------------------------------------------------------------

    @rule(batches=appends)
    def append(self, batches) -> None:
        self.append_batches(batches)

    @rule(batches=appends)
    def append_after_leader_change(self, batches) -> None:
        self.leader_epoch += 1
        self.append_batches(batches)

    def append_batches(self, batches) -> None:
        for count, seed, epoch_bump, clock_step_ms, roll_first in batches:
            self.clock.advance(clock_step_ms)
            if roll_first:
                self.check_roll()
            self.append_batch(make_records(count, seed, self.clock.now_ms()), epoch_bump)

    def append_batch(self, new_records: list[NewRecord], epoch_bump: int) -> None:
        self.leader_epoch += epoch_bump
        now = self.clock.now_ms()
        batch = encode_batch(new_records, now_ms=now)
        info = self.log.append_as_leader(batch, self.leader_epoch)
        resolved = [
            r._replace(timestamp_ms=now if r.timestamp_ms is None else r.timestamp_ms) for r in new_records
        ]
        expected = self.model.append(self.leader_epoch, resolved, len(batch))
        assert info.first_offset == expected.base_offset
        assert info.last_offset == expected.last_offset
        assert info.max_timestamp == expected.max_timestamp
        assert info.log_start_offset == self.model.log_start_offset
        assert not info.duplicate
        assert self.log.segments.floor(expected.base_offset).next_offset == expected.next_offset

    REFUSED_REQUESTS = (
        "read below the LSO",
        "read above the LEO",
        "batch larger than a segment",
        "stale epoch",
    )

    @rule(data=st.data())
    def refused_requests_change_nothing(self, data) -> None:
        """Bad requests raise and leave the log as it was (the invariants check the "as it was")."""
        model = self.model
        request = data.draw(st.sampled_from(self.REFUSED_REQUESTS), label="request")
        stale_epoch = pick(data, 0, model.latest_epoch() - 1, "stale epoch")
        if request == "stale epoch" and model.latest_epoch() < 1:
            request = "batch larger than a segment"  # no epoch is stale yet
        note(f"{request} (epoch {stale_epoch})" if request == "stale epoch" else request)
        now = self.clock.now_ms()
        if request == "read below the LSO":
            with pytest.raises(OffsetOutOfRangeError):
                self.log.read(model.log_start_offset - 1, READ_BYTES_MAX)
        elif request == "read above the LEO":
            with pytest.raises(OffsetOutOfRangeError):
                self.log.read(model.log_end_offset + 1, READ_BYTES_MAX)
        elif request == "batch larger than a segment":
            batch = encode_batch([NewRecord(None, bytes(self.config.segment_bytes))], now_ms=now)
            with pytest.raises(BatchTooLargeError):
                self.log.append_as_leader(batch, self.leader_epoch)
        else:
            batch = encode_batch([NewRecord(b"k", b"v")], now_ms=now)
            with pytest.raises(StaleLeaderEpochError):
                self.log.append_as_leader(batch, stale_epoch)

    # -- reads -----------------------------------------------------------------------------------

    @rule(data=st.data())
    def read(self, data) -> None:
        model = self.model
        offset = pick(data, model.log_start_offset, model.log_end_offset, "offset")
        max_bytes = data.draw(st.integers(0, READ_BYTES_MAX), label="max_bytes")
        # A high watermark sits on a batch boundary; any offset tests the contract at its edges.
        limit = data.draw(st.sampled_from(["none", "a batch boundary", "any"]), label="max_offset is")
        boundaries = sorted({model.log_end_offset, *(batch.next_offset for batch in model.batches)})
        boundary = pick_from(data, boundaries, "boundary")
        anywhere = pick(data, model.log_start_offset, model.log_end_offset + 1, "max_offset")
        max_offset = {"none": None, "a batch boundary": boundary, "any": anywhere}[limit]
        min_one = data.draw(st.booleans(), label="min_one")
        note(f"read({offset}, max_bytes={max_bytes}, max_offset={max_offset}, min_one={min_one})")
        self.check_read(offset, max_bytes, max_offset, min_one)

    def check_read(self, offset: int, max_bytes: int, max_offset: int | None, min_one: bool) -> None:
        result = self.log.read(offset, max_bytes, max_offset=max_offset, min_one=min_one)
        if offset == self.model.log_end_offset or (max_offset is not None and offset >= max_offset):
            assert result == b"", f"read at {offset} (LEO or max_offset) returned {len(result)} bytes"
            return
        batches = self.model.batches
        first = self.model.index_holding(offset)
        limit = max(max_bytes, batches[first].size) if min_one else max_bytes
        if batches[first].size > limit:
            returned = [h.base_offset for h, _ in iter_batches(result)]
            assert result == b"", (
                f"read({offset}, max_bytes={max_bytes}, min_one=False): the batch holding {offset} "
                f"(base {batches[first].base_offset}, {batches[first].size} bytes) does not fit, "
                f"so nothing may be returned; got batches at {returned}"
            )
            return
        returned = list(iter_batches(result, verify=True))  # whole batches with valid checksums
        assert returned, f"read({offset}) returned nothing below the LEO {self.model.log_end_offset}"
        assert len(result) <= limit
        head = returned[0][0]
        assert head.base_offset <= offset, f"first batch starts at {head.base_offset}, after {offset}"
        assert offset <= head.last_offset, f"first batch ends at {head.last_offset}, before {offset}"
        previous_last = None
        for i, (header, view) in enumerate(returned):
            assert first + i < len(batches), f"read returned a batch past the model's at {header.base_offset}"
            expected = batches[first + i]
            if previous_last is not None:
                assert header.base_offset > previous_last, "offsets must strictly increase"
            previous_last = header.last_offset
            if max_offset is not None:
                assert header.base_offset < max_offset, f"batch at {header.base_offset} >= {max_offset}"
            assert header.base_offset == expected.base_offset
            assert header.last_offset == expected.last_offset
            assert header.leader_epoch == expected.leader_epoch
            assert tuple(decode_records(view, header)) == expected.records
        # The read stops only at a segment end, at max_offset, or because the next batch does not fit.
        following = first + len(returned)
        if following < len(batches):
            upcoming = batches[following]
            same_segment = self.log.segments.floor(upcoming.base_offset) is self.log.segments.floor(
                previous_last
            )
            if same_segment and (max_offset is None or upcoming.base_offset < max_offset):
                assert len(result) + upcoming.size > limit, "read stopped early inside a segment"

    @rule(max_bytes=st.integers(0, READ_BYTES_MAX))
    def read_everything(self, max_bytes: int) -> None:
        self.check_read_everything(max_bytes)

    def check_read_everything(self, max_bytes: int) -> None:
        """A consumer's loop from the LSO to the LEO sees exactly the model's records."""
        offset = self.model.log_start_offset
        got: list[Record] = []
        while offset < self.model.log_end_offset:
            data = self.log.read(offset, max_bytes)
            headers_read = [header for header, _ in iter_batches(data)]
            assert headers_read, f"read({offset}) returned nothing below the LEO {self.model.log_end_offset}"
            assert headers_read[0].base_offset <= offset <= headers_read[0].last_offset
            got.extend(decode_batches(data))
            offset = headers_read[-1].next_offset
        assert got == self.model.records_from(self.model.log_start_offset)

    @rule(data=st.data())
    def offset_for_timestamp(self, data) -> None:
        now = self.clock.now_ms()
        seen = [r.timestamp_ms for batch in self.model.batches for r in batch.records] or [now]
        # Around the clock, or at (or next to) a record's timestamp.
        near_seen = pick_from(data, seen, "record") + data.draw(st.integers(-1, 1), label="next to it")
        near_now = now + data.draw(st.integers(-400_000, 40_000), label="ms from now")
        timestamp = data.draw(st.sampled_from([near_now, near_seen]), label="timestamp")
        note(f"offset_for_timestamp({timestamp})")
        found = self.log.offset_for_timestamp(timestamp)
        got = None if found is None else (found.offset, found.timestamp_ms)
        assert got == self.model.first_record_at_or_after(timestamp)

    # -- truncation ------------------------------------------------------------------------------

    @rule(data=st.data())
    def truncate(self, data) -> None:
        """A follower meeting a new leader cuts its log at an offset; a replica too far behind restarts
        its log empty where the leader's starts."""
        model = self.model
        how = data.draw(st.sampled_from(["to an offset"] * 3 + ["fully"]), label="truncate")
        if how == "fully":
            offset = pick(data, 0, model.log_end_offset + 100, "start offset")
            note(f"truncate_fully_and_start_at({offset})")
            self.log.truncate_fully_and_start_at(offset)
            model.start_empty_at(offset)
            return
        # Mostly a short divergent tail (what a follower usually cuts), sometimes a batch boundary or
        # any offset at all.
        where = data.draw(st.sampled_from(["the tail", "a batch boundary", "anywhere"]), label="where")
        tail_start = max(model.log_start_offset + 1, model.log_end_offset - 20)
        starts = [b.base_offset for b in model.batches if b.base_offset > model.log_start_offset]
        offset = {
            "the tail": pick(data, tail_start, model.log_end_offset, "offset"),
            "a batch boundary": pick_from(data, [model.log_start_offset, *starts], "offset"),
            "anywhere": pick(data, model.log_start_offset - 2, model.log_end_offset + 2, "offset"),
        }[where]
        note(f"truncate_to({offset})")
        self.check_truncate_to(offset)

    def check_truncate_to(self, offset: int) -> None:
        removed = self.log.truncate_to(offset)
        assert removed == self.model.truncate_to(offset)

    def check_roll(self) -> None:
        bases = self.segment_bases()
        active_holds_batches = self.log.segments.active.size > 0
        self.log.roll()
        expected = [*bases, self.model.log_end_offset] if active_holds_batches else bases
        assert self.segment_bases() == expected

    # -- retention -------------------------------------------------------------------------------

    @rule(data=st.data())
    def delete_old_segments(self, data) -> None:
        model = self.model
        upper_bound = self.pick_upper_bound(data, model.log_end_offset)
        note(f"delete_old_segments({upper_bound}) at {self.clock.now_ms()} ms")
        self.check_delete_old_segments(upper_bound)

    def pick_upper_bound(self, data, high: int) -> int:
        """The high watermark: mostly the LEO (every replica caught up), sometimes anywhere up to `high`."""
        anywhere = pick(data, self.model.log_start_offset, high, "upper_bound_offset anywhere")
        return data.draw(st.sampled_from([self.model.log_end_offset, anywhere]), label="upper_bound_offset")

    def check_delete_old_segments(self, upper_bound: int) -> None:
        model = self.model
        views = self.segment_views()
        old_start = model.log_start_offset
        victims = expected_retention_victims(
            views, self.config, self.clock.now_ms(), upper_bound, model.log_start_offset
        )
        assert self.log.delete_old_segments(upper_bound) == victims
        if not victims:
            assert self.segment_bases() == [view.base_offset for view in views]
            return
        for view in views[:victims]:
            assert view.upper_offset <= max(upper_bound, old_start), f"segment {view.base_offset} was not due"
        kept = [view.base_offset for view in views[victims:]] or [model.log_end_offset]  # active rolled
        assert self.segment_bases() == kept
        model.delete_segments_below(kept[0])
        assert self.log.log_start_offset == max(old_start, kept[0])

    @rule(data=st.data())
    def delete_records(self, data) -> None:
        """Kafka's DeleteRecords: advance the log start offset, at most to the upper bound."""
        model = self.model
        upper_bound = self.pick_upper_bound(data, model.log_end_offset + 1)
        # Mostly a few records, sometimes anywhere (past the bounds too, which is refused).
        nearby = min(
            pick(data, model.log_start_offset, model.log_start_offset + 12, "offset nearby"),
            model.log_end_offset,
        )
        anywhere = pick(data, model.log_start_offset - 1, model.log_end_offset + 1, "offset anywhere")
        offset = data.draw(st.sampled_from([nearby, anywhere]), label="offset")
        note(f"advance_log_start_offset({offset}, upper_bound_offset={upper_bound})")
        self.check_advance_log_start_offset(offset, upper_bound)

    def check_advance_log_start_offset(self, offset: int, upper_bound: int) -> None:
        model = self.model
        if offset > upper_bound or offset > model.log_end_offset:
            with pytest.raises(OffsetOutOfRangeError):
                self.log.advance_log_start_offset(offset, upper_bound)
            return
        views = self.segment_views()
        self.log.advance_log_start_offset(offset, upper_bound)
        if offset <= model.log_start_offset:
            return
        model.advance_log_start_offset(offset)
        # Sealed segments wholly below the new LSO go; the active segment always stays.
        doomed = 0
        while not views[doomed].active and views[doomed].upper_offset <= offset:
            doomed += 1
        if doomed:
            model.delete_segments_below(views[doomed].base_offset)
        assert self.segment_bases() == [view.base_offset for view in views[doomed:]]

    # -- restarts --------------------------------------------------------------------------------

    @rule(clean=st.booleans())
    def restart(self, clean: bool) -> None:
        self.check_restart(clean)

    def check_restart(self, clean: bool) -> None:
        log = self.log
        layout = [(segment.base_offset, segment.size) for segment in log.segments]
        log_start_offset = log.log_start_offset
        if clean:
            log.close()
            recovery_point = log.recovery_point  # close flushed everything: the LEO
        else:
            recovery_point = log.recovery_point
            log.close_unflushed()  # nothing is lost: the OS still has every write
        self.log = None  # if reopening raises, teardown must not close the old log twice
        self.log = PartitionLog(
            self.directory,
            self.config,
            clock=self.clock,
            recovery_point=recovery_point,
            log_start_offset=log_start_offset,
            clean_shutdown=clean,
        )
        report = self.log.load_report
        assert report.error is None
        assert report.truncated_bytes == 0
        assert report.deleted_segments == 0
        assert [(segment.base_offset, segment.size) for segment in self.log.segments] == layout
        assert self.log.recovery_point == self.model.log_end_offset
        # Loading cuts the epoch cache to the LEO, as Kafka's LogLoader does: an epoch that the LSO
        # moved up to the LEO (no record of it left) is forgotten.
        self.model.cut_epochs_from_end()
        self.check_read_everything(READ_BYTES_MAX)

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def log_matches_model(self) -> None:
        log, model = self.log, self.model
        assert log.log_start_offset <= log.log_end_offset, (
            f"LSO {log.log_start_offset} is above the LEO {log.log_end_offset}"
        )
        assert log.log_end_offset == model.log_end_offset
        assert log.log_start_offset == model.log_start_offset
        assert log.log_end_offset == log.segments.active.next_offset
        assert log.recovery_point <= log.log_end_offset
        assert log.epoch_cache.entries == model.epochs

    @invariant()
    def segments_hold_the_model_batches(self) -> None:
        log, model = self.log, self.model
        bases = self.segment_bases()
        for lower, upper in itertools.pairwise(bases):
            assert lower < upper, f"segment base offsets do not increase: {bases}"
        assert bases[0] == model.first_base
        assert bases[0] <= model.log_start_offset
        expected_base = model.first_base
        for batch in model.batches:
            assert batch.base_offset == expected_base, "the model's batches must be contiguous"
            expected_base = batch.next_offset
        assert expected_base == model.log_end_offset
        for segment, view in zip(log.segments, self.segment_views(), strict=True):
            assert segment.size == view.size, f"segment {segment.base_offset} holds other bytes"
            expected_next = view.batches[-1].next_offset if view.batches else view.base_offset
            assert segment.next_offset == expected_next
            assert segment.max_timestamp == view.max_timestamp
            assert view.batches or view.active, f"sealed segment {segment.base_offset} is empty"


PartitionLogMachine.TestCase.settings = settings(
    max_examples=500,
    stateful_step_count=20,
    deadline=None,
    report_multiple_bugs=False,
)
test_partition_log_matches_model = PartitionLogMachine.TestCase


# -- bugs the machine found, replayed --------------------------------------------------------------

SMALL = LogConfig(segment_bytes=1024, flush_policy=FlushPolicy.OS)


@pytest.fixture
def machine():
    machine = PartitionLogMachine()
    machine.open_log(SMALL, batches=[])
    yield machine
    machine.teardown()


def append_values(machine: PartitionLogMachine, value_bytes: int, count: int) -> None:
    machine.append_batch([NewRecord(b"k", bytes(value_bytes))] * count, epoch_bump=0)
    machine.log_matches_model()


def test_truncating_the_batch_that_holds_the_log_start_offset_keeps_lso_at_or_below_leo(machine):
    """The LSO may sit inside a batch; truncation removes that whole batch, and the LSO must follow."""
    append_values(machine, 1, 5)  # one batch, offsets 0..4
    machine.check_advance_log_start_offset(2, upper_bound=5)  # LSO inside the batch
    machine.check_truncate_to(3)  # removes the batch: LEO 0
    machine.log_matches_model()


def test_read_without_min_one_does_not_skip_a_batch_larger_than_max_bytes(machine):
    """A read starts with the batch holding the offset or returns nothing; never a later segment's."""
    append_values(machine, 100, 3)  # offsets 0..2, larger than max_bytes below
    machine.check_roll()
    append_values(machine, 1, 1)  # offset 3, in the next segment
    machine.check_read(0, max_bytes=200, max_offset=None, min_one=False)


def test_a_new_epoch_replaces_one_the_log_start_offset_left_empty(machine):
    """An epoch whose start the LSO moved to the LEO holds no offset: the next epoch replaces it, as in
    Kafka, instead of a second entry at the same offset (which loading would drop after a restart)."""
    append_values(machine, 1, 3)  # epoch 0 wrote offsets 0..2
    machine.check_advance_log_start_offset(3, upper_bound=3)  # epoch 0 now starts at 3, the LEO
    machine.append_batch([NewRecord(b"k", b"v")], epoch_bump=1)  # epoch 1 writes offset 3
    machine.log_matches_model()
