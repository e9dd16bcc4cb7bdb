"""Child process for tests/test_crash_recovery.py: appends to a log until it is killed with SIGKILL.

Usage: python tests/crash_child.py DATA_DIR ROUND SEED FLUSH_POLICY BASE_TIMESTAMP_MS

The child opens a LogManager on DATA_DIR (recovering whatever the previous round left), prints
`opened <log end offset>`, then appends idempotent batches forever. After each append it prints
`appended <first> <last>`; now and then it flushes, checkpoints and prints `flushed <log end offset>`.
Every line is flushed before the next step, so the parent knows a lower bound of what was appended
and flushed when it kills the child.

Everything the child writes is a function of the offset and the round (see `expected_batch`), so the
parent can check the recovered log byte for byte without being told what was written.

The module is also imported by the test for those shared definitions.
"""

from __future__ import annotations

import os
import random
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from storage.config import FlushPolicy, LogConfig  # noqa: E402
from storage.manager import LogManager  # noqa: E402
from storage.record_batch import NewRecord, encode_batch  # noqa: E402

TOPIC = "crash"
PARTITION = 0
PRODUCER_ID = 4242
# Small segments so that a few hundred batches roll many segments (and producer snapshots).
SEGMENT_BYTES = 4096
INDEX_INTERVAL_BYTES = 256
FLUSH_PROBABILITY = 0.1


def crash_config(flush_policy: FlushPolicy) -> LogConfig:
    return LogConfig(
        segment_bytes=SEGMENT_BYTES,
        index_interval_bytes=INDEX_INTERVAL_BYTES,
        flush_policy=flush_policy,
        flush_interval_ms=50,
    )


def records_in_batch(first_offset: int) -> int:
    """How many records the batch starting at `first_offset` holds (1 to 4)."""
    return 1 + (first_offset * 7919) % 4


def record_for(offset: int, base_timestamp_ms: int) -> NewRecord:
    value = (f"value-{offset}-" * 12).encode()[: 8 + (offset * 31) % 90]
    headers = [("offset", str(offset).encode())] if offset % 3 == 0 else []
    return NewRecord(f"key-{offset}".encode(), value, base_timestamp_ms + offset, headers)


def expected_batch(first_offset: int, round_number: int, round_start: int, base_timestamp_ms: int) -> bytes:
    """The batch the child appends at `first_offset` in round `round_number` (which began at
    `round_start`), as the producer encodes it: base offset 0 and leader epoch -1 until appended."""
    count = records_in_batch(first_offset)
    return encode_batch(
        [record_for(first_offset + i, base_timestamp_ms) for i in range(count)],
        now_ms=base_timestamp_ms + first_offset,
        producer_id=PRODUCER_ID,
        producer_epoch=round_number,
        base_sequence=first_offset - round_start,
    )


def main(argv: list[str]) -> None:
    data_dir, round_text, seed_text, policy_text, base_ts_text = argv
    round_number = int(round_text)
    base_timestamp_ms = int(base_ts_text)
    rng = random.Random(int(seed_text) * 1000 + round_number)
    manager = LogManager(data_dir, default_config=crash_config(FlushPolicy(policy_text)))
    log = manager.get_or_create_log(TOPIC, PARTITION)
    round_start = log.log_end_offset
    print(f"opened {round_start}", flush=True)
    while True:
        first = log.log_end_offset
        batch = expected_batch(first, round_number, round_start, base_timestamp_ms)
        info = log.append_as_leader(batch, round_number)
        if info.first_offset != first or info.duplicate:
            raise AssertionError(f"append at {first} returned {info}")
        print(f"appended {info.first_offset} {info.last_offset}", flush=True)
        if rng.random() < FLUSH_PROBABILITY:
            log.flush()
            manager.checkpoint()
            print(f"flushed {log.log_end_offset}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
