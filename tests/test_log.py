"""PartitionLog: appends, reads, rolling, truncation, retention, idempotence and the epoch cache."""

from __future__ import annotations

import os
import threading

import pytest

from storage.config import FlushPolicy, LogConfig
from storage.errors import (
    BatchTooLargeError,
    OffsetOutOfRangeError,
    ProducerSequenceError,
    StaleLeaderEpochError,
)
from storage.log import PartitionLog
from storage.producer_state import Verdict
from storage.record_batch import InvalidBatchError, check_batch, decode_batches, iter_batches
from tests.conftest import BASE_TIME_MS, make_batch

SMALL = LogConfig(segment_bytes=2048, index_interval_bytes=128)


def read_all(log: PartitionLog, start: int | None = None, max_offset: int | None = None):
    offset = log.log_start_offset if start is None else start
    out = []
    while offset < (log.log_end_offset if max_offset is None else max_offset):
        data = log.read(offset, 1 << 20, max_offset=max_offset)
        if not data:
            following = [s.base_offset for s in log.segments if s.base_offset > offset]
            if not following:
                break
            offset = following[0]
            continue
        batches = list(iter_batches(data))
        out.extend(r for r in decode_batches(data) if r.offset >= offset)
        offset = batches[-1][0].next_offset
    return out


def fill(log: PartitionLog, count: int, *, epoch: int = 0, per_batch: int = 1, ts=BASE_TIME_MS):
    for i in range(0, count, per_batch):
        values = [f"value-{i + j:06d}" for j in range(per_batch)]
        log.append_as_leader(make_batch(values, key=b"k%d" % (i % 5), ts=ts + i), epoch)


def test_offsets_are_assigned_in_order_and_read_back(tmp_path, clock):
    log = PartitionLog(str(tmp_path / "t-0"), SMALL, clock=clock)
    infos = [log.append_as_leader(make_batch(["a", "b", "c"]), 0) for _ in range(4)]
    assert [(i.first_offset, i.last_offset) for i in infos] == [(0, 2), (3, 5), (6, 8), (9, 11)]
    assert log.log_end_offset == 12
    records = read_all(log)
    assert [r.offset for r in records] == list(range(12))
    assert [r.value for r in records[:3]] == [b"a", b"b", b"c"]
    for header, _ in iter_batches(log.read(0, 1 << 20)):
        assert header.leader_epoch == 0


def test_segments_roll_by_size_and_reads_cross_them(tmp_path, clock):
    log = PartitionLog(str(tmp_path / "t-0"), SMALL, clock=clock)
    fill(log, 300)
    assert len(log.segments) > 5
    bases = [s.base_offset for s in log.segments]
    assert bases == sorted(bases)
    assert all(s.size <= SMALL.segment_bytes for s in log.segments)
    assert [r.offset for r in read_all(log)] == list(range(300))
    for offset in (0, 1, 57, 150, 299):
        first = decode_batches(log.read(offset, 1))[0]
        assert first.offset == offset
        assert first.value == f"value-{offset:06d}".encode()


def test_segment_rolls_by_age(tmp_path, clock):
    config = LogConfig(segment_ms=1000)
    log = PartitionLog(str(tmp_path / "t-0"), config, clock=clock)
    log.append_as_leader(make_batch(["a"], ts=clock.now_ms()), 0)
    log.append_as_leader(make_batch(["b"], ts=clock.now_ms()), 0)
    assert len(log.segments) == 1
    clock.advance(1001)
    log.append_as_leader(make_batch(["c"], ts=clock.now_ms()), 0)
    assert [s.base_offset for s in log.segments] == [0, 2]


