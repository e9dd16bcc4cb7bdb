"""Crash recovery of the storage engine: real SIGKILLs, damaged bytes on disk, and refused input.

Three groups of tests:

1. A child process (tests/crash_child.py) appends to a LogManager's log until the parent kills it with
   SIGKILL at a seeded random moment; the next round reopens the same directory (an unclean start) and
   appends on. After every kill the parent recovers a copy of the directory and checks that the log is
   exactly a prefix of what the child wrote (byte for byte: payloads are a function of the offset and
   round), holds everything the flush policy promised, and that the leader epoch cache, the producer
   state and both indexes agree with it. The copy's log end offset must equal what the child's own
   recovery finds in the next round.
2. Bytes of a closed log are damaged (a byte flipped, a torn or zero-filled tail, garbage, damaged
   indexes) and the log reopened: recovery must cut exactly at the batch holding the first bad byte,
   report it, and rebuild the indexes; damage below the recovery point must never be served.
3. Bad input to `append_as_leader` / `append_as_follower` is refused and leaves every file unchanged.

Seeds are fixed and every assertion message names its case. The damage and input tests replay exactly;
the kill rounds also depend on timing, so their messages name seed and round, and each child's stderr
is kept next to the data directory (child-<round>.err).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from storage.clock import ManualClock
from storage.config import FlushPolicy, LogConfig
from storage.errors import (
    BatchTooLargeError,
    CorruptLogError,
    ProducerSequenceError,
    StaleLeaderEpochError,
)
from storage.log import PartitionLog
from storage.manager import LogManager
from storage.record_batch import (
    HEADER_SIZE,
    BatchHeader,
    CorruptBatchError,
    InvalidBatchError,
    NewRecord,
    compute_checksum,
    decode_records,
    encode_batch,
    iter_batches,
    read_header,
    stamp_prefix,
)
from storage.segment import INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX, FoundRecord, segment_file_name
from tests import crash_child as child

CHILD_PROGRAM = Path(__file__).with_name("crash_child.py")
T0 = 1_764_000_000_000  # ManualClock's default start: record timestamps sit next to the clock
PRODUCER_ID = 7
# Small segments and a dense index: 60 batches make several segments with several index entries each.
CONFIG = LogConfig(segment_bytes=2048, index_interval_bytes=200, flush_policy=FlushPolicy.OS)
BATCHES = 60
READ_BYTES_MAX = 1 << 20

# The batch header as docs/format.md lays it out; the tests build damaged headers from the spec.
HEADER_LAYOUT = struct.Struct("<qiibQhiqqqhii")
CHECKSUM_AT = 17
# base_offset and leader_epoch lie outside the checksum (see test_raised_base_offset_is_cut_not_served).
UNPROTECTED_PREFIX = set(range(0, 8)) | set(range(12, 16))


# -- helpers shared by every group --------------------------------------------------------------------


def record_at(offset: int) -> NewRecord:
    value = (f"v{offset}:" * 20).encode()[: 5 + (offset * 37) % 70]
    headers = [("h", str(offset).encode())] if offset % 4 == 0 else []
    return NewRecord(f"k{offset}".encode(), value, T0 + offset, headers)


def producer_batch(first_offset: int, count: int, *, idempotent: bool = True) -> bytes:
    """A dense batch for `first_offset`..; idempotent batches carry sequence == offset (one producer
    epoch, first sequence 0 at offset 0)."""
    return encode_batch(
        [record_at(first_offset + i) for i in range(count)],
        now_ms=T0 + first_offset,
        producer_id=PRODUCER_ID if idempotent else -1,
        producer_epoch=0 if idempotent else -1,
        base_sequence=first_offset if idempotent else -1,
    )


def leader_epoch_for(batch_index: int) -> int:
    return 1 + batch_index // 25  # three leader epochs over BATCHES batches


def write_log(directory: Path, config: LogConfig = CONFIG, batches: int = BATCHES) -> PartitionLog:
    """A log of `batches` idempotent batches of 1-3 records over three leader epochs."""
    log = PartitionLog(str(directory), config, clock=ManualClock(), recovery_point=0)
    fill_log(log, batches)
    return log


def fill_log(log: PartitionLog, batches: int) -> None:
    for i in range(batches):
        first = log.log_end_offset
        batch = producer_batch(first, 1 + i % 3)
        info = log.append_as_leader(batch, leader_epoch_for(i))
        assert info.first_offset == first


def read_all(log: PartitionLog) -> list[tuple[BatchHeader, bytes]]:
    """Every batch from the log start to the LEO, checked: checksum, decodable records, contiguous
    offsets. `read` returns batches of one segment only, so loop."""
    out: list[tuple[BatchHeader, bytes]] = []
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        data = log.read(offset, READ_BYTES_MAX)
        assert data, f"read({offset}) returned nothing below the log end offset {log.log_end_offset}"
        for header, view in iter_batches(data, verify=True):
            assert header.base_offset == offset, f"batch at {header.base_offset} where {offset} was next"
            records = decode_records(view, header)
            assert [r.offset for r in records] == list(range(header.base_offset, header.next_offset))
            out.append((header, bytes(view)))
            offset = header.next_offset
    assert offset == log.log_end_offset
    return out


def assert_reads_by_offset_and_timestamp(log: PartitionLog, batches: list[tuple[BatchHeader, bytes]]) -> None:
    """Every offset reads back the batch holding it, and every record's timestamp finds that record
    (record timestamps are T0-like base + offset, so they strictly increase)."""
    for header, raw in batches:
        for offset in range(header.base_offset, header.next_offset):
            data = log.read(offset, 1)
            assert data == raw, f"read({offset}) did not return the batch at {header.base_offset}"
        for record in decode_records(raw, header):
            found = log.offset_for_timestamp(record.timestamp_ms)
            assert found == FoundRecord(record.offset, record.timestamp_ms)
    if batches:
        last_ts = decode_records(batches[-1][1])[-1].timestamp_ms
        assert log.offset_for_timestamp(last_ts + 1) is None


def expected_epoch_entries(headers: list[BatchHeader]) -> list[tuple[int, int]]:
    entries: list[tuple[int, int]] = []
    for header in headers:
        if not entries or header.leader_epoch != entries[-1][0]:
            entries.append((header.leader_epoch, header.base_offset))
    return entries


def assert_epoch_cache_matches(log: PartitionLog, headers: list[BatchHeader]) -> None:
    entries = log.epoch_cache.entries
    for epoch, start in entries:
        assert start < log.log_end_offset, f"epoch {epoch} starts at {start}, past the LEO"
    assert entries == expected_epoch_entries(headers)


def assert_producer_state_matches(log: PartitionLog, headers: list[BatchHeader], producer_id: int) -> None:
    mine = [h for h in headers if h.producer_id == producer_id]
    entry = log.producer_state.producers.get(producer_id)
    if not mine:
        assert entry is None
        return
    last = mine[-1]
    assert entry is not None, f"producer {producer_id} lost; its last batch is at {last.base_offset}"
    assert entry.epoch == last.producer_epoch
    assert entry.last_sequence == last.last_sequence
    recent = [h for h in mine if h.producer_epoch == last.producer_epoch][-5:]
    kept = [(b.first_sequence, b.last_sequence, b.first_offset, b.last_offset) for b in entry.batches]
    assert kept == [(h.base_sequence, h.last_sequence, h.base_offset, h.last_offset) for h in recent]


def assert_consistent(log: PartitionLog, batches: list[tuple[BatchHeader, bytes]], producer_id: int) -> None:
    headers = [h for h, _ in batches]
    assert_reads_by_offset_and_timestamp(log, batches)
    assert_epoch_cache_matches(log, headers)
    assert_producer_state_matches(log, headers, producer_id)


def dir_state(directory: Path) -> dict[str, bytes]:
    """Every file of a partition directory with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def batch_positions(path: str) -> list[tuple[int, BatchHeader]]:
    """(file position, header) of every batch of a segment file."""
    data = Path(path).read_bytes()
    out = []
    position = 0
    for header, _view in iter_batches(data, verify=True):
        out.append((position, header))
        position += header.size
    assert position == len(data)
    return out


