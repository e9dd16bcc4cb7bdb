"""Raftka's storage engine: record batches, segments, partition logs, compaction and recovery.

See docs/storage.md for the design and docs/format.md for the byte layouts.
"""

from storage.cleaner import CleanResult, LogCleaner
from storage.clock import SYSTEM_CLOCK, Clock, ManualClock, SystemClock
from storage.config import CleanupPolicy, FlushPolicy, LogConfig
from storage.epoch_cache import LeaderEpochCache
from storage.errors import (
    BatchTooLargeError,
    CorruptBatchError,
    CorruptLogError,
    InvalidBatchError,
    LogClosedError,
    OffsetOutOfRangeError,
    ProducerSequenceError,
    StaleLeaderEpochError,
    StorageError,
)
from storage.log import AppendInfo, PartitionLog
from storage.manager import LogManager, validate_topic_name
from storage.producer_state import ProducerStateManager, Verdict
from storage.record_batch import NewRecord, Record, decode_batches, decode_records, encode_batch

__all__ = [
    "SYSTEM_CLOCK",
    "AppendInfo",
    "BatchTooLargeError",
    "CleanResult",
    "CleanupPolicy",
    "Clock",
    "CorruptBatchError",
    "CorruptLogError",
    "FlushPolicy",
    "InvalidBatchError",
    "LeaderEpochCache",
    "LogCleaner",
    "LogClosedError",
    "LogConfig",
    "LogManager",
    "ManualClock",
    "NewRecord",
    "OffsetOutOfRangeError",
    "PartitionLog",
    "ProducerSequenceError",
    "ProducerStateManager",
    "Record",
    "StaleLeaderEpochError",
    "StorageError",
    "SystemClock",
    "Verdict",
    "decode_batches",
    "decode_records",
    "encode_batch",
    "validate_topic_name",
]
