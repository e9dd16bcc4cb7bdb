#!/usr/bin/env python3
"""Measure the storage engine against the disk it runs on: raw os.write, PartitionLog appends, reads.

For each batch size (records per batch) the run measures, on one disk:

1. encode_batch: what the client spends building the batches (not part of the broker's cost);
2. raw os.write of the same bytes in the same chunks (one write per batch) to plain files that roll at
   segment_bytes and fsync on the same schedule as the log's flush policy: the ceiling for an append;
3. PartitionLog.append_as_leader of those pre-encoded batches (checksum check, stamping, writev,
   indexes, flush policy);
4. PartitionLog.read of everything back, one fetch of --fetch-bytes at a time (each call returns whole
   batches from one segment). The page cache cannot be dropped here, so reads come from memory: they
   measure the log's CPU cost, not the disk.

Steps 2-4 are repeated --repeat times, the raw write and the append taking turns to go first, with a
sync(2) before each so that one step's dirty pages are not written back during the next. The table
shows the median repetition and the range.

    .venv/bin/python scripts/bench_storage.py [--records 2000000] [--flush-policy interval] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from storage.clock import SYSTEM_CLOCK
from storage.config import FlushPolicy, LogConfig
from storage.fileio import fsync_dir
from storage.log import PartitionLog
from storage.record_batch import NewRecord, encode_batch

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEFAULT_DIR = os.path.join(REPO_ROOT, "data", "bench")  # /data/ is git-ignored; same disk as the repo
MB = 1_000_000
# Kafka's default max.partition.fetch.bytes: what one consumer fetch asks of one partition.
FETCH_BYTES_DEFAULT = 1024 * 1024
# Enough records to time the encoder to a few percent without dominating the run.
ENCODE_RECORDS_MAX = 200_000
# Distinct pre-encoded batches cycled through by the write steps: content varies, memory stays small.
POOL_BYTES_MAX = 16 * 1024 * 1024
VALUE_POOL = 1024
LEADER_EPOCH = 1


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    records: int
    bytes: int
    seconds: float
    cpu_seconds: float  # user + system time of this process: less than `seconds` while it waited
    batches: int

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / MB

    @property
    def us_per_batch(self) -> float:
        return self.seconds / self.batches * 1e6


def record_count(batch_records: int, records: int, policy: FlushPolicy) -> int:
    """Records to write at this batch size: 1-record batches cost one syscall each, so take a tenth;
    an fsync per append (batch policy) costs far more, so take a further tenth of every count."""
    count = records // 10 if batch_records == 1 else records
    if policy is FlushPolicy.BATCH:
        count //= 10
    return max(batch_records, count - count % batch_records)


def make_records(count: int, value_bytes: int, now_ms: int) -> list[NewRecord]:
    rng = random.Random(42)
    values = [rng.randbytes(value_bytes) for _ in range(VALUE_POOL)]
    return [
        NewRecord(b"key-%06d" % (i % 1_000_000), values[i % VALUE_POOL], now_ms, ()) for i in range(count)
    ]


def measure_encode(records: list[NewRecord], batch_records: int, now_ms: int) -> tuple[Step, list[bytes]]:
    groups = [records[i : i + batch_records] for i in range(0, len(records), batch_records)]
    start, cpu_start = time.perf_counter(), time.process_time()
    batches = [encode_batch(group, now_ms=now_ms) for group in groups]
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    step = Step(
        "encode_batch (client)", len(records), sum(map(len, batches)), seconds, cpu_seconds, len(batches)
    )
    pool_len = max(1, min(len(batches), POOL_BYTES_MAX // len(batches[0])))
    return step, batches[:pool_len]


def measure_raw_write(
    directory: str, pool: list[bytes], batches: int, batch_records: int, config: LogConfig
) -> Step:
    """One os.write per batch, files rolled at segment_bytes and fsynced as the log's policy does."""
    os.makedirs(directory)
    policy = config.flush_policy
    clock = SYSTEM_CLOCK
    file_index = 0
    fd = os.open(os.path.join(directory, "0.raw"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    size = 0
    total = 0
    pool_len = len(pool)
    last_flush_ms = clock.now_ms()
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(batches):
        chunk = pool[i % pool_len]
        if size and size + len(chunk) > config.segment_bytes:
            os.fsync(fd)  # the log flushes a segment when it seals it
            os.close(fd)
            file_index += 1
            fd = os.open(
                os.path.join(directory, f"{file_index}.raw"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
            )
            fsync_dir(directory)
            size = 0
        written = os.write(fd, chunk)
        if written != len(chunk):
            raise OSError(f"short write: {written} of {len(chunk)} bytes")
        size += written
        total += written
        if policy is FlushPolicy.BATCH:
            os.fsync(fd)
        elif policy is FlushPolicy.INTERVAL:
            now = clock.now_ms()
            if now - last_flush_ms >= config.flush_interval_ms:
                os.fsync(fd)
                last_flush_ms = now
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    os.close(fd)
    shutil.rmtree(directory)
    return Step("raw os.write, same chunks", batches * batch_records, total, seconds, cpu_seconds, batches)


def measure_append(
    log: PartitionLog, pool: list[bytes], batches: int, batch_records: int, profiler: cProfile.Profile | None
) -> Step:
    append = log.append_as_leader
    pool_len = len(pool)
    if profiler is not None:
        profiler.enable()
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(batches):
        append(pool[i % pool_len], LEADER_EPOCH)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if profiler is not None:
        profiler.disable()
    total = sum(len(pool[i % pool_len]) for i in range(batches))
    if log.log_end_offset != batches * batch_records:
        raise AssertionError(f"log end offset {log.log_end_offset}, expected {batches * batch_records}")
    return Step(
        "PartitionLog.append_as_leader", batches * batch_records, total, seconds, cpu_seconds, batches
    )


def measure_read(log: PartitionLog, batch_bytes: int, batch_records: int, fetch_bytes: int) -> Step:
    read = log.read
    end = log.log_end_offset
    offset = 0
    total = 0
    calls = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while offset < end:
        data = read(offset, fetch_bytes)
        # Every batch has the same size and record count, so the next offset follows from the length
        # alone and the loop adds no per-batch work of its own to what is measured.
        total += len(data)
        offset += len(data) // batch_bytes * batch_records
        calls += 1
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if total != log.size_bytes or offset != end:
        raise AssertionError(
            f"read {total} bytes up to offset {offset}; the log has {log.size_bytes} to {end}"
        )
    return Step(
        f"PartitionLog.read, {fetch_bytes / 1024 / 1024:g} MiB fetches",
        offset,
        total,
        seconds,
        cpu_seconds,
        calls,
    )


def filesystem_of(path: str) -> str:
    """'<type> on <device>' for the mount holding `path` (Linux), for the report header."""
    path = os.path.realpath(path)
    best = ("", "?", "?")
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                device, mount_point, fs_type = line.split()[:3]
                inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best[0]):
                    best = (mount_point, fs_type, device)
    except OSError:
        pass
    return f"{best[1]} on {best[2]} (mounted at {best[0] or '?'})"


@dataclass(frozen=True, slots=True)
class Summary:
    """Repetitions of one step: the median by time, and the spread of MB/s."""

    median: Step
    mb_per_s_min: float
    mb_per_s_max: float

    @classmethod
    def of(cls, steps: list[Step]) -> Summary:
        ordered = sorted(steps, key=lambda step: step.seconds)
        rates = [step.mb_per_s for step in steps]
        return cls(ordered[(len(ordered) - 1) // 2], min(rates), max(rates))


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def format_row(batch_records: int, summary: Summary, ratio: str) -> str:
    step = summary.median
    digits = 1 if summary.mb_per_s_max < 10 else 0
    spread = f"{summary.mb_per_s_min:.{digits}f}-{summary.mb_per_s_max:.{digits}f}"
    return (
        f"| {batch_records:>6,} | {step.name:<34} | {step.records_per_s:>12,.0f} | {step.mb_per_s:>8.1f} "
        f"| {spread:>11} | {step.cpu_seconds / step.seconds:>5.0%} | {step.us_per_batch:>9.1f} | {ratio:<15} |"
    )


TABLE_HEADER = (
    f"| {'batch':>6} | {'step':<34} | {'records/s':>12} | {'MB/s':>8} | {'MB/s range':>11} "
    f"| {'CPU':>5} | {'us/call':>9} | {'ratio':<15} |\n"
    f"|{'-' * 7}:|{'-' * 36}|{'-' * 13}:|{'-' * 9}:|{'-' * 12}:|{'-' * 6}:|{'-' * 10}:|{'-' * 17}|"
)


def measure_batch_size(
    batch_records: int,
    args: argparse.Namespace,
    config: LogConfig,
    work_dir: str,
    profiler: cProfile.Profile | None,
) -> list[str]:
    """Run every step `args.repeat` times at one batch size; return the table rows."""
    count = record_count(batch_records, args.records, config.flush_policy)
    now_ms = SYSTEM_CLOCK.now_ms()
    records = make_records(min(count, max(ENCODE_RECORDS_MAX, batch_records)), args.value_bytes, now_ms)
    encodes = []
    for _ in range(args.repeat):
        encode, pool = measure_encode(records, batch_records, now_ms)
        encodes.append(encode)
    del records
    batch_bytes = len(pool[0])
    batches = count // batch_records
    print(
        f"{batch_records:,} records/batch: {batches:,} batches of {batch_bytes:,} bytes "
        f"= {batches * batch_bytes / MB:,.0f} MB, {args.repeat} times",
        flush=True,
    )
    raws, appends, reads = [], [], []
    for repetition in range(args.repeat):
        raw_dir = os.path.join(work_dir, f"raw-{batch_records}-{repetition}")
        log = PartitionLog(os.path.join(work_dir, f"bench-{batch_records}-{repetition}"), config)
        # Alternate which writer goes first: the disk's speed drifts (a virtual disk's bursts, writeback
        # of the previous step), and going first must not favour one of them.
        for writer in ("raw", "log") if repetition % 2 == 0 else ("log", "raw"):
            os.sync()
            if writer == "raw":
                raws.append(measure_raw_write(raw_dir, pool, batches, batch_records, config))
            else:
                appends.append(measure_append(log, pool, batches, batch_records, profiler))
                log.flush()
        os.sync()
        reads.append(measure_read(log, batch_bytes, batch_records, args.fetch_bytes))
        log.close()
        shutil.rmtree(log.directory)
    append_vs_raw = median([a.mb_per_s / r.mb_per_s for a, r in zip(appends, raws, strict=True)])
    read_vs_append = median([r.mb_per_s / a.mb_per_s for r, a in zip(reads, appends, strict=True)])
    return [
        format_row(batch_records, Summary.of(encodes), ""),
        format_row(batch_records, Summary.of(raws), ""),
        format_row(batch_records, Summary.of(appends), f"{append_vs_raw:.2f} x raw"),
        format_row(batch_records, Summary.of(reads), f"{read_vs_append:.2f} x append"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir",
        default=DEFAULT_DIR,
        help="parent of the temporary directory written to (default: <repo>/data/bench, on the repo's disk)",
    )
    parser.add_argument(
        "--records",
        type=int,
        default=2_000_000,
        help="records per batch size (1-record batches use a tenth; --flush-policy batch a further tenth)",
    )
    parser.add_argument("--batch-sizes", default="1,100,1000", help="records per batch, comma-separated")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument(
        "--flush-policy",
        choices=[p.value for p in FlushPolicy],
        default=LogConfig().flush_policy.value,
        help="default: LogConfig's default",
    )
    parser.add_argument("--segment-bytes", type=int, default=LogConfig().segment_bytes)
    parser.add_argument("--fetch-bytes", type=int, default=FETCH_BYTES_DEFAULT)
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of every step (median reported)")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile every append and print the top functions"
    )
    args = parser.parse_args()

    config = LogConfig(segment_bytes=args.segment_bytes, flush_policy=FlushPolicy(args.flush_policy))
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    os.makedirs(args.dir, exist_ok=True)
    work_dir = tempfile.mkdtemp(prefix="bench-storage-", dir=args.dir)

    print(f"command: {shlex.join([sys.argv[0], *sys.argv[1:]])}")
    print(
        f"cores: {os.cpu_count()} (usable: {len(os.sched_getaffinity(0))}), "
        f"Python {sys.version.split()[0]}, {sys.platform}, load average {os.getloadavg()[0]:.2f} at start"
    )
    print(f"directory: {work_dir}, {filesystem_of(work_dir)}")
    print(
        f"segment_bytes={config.segment_bytes:,}, flush_policy={config.flush_policy.value}, "
        f"flush_interval_ms={config.flush_interval_ms}, index_interval_bytes={config.index_interval_bytes}, "
        f"fetch_bytes={args.fetch_bytes:,}"
    )
    print(
        f"records: key 10 bytes, value {args.value_bytes} bytes, explicit timestamps, no headers, "
        "not idempotent; MB = 10^6 bytes"
    )
    print("reads come from the page cache (it cannot be dropped here): they measure CPU, not the disk")
    print()

    rows = []
    profiler = cProfile.Profile() if args.profile else None
    run_start = time.perf_counter()
    try:
        for batch_records in batch_sizes:
            rows.extend(measure_batch_size(batch_records, args, config, work_dir, profiler))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    print()
    print(
        f"median of {args.repeat} repetitions; MB/s range: slowest-fastest repetition; CPU: this "
        "process's CPU time / wall time (below 100% while it waits for a core or for fsync); us/call: per "
        "encode_batch, os.write, append_as_leader or read call; ratio: median of the per-repetition "
        "ratios (each append against the raw write of the same repetition, each read against that append)"
    )
    print()
    print(TABLE_HEADER)
    for row in rows:
        print(row)
    print()
    print(f"total time {time.perf_counter() - run_start:.0f} s, load average {os.getloadavg()[0]:.2f} at end")
    if profiler is not None:
        print("\ncProfile of every append_as_leader call (top 15 by own time):")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