def test_background_flush_leaves_interval_fsyncs_to_maybe_flush_outside_the_lock(tmp_path, clock):
    """The node's logs: appends never fsync for flush.policy=interval (the event loop must not wait
    for the disk); the periodic maybe_flush does, without holding the log's lock meanwhile."""
    config = LogConfig(flush_policy=FlushPolicy.INTERVAL, flush_interval_ms=1000)
    log = PartitionLog(str(tmp_path / "t-0"), config, clock=clock, background_flush=True)
    log.append_as_leader(make_batch(["a"]), 0)
    clock.advance(1000)
    log.append_as_leader(make_batch(["b"]), 0)
    assert log.recovery_point == 0  # no fsync inside the append
    segment = log.segments.active
    real_flush = segment.flush
    free_during_fsync = []

    def flush_and_probe():
        # What an append on the event loop would do meanwhile: take the log's lock (here without
        # waiting, from another thread, as the loop is another thread than the flusher's).
        def probe():
            acquired = log.lock.acquire(blocking=False)
            free_during_fsync.append(acquired)
            if acquired:
                log.lock.release()

        prober = threading.Thread(target=probe)
        prober.start()
        prober.join()
        real_flush()

    segment.flush = flush_and_probe
    assert log.maybe_flush() is True
    assert free_during_fsync == [True]
    assert log.recovery_point == 2


@pytest.mark.parametrize("policy", [FlushPolicy.OS, FlushPolicy.INTERVAL])
def test_background_flush_leaves_a_rolls_fsync_to_maybe_flush(tmp_path, clock, monkeypatch, policy):
    """A roll in a node's log does not fsync the sealed segment inside the append (a quarter of a
    second on the event loop was measured); the next maybe_flush does, under every policy, then
    fsyncs the directory and moves the recovery point to the new segment's base. The active segment
    waits for its interval."""
    config = LogConfig(segment_bytes=2048, index_interval_bytes=128, flush_policy=policy)
    log = PartitionLog(str(tmp_path / "t-0"), config, clock=clock, background_flush=True)
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))[1]
    )
    fill(log, 60)
    assert len(log.segments) >= 3
    assert [path for path in synced if path.endswith((".log", ".index", ".timeindex"))] == []
    assert log.recovery_point == 0
    active = log.segments.active
    synced.clear()
    assert log.maybe_flush() is True
    sealed_logs = {os.path.basename(s.log_path) for s in log.segments if s is not active}
    assert {os.path.basename(p) for p in synced if p.endswith(".log")} == sealed_logs
    assert os.path.realpath(log.directory) in synced  # the new segments' names
    assert log.recovery_point == active.base_offset < log.log_end_offset
    synced.clear()
    assert log.maybe_flush() is False  # nothing sealed since, and the interval has not passed
    assert synced == []
    clock.advance(1000)
    assert log.maybe_flush() is (policy is FlushPolicy.INTERVAL)
    assert log.recovery_point == (
        log.log_end_offset if policy is FlushPolicy.INTERVAL else active.base_offset
    )


def test_a_crash_before_the_sweep_recovers_from_before_the_roll(tmp_path, clock):
    """Until the sweep has fsynced a sealed segment, the recovery point stays before it: a crash then
    re-scans it, and every record is still there (the page cache survives a process crash)."""
    path = str(tmp_path / "t-0")
    log = PartitionLog(path, SMALL, clock=clock, background_flush=True)
    fill(log, 120)
    expected = read_all(log)
    assert len(log.segments) >= 3
    assert log.recovery_point == 0
    log.close_unflushed()
    log = PartitionLog(path, SMALL, clock=clock, clean_shutdown=False, recovery_point=0)
    assert read_all(log) == expected
    assert log.load_report.recovered_segments == len(log.segments)


def test_a_failed_sweep_of_a_sealed_segment_is_tried_again(tmp_path, clock, monkeypatch):
    log = PartitionLog(
        str(tmp_path / "t-0"), SMALL.replace(flush_policy=FlushPolicy.OS), clock=clock, background_flush=True
    )
    fill(log, 60)
    sealed = log.segments.first
    real_flush = sealed.flush

    def failing():
        raise OSError(5, "Input/output error")

    sealed.flush = failing
    with pytest.raises(OSError):
        log.maybe_flush()
    assert log.recovery_point == 0
    sealed.flush = real_flush
    assert log.maybe_flush() is True
    assert log.recovery_point == log.segments.active.base_offset


