"""Partition replicas on this node: their logs, high watermarks and the fetch long-poll.

Theory of operation
-------------------
`ReplicaManager` follows the metadata image: for every partition whose replica set holds this node it
keeps a `Partition` with an open log, and it deletes the logs of deleted topics. A `Partition` is the
leader-side state of one replica: it appends producer batches, advances the high watermark (HW) and
wakes the fetches waiting for new data.

This node leads every partition whose replica set is only itself, so the in-sync replica set is
{this node} and the HW is the log end offset right after each append. Partitions with followers need
replication (a later part) and answer 40403 until it exists.

Thread-safety: used from the event loop; the logs underneath are thread-safe, and the periodic
retention, flush and cleaning work runs in threads.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from metadata.image import MetadataImage, PartitionInfo, TopicInfo
from metadata.topic_config import log_config, min_insync_replicas
from node.errors import ApiError
from storage.cleaner import LogCleaner
from storage.errors import (
    BatchTooLargeError,
    CorruptLogError,
    InvalidBatchError,
    OffsetOutOfRangeError,
    ProducerSequenceError,
    StaleLeaderEpochError,
)
from storage.log import AppendInfo, PartitionLog
from storage.manager import LogManager
from storage.producer_state import Verdict
from storage.record_batch import BatchHeader, CorruptBatchError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FetchResult:
    data: bytes
    high_watermark: int
    log_start_offset: int
    log_end_offset: int


class Partition:
    def __init__(
        self, topic: str, index: int, partition_log: PartitionLog, info: PartitionInfo, node_id: int
    ):
        self.topic = topic
        self.index = index
        self.log = partition_log
        self.node_id = node_id
        self.info = info
        self.topic_id: str | None = None
        self.min_insync_replicas = 1
        self.high_watermark = partition_log.log_end_offset  # everything on the only replica is committed
        self._data_arrived = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self.info.leader == self.node_id and self.info.replicas == (self.node_id,)

    def check_leader(self) -> None:
        if self.info.leader != self.node_id:
            raise ApiError(
                40403,
                f"node {self.node_id} is not the leader of {self.topic}-{self.index} (leader: {self.info.leader})",
            )
        if not self.is_leader:
            raise ApiError(
                40403, f"{self.topic}-{self.index} has followers; replication is not available yet"
            )

    def validate_acks(self, acks: str) -> None:
        """acks=all needs the in-sync replicas to reach min.insync.replicas (only this node here)."""
        isr = len(self.info.isr)
        if acks == "all" and isr < self.min_insync_replicas:
            raise ApiError(
                50301,
                f"{self.topic}-{self.index} has {isr} in-sync replica(s), "
                f"min.insync.replicas is {self.min_insync_replicas}",
            )

    def append(self, batch: bytes | memoryview, checked_header: BatchHeader | None = None) -> AppendInfo:
        """Append one producer batch as leader; ApiError for anything refused (nothing written).
        `checked_header`: what check_producer_batch returned for these bytes (see append_as_leader)."""
        self.check_leader()
        try:
            info = self.log.append_as_leader(batch, self.info.leader_epoch, checked_header)
        except CorruptBatchError as exc:
            raise ApiError(42202, f"corrupt record batch: {exc}") from None
        except InvalidBatchError as exc:
            raise ApiError(42201, f"invalid record batch: {exc}") from None
        except BatchTooLargeError as exc:
            raise ApiError(41301, str(exc)) from None
        except ProducerSequenceError as exc:
            code = 40902 if exc.verdict is Verdict.FENCED else 42203
            raise ApiError(code, str(exc)) from None
        except StaleLeaderEpochError as exc:
            raise ApiError(40403, str(exc)) from None
        except OSError as exc:
            log.error("append to %s-%d failed: %s", self.topic, self.index, exc)
            raise ApiError(50002, f"storage error appending to {self.topic}-{self.index}: {exc}") from None
        self.maybe_advance_high_watermark()
        return info

    def maybe_advance_high_watermark(self) -> None:
        """HW = the smallest log end offset in the ISR; with only this node, its own. Never moves back."""
        new = self.log.log_end_offset
        if new > self.high_watermark:
            self.high_watermark = new
            self._data_arrived.set()
            self._data_arrived = asyncio.Event()

    def read(self, offset: int, max_bytes: int) -> FetchResult:
        try:
            data = self.log.read(offset, max_bytes, max_offset=self.high_watermark)
        except OffsetOutOfRangeError:
            raise self.out_of_range(offset) from None
        except CorruptLogError as exc:
            log.error("corrupt data served from %s-%d: %s", self.topic, self.index, exc)
            raise ApiError(
                50002, f"storage error reading {self.topic}-{self.index} at {offset}: {exc}"
            ) from None
        if offset > self.high_watermark:
            raise self.out_of_range(offset)
        return FetchResult(data, self.high_watermark, self.log.log_start_offset, self.log.log_end_offset)

    def out_of_range(self, offset: int) -> ApiError:
        return ApiError(
            41601,
            f"offset {offset} is out of range for {self.topic}-{self.index}: "
            f"valid offsets are {self.log.log_start_offset} to {self.high_watermark}",
            log_start_offset=self.log.log_start_offset,
            high_watermark=self.high_watermark,
            log_end_offset=self.log.log_end_offset,
        )

    async def fetch(self, offset: int, max_bytes: int, min_bytes: int, max_wait_ms: int) -> FetchResult:
        """Read from `offset`; wait up to `max_wait_ms` until at least `min_bytes` are committed."""
        self.check_leader()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait_ms / 1000
        result = self.read(offset, max_bytes)
        while len(result.data) < min_bytes:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._data_arrived.wait(), remaining)
            except TimeoutError:
                break
            result = self.read(offset, max_bytes)
        return result


class ReplicaManager:
    """The partitions this node holds, kept in step with the metadata image."""

    def __init__(self, node_id: int, log_manager: LogManager, cleaner: LogCleaner):
        self.node_id = node_id
        self.log_manager = log_manager
        self.cleaner = cleaner
        self.partitions: dict[tuple[str, int], Partition] = {}
        self.image = MetadataImage()

    def apply_image(self, image: MetadataImage) -> None:
        """Open logs for new local replicas, update changed ones, delete logs of removed topics."""
        self.image = image
        wanted: set[tuple[str, int]] = set()
        for topic in image.topics.values():
            config = log_config(dict(topic.configs))
            for index, info in enumerate(topic.partitions):
                if self.node_id not in info.replicas:
                    continue
                key = (topic.name, index)
                wanted.add(key)
                partition = self.partitions.get(key)
                if partition is not None and partition.topic_id != topic.topic_id:
                    # Deleted and created again between two images this node saw: a new log.
                    self.partitions.pop(key)
                    self.cleaner.unregister(f"{topic.name}-{index}")
                    self.log_manager.delete_log(topic.name, index)
                    partition = None
                if partition is None:
                    partition_log = self.log_manager.get_or_create_log(
                        topic.name, index, config, topic.topic_id
                    )
                    partition = Partition(topic.name, index, partition_log, info, self.node_id)
                    partition.topic_id = topic.topic_id
                    self.partitions[key] = partition
                    self.cleaner.register(
                        f"{topic.name}-{index}", partition_log, self._upper_bound(partition)
                    )
                elif partition.log.config != config:
                    self.log_manager.update_config(topic.name, config)
                partition.info = info
                partition.min_insync_replicas = min_insync_replicas(dict(topic.configs))
        for key in [k for k in self.partitions if k not in wanted]:
            self.partitions.pop(key)
            self.cleaner.unregister(f"{key[0]}-{key[1]}")
        for key in self.log_manager.logs():
            if key not in wanted:  # the topic was deleted (perhaps while this node was down)
                self.log_manager.delete_log(*key)

    @staticmethod
    def _upper_bound(partition: Partition):
        return lambda: partition.high_watermark

    def topic(self, name: str) -> TopicInfo:
        topic = self.image.topics.get(name)
        if topic is None:
            raise ApiError(40401, f"topic {name!r} does not exist")
        return topic

    def partition(self, topic_name: str, index: int) -> Partition:
        topic = self.topic(topic_name)
        if not 0 <= index < len(topic.partitions):
            raise ApiError(
                40402, f"topic {topic_name!r} has no partition {index} (it has {len(topic.partitions)})"
            )
        partition = self.partitions.get((topic_name, index))
        if partition is None:
            leader = topic.partitions[index].leader
            raise ApiError(
                40403, f"partition {topic_name}-{index} is not on node {self.node_id} (leader: {leader})"
            )
        return partition

    def max_message_bytes(self, topic_name: str) -> int:
        return log_config(dict(self.topic(topic_name).configs)).max_message_bytes

    def high_watermark(self, topic: str, index: int) -> int:
        partition = self.partitions.get((topic, index))
        return partition.high_watermark if partition else 0

    def run_retention(self) -> int:
        """Retention below each partition's high watermark (runs in a worker thread)."""
        return self.log_manager.run_retention(self.high_watermark)
