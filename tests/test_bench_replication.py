"""scripts/bench_replication.py: the pure parts of its summary (the schedule, the pooled ratio and its
interval). The benchmark itself runs a cluster for minutes and is not a test."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

import bench_replication as bench  # scripts/ is not a package


def pair(rf1_records: int, rf3_records: int, rf1_s: float = 1.0, rf3_s: float = 1.0) -> tuple[dict, dict]:
    return (
        {"topic": "rf1", "records": rf1_records, "elapsed_s": rf1_s},
        {"topic": "rf3", "records": rf3_records, "elapsed_s": rf3_s},
    )


def test_rounds_alternate_their_order():
    assert bench.slice_schedule(3) == ["rf1", "rf3", "rf3", "rf1", "rf1", "rf3"]


def test_the_pooled_ratio_is_records_over_time_not_a_mean_of_rounds():
    rounds = [pair(1000, 400), pair(1000, 600, rf3_s=3.0)]
    # rf1: 2000 records in 2 s; rf3: 1000 records in 4 s. The mean of the round ratios would be 0.3.
    assert bench.pooled_rates(rounds) == {"rf1": 1000.0, "rf3": 250.0}
    assert bench.pooled_ratio(rounds) == 0.25


def test_the_interval_holds_the_pooled_ratio_and_narrows_with_more_rounds():
    few = [pair(1000, r) for r in (340, 460, 400, 420)]
    many = few * 4
    low, high = bench.ratio_interval(few)
    assert low <= bench.pooled_ratio(few) <= high
    assert 0.34 <= low < high <= 0.46
    low_many, high_many = bench.ratio_interval(many)
    assert high_many - low_many < high - low
    assert bench.ratio_interval(few) == (low, high)  # a fixed seed: the same rounds, the same interval


def test_rounds_that_agree_give_no_width():
    assert bench.ratio_interval([pair(1000, 420)] * 5) == (0.42, 0.42)
