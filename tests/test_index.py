"""OffsetIndex and TimeIndex: lookups, truncation, reload and refusal of torn files."""

from __future__ import annotations

import os

import pytest

from storage.index import CorruptIndexError, OffsetIndex, TimeIndex


def test_offset_index_lookup_returns_the_floor_entry(tmp_path):
    index = OffsetIndex(str(tmp_path / "0.index"), 100, entries_max=100)
    for i, (offset, position) in enumerate([(100, 0), (110, 4096), (125, 8200)]):
        index.append(offset, position)
        assert len(index) == i + 1
    assert index.lookup(99) == (100, 0)
    assert index.lookup(100) == (100, 0)
    assert index.lookup(109) == (100, 0)
    assert index.lookup(110) == (110, 4096)
    assert index.lookup(10**9) == (125, 8200)
    index.truncate_to(111)
    assert index.last_entry() == (10, 4096)
    index.close()
    reloaded = OffsetIndex(str(tmp_path / "0.index"), 100, entries_max=100)
    reloaded.load()
    assert reloaded.lookup(200) == (110, 4096)


def test_offset_index_refuses_entries_that_do_not_increase(tmp_path):
    index = OffsetIndex(str(tmp_path / "0.index"), 0, entries_max=10)
    index.append(5, 100)
    with pytest.raises(AssertionError):
        index.append(5, 200)
    with pytest.raises(AssertionError):
        index.append(6, 100)


def test_index_full(tmp_path):
    index = OffsetIndex(str(tmp_path / "0.index"), 0, entries_max=2)
    index.append(0, 0)
    assert not index.is_full
    index.append(1, 10)
    assert index.is_full


@pytest.mark.parametrize("damage", ["torn", "not_increasing"])
def test_damaged_index_files_are_refused(tmp_path, damage):
    path = str(tmp_path / "0.index")
    index = OffsetIndex(path, 0, entries_max=10)
    index.append(0, 0)
    index.append(10, 4096)
    index.close()
    with open(path, "ab") as handle:
        handle.write(b"\x00" * (3 if damage == "torn" else 8))
    with pytest.raises(CorruptIndexError):
        OffsetIndex(path, 0, entries_max=10).load()


def test_time_index_lookup_gives_a_safe_scan_start(tmp_path):
    index = TimeIndex(str(tmp_path / "0.timeindex"), 1000, entries_max=10)
    index.append(50, 1000)
    index.append(70, 1010)
    index.append(90, 1020)
    assert index.lookup(10) == 1000  # before everything: scan from the base
    assert index.lookup(50) == 1000  # nothing is known to be older than 50
    assert index.lookup(71) == 1010  # everything up to the batch at 1010 is <= 70
    assert index.lookup(1000) == 1020
    index.truncate_to(1015)
    assert index.max_timestamp() == 70
    index.reset()
    assert len(index) == 0
    assert os.path.getsize(index.path) == 0