def flip_bytes(path: str, position: int, masks: bytes) -> None:
    """XOR the bytes at `position` with non-zero `masks`, so every one of them changes."""
    assert all(masks)
    with open(path, "r+b") as handle:
        handle.seek(position)
        old = handle.read(len(masks))
        handle.seek(position)
        handle.write(bytes(a ^ b for a, b in zip(old, masks, strict=False)))


def stamped(batch: bytes, base_offset: int, leader_epoch: int) -> bytes:
    """`batch` as a leader appends it: with a base offset and leader epoch."""
    prefix = stamp_prefix(batch, base_offset, leader_epoch)
    return prefix + batch[len(prefix) :]


def rewrite_header(batch: bytes, *, reseal: bool, **changes: int) -> bytes:
    """`batch` with header fields changed; `reseal` recomputes the checksum so only the change is wrong."""
    header = read_header(batch)._replace(**changes)
    out = bytearray(HEADER_LAYOUT.pack(*header) + batch[HEADER_SIZE:])
    if reseal:
        struct.pack_into("<Q", out, CHECKSUM_AT, compute_checksum(out))
    return bytes(out)


def reopen(directory: Path, *, clean: bool = False, recovery_point: int = 0) -> PartitionLog:
    return PartitionLog(
        str(directory), CONFIG, clock=ManualClock(), recovery_point=recovery_point, clean_shutdown=clean
    )


# -- 1. real processes killed with SIGKILL -----------------------------------------------------------

CRASH_ROUNDS = 10
KILL_DELAY_S_MAX = 0.3
EARLY_KILL_PROBABILITY = 0.25  # kill counted from the spawn: lands in start-up or recovery, too
CHILD_START_TIMEOUT_S = 30


@dataclass
class ChildRun:
    opened: int | None = None
    appended: list[tuple[int, int]] = field(default_factory=list)
    flushed: list[int] = field(default_factory=list)


def run_child_until_killed(
    data_dir: Path, round_number: int, seed: int, policy: FlushPolicy, base_ts: int, rng: random.Random
) -> ChildRun:
    err_path = data_dir.parent / f"child-{round_number}.err"
    command = [
        sys.executable,
        str(CHILD_PROGRAM),
        str(data_dir),
        str(round_number),
        str(seed),
        policy.value,
        str(base_ts),
    ]
    lines: list[bytes] = []
    opened = threading.Event()

    def drain(stream) -> None:
        for line in stream:
            lines.append(line)
            opened.set()

    with open(err_path, "wb") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err)
    reader = threading.Thread(target=drain, args=(proc.stdout,), daemon=True)
    reader.start()
    try:
        if rng.random() < EARLY_KILL_PROBABILITY:
            time.sleep(rng.uniform(0, KILL_DELAY_S_MAX))
        else:
            assert opened.wait(CHILD_START_TIMEOUT_S), f"round {round_number}: child never opened the log"
            time.sleep(rng.uniform(0, KILL_DELAY_S_MAX))
        alive = proc.poll() is None
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(10)
    assert alive, f"seed {seed} round {round_number}: child exited by itself:\n{err_path.read_text()}"
    assert proc.returncode == -signal.SIGKILL
    return parse_child_output(lines, seed, round_number)


