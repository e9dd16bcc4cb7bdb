"""Partition replicas on this node: their logs, high watermarks and the fetch long-poll.

Theory of operation
-------------------
`ReplicaManager` follows the metadata image: for every partition whose replica set holds this node it
keeps a `Partition` with an open log, and it deletes the logs of deleted topics. A `Partition` is
the leader or a follower, as the metadata says (`update`). As leader it appends producer batches,
answers its followers' fetches, keeps the high watermark (HW) through a `LeaderCore`
(node/replication.py), wakes consumer fetches when the HW moves and follower fetches when the log
grows, and resolves acks=all waiters once the HW passes their records. As follower it applies the
leader's answers (append, truncate on divergence, HW, log start offset); node/fetcher.py moves the
bytes. docs/replication.md tells the whole story.

Thread-safety: used from the event loop; the logs underneath are thread-safe, and the periodic
retention, flush and cleaning work runs in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from metadata.image import NO_LEADER, MetadataImage, PartitionInfo, TopicInfo
from metadata.topic_config import log_config, min_insync_replicas
from node.errors import ApiError
from node.replication import (
    Diverging,
    IsrProposal,
    LeaderCore,
    follower_high_watermark,
    follower_truncation_offset,
    leader_check_fetch,
)
from node.tail_cache import TailCache, TailCacheBudget
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
from storage.record_batch import BatchHeader, CorruptBatchError, stamped_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FetchResult:
    data: bytes
    high_watermark: int
    log_start_offset: int
    log_end_offset: int


@dataclass(frozen=True, slots=True)
class ReplicaFetchResult:
    """The leader's answer to one partition of a follower's fetch."""

    data: bytes | memoryview  # a memoryview into the answer, on the follower
    high_watermark: int
    log_start_offset: int
    log_end_offset: int
    diverging: Diverging | None = None
    error_code: int = 0  # 0, 41601 (fetch offset below the log start), 40403/40905 (not leader / epoch)


NO_INFO = PartitionInfo((), NO_LEADER, -1, (), -1)  # before the first metadata: no role
# Passes of the event loop between an append and the wake of the follower fetches parked on it (see
# Partition._wake_after_append): 3 gave about as many batches per fetch under load as the chain of
# wake-ups that plain futures replaced (docs/performance.md, "Replication: where the CPU goes").
WAKE_DEFER_PASSES = 3


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class Partition:
    """One replica of a partition on this node: the leader (appends, HW, acks=all waiters, answers to
    followers' fetches) or a follower (applies what the leader sends), as the metadata says."""

    def __init__(
        self,
        topic: str,
        index: int,
        partition_log: PartitionLog,
        info: PartitionInfo,
        node_id: int,
        tail_budget: TailCacheBudget | None = None,
    ):
        self.topic = topic
        self.index = index
        self.log = partition_log
        self.node_id = node_id
        self.info = info
        self.topic_id: str | None = None
        self.min_insync_replicas = 1
        self.leader: LeaderCore | None = None
        # What the leader last told this replica, capped by its LEO (a lower bound after a restart).
        self.follower_high_watermark = partition_log.log_start_offset
        self._data_arrived = asyncio.Event()  # the HW moved: wakes consumer fetches
        # Follower fetches parked until the LEO moves. Plain futures, not tasks: a parked fetch is
        # woken in one step (see wait_for_append).
        self._parked: list[asyncio.Future] = []
        self._wake_scheduled = False  # a deferred wake of the parked fetches is on its way
        self._waiters: list[tuple[int, asyncio.Future]] = []  # acks=all: (last offset, future)
        # As leader: the batches appended above the HW, for the followers' next fetches (node/tail_cache.py).
        self._tail = TailCache(tail_budget if tail_budget is not None else TailCacheBudget())

    # -- roles --------------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.leader is not None

    @property
    def high_watermark(self) -> int:
        if self.leader is not None:
            return self.leader.high_watermark
        return self.follower_high_watermark

    def update(self, info: PartitionInfo, min_insync: int) -> None:
        """Follow the metadata: become leader or follower, or take a new ISR."""
        old = self.info
        self.info = info
        self.min_insync_replicas = min_insync
        if info.leader == self.node_id:
            if self.leader is None or self.leader.leader_epoch != info.leader_epoch:
                self._become_leader(info)
            elif self.leader.on_metadata(info.isr, info.partition_epoch, min_insync):
                self._high_watermark_moved()
        elif self.leader is not None or old.leader_epoch != info.leader_epoch:
            self._become_follower(info)

    def _become_leader(self, info: PartitionInfo) -> None:
        # The epoch enters the epoch cache with its first batch, not now: an entry without batches
        # would make this replica, deposed before writing, report an epoch it holds nothing of.
        start = self.log.log_end_offset
        self._tail.clear()
        self.leader = LeaderCore(
            replica_id=self.node_id,
            replicas=info.replicas,
            isr=info.isr,
            leader_epoch=info.leader_epoch,
            partition_epoch=info.partition_epoch,
            epoch_start_offset=start,
            high_watermark=self.high_watermark,
            log_end_offset=start,
            min_insync_replicas=self.min_insync_replicas,
            now_ms=now_ms(),
        )
        log.info(
            "%s-%d: leader at epoch %d from offset %d (ISR %s)",
            self.topic,
            self.index,
            info.leader_epoch,
            start,
            list(info.isr),
        )
        self._high_watermark_moved()

    def _become_follower(self, info: PartitionInfo) -> None:
        self._tail.clear()
        if self.leader is not None:
            self.follower_high_watermark = min(self.leader.high_watermark, self.log.log_end_offset)
            self.leader = None
            log.info(
                "%s-%d: follower of %d at epoch %d", self.topic, self.index, info.leader, info.leader_epoch
            )
        self._fail_waiters(
            ApiError(
                40403,
                f"{self.topic}-{self.index}: leadership moved to {info.leader} before the records were "
                "committed; they may or may not be kept (retry; an idempotent producer retries safely)",
            )
        )
        self._wake_parked()  # follower fetches parked here get a fencing answer

    def check_leader(self, leader_epoch: int | None = None) -> LeaderCore:
        """This replica's leader state; ApiError when it does not lead (or `leader_epoch` is stale)."""
        if self.leader is None:
            raise ApiError(
                40403,
                f"node {self.node_id} is not the leader of {self.topic}-{self.index} (leader: {self.info.leader})",
            )
        if leader_epoch is not None and leader_epoch != self.leader.leader_epoch:
            if leader_epoch < self.leader.leader_epoch:
                raise ApiError(
                    40905,
                    f"{self.topic}-{self.index}: leader epoch {leader_epoch} is fenced, the current one is "
                    f"{self.leader.leader_epoch}; refresh metadata",
                )
            raise ApiError(
                40403,
                f"{self.topic}-{self.index}: leader epoch {leader_epoch} is not known here yet "
                f"(current {self.leader.leader_epoch}); retry",
            )
        return self.leader

    def validate_acks(self, acks: str) -> None:
        """acks=all needs the ISR to have at least min.insync.replicas members."""
        leader = self.check_leader()
        isr = len(leader.isr)
        if acks == "all" and isr < leader.min_insync_replicas:
            raise ApiError(
                50301,
                f"{self.topic}-{self.index} has {isr} in-sync replica(s), "
                f"min.insync.replicas is {leader.min_insync_replicas}",
            )

    # -- the leader's side ------------------------------------------------------------------------

    def append(self, batch: bytes | memoryview, checked_header: BatchHeader | None = None) -> AppendInfo:
        """Append one producer batch as leader; ApiError for anything refused (nothing written).
        `checked_header`: what check_producer_batch returned for these bytes (see append_as_leader)."""
        leader = self.check_leader()
        try:
            info = self.log.append_as_leader(batch, leader.leader_epoch, checked_header)
        except CorruptBatchError as exc:
            raise ApiError(42202, f"corrupt record batch: {exc}") from None
        except InvalidBatchError as exc:
            raise ApiError(42201, f"invalid record batch: {exc}") from None
        except BatchTooLargeError as exc:
            raise ApiError(41301, str(exc)) from None
        except ProducerSequenceError as exc:
            code = {Verdict.FENCED: 40902, Verdict.UNKNOWN_PRODUCER: 42204}.get(exc.verdict, 42203)
            raise ApiError(code, str(exc)) from None
        except StaleLeaderEpochError as exc:
            raise ApiError(40403, str(exc)) from None
        except OSError as exc:
            log.error("append to %s-%d failed: %s", self.topic, self.index, exc)
            raise ApiError(50002, f"storage error appending to {self.topic}-{self.index}: {exc}") from None
        if leader.on_append(self.log.log_end_offset):
            self._high_watermark_moved()
        next_offset = info.last_offset + 1
        if not info.duplicate and leader.high_watermark < next_offset:
            self._tail.add(
                info.first_offset, next_offset, stamped_batch(batch, info.first_offset, leader.leader_epoch)
            )
        self._wake_after_append()
        return info

    async def wait_committed(self, last_offset: int, timeout_s: float) -> None:
        """acks=all: return once the HW passed `last_offset`; ApiError when the leadership moves or
        `timeout_s` passes first (the records may still be committed later: the outcome is unknown).

        The produce awaits its future directly (result True: committed; False: timed out), so a HW
        move wakes it in one step of the event loop."""
        if self.leader is not None and self.leader.high_watermark > last_offset:
            return
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        entry = (last_offset, future)
        self._waiters.append(entry)
        timer = loop.call_later(timeout_s, _resolve, future, False)
        committed = False
        try:
            committed = await future
        finally:
            timer.cancel()
            if not committed:  # timed out or cancelled (a committed entry left with its HW move)
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
        if not committed:
            raise ApiError(
                50304,
                f"{self.topic}-{self.index}: the in-sync replicas did not confirm offset {last_offset} within "
                f"{timeout_s * 1000:.0f} ms; the records may or may not be committed (retry; an "
                "idempotent producer retries safely)",
            )

    def _high_watermark_moved(self) -> None:
        hw = self.high_watermark
        self._tail.drop_below(hw)
        if self._waiters:
            waiting = []
            for entry in self._waiters:
                last_offset, future = entry
                if future.done():
                    continue  # timed out or given up: its wait_committed no longer needs the entry
                if hw > last_offset:
                    future.set_result(True)
                else:
                    waiting.append(entry)
            self._waiters = waiting
        self._data_arrived.set()
        self._data_arrived = asyncio.Event()

    def _fail_waiters(self, error: ApiError) -> None:
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(error)
        self._waiters.clear()

    def read_for_follower(
        self,
        replica_id: int,
        fetch_offset: int,
        last_fetched_epoch: int,
        leader_epoch: int,
        max_bytes: int,
        replica_epoch: int = -1,
    ) -> ReplicaFetchResult:
        """One partition of a follower's fetch, as its leader (sync: also what the simulation calls)."""
        lso, leo = self.log.log_start_offset, self.log.log_end_offset
        leader = self.leader
        if leader is None or leader_epoch != leader.leader_epoch:
            code = 40905 if leader is not None and leader_epoch < leader.leader_epoch else 40403
            return ReplicaFetchResult(b"", self.high_watermark, lso, leo, error_code=code)
        diverging = leader_check_fetch(
            fetch_offset,
            last_fetched_epoch,
            lso,
            leo,
            lambda epoch: self.log.epoch_cache.end_offset_for(epoch, self.log.log_end_offset),
        )
        if diverging is not None:
            return ReplicaFetchResult(b"", leader.high_watermark, lso, leo, diverging)
        if fetch_offset < lso or fetch_offset > leo:
            return ReplicaFetchResult(b"", leader.high_watermark, lso, leo, error_code=41601)
        if leader.on_fetch(replica_id, fetch_offset, now_ms(), replica_epoch):
            self._high_watermark_moved()
        if fetch_offset >= leo:
            data = b""
        else:
            cached = self._tail.read(fetch_offset, max_bytes)
            data = cached if cached is not None else self.log.read(fetch_offset, max_bytes)
        return ReplicaFetchResult(data, leader.high_watermark, lso, leo)

    def isr_proposal(self, lag_time_max_ms: int) -> IsrProposal | None:
        if self.leader is None:
            return None
        return self.leader.isr_proposal(now_ms(), lag_time_max_ms)

    # -- the follower's side -----------------------------------------------------------------------

    def fetch_position(self) -> tuple[int, int]:
        """(fetch offset, epoch of the last batch) for the next fetch from the leader."""
        return self.log.log_end_offset, self.log.epoch_cache.latest_epoch()

    def apply_from_leader(self, result: ReplicaFetchResult) -> None:
        """Take the leader's answer to this replica's fetch (sync: also what the simulation calls)."""
        if self.leader is not None:
            return  # became leader meanwhile: the answer is stale
        if result.diverging is not None:
            target = follower_truncation_offset(
                result.diverging,
                lambda epoch: self.log.epoch_cache.end_offset_for(epoch, self.log.log_end_offset),
                self.log.log_start_offset,
                self.log.log_end_offset,
            )
            log.info(
                "%s-%d: truncating to %d (diverged from the leader at epoch %d, end %d; LEO was %d)",
                self.topic,
                self.index,
                target,
                result.diverging.epoch,
                result.diverging.end_offset,
                self.log.log_end_offset,
            )
            self.log.truncate_to(target)  # at or below the log start: the log starts afresh there
            self.follower_high_watermark = min(self.follower_high_watermark, self.log.log_end_offset)
            return
        if result.error_code == 41601:
            # Behind the leader's log start (retention) or past its end: start again at its log start.
            self.log.truncate_fully_and_start_at(result.log_start_offset)
            self.follower_high_watermark = result.log_start_offset
            return
        if result.error_code:
            return
        if result.data:
            self.log.append_as_follower(result.data)
        hw = follower_high_watermark(result.high_watermark, self.log.log_end_offset)
        if hw > self.follower_high_watermark:
            self.follower_high_watermark = hw
            self._data_arrived.set()
            self._data_arrived = asyncio.Event()
        if result.log_start_offset > self.log.log_start_offset:
            self.log.advance_log_start_offset(result.log_start_offset, self.follower_high_watermark)

    # -- consumers ----------------------------------------------------------------------------------

    def read(self, offset: int, max_bytes: int) -> FetchResult:
        leader = self.check_leader()
        if not leader.high_watermark_known:
            raise ApiError(
                40403,
                f"{self.topic}-{self.index}: the new leader is still learning its high watermark; retry",
            )
        try:
            data = self.log.read(offset, max_bytes, max_offset=leader.high_watermark)
        except OffsetOutOfRangeError:
            raise self.out_of_range(offset) from None
        except CorruptLogError as exc:
            log.error("corrupt data served from %s-%d: %s", self.topic, self.index, exc)
            raise ApiError(
                50002, f"storage error reading {self.topic}-{self.index} at {offset}: {exc}"
            ) from None
        if offset > leader.high_watermark:
            raise self.out_of_range(offset)
        return FetchResult(data, leader.high_watermark, self.log.log_start_offset, self.log.log_end_offset)

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

    def stop(self) -> None:
        """The replica leaves this node (topic deleted, reassigned): fail what waits on it."""
        self.leader = None
        self._tail.clear()
        self._fail_waiters(ApiError(40403, f"{self.topic}-{self.index} is no longer on node {self.node_id}"))
        self._wake_parked()

    def park(self, woken: asyncio.Future) -> None:
        """Park a follower's fetch until this leader appends (or stops leading): `woken` then gets the
        result None, unless it is done already. See `wait_for_append`, which owns the future."""
        if self._parked:
            # Drop the fetches that stopped waiting (answered from another partition, timed out, closed).
            self._parked = [future for future in self._parked if not future.done()]
        self._parked.append(woken)

    def _wake_after_append(self) -> None:
        """Wake the parked follower fetches a few passes of the event loop after an append, once.

        Produce requests that the node has already read append in those passes, so one answer to
        each follower carries all of them: under load, fewer fetch exchanges per batch (each costs
        about a millisecond of CPU on the 2-core test machine), for a delay of a few callbacks."""
        if self._parked and not self._wake_scheduled:
            self._wake_scheduled = True
            asyncio.get_running_loop().call_soon(self._wake_pass, WAKE_DEFER_PASSES - 1)

    def _wake_pass(self, passes_left: int) -> None:
        if passes_left > 0:
            asyncio.get_running_loop().call_soon(self._wake_pass, passes_left - 1)
            return
        self._wake_scheduled = False
        self._wake_parked()

    def _wake_parked(self) -> None:
        if self._parked:
            parked, self._parked = self._parked, []
            for future in parked:
                if not future.done():
                    future.set_result(None)


def _resolve(future: asyncio.Future, result) -> None:
    if not future.done():
        future.set_result(result)


async def wait_for_append(partitions: list[Partition], timeout_s: float) -> None:
    """Park a follower's fetch on its partitions until one of them appends (or stops leading), at
    most `timeout_s`.

    One plain future shared by the partitions and one timer, awaited directly: a parked fetch costs
    no task, and its wake is one callback (an Event, `wait_for` and `asyncio.wait` around each
    partition cost five, and a timer each). A follower fetch parks about once per produced batch
    (docs/performance.md, "Replication: where the CPU goes")."""
    loop = asyncio.get_running_loop()
    woken = loop.create_future()
    timer = loop.call_later(timeout_s, _resolve, woken, None)
    for partition in partitions:
        partition.park(woken)
    try:
        await woken
    finally:
        timer.cancel()


def replica_log_end_offsets(partition: Partition) -> dict[str, int] | None:
    """Each replica's log end offset as this leader knows it (-1: no fetch yet), or None when not leader."""
    leader = partition.leader
    if leader is None:
        return None
    ends = {str(partition.node_id): partition.log.log_end_offset}
    for replica, state in leader.followers.items():
        ends[str(replica)] = state.log_end_offset
    return ends


class ReplicaManager:
    """The partitions this node holds, kept in step with the metadata image."""

    def __init__(self, node_id: int, log_manager: LogManager, cleaner: LogCleaner):
        self.node_id = node_id
        self.log_manager = log_manager
        self.cleaner = cleaner
        self.partitions: dict[tuple[str, int], Partition] = {}
        self.image = MetadataImage()
        self._followed: dict[int, list[Partition]] | None = None  # see followed()
        self.tail_budget = TailCacheBudget()  # shared by the partitions' tail caches

    def apply_image(self, image: MetadataImage) -> None:
        """Open logs for new local replicas, update changed ones, delete logs of removed topics."""
        self.image = image
        self._followed = None  # worked out again on the next ask, from the updated partitions
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
                    self.partitions.pop(key).stop()
                    self.cleaner.unregister(f"{topic.name}-{index}")
                    self.log_manager.delete_log(topic.name, index)
                    partition = None
                if partition is None:
                    partition_log = self.log_manager.get_or_create_log(
                        topic.name, index, config, topic.topic_id
                    )
                    partition = Partition(
                        topic.name, index, partition_log, NO_INFO, self.node_id, self.tail_budget
                    )
                    partition.topic_id = topic.topic_id
                    self.partitions[key] = partition
                    self.cleaner.register(
                        f"{topic.name}-{index}", partition_log, self._upper_bound(partition)
                    )
                elif partition.log.config != config:
                    self.log_manager.update_config(topic.name, config)
                partition.update(info, min_insync_replicas(dict(topic.configs)))
        for key in [k for k in self.partitions if k not in wanted]:
            gone = self.partitions.pop(key)
            gone.stop()
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

    def followed(self) -> dict[int, list[Partition]]:
        """Partitions this node follows, by the leader they follow. Asked before every replica fetch,
        so it is worked out once per metadata image (roles change only in `apply_image`)."""
        if self._followed is None:
            out: dict[int, list[Partition]] = {}
            for partition in self.partitions.values():
                leader = partition.info.leader
                if partition.leader is None and leader not in (NO_LEADER, self.node_id):
                    out.setdefault(leader, []).append(partition)
            self._followed = out
        return self._followed

    def max_message_bytes(self, topic_name: str) -> int:
        return log_config(dict(self.topic(topic_name).configs)).max_message_bytes

    def high_watermark(self, topic: str, index: int) -> int:
        partition = self.partitions.get((topic, index))
        return partition.high_watermark if partition else 0

    def run_retention(self) -> int:
        """Retention below each partition's high watermark (runs in a worker thread)."""
        return self.log_manager.run_retention(self.high_watermark)
