"""`LogManager`: every partition log under one data directory, and the checkpoints that make restarts
cheap.

Theory of operation
-------------------
The data directory holds one folder per partition replica (`<topic>-<partition>`), two checkpoint files
and, after a clean shutdown, a marker. On start the manager takes an exclusive lock on the directory,
reads the checkpoints and loads every log: after a clean shutdown (marker present) logs trust their
files; otherwise each log re-scans from its recovery point (see PartitionLog). The marker is removed once
loading is done, so a crash from then on is an unclean shutdown.

On disk, in the data directory:
- `.lock`: held with flock while a process uses the directory (a second process is refused).
- `.clean_shutdown`: written last by `shutdown` after every log was flushed and closed.
- `recovery-point-offset-checkpoint` and `log-start-offset-checkpoint`: text, replaced atomically::

      0                  <- format version
      2                  <- number of entries
      orders 0 1200      <- topic partition offset
      orders 1 980

- `<topic>-<partition>.delete/`: a log being deleted; removed on the next start if a crash interrupted it.

Crash: checkpoints lag behind the logs (they are written by `checkpoint`), which is safe: a recovery
point that is too low only means more re-scanning; a log start offset that is too low is raised to the
first segment on load.

Thread-safety: `get_log`, `create_log` and `delete_log` take the manager's lock; each log is thread-safe.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable

from storage.clock import SYSTEM_CLOCK, Clock
from storage.config import LogConfig
from storage.fileio import remove_if_exists, write_atomic
from storage.log import PartitionLog, log_dir_name, parse_log_dir_name
from storage.producer_state import PRODUCER_ID_EXPIRATION_MS

log = logging.getLogger(__name__)

CLEAN_SHUTDOWN_FILE = ".clean_shutdown"
LOCK_FILE = ".lock"
RECOVERY_POINT_CHECKPOINT = "recovery-point-offset-checkpoint"
LOG_START_CHECKPOINT = "log-start-offset-checkpoint"
DELETE_DIR_SUFFIX = ".delete"
CHECKPOINT_VERSION = 0
TOPIC_NAME_MAX = 249  # Kafka's limit, so that "<topic>-<partition>" fits a 255-byte file name
_TOPIC_NAME = re.compile(r"^[a-zA-Z0-9._-]+$")

TopicPartition = tuple[str, int]


class DataDirLockedError(RuntimeError):
    """Another process holds the data directory."""


def validate_topic_name(name: str) -> None:
    """Raise ValueError naming the problem unless `name` is a legal topic name (Kafka's rules)."""
    if not name:
        raise ValueError("topic name is empty")
    if name in (".", ".."):
        raise ValueError(f"topic name {name!r} is not allowed")
    if len(name) > TOPIC_NAME_MAX:
        raise ValueError(f"topic name is {len(name)} characters long, the limit is {TOPIC_NAME_MAX}")
    if not _TOPIC_NAME.match(name):
        raise ValueError(f"topic name {name!r} may only hold ASCII letters, digits, '.', '_' and '-'")


class LogManager:
    def __init__(
        self,
        data_dir: str,
        *,
        default_config: LogConfig | None = None,
        config_for: Callable[[str], LogConfig] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        producer_id_expiration_ms: int = PRODUCER_ID_EXPIRATION_MS,
        background_flush: bool = False,
    ):
        """`background_flush`: the owner calls `flush_dirty` periodically from a worker thread (the
        node does), so appends leave flush.policy=interval fsyncs to it (see PartitionLog)."""
        self.data_dir = os.path.abspath(data_dir)
        self.default_config = default_config or LogConfig()
        self._config_for = config_for
        self.clock = clock
        self.producer_id_expiration_ms = producer_id_expiration_ms
        self.background_flush = background_flush
        self._lock = threading.RLock()
        self._logs: dict[TopicPartition, PartitionLog] = {}
        os.makedirs(self.data_dir, exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.data_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise DataDirLockedError(f"data directory {self.data_dir} is in use by another process") from None
        self.clean_shutdown = os.path.exists(os.path.join(self.data_dir, CLEAN_SHUTDOWN_FILE))
        self._load_logs()
        remove_if_exists(os.path.join(self.data_dir, CLEAN_SHUTDOWN_FILE))
        self.checkpoint()
        self.closed = False

    def _config(self, topic: str) -> LogConfig:
        return self._config_for(topic) if self._config_for else self.default_config

    def _load_logs(self) -> None:
        recovery_points = read_checkpoint(os.path.join(self.data_dir, RECOVERY_POINT_CHECKPOINT))
        log_starts = read_checkpoint(os.path.join(self.data_dir, LOG_START_CHECKPOINT))
        for name in sorted(os.listdir(self.data_dir)):
            path = os.path.join(self.data_dir, name)
            if not os.path.isdir(path):
                continue
            if name.endswith(DELETE_DIR_SUFFIX):
                shutil.rmtree(path, ignore_errors=True)
                continue
            parsed = parse_log_dir_name(name)
            if parsed is None:
                log.warning("ignoring %s: not a <topic>-<partition> directory", path)
                continue
            partition_log = PartitionLog(
                path,
                self._config(parsed[0]),
                clock=self.clock,
                recovery_point=recovery_points.get(parsed, 0),
                log_start_offset=log_starts.get(parsed, 0),
                clean_shutdown=self.clean_shutdown,
                producer_id_expiration_ms=self.producer_id_expiration_ms,
                background_flush=self.background_flush,
            )
            report = partition_log.load_report
            if report.error:
                log.warning("log %s recovered with a cut: %s", name, report.error)
            self._logs[parsed] = partition_log

    # -- logs ------------------------------------------------------------------------------------

    def get_log(self, topic: str, partition: int) -> PartitionLog | None:
        with self._lock:
            return self._logs.get((topic, partition))

    def logs(self) -> dict[TopicPartition, PartitionLog]:
        with self._lock:
            return dict(self._logs)

    def get_or_create_log(
        self, topic: str, partition: int, config: LogConfig | None = None, topic_id: str | None = None
    ) -> PartitionLog:
        """The log of (topic, partition), created if needed. With `topic_id`, a log that belongs to
        another topic of the same name (deleted and created again while this node was away) is
        deleted first: its records are not the new topic's. The id lives in `partition.metadata`."""
        validate_topic_name(topic)
        if partition < 0:
            raise ValueError(f"partition {partition} is negative")
        with self._lock:
            existing = self._logs.get((topic, partition))
            if existing is not None and topic_id is not None:
                stored = read_topic_id(existing.directory)
                if stored is None:
                    write_topic_id(existing.directory, topic_id)
                elif stored != topic_id:
                    log.warning(
                        "deleting %s-%d: it belongs to topic id %s, the cluster's topic is %s",
                        topic,
                        partition,
                        stored,
                        topic_id,
                    )
                    self.delete_log(topic, partition)
                    existing = None
            if existing is not None:
                return existing
            partition_log = PartitionLog(
                os.path.join(self.data_dir, log_dir_name(topic, partition)),
                config or self._config(topic),
                clock=self.clock,
                clean_shutdown=True,
                producer_id_expiration_ms=self.producer_id_expiration_ms,
                background_flush=self.background_flush,
            )
            self._logs[(topic, partition)] = partition_log
            if topic_id is not None:
                write_topic_id(partition_log.directory, topic_id)
            return partition_log

    def update_config(self, topic: str, config: LogConfig) -> None:
        with self._lock:
            for (name, _), partition_log in self._logs.items():
                if name == topic:
                    with partition_log.lock:
                        partition_log.config = config

    def delete_log(self, topic: str, partition: int) -> bool:
        """Remove a log and its files: renamed to `.delete` first, so a crash cannot resurrect it."""
        with self._lock:
            partition_log = self._logs.pop((topic, partition), None)
            if partition_log is None:
                return False
            partition_log.close_unflushed()
            doomed = partition_log.directory + DELETE_DIR_SUFFIX
            os.replace(partition_log.directory, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            return True

    # -- periodic work -----------------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Persist every log's recovery point and log start offset."""
        with self._lock:
            logs = dict(self._logs)
        write_checkpoint(
            os.path.join(self.data_dir, RECOVERY_POINT_CHECKPOINT),
            {tp: partition_log.recovery_point for tp, partition_log in logs.items()},
        )
        write_checkpoint(
            os.path.join(self.data_dir, LOG_START_CHECKPOINT),
            {tp: partition_log.log_start_offset for tp, partition_log in logs.items()},
        )

    def flush_dirty(self) -> int:
        """Flush the logs whose flush interval passed, then checkpoint; returns the logs flushed."""
        flushed = sum(1 for partition_log in self.logs().values() if partition_log.maybe_flush())
        if flushed:
            self.checkpoint()
        return flushed

    def run_retention(self, upper_bound: Callable[[str, int], int]) -> int:
        """Apply retention to every log; `upper_bound(topic, partition)` is its high watermark."""
        deleted = 0
        for (topic, partition), partition_log in self.logs().items():
            deleted += partition_log.delete_old_segments(upper_bound(topic, partition))
            partition_log.remove_expired_producers(self.clock.now_ms())
        if deleted:
            self.checkpoint()
        return deleted

    def shutdown(self) -> None:
        """Clean shutdown: flush and close every log, checkpoint, write the marker, release the lock."""
        with self._lock:
            if self.closed:
                return
            for partition_log in self._logs.values():
                partition_log.close()
            self.checkpoint()
            write_atomic(os.path.join(self.data_dir, CLEAN_SHUTDOWN_FILE), b"")
            os.close(self._lock_fd)
            self.closed = True

    def close_unclean(self) -> None:
        """Release files without the clean-shutdown marker (tests that simulate a crash)."""
        with self._lock:
            for partition_log in self._logs.values():
                partition_log.close_unflushed()
            os.close(self._lock_fd)
            self.closed = True


PARTITION_METADATA = "partition.metadata"


def read_topic_id(directory: str) -> str | None:
    try:
        with open(os.path.join(directory, PARTITION_METADATA), encoding="utf-8") as handle:
            for line in handle:
                name, sep, value = line.strip().partition("=")
                if sep and name == "topic_id":
                    return value
    except FileNotFoundError:
        return None
    return None


def write_topic_id(directory: str, topic_id: str) -> None:
    write_atomic(os.path.join(directory, PARTITION_METADATA), f"version=1\ntopic_id={topic_id}\n".encode())


def read_checkpoint(path: str) -> dict[TopicPartition, int]:
    """Read a `topic partition offset` checkpoint file; a missing or malformed file reads as empty
    (every log then recovers from offset 0, which is slow but safe)."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().split("\n")
        if int(lines[0]) != CHECKPOINT_VERSION:
            raise ValueError(f"unknown checkpoint version {lines[0]}")
        count = int(lines[1])
        out: dict[TopicPartition, int] = {}
        for line in lines[2 : 2 + count]:
            topic, partition, offset = line.split(" ")
            out[(topic, int(partition))] = int(offset)
        if len(out) != count:
            raise ValueError(f"expected {count} entries, found {len(out)}")
        return out
    except FileNotFoundError:
        return {}
    except (ValueError, IndexError) as exc:
        log.warning("ignoring malformed checkpoint %s: %s", path, exc)
        return {}


def write_checkpoint(path: str, entries: dict[TopicPartition, int]) -> None:
    lines = [str(CHECKPOINT_VERSION), str(len(entries))]
    lines += [f"{topic} {partition} {offset}" for (topic, partition), offset in sorted(entries.items())]
    write_atomic(path, ("\n".join(lines) + "\n").encode())
