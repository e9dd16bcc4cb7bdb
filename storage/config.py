"""Per-log configuration: the topic-level settings that the storage engine obeys.

Names follow Kafka's topic configs (`segment.bytes` becomes `segment_bytes`), so a Kafka user finds
them where they expect. `LogConfig.from_topic_configs` reads the dotted names used by the HTTP API.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum, StrEnum

DAY_MS = 24 * 60 * 60 * 1000


class FlushPolicy(StrEnum):
    """When appended bytes are fsynced (see docs/storage.md, "Durability")."""

    BATCH = "batch"  # fsync after every append, before the append returns
    INTERVAL = "interval"  # fsync when flush_interval_ms passed since the last fsync
    OS = "os"  # never fsync on append: the page cache and replication are the guard


class CleanupPolicy(StrEnum):
    DELETE = "delete"
    COMPACT = "compact"
    COMPACT_DELETE = "compact,delete"


@dataclass(frozen=True, slots=True)
class LogConfig:
    # Redpanda's default segment size (Kafka's is 1 GiB): smaller segments make retention finer.
    segment_bytes: int = 128 * 1024 * 1024
    # Kafka's default segment.ms: a segment rolls after 7 days even when it is small.
    segment_ms: int = 7 * DAY_MS
    # Kafka's default index.interval.bytes: one offset and time index entry per 4 KiB of log.
    index_interval_bytes: int = 4096
    # Kafka's default segment.index.bytes (10 MiB): at most 1,310,720 offset entries per segment.
    segment_index_bytes: int = 10 * 1024 * 1024
    # Kafka's defaults: keep 7 days, no size limit.
    retention_ms: int = 7 * DAY_MS
    retention_bytes: int = -1
    cleanup_policy: CleanupPolicy = CleanupPolicy.DELETE
    # Kafka's defaults for compaction.
    delete_retention_ms: int = DAY_MS
    min_compaction_lag_ms: int = 0
    max_compaction_lag_ms: int = 2**63 - 1
    min_cleanable_dirty_ratio: float = 0.5
    # Kafka's default max.message.bytes (1 MiB plus batch overhead), the largest batch accepted.
    max_message_bytes: int = 1024 * 1024 + 12
    # Raftka's default: fsync once a second (see docs/storage.md for why not per batch).
    flush_policy: FlushPolicy = FlushPolicy.INTERVAL
    flush_interval_ms: int = 1000

    def __post_init__(self) -> None:
        problems = []
        if self.segment_bytes < 1024:
            problems.append(f"segment.bytes must be at least 1024, got {self.segment_bytes}")
        if self.segment_ms < 1:
            problems.append(f"segment.ms must be positive, got {self.segment_ms}")
        if self.index_interval_bytes < 0:
            problems.append(f"index.interval.bytes must be >= 0, got {self.index_interval_bytes}")
        if self.segment_index_bytes < 8 * 4:
            problems.append(f"segment.index.bytes must be at least 32, got {self.segment_index_bytes}")
        if self.retention_ms < -1:
            problems.append(f"retention.ms must be -1 (forever) or >= 0, got {self.retention_ms}")
        if self.retention_bytes < -1:
            problems.append(f"retention.bytes must be -1 (no limit) or >= 0, got {self.retention_bytes}")
        if self.delete_retention_ms < 0:
            problems.append(f"delete.retention.ms must be >= 0, got {self.delete_retention_ms}")
        if self.min_compaction_lag_ms < 0:
            problems.append(f"min.compaction.lag.ms must be >= 0, got {self.min_compaction_lag_ms}")
        if not 0.0 <= self.min_cleanable_dirty_ratio <= 1.0:
            problems.append(
                f"min.cleanable.dirty.ratio must be in [0, 1], got {self.min_cleanable_dirty_ratio}"
            )
        if self.max_message_bytes < 128:
            problems.append(f"max.message.bytes must be at least 128, got {self.max_message_bytes}")
        if self.flush_interval_ms < 0:
            problems.append(f"flush.interval.ms must be >= 0, got {self.flush_interval_ms}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def compact(self) -> bool:
        return self.cleanup_policy in (CleanupPolicy.COMPACT, CleanupPolicy.COMPACT_DELETE)

    @property
    def delete(self) -> bool:
        return self.cleanup_policy in (CleanupPolicy.DELETE, CleanupPolicy.COMPACT_DELETE)

    @property
    def index_entries_max(self) -> int:
        return self.segment_index_bytes // 8

    def replace(self, **changes) -> LogConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_topic_configs(cls, configs: dict[str, object]) -> LogConfig:
        """Build from Kafka-style dotted names (`retention.ms`); unknown names raise ValueError."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, object] = {}
        for dotted, raw in configs.items():
            name = dotted.replace(".", "_")
            if name not in fields:
                raise ValueError(f"unknown topic config {dotted!r}")
            values[name] = _coerce(dotted, name, raw)
        return cls(**values)

    def to_topic_configs(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name.replace("_", ".")] = value.value if isinstance(value, Enum) else value
        return out


def _coerce(dotted: str, name: str, raw: object) -> object:
    try:
        if name == "cleanup_policy":
            return CleanupPolicy(str(raw).replace(" ", ""))
        if name == "flush_policy":
            return FlushPolicy(str(raw))
        if name == "min_cleanable_dirty_ratio":
            return float(raw)  # type: ignore[arg-type]
        if isinstance(raw, bool):
            raise TypeError
        return int(raw)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueError(f"topic config {dotted!r} has an invalid value {raw!r}") from None