def test_a_truncation_during_a_background_flush_keeps_the_recovery_point_back(tmp_path, clock):
    config = LogConfig(flush_policy=FlushPolicy.INTERVAL, flush_interval_ms=1000)
    log = PartitionLog(str(tmp_path / "t-0"), config, clock=clock, background_flush=True)
    for value in "abcd":
        log.append_as_leader(make_batch([value]), 0)
    clock.advance(1000)
    segment = log.segments.active
    real_flush = segment.flush

    def truncate_and_rewrite_meanwhile():
        real_flush()
        log.truncate_to(2)  # another thread truncates and appends new, unflushed records
        log.append_as_leader(make_batch(["x"]), 0)
        log.append_as_leader(make_batch(["y"]), 0)

    segment.flush = truncate_and_rewrite_meanwhile
    assert log.maybe_flush() is True
    assert log.log_end_offset == 4
    assert log.recovery_point <= 2  # offsets 2-3 now hold x and y, which were never fsynced


def test_segment_age_is_measured_in_record_timestamps_not_the_wall_clock(tmp_path, clock):
    """As Kafka does: batches stamped long ago (a replay, a mirror) fill one segment instead of
    rolling (and fsyncing) at every append; a batch newer than the segment's first by segment.ms rolls."""
    log = PartitionLog(str(tmp_path / "t-0"), LogConfig(segment_ms=1000), clock=clock)
    old = clock.now_ms() - 10 * 86_400_000
    for i in range(5):
        log.append_as_leader(make_batch([f"old-{i}"], ts=old + i), 0)
    assert len(log.segments) == 1
    log.append_as_leader(make_batch(["newer"], ts=old + 1001), 0)
    assert [s.base_offset for s in log.segments] == [0, 5]


def test_reads_respect_max_bytes_max_offset_and_range(tmp_path, clock):
    log = PartitionLog(str(tmp_path / "t-0"), LogConfig(), clock=clock)
    fill(log, 10)
    one = log.read(0, 1)
    assert len(list(iter_batches(one))) == 1  # min_one: at least one whole batch
    assert log.read(0, 1, min_one=False) == b""
    below_hw = decode_batches(log.read(0, 1 << 20, max_offset=4))
    assert [r.offset for r in below_hw] == [0, 1, 2, 3]
    assert log.read(4, 1 << 20, max_offset=4) == b""
    assert log.read(10, 1 << 20) == b""
    with pytest.raises(OffsetOutOfRangeError):
        log.read(11, 100)


def test_offset_for_timestamp(tmp_path, clock):
    log = PartitionLog(str(tmp_path / "t-0"), SMALL, clock=clock)
    fill(log, 200, ts=BASE_TIME_MS)  # record i has timestamp BASE + i
    for target in (0, 1, 99, 150, 199):
        found = log.offset_for_timestamp(BASE_TIME_MS + target)
        assert (found.offset, found.timestamp_ms) == (target, BASE_TIME_MS + target)
    assert log.offset_for_timestamp(BASE_TIME_MS - 5).offset == 0
    assert log.offset_for_timestamp(BASE_TIME_MS + 10_000) is None


def test_truncate_to_removes_whole_batches_and_later_segments(tmp_path, clock):
    log = PartitionLog(str(tmp_path / "t-0"), SMALL, clock=clock)
    fill(log, 120, per_batch=3)
    segments_before = len(log.segments)
    log.truncate_to(61)  # inside the batch 60..62: the whole batch goes
    assert log.log_end_offset == 60
    assert len(log.segments) < segments_before
    assert [r.offset for r in read_all(log)] == list(range(60))
    info = log.append_as_leader(make_batch(["x"]), 0)
    assert info.first_offset == 60
    log.truncate_to(1000)  # beyond the end: nothing happens
    assert log.log_end_offset == 61


def test_truncate_fully_and_start_at(tmp_path, clock):
    log = PartitionLog(str(tmp_path / "t-0"), SMALL, clock=clock)
    fill(log, 50)
    log.truncate_fully_and_start_at(500)
    assert (log.log_start_offset, log.log_end_offset, len(log.segments)) == (500, 500, 1)
    assert log.append_as_leader(make_batch(["x"]), 0).first_offset == 500
    with pytest.raises(OffsetOutOfRangeError):
        log.read(10, 100)


def test_epoch_cache_follows_appends_and_truncation(tmp_path, clock):
    log = PartitionLog(str(tmp_path / "t-0"), SMALL, clock=clock)
    fill(log, 10, epoch=1)
    fill(log, 10, epoch=3)
    assert log.epoch_cache.entries == [(1, 0), (3, 10)]
    assert log.epoch_cache.end_offset_for(1, log.log_end_offset) == (1, 10)
    with pytest.raises(StaleLeaderEpochError):
        log.append_as_leader(make_batch(["old"]), 2)
    log.truncate_to(8)
    assert log.epoch_cache.entries == [(1, 0)]


