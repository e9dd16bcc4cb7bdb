"""`ProducerStateManager`: what the log knows about each idempotent producer.

Theory of operation
-------------------
For every producer id the log keeps the current producer epoch and the sequence ranges and offsets of
the producer's last five batches (`BATCHES_KEPT`, as Kafka's max.in.flight for idempotence). Before a
leader appends an idempotent batch it asks `check`, a pure function of this state: a batch equal to one
of the five is a duplicate (answer with its original offsets, append nothing), a batch that continues
the last sequence is appended, anything else is out of order, and an older epoch is fenced. After every
append (leader or follower) `update` records the batch, so a follower that becomes leader already knows
every recent batch.

The state is rebuilt after a restart from the latest snapshot at or below the log end offset plus a
replay of the batches after it. A snapshot is taken at every segment roll; truncation reloads from a
snapshot at or below the new end. Producers expire `producer_id_expiration_ms` after their last batch.

On disk: `<offset, 20 digits>.snapshot` in the partition directory, holding the state of every batch
below `offset`::

    version uint16 (=1) | checksum uint64 (xxh3_64 of the payload) | payload (JSON, see _encode)

Crash: snapshots are written atomically (temp file, fsync, rename); a snapshot with a bad checksum is
deleted and an older one (or a full replay) used instead.

Thread-safety: not thread-safe; the owning PartitionLog serializes access.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

import orjson
import xxhash

from storage.fileio import remove_if_exists, write_atomic
from storage.record_batch import INT32_MAX, BatchHeader

BATCHES_KEPT = 5
SNAPSHOT_SUFFIX = ".snapshot"
SNAPSHOT_VERSION = 1
SNAPSHOTS_KEPT = 3
_SNAPSHOT_HEADER = struct.Struct("<HQ")
# Kafka's default producer.id.expiration.ms: one day.
PRODUCER_ID_EXPIRATION_MS = 24 * 60 * 60 * 1000


class Verdict(StrEnum):
    APPEND = "append"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order_sequence"
    FENCED = "invalid_producer_epoch"
    UNKNOWN_PRODUCER = "unknown_producer_id"


@dataclass(frozen=True, slots=True)
class SequenceCheck:
    verdict: Verdict
    first_offset: int = -1
    last_offset: int = -1
    message: str = ""


@dataclass(frozen=True, slots=True)
class BatchMetadata:
    first_sequence: int
    last_sequence: int
    first_offset: int
    last_offset: int
    timestamp_ms: int


@dataclass(slots=True)
class ProducerEntry:
    producer_id: int
    epoch: int
    last_timestamp_ms: int
    batches: deque = field(default_factory=lambda: deque(maxlen=BATCHES_KEPT))

    @property
    def last_sequence(self) -> int:
        return self.batches[-1].last_sequence if self.batches else -1


def next_sequence(sequence: int) -> int:
    return 0 if sequence == INT32_MAX else sequence + 1


def snapshot_file_name(offset: int) -> str:
    return f"{offset:020d}{SNAPSHOT_SUFFIX}"


class ProducerStateManager:
    def __init__(self, directory: str | None, expiration_ms: int = PRODUCER_ID_EXPIRATION_MS):
        self.directory = directory
        self.expiration_ms = expiration_ms
        self.producers: dict[int, ProducerEntry] = {}
        self.map_end_offset = 0  # the state covers every batch below this offset

    # -- the pure decision -----------------------------------------------------------------------

    def check(self, producer_id: int, epoch: int, first_sequence: int, last_sequence: int) -> SequenceCheck:
        """Decide what to do with an idempotent batch before it is appended."""
        entry = self.producers.get(producer_id)
        if entry is None:
            if first_sequence == 0:
                return SequenceCheck(Verdict.APPEND)
            return SequenceCheck(
                Verdict.UNKNOWN_PRODUCER,
                message=f"producer {producer_id} has no state here; its first batch must have sequence 0, "
                f"got {first_sequence}",
            )
        if epoch < entry.epoch:
            return SequenceCheck(
                Verdict.FENCED,
                message=f"producer {producer_id} epoch {epoch} is older than the current epoch {entry.epoch}",
            )
        if epoch > entry.epoch:
            if first_sequence == 0:
                return SequenceCheck(Verdict.APPEND)
            return SequenceCheck(
                Verdict.OUT_OF_ORDER,
                message=f"producer {producer_id} new epoch {epoch} must start at sequence 0, got {first_sequence}",
            )
        for batch in entry.batches:
            if batch.first_sequence == first_sequence and batch.last_sequence == last_sequence:
                return SequenceCheck(Verdict.DUPLICATE, batch.first_offset, batch.last_offset)
        expected = next_sequence(entry.last_sequence)
        if first_sequence == expected:
            return SequenceCheck(Verdict.APPEND)
        return SequenceCheck(
            Verdict.OUT_OF_ORDER,
            message=f"producer {producer_id} epoch {epoch}: expected sequence {expected}, got {first_sequence}",
        )

    # -- state changes ---------------------------------------------------------------------------

    def update(self, header: BatchHeader) -> None:
        """Record an appended batch (idempotent or not: the end offset advances either way)."""
        if header.producer_id >= 0 and header.base_sequence >= 0:
            entry = self.producers.get(header.producer_id)
            if entry is None or header.producer_epoch > entry.epoch:
                entry = ProducerEntry(header.producer_id, header.producer_epoch, header.max_timestamp)
                self.producers[header.producer_id] = entry
            entry.batches.append(
                BatchMetadata(
                    header.base_sequence,
                    header.last_sequence,
                    header.base_offset,
                    header.last_offset,
                    header.max_timestamp,
                )
            )
            entry.last_timestamp_ms = max(entry.last_timestamp_ms, header.max_timestamp)
        if header.next_offset > self.map_end_offset:
            self.map_end_offset = header.next_offset

    def remove_expired(self, now_ms: int) -> list[int]:
        expired = [
            pid for pid, e in self.producers.items() if now_ms - e.last_timestamp_ms >= self.expiration_ms
        ]
        for pid in expired:
            del self.producers[pid]
        return expired

    def reset(self, offset: int) -> None:
        self.producers = {}
        self.map_end_offset = offset

    # -- snapshots -------------------------------------------------------------------------------

    def snapshot_offsets(self) -> list[int]:
        if not self.directory:
            return []
        out = []
        for name in os.listdir(self.directory):
            if name.endswith(SNAPSHOT_SUFFIX) and name[: -len(SNAPSHOT_SUFFIX)].isdigit():
                out.append(int(name[: -len(SNAPSHOT_SUFFIX)]))
        return sorted(out)

    def take_snapshot(self) -> None:
        """Write the state as of `map_end_offset`; keep only the newest SNAPSHOTS_KEPT."""
        if not self.directory:
            return
        payload = orjson.dumps(_encode(self.producers))
        data = _SNAPSHOT_HEADER.pack(SNAPSHOT_VERSION, xxhash.xxh3_64_intdigest(payload)) + payload
        write_atomic(os.path.join(self.directory, snapshot_file_name(self.map_end_offset)), data)
        offsets = self.snapshot_offsets()
        for offset in offsets[:-SNAPSHOTS_KEPT]:
            self._delete_snapshot(offset)

    def load_latest_snapshot(self, max_offset: int, min_offset: int) -> int:
        """Load the newest valid snapshot in [min_offset, max_offset]; return the offset it covers up to,
        or `min_offset` with empty state when there is none. Snapshots above `max_offset` are deleted."""
        for offset in reversed(self.snapshot_offsets()):
            if offset > max_offset:
                self._delete_snapshot(offset)
                continue
            if offset < min_offset:
                break
            producers = self._read_snapshot(offset)
            if producers is None:
                self._delete_snapshot(offset)
                continue
            self.producers = producers
            self.map_end_offset = offset
            return offset
        self.reset(min_offset)
        return min_offset

    def delete_snapshots_below(self, offset: int) -> None:
        for snap in self.snapshot_offsets():
            if snap < offset:
                self._delete_snapshot(snap)

    def delete_snapshots_above(self, offset: int) -> None:
        for snap in self.snapshot_offsets():
            if snap > offset:
                self._delete_snapshot(snap)

    def _delete_snapshot(self, offset: int) -> None:
        remove_if_exists(os.path.join(self.directory or "", snapshot_file_name(offset)))

    def _read_snapshot(self, offset: int) -> dict[int, ProducerEntry] | None:
        path = os.path.join(self.directory or "", snapshot_file_name(offset))
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            version, checksum = _SNAPSHOT_HEADER.unpack_from(data)
            payload = data[_SNAPSHOT_HEADER.size :]
            if version != SNAPSHOT_VERSION or xxhash.xxh3_64_intdigest(payload) != checksum:
                return None
            return _decode(orjson.loads(payload))
        except (OSError, struct.error, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


def _encode(producers: dict[int, ProducerEntry]) -> list:
    return [
        {
            "producer_id": e.producer_id,
            "epoch": e.epoch,
            "last_timestamp_ms": e.last_timestamp_ms,
            "batches": [
                [b.first_sequence, b.last_sequence, b.first_offset, b.last_offset, b.timestamp_ms]
                for b in e.batches
            ],
        }
        for e in producers.values()
    ]


def _decode(items: list) -> dict[int, ProducerEntry]:
    out = {}
    for item in items:
        entry = ProducerEntry(int(item["producer_id"]), int(item["epoch"]), int(item["last_timestamp_ms"]))
        for fields in item["batches"]:
            entry.batches.append(BatchMetadata(*(int(x) for x in fields)))
        out[entry.producer_id] = entry
    return out