def parse_child_output(lines: list[bytes], seed: int, round_number: int) -> ChildRun:
    run = ChildRun()
    for raw in lines:
        if not raw.endswith(b"\n"):
            continue  # killed while printing: the line says nothing
        word, *numbers = raw.decode().split()
        values = [int(n) for n in numbers]
        if word == "opened":
            run.opened = values[0]
        elif word == "appended":
            first, last = values
            previous_next = run.appended[-1][1] + 1 if run.appended else run.opened
            assert first == previous_next, f"seed {seed} round {round_number}: child skipped offsets"
            run.appended.append((first, last))
        elif word == "flushed":
            run.flushed.append(values[0])
        else:
            raise AssertionError(f"unexpected child line {raw!r}")
    return run


def round_owning(offset: int, round_starts: dict[int, int]) -> int:
    """The round that wrote `offset`: the latest one that opened at or below it (a round that opened
    at the same offset as a later one left nothing behind)."""
    return max(r for r, start in round_starts.items() if start <= offset)


def check_recovered_copy(
    data_dir: Path,
    check_dir: Path,
    policy: FlushPolicy,
    round_starts: dict[int, int],
    base_ts: int,
    run: ChildRun,
    previous_leo: int,
    case: str,
) -> int:
    """Recover a copy of the killed child's directory and check it; return its log end offset."""
    if not data_dir.exists():
        assert previous_leo == 0
        return 0
    shutil.copytree(data_dir, check_dir)
    manager = LogManager(str(check_dir), default_config=child.crash_config(policy))
    try:
        log = manager.get_log(child.TOPIC, child.PARTITION)
        if log is None:
            assert previous_leo == 0, f"{case}: the log directory vanished"
            assert not run.appended
            return 0
        assert log.load_report.clean is False
        batches = read_all(log)
        leo = log.log_end_offset
        assert log.log_start_offset == 0
        # Exactly a prefix of what the child wrote: every batch equals the child's, as stamped.
        for header, raw in batches:
            round_number = round_owning(header.base_offset, round_starts)
            sent = child.expected_batch(header.base_offset, round_number, round_starts[round_number], base_ts)
            assert raw == stamped(sent, header.base_offset, round_number), (
                f"{case}: batch at {header.base_offset} differs from what was written"
            )
        # Nothing older than this round is lost: it had been recovered (and fsynced) before.
        assert leo >= previous_leo, f"{case}: LEO {leo} fell below the previous round's {previous_leo}"
        # What the policy promises.
        if run.flushed:
            assert leo >= max(run.flushed), f"{case}: flushed up to {max(run.flushed)}, LEO {leo}"
        if policy is FlushPolicy.BATCH and run.appended:
            last = run.appended[-1][1]
            assert leo >= last + 1, f"{case}: appended up to {last} with flush per batch, LEO {leo}"
        # At most the one batch being written when the kill came may go beyond what was reported.
        if run.appended:
            reported_end = run.appended[-1][1] + 1
        elif run.opened is not None:
            reported_end = run.opened
        else:
            reported_end = previous_leo
        assert leo <= reported_end + child.records_in_batch(reported_end), f"{case}: LEO {leo} too far"
        assert_consistent(log, batches, child.PRODUCER_ID)
        return leo
    finally:
        manager.close_unclean()


@pytest.mark.parametrize(
    ("policy", "seed"),
    [(FlushPolicy.OS, 101), (FlushPolicy.BATCH, 202), (FlushPolicy.INTERVAL, 303)],
    ids=["os", "batch", "interval"],
)
def test_sigkill_leaves_an_exact_prefix_with_everything_promised(tmp_path, policy, seed):
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    base_ts = time.time_ns() // 1_000_000  # near the child's system clock, so segments roll by size
    round_starts: dict[int, int] = {}
    leo = 0
    appended_total = 0
    for round_number in range(1, CRASH_ROUNDS + 1):
        case = f"policy {policy} seed {seed} round {round_number}"
        run = run_child_until_killed(data_dir, round_number, seed, policy, base_ts, rng)
        if run.opened is not None:
            # The child's own recovery found what the previous check recovered from its copy.
            assert run.opened == leo, f"{case}: child opened at {run.opened}, the copy recovered {leo}"
            round_starts[round_number] = run.opened
        appended_total += len(run.appended)
        leo = check_recovered_copy(
            data_dir, tmp_path / f"check-{round_number}", policy, round_starts, base_ts, run, leo, case
        )
    # The rounds did real work: batches over several rolled segments.
    assert appended_total >= 2 * CRASH_ROUNDS, f"seed {seed}: only {appended_total} appends"
    assert len(list((data_dir / f"{child.TOPIC}-{child.PARTITION}").glob("*.log"))) >= 3


# -- 2. damaged bytes on disk ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenLog:
    """A log of BATCHES batches, closed without a flush, and the batches it holds."""

    directory: Path
    batches: list[tuple[BatchHeader, bytes]]
    segment_bases: list[int]

    def path(self, base: int, suffix: str) -> str:
        return str(self.directory / segment_file_name(base, suffix))