def test_follower_appends_keep_offsets_and_epochs(tmp_path, clock):
    leader = PartitionLog(str(tmp_path / "leader"), SMALL, clock=clock)
    fill(leader, 40, epoch=2)
    follower = PartitionLog(str(tmp_path / "follower"), SMALL, clock=clock)
    offset = 0
    while offset < leader.log_end_offset:
        data = leader.read(offset, 512)
        info = follower.append_as_follower(data)
        offset = info.last_offset + 1
    assert follower.log_end_offset == 40
    assert follower.epoch_cache.entries == [(2, 0)]
    assert read_all(follower) == read_all(leader)
    with pytest.raises(InvalidBatchError, match="does not follow"):
        follower.append_as_follower(leader.read(0, 100))
    assert follower.log_end_offset == 40


def test_idempotent_retry_returns_the_original_offsets(tmp_path, clock):
    log = PartitionLog(str(tmp_path / "t-0"), SMALL, clock=clock)
    first = make_batch(["a", "b"], producer_id=9, producer_epoch=0, base_sequence=0)
    info = log.append_as_leader(first, 0)
    log.append_as_leader(make_batch(["c"]), 0)
    retry = log.append_as_leader(first, 0)
    assert retry.duplicate
    assert (retry.first_offset, retry.last_offset) == (info.first_offset, info.last_offset)
    assert log.log_end_offset == 3
    with pytest.raises(ProducerSequenceError) as gap:
        log.append_as_leader(make_batch(["d"], producer_id=9, producer_epoch=0, base_sequence=5), 0)
    assert gap.value.verdict is Verdict.OUT_OF_ORDER
    assert log.log_end_offset == 3


def test_producer_state_survives_restart_and_truncation(tmp_path, clock):
    path = str(tmp_path / "t-0")
    log = PartitionLog(path, SMALL, clock=clock)
    for seq in range(0, 60, 2):
        log.append_as_leader(make_batch(["a", "b"], producer_id=4, producer_epoch=0, base_sequence=seq), 0)
    log.close()
    log = PartitionLog(path, SMALL, clock=clock, clean_shutdown=True)
    assert log.producer_state.producers[4].last_sequence == 59
    assert log.append_as_leader(
        make_batch(["a", "b"], producer_id=4, producer_epoch=0, base_sequence=58), 0
    ).duplicate
    log.truncate_to(30)
    assert log.producer_state.producers[4].last_sequence == 29
    log.close_unflushed()
    log = PartitionLog(path, SMALL, clock=clock, clean_shutdown=False)
    assert log.producer_state.producers[4].last_sequence == 29


def test_batch_limits(tmp_path, clock):
    log = PartitionLog(str(tmp_path / "t-0"), LogConfig(max_message_bytes=200), clock=clock)
    with pytest.raises(BatchTooLargeError, match=r"max\.message\.bytes"):
        log.append_as_leader(make_batch(["x" * 300]), 0)
    assert log.log_end_offset == 0
    assert log.segments.active.size == 0


def test_retention_by_size_deletes_only_below_the_upper_bound(tmp_path, clock):
    log = PartitionLog(str(tmp_path / "t-0"), SMALL.replace(retention_bytes=4096), clock=clock)
    fill(log, 300)
    assert log.delete_old_segments(upper_bound_offset=0) == 0
    deleted = log.delete_old_segments(upper_bound_offset=log.log_end_offset)
    assert deleted > 0
    assert log.size_bytes - log.segments.first.size < 4096 or len(log.segments) == 1
    assert log.log_start_offset == log.segments.first.base_offset
    assert [r.offset for r in read_all(log)] == list(range(log.log_start_offset, 300))
    with pytest.raises(OffsetOutOfRangeError):
        log.read(0, 100)


