"""ProducerStateManager: the sequence decision, expiry and snapshots."""

from __future__ import annotations

import os

from storage.producer_state import SNAPSHOTS_KEPT, ProducerStateManager, Verdict, snapshot_file_name
from storage.record_batch import read_header
from tests.conftest import make_batch


def header(pid, epoch, seq, count, base_offset, ts=1000):
    return read_header(
        make_batch(
            ["v"] * count,
            ts=ts,
            producer_id=pid,
            producer_epoch=epoch,
            base_sequence=seq,
            base_offset=base_offset,
        )
    )


def test_sequence_decisions():
    state = ProducerStateManager(None)
    assert state.check(7, 0, 0, 2).verdict is Verdict.APPEND
    assert state.check(7, 0, 5, 6).verdict is Verdict.UNKNOWN_PRODUCER
    state.update(header(7, 0, 0, 3, base_offset=10))
    state.update(header(7, 0, 3, 2, base_offset=20))
    dup = state.check(7, 0, 0, 2)
    assert (dup.verdict, dup.first_offset, dup.last_offset) == (Verdict.DUPLICATE, 10, 12)
    assert state.check(7, 0, 3, 4).first_offset == 20
    assert state.check(7, 0, 5, 5).verdict is Verdict.APPEND
    gap = state.check(7, 0, 7, 7)
    assert gap.verdict is Verdict.OUT_OF_ORDER
    assert "expected sequence 5" in gap.message
    assert state.check(7, -1, 5, 5).verdict is Verdict.FENCED
    assert state.check(7, 1, 0, 0).verdict is Verdict.APPEND
    assert state.check(7, 1, 3, 3).verdict is Verdict.OUT_OF_ORDER


def test_only_the_last_five_batches_are_remembered():
    state = ProducerStateManager(None)
    for i in range(7):
        state.update(header(1, 0, i, 1, base_offset=i))
    assert state.check(1, 0, 1, 1).verdict is Verdict.OUT_OF_ORDER
    assert state.check(1, 0, 2, 2).verdict is Verdict.DUPLICATE
    assert state.map_end_offset == 7


def test_new_epoch_resets_the_batches():
    state = ProducerStateManager(None)
    state.update(header(1, 0, 0, 2, base_offset=0))
    state.update(header(1, 1, 0, 1, base_offset=2))
    assert state.producers[1].epoch == 1
    assert state.check(1, 1, 0, 0).verdict is Verdict.DUPLICATE
    assert state.check(1, 0, 2, 2).verdict is Verdict.FENCED


def test_expiry():
    state = ProducerStateManager(None, expiration_ms=100)
    state.update(header(1, 0, 0, 1, base_offset=0, ts=1000))
    state.update(header(2, 0, 0, 1, base_offset=1, ts=1050))
    assert state.remove_expired(1120) == [1]
    assert list(state.producers) == [2]


def test_snapshots_round_trip_and_bad_ones_are_skipped(tmp_path):
    state = ProducerStateManager(str(tmp_path))
    state.update(header(1, 0, 0, 2, base_offset=0))
    state.take_snapshot()  # at offset 2
    state.update(header(1, 0, 2, 2, base_offset=2))
    state.take_snapshot()  # at offset 4
    fresh = ProducerStateManager(str(tmp_path))
    assert fresh.load_latest_snapshot(max_offset=10, min_offset=0) == 4
    assert fresh.producers[1].last_sequence == 3
    # A snapshot beyond the log end is dropped; a corrupt one falls back to an older one.
    with open(tmp_path / snapshot_file_name(4), "r+b") as handle:
        handle.seek(12)
        handle.write(b"X")
    fresh = ProducerStateManager(str(tmp_path))
    assert fresh.load_latest_snapshot(max_offset=10, min_offset=0) == 2
    assert fresh.producers[1].last_sequence == 1
    assert not os.path.exists(tmp_path / snapshot_file_name(4))
    assert fresh.load_latest_snapshot(max_offset=1, min_offset=0) == 0
    assert fresh.producers == {}


def test_old_snapshots_are_pruned(tmp_path):
    state = ProducerStateManager(str(tmp_path))
    for i in range(SNAPSHOTS_KEPT + 3):
        state.update(header(1, 0, i, 1, base_offset=i))
        state.take_snapshot()
    assert len(state.snapshot_offsets()) == SNAPSHOTS_KEPT
