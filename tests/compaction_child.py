"""A child process for tests/test_compaction.py: a log cleaner that dies in the middle of its work.

Usage (started with sys.executable; puts the repository root on sys.path itself):

    compaction_child.py swap-crash DIR CONFIG_JSON NOW_MS CRASH_AT
        Open the log in DIR and clean it once with `now_ms=NOW_MS`. Inside
        `PartitionLog.swap_cleaned_segment`, number the calls to `write_atomic`, `os.replace` and `os.unlink`
        from 1; call number CRASH_AT exits the process at once with status 9 instead of running (a crash:
        no cleanup handler, no flush, no close). If the swap has fewer calls, the process exits with
        status 9 right after the cleaning. CRASH_AT=0 crashes nowhere: every call is printed as
        "<name> <file name>", one per line, and the process exits with status 0 without closing the log.

    compaction_child.py kill-loop DIR SEED NOW_MS
        Open (and so recover) the log in DIR, print "ready", then forever: append batches whose records
        are `record_at(SEED, offset)` (until the log holds RECORDS_MAX offsets) and clean it with a fresh
        LogCleaner, printing "cleaned" after every cleaning, until the parent kills it.

The config of kill-loop is `kill_loop_config()`; the parent opens the log with the same one.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.cleaner import LogCleaner
from storage.clock import ManualClock
from storage.config import CleanupPolicy, LogConfig
from storage.record_batch import NewRecord, encode_batch

CRASH_EXIT_STATUS = 9
RECORDS_MAX = 2500  # kill-loop stops appending here and only cleans, so a round stays short
KEYS_MAX = 13
YEAR_MS = 365 * 24 * 60 * 60 * 1000


def kill_loop_config() -> LogConfig:
    # Tombstones are never old enough to drop, so every record is a pure function of its offset.
    return LogConfig(
        segment_bytes=1024,
        cleanup_policy=CleanupPolicy.COMPACT,
        delete_retention_ms=10 * YEAR_MS,
        min_cleanable_dirty_ratio=0.0,
    )


def record_at(seed: int, offset: int, now_ms: int) -> NewRecord:
    """The record kill-loop appends at `offset`: null keys and tombstones included."""
    rng = random.Random(seed * 1_000_003 + offset)
    key = None if rng.random() < 0.05 else b"k%d" % rng.randrange(KEYS_MAX)
    value = None if key is not None and rng.random() < 0.1 else b"v%d" % offset
    headers = (("at", str(offset).encode()),) if rng.random() < 0.3 else ()
    return NewRecord(key, value, now_ms + offset, headers)


def open_log(directory: str, config: LogConfig, now_ms: int):
    from storage.log import PartitionLog

    return PartitionLog(directory, config, clock=ManualClock(now_ms), recovery_point=0, clean_shutdown=False)


def swap_crash(directory: str, config_json: str, now_ms: int, crash_at: int) -> None:
    import orjson

    import storage.log

    config = LogConfig.from_topic_configs(orjson.loads(config_json))
    partition_log = open_log(directory, config, now_ms)
    calls: list[str] = []
    in_swap = False

    def step(name: str, path: str) -> None:
        if not in_swap:
            return
        calls.append(f"{name} {os.path.basename(path)}")
        if len(calls) == crash_at:
            os._exit(CRASH_EXIT_STATUS)

    real_unlink, real_replace, real_write_atomic = os.unlink, os.replace, storage.log.write_atomic

    def unlink(path, *args, **kwargs):
        step("unlink", path)
        return real_unlink(path, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        step("replace", dst)
        return real_replace(src, dst, *args, **kwargs)

    def write_atomic(path, data, **kwargs):
        step("write_atomic", path)
        return real_write_atomic(path, data, **kwargs)

    real_swap = partition_log.swap_cleaned_segment

    def swap(*args, **kwargs):
        nonlocal in_swap
        in_swap = True
        try:
            real_swap(*args, **kwargs)
        finally:
            in_swap = False

    os.unlink, os.replace = unlink, replace
    storage.log.write_atomic = write_atomic
    partition_log.swap_cleaned_segment = swap
    LogCleaner().clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=now_ms)
    if crash_at:
        os._exit(CRASH_EXIT_STATUS)
    sys.stdout.write("".join(call + "\n" for call in calls))
    sys.stdout.flush()
    os._exit(0)


def kill_loop(directory: str, seed: int, now_ms: int) -> None:
    partition_log = open_log(directory, kill_loop_config(), now_ms)
    rng = random.Random(seed * 7 + partition_log.log_end_offset)  # batch sizes differ from run to run
    print("ready", flush=True)
    while True:
        for _ in range(rng.randrange(1, 10)):
            base = partition_log.log_end_offset
            if base >= RECORDS_MAX:
                break
            records = [record_at(seed, base + i, now_ms) for i in range(rng.randrange(1, 4))]
            partition_log.append_as_leader(encode_batch(records, now_ms=now_ms), 0)
        LogCleaner().clean(partition_log, upper_bound_offset=partition_log.log_end_offset, now_ms=now_ms)
        print("cleaned", flush=True)


def main(argv: list[str]) -> None:
    mode = argv[1]
    if mode == "swap-crash":
        swap_crash(argv[2], argv[3], int(argv[4]), int(argv[5]))
    elif mode == "kill-loop":
        kill_loop(argv[2], int(argv[3]), int(argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv)