def test_retention_by_time(tmp_path, clock):
    log = PartitionLog(str(tmp_path / "t-0"), SMALL.replace(retention_ms=10_000), clock=clock)
    fill(log, 100, ts=clock.now_ms())
    clock.advance(5_000)
    fill(log, 100, ts=clock.now_ms())
    clock.advance(6_000)  # the first 100 records are now 11 s old, the rest 6 s
    log.delete_old_segments(log.log_end_offset)
    assert 0 < log.log_start_offset <= 100
    remaining = read_all(log)
    assert remaining[-1].offset == 199
    clock.advance(60_000)
    log.delete_old_segments(log.log_end_offset)  # even the active segment goes, after a roll
    assert log.log_start_offset == log.log_end_offset == 200
    assert log.append_as_leader(make_batch(["z"]), 0).first_offset == 200


def test_advance_log_start_offset(tmp_path, clock):
    log = PartitionLog(str(tmp_path / "t-0"), SMALL, clock=clock)
    fill(log, 200)
    with pytest.raises(OffsetOutOfRangeError):
        log.advance_log_start_offset(150, upper_bound_offset=100)
    log.advance_log_start_offset(90, upper_bound_offset=100)
    assert log.log_start_offset == 90
    assert log.segments.first.base_offset <= 90
    assert read_all(log)[0].offset == 90
    with pytest.raises(OffsetOutOfRangeError):
        log.read(89, 100)


@pytest.mark.parametrize("policy", list(FlushPolicy))
def test_flush_policies_move_the_recovery_point(tmp_path, clock, policy):
    config = LogConfig(flush_policy=policy, flush_interval_ms=1000)
    log = PartitionLog(str(tmp_path / "t-0"), config, clock=clock)
    log.append_as_leader(make_batch(["a"]), 0)
    if policy is FlushPolicy.BATCH:
        assert log.recovery_point == 1
    else:
        assert log.recovery_point == 0
        clock.advance(1000)
        log.append_as_leader(make_batch(["b"]), 0)
        assert log.recovery_point == (2 if policy is FlushPolicy.INTERVAL else 0)
    assert log.maybe_flush() is (policy is FlushPolicy.INTERVAL and log.recovery_point < log.log_end_offset)
    log.flush()
    assert log.recovery_point == log.log_end_offset


def test_restart_after_clean_and_unclean_close(tmp_path, clock):
    path = str(tmp_path / "t-0")
    log = PartitionLog(path, SMALL, clock=clock)
    fill(log, 150, epoch=4)
    expected = read_all(log)
    log.close()
    log = PartitionLog(path, SMALL, clock=clock, clean_shutdown=True)
    assert read_all(log) == expected
    assert log.load_report.recovered_segments == 0
    log.close_unflushed()
    log = PartitionLog(path, SMALL, clock=clock, clean_shutdown=False, recovery_point=0)
    assert read_all(log) == expected
    assert log.load_report.recovered_segments == len(log.segments)
    assert log.epoch_cache.entries == [(4, 0)]


@pytest.mark.slow
def test_a_million_records_over_many_segments(tmp_path, clock):
    """Reads from any offset and by timestamp stay right across ~100 segments and a restart."""
    config = LogConfig(segment_bytes=1 << 20)
    path = str(tmp_path / "big-0")
    log = PartitionLog(path, config, clock=clock)
    total, per_batch = 1_000_000, 1000
    value = b"v" * 60
    from storage.record_batch import NewRecord, encode_batch

    for base in range(0, total, per_batch):
        records = [
            NewRecord(b"%d" % (base + i), value, BASE_TIME_MS + base + i, ()) for i in range(per_batch)
        ]
        log.append_as_leader(encode_batch(records, now_ms=BASE_TIME_MS), 0)
    assert log.log_end_offset == total
    assert len(log.segments) > 50
    log.close()
    log = PartitionLog(path, config, clock=clock, clean_shutdown=True)
    import random

    rng = random.Random(42)
    for offset in [0, 999, 1000, total - 1, *rng.sample(range(total), 300)]:
        data = log.read(offset, 1)
        header = check_batch(data)
        assert header.base_offset <= offset <= header.last_offset
        record = next(r for r in decode_batches(data) if r.offset == offset)
        assert record.key == b"%d" % offset
        found = log.offset_for_timestamp(BASE_TIME_MS + offset)
        assert (found.offset, found.timestamp_ms) == (offset, BASE_TIME_MS + offset)
    # A full sequential scan sees every offset once, in order.
    count = 0
    offset = 0
    while offset < total:
        data = log.read(offset, 4 << 20)
        for header, _ in iter_batches(data):
            assert header.base_offset == offset
            offset = header.next_offset
            count += header.record_count
    assert count == total
    assert os.path.exists(os.path.join(path, "leader-epoch-checkpoint"))


