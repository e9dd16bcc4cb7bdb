"""`GroupCoordinator`: this node's share of the consumer groups, and their committed offsets.

Theory of operation
-------------------
Committed offsets live in the internal compacted topic `__consumer_offsets`. The coordinator of a
group is the leader of partition `xxh3_64(group) % N` of that topic, so coordination moves with
partition leadership and needs no other election; any node forwards a group request there (the
API's `leader_or_forward`). The topic is created by the first group request, through the controller:
`offsets_topic_partitions` partitions, replication factor `offsets_topic_replication_factor` (at most
the number of active brokers at that moment), `min.insync.replicas` `offsets_topic_min_insync_replicas`
(at most the replication factor), `cleanup.policy=compact`.

A commit is one batch appended to the group's partition with acks=all: the answer waits until the
high watermark passed it, so an acknowledged commit survives a leader failover (DESIGN invariant
2). Each record's key is `{"group", "topic", "partition"}` (JSON) and its value
`{"offset", "metadata", "commit_timestamp_ms"}`; a deleted group's offsets get tombstones.

Membership (node/groups.py) is kept in memory only. When this node becomes the leader of an offsets
partition (a new leader epoch), it reads the partition up to its high watermark and rebuilds the
offsets of the groups there, and forgets their members: members get 40405 on their next heartbeat and
join again. A background task loads newly led partitions and expires sessions every
`EXPIRE_INTERVAL_S`.

Thread-safety: event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import orjson
import xxhash

from node.errors import ApiError
from node.groups import Group, GroupError, TopicPartition
from storage.record_batch import NewRecord, decode_records, encode_batch, iter_batches

log = logging.getLogger(__name__)

OFFSETS_TOPIC = "__consumer_offsets"
EXPIRE_INTERVAL_S = 0.2
READ_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CommittedOffset:
    offset: int
    metadata: str
    commit_timestamp_ms: int


def offsets_partition(group: str, partitions: int) -> int:
    return xxhash.xxh3_64_intdigest(group.encode()) % partitions


def offset_key(group: str, tp: TopicPartition) -> bytes:
    return orjson.dumps({"group": group, "topic": tp.topic, "partition": tp.partition})


def offset_value(committed: CommittedOffset) -> bytes:
    return orjson.dumps(
        {
            "offset": committed.offset,
            "metadata": committed.metadata,
            "commit_timestamp_ms": committed.commit_timestamp_ms,
        }
    )


def apply_offset_record(
    offsets: dict[str, dict[TopicPartition, CommittedOffset]], key: bytes | None, value: bytes | None
) -> None:
    """Replay one record of the offsets topic (a tombstone removes the entry)."""
    if key is None:
        return
    try:
        k = orjson.loads(key)
        group, tp = k["group"], TopicPartition(k["topic"], int(k["partition"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        log.warning("skipping a record of %s with an unreadable key %r", OFFSETS_TOPIC, key[:100])
        return
    if value is None:
        group_offsets = offsets.get(group)
        if group_offsets is not None:
            group_offsets.pop(tp, None)
            if not group_offsets:
                del offsets[group]
        return
    v = orjson.loads(value)
    offsets.setdefault(group, {})[tp] = CommittedOffset(
        int(v["offset"]), str(v.get("metadata", "")), int(v.get("commit_timestamp_ms", 0))
    )


class GroupCoordinator:
    def __init__(self, node):
        self.node = node
        self.groups: dict[str, Group] = {}
        self.offsets: dict[str, dict[TopicPartition, CommittedOffset]] = {}
        self._loaded: dict[int, int] = {}  # offsets partition -> the leader epoch it was loaded in
        self._task: asyncio.Task | None = None
        self._create_lock = asyncio.Lock()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- where a group lives ----------------------------------------------------------------------

    async def partition_of(self, group: str) -> int:
        """The offsets partition of the group, creating the offsets topic the first time."""
        topic = self.node.store.image.topics.get(OFFSETS_TOPIC)
        if topic is None:
            await self._create_offsets_topic()
            topic = self.node.store.image.topics.get(OFFSETS_TOPIC)
            if topic is None:
                raise ApiError(50303, f"{OFFSETS_TOPIC} is being created; retry")
        return offsets_partition(group, len(topic.partitions))

    async def _create_offsets_topic(self) -> None:
        async with self._create_lock:
            image = self.node.store.image
            if OFFSETS_TOPIC in image.topics:
                return
            config = self.node.config
            active = sum(1 for b in image.brokers.values() if b.active)
            replication = max(1, min(config.offsets_topic_replication_factor, active))
            min_isr = max(1, min(config.offsets_topic_min_insync_replicas, replication))
            configs = {"cleanup.policy": "compact", "min.insync.replicas": str(min_isr)}
            try:
                await self.node.create_topic(
                    OFFSETS_TOPIC, config.offsets_topic_partitions, replication, configs
                )
                log.info(
                    "created %s: %d partitions, replication factor %d, min.insync.replicas %d",
                    OFFSETS_TOPIC,
                    config.offsets_topic_partitions,
                    replication,
                    min_isr,
                )
            except ApiError as error:
                if error.error_code != 40901:  # another node created it meanwhile: fine
                    raise

    def ensure_loaded(self, partition) -> None:
        """Rebuild the offsets of the partition's groups when this node became its leader since."""
        epoch = partition.info.leader_epoch
        if self._loaded.get(partition.index) == epoch:
            return
        count = len(self.node.store.image.topics[OFFSETS_TOPIC].partitions)
        mine = {
            g for g in set(self.groups) | set(self.offsets) if offsets_partition(g, count) == partition.index
        }
        for group in mine:
            self.groups.pop(group, None)
            self.offsets.pop(group, None)
        loaded: dict[str, dict[TopicPartition, CommittedOffset]] = {}
        offset = partition.log.log_start_offset
        records = 0
        while True:
            result = partition.read(offset, READ_BYTES)  # raises 40403 while the HW is unknown
            if not result.data:
                break
            for header, view in iter_batches(result.data, verify=False):
                for record in decode_records(view, header):
                    if record.offset >= offset:
                        apply_offset_record(loaded, record.key, record.value)
                        records += 1
                offset = header.next_offset
            if offset >= result.high_watermark:
                break
        self.offsets.update(loaded)
        self._loaded[partition.index] = epoch
        log.info(
            "%s-%d: loaded the offsets of %d groups from %d records (leader epoch %d)",
            OFFSETS_TOPIC,
            partition.index,
            len(loaded),
            records,
            epoch,
        )

    def group(self, group_id: str, create: bool) -> Group | None:
        group = self.groups.get(group_id)
        if group is None and create:
            config = self.node.config
            group = self.groups[group_id] = Group(
                group_id,
                session_timeout_ms=config.group_session_timeout_ms,
                heartbeat_interval_ms=config.group_heartbeat_interval_ms,
                rebalance_timeout_ms=config.group_rebalance_timeout_ms,
            )
        return group

    def forget_if_empty(self, group_id: str) -> None:
        group = self.groups.get(group_id)
        if group is not None and group.is_empty and group_id not in self.offsets:
            del self.groups[group_id]

    def partitions_of(self, topic: str) -> int:
        info = self.node.store.image.topics.get(topic)
        return 0 if info is None else len(info.partitions)

    # -- commits ------------------------------------------------------------------------------------

    async def commit(
        self, partition, group: str, entries: list[tuple[TopicPartition, int, str]], timeout_s: float
    ) -> None:
        """Append the offsets as one batch with acks=all; remember them once committed."""
        now_ms = int(time.time() * 1000)
        committed = [(tp, CommittedOffset(offset, metadata, now_ms)) for tp, offset, metadata in entries]
        await self._append(
            partition, [(offset_key(group, tp), offset_value(c)) for tp, c in committed], timeout_s
        )
        group_offsets = self.offsets.setdefault(group, {})
        for tp, value in committed:
            group_offsets[tp] = value

    async def delete_offsets(self, partition, group: str, timeout_s: float) -> None:
        """Tombstones for every committed offset of the group."""
        tps = sorted(self.offsets.get(group, {}))
        if tps:
            await self._append(partition, [(offset_key(group, tp), None) for tp in tps], timeout_s)
        self.offsets.pop(group, None)
        self.groups.pop(group, None)

    async def _append(self, partition, records: list[tuple[bytes, bytes | None]], timeout_s: float) -> None:
        partition.validate_acks("all")
        now_ms = int(time.time() * 1000)
        batch = encode_batch([NewRecord(key, value, now_ms, ()) for key, value in records], now_ms=now_ms)
        info = partition.append(batch)
        await partition.wait_committed(info.last_offset, timeout_s)

    # -- background -----------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_INTERVAL_S)
            try:
                self._tick()
            except Exception:
                log.exception("group coordinator tick failed")

    def _tick(self) -> None:
        topic = self.node.store.image.topics.get(OFFSETS_TOPIC)
        if topic is None or self.node.replicas is None:
            return
        led = set()
        for index in range(len(topic.partitions)):
            partition = self.node.replicas.partitions.get((OFFSETS_TOPIC, index))
            if partition is None or partition.leader is None:
                self._loaded.pop(index, None)
                continue
            led.add(index)
            if partition.leader.high_watermark_known:
                with contextlib.suppress(ApiError):  # not readable yet: the next tick tries again
                    self.ensure_loaded(partition)
        now_ms = int(time.monotonic() * 1000)
        count = len(topic.partitions)
        for group_id, group in list(self.groups.items()):
            if offsets_partition(group_id, count) not in led:
                del self.groups[group_id]  # no longer coordinated here
                continue
            gone = group.expire(now_ms)
            if gone:
                log.info("group %s: removed %s (session or rebalance timeout)", group_id, ", ".join(gone))
            self.forget_if_empty(group_id)


def group_error(error: GroupError) -> ApiError:
    return ApiError(error.error_code, error.message)
