"""LeaderEpochCache: KIP-279 end offsets, truncation from both ends, persistence."""

from __future__ import annotations

import pytest

from storage.epoch_cache import FILE_NAME, UNDEFINED_EPOCH, UNDEFINED_OFFSET, LeaderEpochCache


def test_end_offsets_follow_kip_279(tmp_path):
    cache = LeaderEpochCache(str(tmp_path))
    assert cache.end_offset_for(0, 0) == (UNDEFINED_EPOCH, UNDEFINED_OFFSET)
    assert cache.assign(1, 0)
    assert cache.assign(3, 10)
    assert cache.assign(5, 25)
    assert not cache.assign(5, 30)  # same epoch again: nothing new
    assert not cache.assign(4, 30)  # an older epoch never goes after a newer one
    assert cache.end_offset_for(1, 40) == (1, 10)
    assert cache.end_offset_for(2, 40) == (1, 10)  # unknown epoch: the largest epoch below it
    assert cache.end_offset_for(3, 40) == (3, 25)
    assert cache.end_offset_for(5, 40) == (5, 40)
    assert cache.end_offset_for(9, 40) == (5, 40)
    assert cache.end_offset_for(0, 40) == (UNDEFINED_EPOCH, UNDEFINED_OFFSET)
    assert cache.epoch_for_offset(12) == 3


def test_truncation_and_persistence(tmp_path):
    cache = LeaderEpochCache(str(tmp_path))
    for epoch, start in [(1, 0), (3, 10), (5, 25)]:
        cache.assign(epoch, start)
    cache.truncate_from_end(25)
    assert cache.entries == [(1, 0), (3, 10)]
    cache.truncate_from_start(12)
    assert cache.entries == [(3, 12)]
    reloaded = LeaderEpochCache(str(tmp_path))
    assert reloaded.entries == [(3, 12)]
    cache.clear()
    assert LeaderEpochCache(str(tmp_path)).entries == []


def test_a_start_offset_that_goes_back_is_a_broken_invariant(tmp_path):
    cache = LeaderEpochCache(str(tmp_path))
    cache.assign(1, 10)
    with pytest.raises(AssertionError):
        cache.assign(2, 5)


def test_malformed_file_is_named(tmp_path):
    (tmp_path / FILE_NAME).write_text("0\n2\n1 0\n")
    with pytest.raises(ValueError, match="malformed leader epoch checkpoint"):
        LeaderEpochCache(str(tmp_path))


def test_a_new_epoch_at_the_same_start_replaces_an_epoch_with_nothing_left(tmp_path):
    cache = LeaderEpochCache(str(tmp_path))
    cache.assign(0, 0)
    cache.truncate_from_start(2)  # retention removed everything epoch 0 wrote
    assert cache.entries == [(0, 2)]
    cache.assign(1, 2)
    assert cache.entries == [(1, 2)]
    assert cache.end_offset_for(0, 5) == (UNDEFINED_EPOCH, UNDEFINED_OFFSET)