@pytest.fixture(scope="module")
def template_log(tmp_path_factory) -> WrittenLog:
    """Written once per module (writing costs fsyncs at every roll); tests damage a copy."""
    directory = tmp_path_factory.mktemp("template") / "log"
    log = write_log(directory)
    batches = read_all(log)
    bases = [s.base_offset for s in log.segments]
    assert len(bases) >= 5
    log.close_unflushed()
    return WrittenLog(directory, batches, bases)


@pytest.fixture
def written(template_log, tmp_path) -> WrittenLog:
    directory = tmp_path / "log"
    shutil.copytree(template_log.directory, directory)
    return WrittenLog(directory, template_log.batches, template_log.segment_bases)


# Where in a batch the first damaged byte lies; positions are relative to the batch start.
CORRUPTION_CASES = {
    "batch_length": lambda rng, size: rng.randrange(8, 12),
    "magic": lambda rng, size: 16,
    "checksum": lambda rng, size: rng.randrange(17, 25),
    "header_after_checksum": lambda rng, size: rng.randrange(25, HEADER_SIZE),
    "records": lambda rng, size: rng.randrange(HEADER_SIZE, size),
    "last_byte": lambda rng, size: size - 1,
    "anywhere_checked": lambda rng, size: rng.choice([p for p in range(size) if p not in UNPROTECTED_PREFIX]),
}


def corrupt_and_expect_cut(written: WrittenLog, rng: random.Random, where: str, last_batch: bool) -> None:
    """Flip 1-4 bytes of one batch, reopen with recovery from offset 0, and check the cut."""
    bases = written.segment_bases
    index_files = {b: (written.path(b, INDEX_SUFFIX), written.path(b, TIME_INDEX_SUFFIX)) for b in bases}
    original_indexes = {b: (Path(i).read_bytes(), Path(t).read_bytes()) for b, (i, t) in index_files.items()}

    seg_index = len(bases) - 1 if last_batch else rng.randrange(len(bases))
    seg_base = bases[seg_index]
    seg_path = written.path(seg_base, LOG_SUFFIX)
    positions = batch_positions(seg_path)
    batch_position, victim = positions[-1] if last_batch or where == "last_byte" else rng.choice(positions)
    within = CORRUPTION_CASES[where](rng, victim.size)
    length = 1 if where == "last_byte" else rng.randint(1, 4)
    flip_bytes(seg_path, batch_position + within, bytes(rng.randrange(1, 256) for _ in range(length)))
    case = f"{where}: segment {seg_base}, batch {victim.base_offset} at {batch_position}, byte {within}"

    log = reopen(written.directory)
    report = log.load_report
    assert log.log_end_offset == victim.base_offset, case
    assert report.error is not None, case
    assert os.path.basename(seg_path) in report.error, f"{case}: {report.error}"
    assert f"at position {batch_position}" in report.error, f"{case}: {report.error}"
    later = bases[seg_index + 1 :]
    assert report.deleted_segments == len(later), case
    for base in later:
        for suffix in (LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX):
            assert not os.path.exists(written.path(base, suffix)), f"{case}: {base}{suffix} survived the cut"
    assert [s.base_offset for s in log.segments] == bases[: seg_index + 1], case
    assert os.path.getsize(seg_path) == batch_position, case
    survivors = [(h, raw) for h, raw in written.batches if h.base_offset < victim.base_offset]
    assert read_all(log) == survivors, case
    assert_consistent(log, survivors, PRODUCER_ID)
    # The indexes were rebuilt from the log: the same entries as before the damage, none past the cut.
    for base in bases[: seg_index + 1]:
        index_path, time_path = index_files[base]
        old_index, old_time = original_indexes[base]
        position_limit = batch_position if base == seg_base else 1 << 32
        kept_index = b"".join(
            old_index[i : i + 8]
            for i in range(0, len(old_index), 8)
            if struct.unpack_from("<II", old_index, i)[1] < position_limit
        )
        kept_time = b"".join(
            old_time[i : i + 12]
            for i in range(0, len(old_time), 12)
            if base + struct.unpack_from("<qI", old_time, i)[1] < victim.base_offset
        )
        assert Path(index_path).read_bytes() == kept_index, f"{case}: offset index of {base}"
        assert Path(time_path).read_bytes() == kept_time, f"{case}: time index of {base}"
    # The log goes on: a new batch lands at the cut, and the rebuilt indexes serve after a clean restart.
    info = log.append_as_leader(producer_batch(log.log_end_offset, 2, idempotent=False), 9)
    assert info.first_offset == victim.base_offset
    log.close()
    log = reopen(written.directory, clean=True)
    after = read_all(log)
    assert after[:-1] == survivors
    assert_reads_by_offset_and_timestamp(log, after)
    log.close()


@pytest.mark.parametrize("where", sorted(CORRUPTION_CASES))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_recovery_cuts_exactly_at_the_batch_with_the_first_bad_byte(written, where, seed):
    corrupt_and_expect_cut(written, random.Random(f"{where}-{seed}"), where, last_batch=False)


@pytest.mark.parametrize("where", ["records", "checksum", "magic"])
def test_recovery_cuts_a_damaged_last_batch(written, where):
    corrupt_and_expect_cut(written, random.Random(f"last-{where}"), where, last_batch=True)


