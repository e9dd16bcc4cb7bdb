"""Shared fixtures: a manual clock and batch builders."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from storage.clock import ManualClock
from storage.record_batch import NewRecord, encode_batch

BASE_TIME_MS = 1_764_000_000_000


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(BASE_TIME_MS)


def make_batch(values, *, key=None, ts=BASE_TIME_MS, **fields) -> bytes:
    """A dense batch of records with the given values (bytes or str), all with `key` and timestamp `ts`."""
    records = [
        NewRecord(key, v.encode() if isinstance(v, str) else v, ts + i, ()) for i, v in enumerate(values)
    ]
    return encode_batch(records, now_ms=ts, **fields)
