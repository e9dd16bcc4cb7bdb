"""Exceptions raised by the storage engine; the node maps each to an HTTP error code."""

from storage.record_batch import CorruptBatchError, InvalidBatchError


class StorageError(Exception):
    """Base class for operating errors of the storage engine."""


class OffsetOutOfRangeError(StorageError):
    """A read below the log start offset or above the log end offset."""

    def __init__(self, offset: int, log_start_offset: int, log_end_offset: int):
        super().__init__(
            f"offset {offset} is out of range: the log holds [{log_start_offset}, {log_end_offset})"
        )
        self.offset = offset
        self.log_start_offset = log_start_offset
        self.log_end_offset = log_end_offset


class CorruptLogError(StorageError):
    """Bytes on disk that fail their checksum or framing outside the recoverable tail: never served."""


class BatchTooLargeError(StorageError):
    """A batch larger than the topic's max.message.bytes or than a whole segment."""


class LogClosedError(StorageError):
    """An operation on a log that was closed or deleted."""


class StaleLeaderEpochError(StorageError):
    """A leader append with an epoch older than the newest epoch this log has seen."""


class ProducerSequenceError(StorageError):
    """An idempotent batch refused by the producer state: out of order, fenced or unknown producer."""

    def __init__(self, verdict, message: str):
        super().__init__(message)
        self.verdict = verdict


__all__ = [
    "BatchTooLargeError",
    "CorruptBatchError",
    "CorruptLogError",
    "InvalidBatchError",
    "LogClosedError",
    "OffsetOutOfRangeError",
    "ProducerSequenceError",
    "StaleLeaderEpochError",
    "StorageError",
]