def test_raised_base_offset_is_cut_not_served(written):
    """The base offset is outside the checksum (so a leader stamps it without re-hashing); recovery catches
    a damaged one by order: offsets must increase and stay below the next segment's base. A batch of a
    sealed segment whose base offset is raised past that boundary is cut exactly there. (A raise inside
    the active segment's tail keeps the order and is not caught: docs/format.md says so.)"""
    base = written.segment_bases[0]
    path = written.path(base, LOG_SUFFIX)
    positions = batch_positions(path)
    batch_position, victim = positions[len(positions) // 2]
    assert written.segment_bases[1] <= victim.base_offset + 256  # the flip below adds 256 to the base offset
    flip_bytes(path, batch_position + 1, b"\x01")
    log = reopen(written.directory)
    assert log.log_end_offset == victim.base_offset
    assert "next segment" in log.load_report.error
    assert read_all(log) == [(h, raw) for h, raw in written.batches if h.base_offset < victim.base_offset]


@pytest.mark.parametrize("cut", ["inside_header", "inside_records", "one_byte_short"])
def test_torn_final_batch_is_cut(written, cut):
    active_path = written.path(written.segment_bases[-1], LOG_SUFFIX)
    batch_position, victim = batch_positions(active_path)[-1]
    rng = random.Random(cut)
    keep = {
        "inside_header": rng.randrange(1, HEADER_SIZE),
        "inside_records": rng.randrange(HEADER_SIZE, victim.size - 1),
        "one_byte_short": victim.size - 1,
    }[cut]
    os.truncate(active_path, batch_position + keep)
    log = reopen(written.directory)
    assert log.log_end_offset == victim.base_offset
    assert "torn" in log.load_report.error
    assert log.load_report.truncated_bytes == keep
    assert os.path.getsize(active_path) == batch_position
    survivors = written.batches[:-1]
    assert read_all(log) == survivors
    assert_consistent(log, survivors, PRODUCER_ID)


@pytest.mark.parametrize("tail", ["garbage_1", "garbage_64", "garbage_300", "zeros_4096"])
def test_junk_after_the_last_batch_is_cut(written, tail):
    active_path = written.path(written.segment_bases[-1], LOG_SUFFIX)
    size = os.path.getsize(active_path)
    kind, length = tail.split("_")
    junk = bytes(int(length)) if kind == "zeros" else random.Random(tail).randbytes(int(length))
    with open(active_path, "ab") as handle:
        handle.write(junk)
    log = reopen(written.directory)
    assert log.log_end_offset == written.batches[-1][0].next_offset
    assert log.load_report.error is not None
    assert log.load_report.truncated_bytes == len(junk)
    assert os.path.getsize(active_path) == size
    assert read_all(log) == written.batches
    assert_consistent(log, written.batches, PRODUCER_ID)


def test_zero_filled_tail_over_written_batches_is_cut(written):
    """A crash can leave the file's size updated but its last blocks unwritten (read back as zeros)."""
    active_path = written.path(written.segment_bases[-1], LOG_SUFFIX)
    positions = batch_positions(active_path)
    size = os.path.getsize(active_path)
    victim_position, victim = positions[len(positions) // 2]
    zeroed_from = victim_position + 30
    with open(active_path, "r+b") as handle:
        handle.seek(zeroed_from)
        handle.write(bytes(size - zeroed_from))
    log = reopen(written.directory)
    assert log.log_end_offset == victim.base_offset
    assert log.load_report.error is not None
    assert os.path.getsize(active_path) == victim_position
    survivors = [(h, raw) for h, raw in written.batches if h.base_offset < victim.base_offset]
    assert read_all(log) == survivors
    assert_consistent(log, survivors, PRODUCER_ID)


INDEX_DAMAGE = ["deleted", "emptied", "torn_entry", "not_increasing", "entry_past_end"]


def damage_index(path: str, entry: struct.Struct, damage: str) -> None:
    """Damage an index file of (key, value) entries; `entry_past_end` points the last entry past the
    end of the segment (a position for the offset index, an offset for the time index)."""
    data = Path(path).read_bytes()
    assert len(data) >= 2 * entry.size, f"{path} needs two entries for this test"
    if damage == "deleted":
        os.unlink(path)
    elif damage == "emptied":
        os.truncate(path, 0)
    elif damage == "torn_entry":
        os.truncate(path, len(data) - 3)
    elif damage == "not_increasing":
        Path(path).write_bytes(data[: -entry.size] + data[: entry.size])
    elif damage == "entry_past_end":
        key, _value = entry.unpack_from(data, len(data) - entry.size)
        Path(path).write_bytes(data[: -entry.size] + entry.pack(key, 1 << 30))
    else:
        raise AssertionError(damage)


@pytest.mark.parametrize("reopen_as", ["clean", "unclean_below_recovery_point", "unclean_from_zero"])
@pytest.mark.parametrize("damage", INDEX_DAMAGE)
@pytest.mark.parametrize("target", [INDEX_SUFFIX, TIME_INDEX_SUFFIX])
def test_damaged_index_is_rebuilt_without_data_loss(written, target, damage, reopen_as):
    leo = written.batches[-1][0].next_offset
    sealed = written.segment_bases[1]  # a sealed segment in the middle of the log
    paths = [written.path(sealed, INDEX_SUFFIX), written.path(sealed, TIME_INDEX_SUFFIX)]
    before = {path: Path(path).read_bytes() for path in paths}
    entry = struct.Struct("<II") if target == INDEX_SUFFIX else struct.Struct("<qI")
    damage_index(written.path(sealed, target), entry, damage)
    log = reopen(
        written.directory,
        clean=reopen_as == "clean",
        recovery_point=leo if reopen_as == "unclean_below_recovery_point" else 0,
    )
    assert log.log_end_offset == leo
    assert read_all(log) == written.batches
    assert_consistent(log, written.batches, PRODUCER_ID)
    for path in paths:
        assert Path(path).read_bytes() == before[path], f"{damage} {target}: {path} not rebuilt"


def test_lost_time_index_keeps_the_segment_max_timestamp(tmp_path):
    """The largest timestamp of a sealed segment may sit in its first batch; losing the time index must
    not make the segment forget it (offset_for_timestamp and time retention rely on it)."""
    log = PartitionLog(str(tmp_path), CONFIG, clock=ManualClock(), recovery_point=0)
    late = T0 + 100_000
    log.append_as_leader(encode_batch([NewRecord(b"first", b"x" * 40, late)], now_ms=late), 1)
    for i in range(1, 40):
        log.append_as_leader(encode_batch([NewRecord(b"k", b"x" * 40, T0 + i)], now_ms=T0 + i), 1)
    first = log.segments.first
    assert first is not log.segments.active
    time_path = first.time_index.path
    assert log.offset_for_timestamp(late) == FoundRecord(0, late)
    log.close()
    os.unlink(time_path)
    log = reopen(tmp_path, clean=True)
    assert log.segments.first.max_timestamp == late
    assert log.offset_for_timestamp(late) == FoundRecord(0, late)


MANAGED_TOPIC = "orders"


@pytest.fixture(scope="module")
def managed_templates(tmp_path_factory):
    """Per shutdown kind, a LogManager data directory holding one log of BATCHES batches (built once;
    tests damage a copy). A clean shutdown writes the marker; an unclean one checkpoints the recovery
    point at the LEO first, so every sealed segment is below it."""
    built: dict[str, tuple[Path, list[tuple[BatchHeader, bytes]]]] = {}

    def build(shutdown: str) -> tuple[Path, list[tuple[BatchHeader, bytes]]]:
        if shutdown not in built:
            data_dir = tmp_path_factory.mktemp(f"managed-{shutdown}") / "data"
            manager = LogManager(str(data_dir), default_config=CONFIG, clock=ManualClock())
            log = manager.get_or_create_log(MANAGED_TOPIC, 0)
            fill_log(log, BATCHES)
            batches = read_all(log)
            if shutdown == "clean":
                manager.shutdown()
            else:
                log.flush()
                manager.checkpoint()
                manager.close_unclean()
            built[shutdown] = (data_dir, batches)
        return built[shutdown]

    return build


def sealed_segment_batch(log_dir: Path, which: str) -> tuple[str, int, BatchHeader]:
    """(segment path, position, header) of a batch in a sealed segment in the middle of the log."""
    paths = sorted(str(p) for p in log_dir.glob(f"*{LOG_SUFFIX}"))
    path = paths[len(paths) // 2]
    assert path != paths[-1]
    positions = batch_positions(path)
    assert len(positions) >= 3
    position, header = {"first": positions[0], "middle": positions[len(positions) // 2]}.get(
        which, positions[-1]
    )
    return path, position, header


@pytest.mark.parametrize("shutdown", ["clean", "unclean_checkpointed"])
@pytest.mark.parametrize("which", ["first", "middle", "last"])
@pytest.mark.parametrize("where", ["records", "magic", "batch_length"])
def test_damage_below_the_recovery_point_is_never_served(tmp_path, managed_templates, where, which, shutdown):
    template_dir, original = managed_templates(shutdown)
    data_dir = tmp_path / "data"
    shutil.copytree(template_dir, data_dir)
    leo = original[-1][0].next_offset
    path, position, victim = sealed_segment_batch(data_dir / f"{MANAGED_TOPIC}-0", which)
    within = {"records": HEADER_SIZE + 5, "magic": 16, "batch_length": 9}[where]
    flip_bytes(path, position + within, b"\x40")

    manager = LogManager(str(data_dir), default_config=CONFIG, clock=ManualClock())
    log = manager.get_log(MANAGED_TOPIC, 0)
    assert log.load_report.clean is (shutdown == "clean")
    assert log.log_end_offset == leo
    by_base = {h.base_offset: raw for h, raw in original}
    bad = range(victim.base_offset, victim.next_offset)
    for offset in bad:
        with pytest.raises(CorruptLogError):
            log.read(offset, READ_BYTES_MAX)
    # Every other read returns only true batches, starting with the one holding the offset; only reads
    # past the damage may fail the same way (a header walk can cross the damaged batch).
    for header, _raw in original:
        for offset in range(header.base_offset, header.next_offset):
            if offset in bad:
                continue
            try:
                data = log.read(offset, READ_BYTES_MAX)
            except CorruptLogError:
                assert offset > victim.base_offset, f"read({offset}) before the damage failed"
                continue
            served = list(iter_batches(data, verify=True))
            assert served, f"read({offset}) returned nothing"
            assert served[0][0].base_offset <= offset < served[0][0].next_offset
            for served_header, view in served:
                assert served_header.base_offset != victim.base_offset
                assert bytes(view) == by_base[served_header.base_offset]
    manager.close_unclean()


def test_epoch_cache_covers_batches_of_a_new_epoch_whose_checkpoint_was_lost(tmp_path):
    """A crash between writing the first batch of a new leader epoch and replacing the
    leader-epoch-checkpoint (write_atomic renames last) leaves the old checkpoint on disk. Recovery
    re-scans that batch, so the cache must learn its epoch again (Kafka assigns epochs while it
    recovers a segment)."""
    log = write_log(tmp_path, batches=10)  # epoch 1 only
    log.flush()
    checkpoint = tmp_path / "leader-epoch-checkpoint"
    before_new_epoch = checkpoint.read_bytes()
    first_of_epoch_5 = log.log_end_offset
    log.append_as_leader(producer_batch(first_of_epoch_5, 2), 5)
    assert log.epoch_cache.entries == [(1, 0), (5, first_of_epoch_5)]
    log.close_unflushed()
    checkpoint.write_bytes(before_new_epoch)
    log = reopen(tmp_path, recovery_point=first_of_epoch_5)
    batches = read_all(log)
    assert batches[-1][0].leader_epoch == 5
    assert log.epoch_cache.entries == [(1, 0), (5, first_of_epoch_5)]


# -- 3. bad input is refused and changes nothing ------------------------------------------------------


def assert_refused_unchanged(tmp_path: Path, log: PartitionLog, attempt, error, match: str) -> None:
    before_files = dir_state(tmp_path)
    before = (log.log_end_offset, log.epoch_cache.entries, log.recovery_point, len(log.segments))
    before_producer = [
        (b.first_sequence, b.last_sequence, b.first_offset, b.last_offset)
        for b in log.producer_state.producers[PRODUCER_ID].batches
    ]
    with pytest.raises(error, match=match):
        attempt()
    assert (log.log_end_offset, log.epoch_cache.entries, log.recovery_point, len(log.segments)) == before
    assert [
        (b.first_sequence, b.last_sequence, b.first_offset, b.last_offset)
        for b in log.producer_state.producers[PRODUCER_ID].batches
    ] == before_producer
    assert dir_state(tmp_path) == before_files
    # Still a working log: the next good batch lands at the LEO and reads back.
    leo = log.log_end_offset
    info = log.append_as_leader(producer_batch(leo, 1, idempotent=False), 9)
    assert info.first_offset == leo
    assert read_all(log)[-1][0].base_offset == leo


@pytest.fixture
def written_log(tmp_path):
    log = write_log(tmp_path, batches=30)
    log.flush()
    yield log
    log.close()


def good_batch(log: PartitionLog) -> bytes:
    return producer_batch(log.log_end_offset, 3)


LEADER_REFUSALS = {
    "wrong_checksum": (
        lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]),
        CorruptBatchError,
        "checksum mismatch",
    ),
    "checksum_field_damaged": (
        lambda b: b[:CHECKSUM_AT] + bytes([b[CHECKSUM_AT] ^ 1]) + b[CHECKSUM_AT + 1 :],
        CorruptBatchError,
        "checksum mismatch",
    ),
    "batch_length_too_long": (
        lambda b: rewrite_header(b, reseal=False, batch_length=read_header(b).batch_length + 1),
        InvalidBatchError,
        "runs past",
    ),
    "batch_length_too_short": (
        lambda b: rewrite_header(b, reseal=False, batch_length=read_header(b).batch_length - 1),
        CorruptBatchError,
        "checksum mismatch",
    ),
    "batch_length_below_header": (
        lambda b: rewrite_header(b, reseal=False, batch_length=HEADER_SIZE - 13),
        InvalidBatchError,
        "shorter than a batch header",
    ),
    "bytes_after_the_batch": (lambda b: b + bytes(7), InvalidBatchError, "batch_length says"),
    "two_batches": (lambda b: b + b, InvalidBatchError, "batch_length says"),
    "truncated_header": (lambda b: b[:40], InvalidBatchError, "truncated batch header"),
    "negative_record_count": (
        lambda b: rewrite_header(b, reseal=True, record_count=-1),
        InvalidBatchError,
        "negative record_count",
    ),
    "record_count_past_offsets": (
        lambda b: rewrite_header(b, reseal=True, record_count=read_header(b).record_count + 1),
        InvalidBatchError,
        "exceeds last_offset_delta",
    ),
    "sparse_producer_batch": (
        lambda b: rewrite_header(b, reseal=True, last_offset_delta=read_header(b).last_offset_delta + 1),
        InvalidBatchError,
        "must hold records at every offset",
    ),
    "negative_last_offset_delta": (
        lambda b: rewrite_header(b, reseal=True, last_offset_delta=-1),
        InvalidBatchError,
        "negative last_offset_delta",
    ),
    "unknown_magic": (
        lambda b: rewrite_header(b, reseal=False, magic=2),
        InvalidBatchError,
        "unknown batch magic 2",
    ),
    "reserved_attribute_bits": (
        lambda b: rewrite_header(b, reseal=True, attributes=0x10),
        InvalidBatchError,
        "reserved attribute bits",
    ),
    "compression_codec": (
        lambda b: rewrite_header(b, reseal=True, attributes=0x02),
        InvalidBatchError,
        "compression codec 2",
    ),
    "max_timestamp_below_first": (
        lambda b: rewrite_header(b, reseal=True, max_timestamp=read_header(b).first_timestamp - 1),
        InvalidBatchError,
        "max_timestamp",
    ),
}


@pytest.mark.parametrize("case", sorted(LEADER_REFUSALS))
def test_leader_append_refuses_bad_batches_and_writes_nothing(tmp_path, written_log, case):
    damage, error, match = LEADER_REFUSALS[case]
    bad = damage(good_batch(written_log))
    assert_refused_unchanged(
        tmp_path, written_log, lambda: written_log.append_as_leader(bad, 3), error, match
    )


def test_leader_append_refuses_a_batch_over_max_message_bytes(tmp_path):
    log = PartitionLog(str(tmp_path), CONFIG.replace(max_message_bytes=512), clock=ManualClock())
    fill_log(log, 5)
    big = encode_batch([NewRecord(b"k", b"x" * 600, T0)], now_ms=T0)
    assert_refused_unchanged(
        tmp_path, log, lambda: log.append_as_leader(big, 3), BatchTooLargeError, "max.message.bytes"
    )
    log.close()


def test_leader_and_follower_appends_refuse_a_batch_over_segment_bytes(tmp_path, written_log):
    big = encode_batch([NewRecord(b"k", b"x" * CONFIG.segment_bytes, T0)], now_ms=T0)
    assert_refused_unchanged(
        tmp_path,
        written_log,
        lambda: written_log.append_as_leader(big, 3),
        BatchTooLargeError,
        "segment.bytes",
    )
    assert_refused_unchanged(
        tmp_path,
        written_log,
        lambda: written_log.append_as_follower(stamped(big, written_log.log_end_offset, 3)),
        BatchTooLargeError,
        "segment.bytes",
    )


def test_leader_append_refuses_a_stale_epoch_and_a_sequence_gap(tmp_path, written_log):
    batch = good_batch(written_log)
    assert_refused_unchanged(
        tmp_path, written_log, lambda: written_log.append_as_leader(batch, 1), StaleLeaderEpochError, "epoch"
    )
    # The follow-up append of the first check took offset `base_sequence` without a sequence, so the
    # producer still expects `base_sequence`; one more is a gap.
    gap = rewrite_header(batch, reseal=True, base_sequence=read_header(batch).base_sequence + 1)
    assert_refused_unchanged(
        tmp_path, written_log, lambda: written_log.append_as_leader(gap, 9), ProducerSequenceError, "expected"
    )


def follower_batches(log: PartitionLog, count: int, epoch: int = 3) -> list[bytes]:
    """Batches as a leader would send them: stamped with offsets from the LEO on."""
    out = []
    offset = log.log_end_offset
    for i in range(count):
        sent = producer_batch(offset, 1 + i % 3)
        out.append(stamped(sent, offset, epoch))
        offset = read_header(sent).last_offset_delta + offset + 1
    return out


FOLLOWER_REFUSALS = {
    "below_the_leo": (
        lambda log, bs: [stamped(bs[0], log.log_end_offset - 1, 3)],
        InvalidBatchError,
        "does not follow",
    ),
    "overlapping_in_the_middle": (
        lambda log, bs: [bs[0], bs[1], stamped(bs[2], read_header(bs[1]).base_offset, 3)],
        InvalidBatchError,
        "does not follow",
    ),
    "bad_checksum_in_the_middle": (
        lambda log, bs: [bs[0], bs[1][:-1] + bytes([bs[1][-1] ^ 0x20]), bs[2]],
        CorruptBatchError,
        "checksum mismatch",
    ),
    "impossible_header_in_the_middle": (
        lambda log, bs: [bs[0], rewrite_header(bs[1], reseal=True, attributes=0x100), bs[2]],
        InvalidBatchError,
        "reserved attribute bits",
    ),
    "torn_last_batch": (
        lambda log, bs: [bs[0], bs[1], bs[2][:-5]],
        InvalidBatchError,
        "runs past",
    ),
    "torn_header_at_the_end": (
        lambda log, bs: [bs[0], bs[1], bs[2][:30]],
        InvalidBatchError,
        "truncated batch header",
    ),
}


@pytest.mark.parametrize("case", sorted(FOLLOWER_REFUSALS))
def test_follower_append_refuses_bad_input_and_writes_nothing(tmp_path, written_log, case):
    damage, error, match = FOLLOWER_REFUSALS[case]
    data = b"".join(damage(written_log, follower_batches(written_log, 3)))
    assert_refused_unchanged(
        tmp_path, written_log, lambda: written_log.append_as_follower(data), error, match
    )


def test_follower_append_takes_the_same_batches_undamaged(tmp_path, written_log):
    """The control for the refusal tests: the same batches, undamaged, are taken whole."""
    batches = follower_batches(written_log, 3)
    leo = written_log.log_end_offset
    info = written_log.append_as_follower(b"".join(batches))
    assert info is not None
    assert (info.first_offset, info.batches) == (leo, 3)
    assert [raw for _, raw in read_all(written_log)[-3:]] == batches


def test_follower_batch_past_the_relative_offset_range_of_an_empty_segment(tmp_path):
    """An empty active segment cannot index offsets 2**32 past its base: the batch needs a new segment.
    Today the bytes are written and then the index append raises struct.error, leaving the file longer
    than the log believes."""
    log = PartitionLog(str(tmp_path), CONFIG, clock=ManualClock())
    far = 2**32 + 5
    sent = encode_batch([NewRecord(b"k", b"v", T0)], now_ms=T0)
    batch = stamped(sent, far, 3)
    info = log.append_as_follower(batch)
    assert info is not None
    assert info.first_offset == far
    assert log.log_end_offset == far + 1
    assert log.read(far, READ_BYTES_MAX) == batch
    log.close()
    log = reopen(tmp_path, clean=False, recovery_point=0)
    assert log.load_report.error is None
    assert log.log_end_offset == far + 1
    log.close()