def test_a_checked_header_spares_the_second_checksum_only_for_immutable_bytes(tmp_path, clock):
    log = PartitionLog(str(tmp_path / "t-0"), SMALL, clock=clock)
    good = make_batch(["a", "b"])
    header = check_batch(good)
    assert log.append_as_leader(good, 0, checked_header=header).first_offset == 0
    damaged = bytearray(good)
    damaged[-1] ^= 0xFF  # a mutable buffer could have changed since it was checked: it is hashed again
    with pytest.raises(InvalidBatchError, match="checksum"):
        log.append_as_leader(damaged, 0, checked_header=header)
    assert log.log_end_offset == 2
    assert [r.value for r in decode_batches(log.read(0, 1 << 20))] == [b"a", b"b"]


def test_a_batch_too_big_for_max_bytes_is_not_skipped_for_a_later_segment(tmp_path, clock):
    """Regression (found by the model test): with min_one=False, a first batch that does not fit must end
    the read, not let it go on to the next segment and skip offsets."""
    log = PartitionLog(str(tmp_path / "t-0"), LogConfig(segment_bytes=1024), clock=clock)
    log.append_as_leader(make_batch(["x" * 100, "y" * 100, "z" * 100]), 0)  # offsets 0-2
    log.roll()
    log.append_as_leader(make_batch(["a"]), 0)  # offset 3, in the next segment
    assert log.read(1, 123, min_one=False) == b""
    assert [r.offset for r in decode_batches(log.read(1, 123))] == [0, 1, 2]


def test_truncating_the_batch_that_holds_the_log_start_offset(tmp_path, clock):
    """Regression (found by the model test): the log start offset may sit inside a batch; truncating
    that batch must not leave the start above the end."""
    log = PartitionLog(str(tmp_path / "t-0"), LogConfig(), clock=clock)
    log.append_as_leader(make_batch(["a", "b"]), 0)  # offsets 0-1
    log.append_as_leader(make_batch(["c", "d", "e", "f"]), 0)  # offsets 2-5
    log.advance_log_start_offset(3, upper_bound_offset=6)
    log.truncate_to(4)  # removes the batch 2-5, which holds the start offset 3
    assert (log.log_start_offset, log.log_end_offset) == (2, 2)
    assert log.append_as_leader(make_batch(["g"]), 0).first_offset == 2


def test_reads_from_a_recent_batch_start_skip_the_index_and_stay_right_after_truncation(tmp_path, clock):
    log = PartitionLog(str(tmp_path / "t-0"), LogConfig(index_interval_bytes=1 << 20), clock=clock)
    fill(log, 30, per_batch=3)  # one index entry only: every other batch start needs a header walk
    active = log.segments.active
    assert sorted(active._recent) == [6, 9, 12, 15, 18, 21, 24, 27]  # the last RECENT_BATCHES_MAX starts
    reads = []
    real_pread = os.pread

    def counting_pread(fd, size, position):
        reads.append(size)
        return real_pread(fd, size, position)

    os.pread = counting_pread
    try:
        data = log.read(21, 1 << 20)
    finally:
        os.pread = real_pread
    assert len(reads) == 1  # the batches themselves: no header read, no walk from the index entry
    assert [r.value for r in decode_batches(data)][:3] == [b"value-000021", b"value-000022", b"value-000023"]
    # A divergent tail is cut and other records take its offsets: the remembered starts go with it.
    log.truncate_to(21)
    assert active._recent == {}
    log.append_as_leader(make_batch(["other-21", "other-22"]), 1)
    log.append_as_leader(make_batch(["other-23"]), 1)
    assert [r.value for r in read_all(log, 21)] == [b"other-21", b"other-22", b"other-23"]
    assert [r.value for r in decode_batches(log.read(23, 1 << 20))] == [b"other-23"]
    assert [r.offset for r in read_all(log)] == list(range(24))
