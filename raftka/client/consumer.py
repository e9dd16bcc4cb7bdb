"""`Consumer`: reads assigned partitions on the binary fetch path, with a poll loop; as a member of a
consumer group (`group=`), the group coordinator assigns them.

Theory of operation
-------------------
Each assigned partition has a *position*: the offset of the next record `poll()` hands out. A
partition without one (just assigned, or after `seek_to_beginning`/`seek_to_end`) resolves it from the
partition's offsets (log start offset or high watermark) on the next poll, following
`auto_offset_reset` for a fresh assignment.

`poll()` keeps at most one fetch in flight per partition: a long-poll GET of raw batches from the
partition's leader, starting at the partition's *fetch offset*. An answer is decoded column by column
(checksums verified) into the partition's buffer: chunks of columns (offsets, timestamps, keys, values,
headers; one chunk per batch whose records share a layout, one per stretch of other batches) and a
cursor at the next record to hand out, which starts past the records below the fetch offset (a batch
may start before the offset asked for). The next fetch of that partition starts when an answer arrives
into an empty buffer, before it is decoded (read ahead: the node reads and sends the next answer while
this one is decoded and handed out), or else when the buffer empties. So a partition holds at most two
fetches (`fetch_bytes_max` each): its buffer and one more, in flight or decoded.

`poll_batches()` hands out the chunks, or slices of them, as ConsumerBatch columns, deserialized a
column at a time; `poll()` is the same records, one ConsumerRecord each. A record a deserializer
refuses stays first in its buffer, and the poll that reaches it raises.

An offset outside the log (41601, after retention deleted it, or a seek past the end) is reset by
`auto_offset_reset`: "earliest" (log start), "latest" (high watermark) or "error" (poll raises
OffsetOutOfRangeError until the caller seeks). Retriable errors (no leader, connection refused,
timeouts) refresh metadata and try again after `retry_backoff_ms`; other errors raise from poll.

Consumer groups (`group=` and `topics=`): the decisions are the pure core in group_membership.py;
this shell carries them. A background task joins and heartbeats (one request at a time, any node
forwards it to the group's coordinator) and feeds the answers to the core. The changes it asks for are
applied inside `poll()` (and `join()`, `commit()`, `close()`), before any record is handed out:
partitions lost to a fence are dropped without a commit; revoked ones are committed (auto-commit),
reported to `on_revoked`, dropped, and the heartbeat goes at once; new ones start at their committed
offsets, or by `auto_offset_reset` when none is committed. Doing this in poll, not in the background,
is what makes auto-commit at-least-once: the positions committed are those of records that earlier
polls returned, which the caller has processed by the time it polls again. Auto-commit runs every
`auto_commit_interval_ms` from poll (in the background, one commit at a time, in order with the
others) and on close, which then leaves the group.

Not thread-safe: one consumer belongs to one event loop (use SyncConsumer from threads).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import inspect
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from raftka.client._http import BATCH_CONTENT_TYPE, HttpResponse, HttpTransport, parse_bootstrap, topic_path
from raftka.client._metadata import ClusterMetadata, monotonic_ms
from raftka.client.accumulator import TopicPartition
from raftka.client.errors import (
    CommitFailedError,
    CorruptRecordError,
    NoOffsetForPartitionError,
    NotPartitionOwnerError,
    OffsetOutOfRangeError,
    RaftkaError,
    RequestTimeoutError,
    SerializationError,
    StaleMemberEpochError,
    UnknownGroupError,
    UnknownMemberError,
)
from raftka.client.group_membership import (
    GroupMembership,
    Join,
    MemberAnswer,
    group_path,
    partitions_from_json,
)
from raftka.client.serializers import BytesDeserializer, Deserializer, resolve_deserializer
from storage.record_batch import (
    BatchColumns,
    InvalidBatchError,
    decode_batches_columns,
    iter_batches,
    read_size,
)

RESET_POLICIES = ("earliest", "latest", "error")
# Kafka's auto.commit.interval.ms default.
DEFAULT_AUTO_COMMIT_INTERVAL_MS = 5_000

log = logging.getLogger(__name__)

# on_assigned / on_revoked / on_lost: called with the partitions, from inside poll(); may be async.
RebalanceCallback = Callable[[list[TopicPartition]], Awaitable[None] | None]


class ConsumerRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: Any
    value: Any
    headers: tuple[tuple[str, bytes | None], ...]


@dataclass(slots=True, eq=False)
class ConsumerBatch:
    """Consecutive records of one partition, column by column: record i is offsets[i],
    timestamps_ms[i], keys[i], values[i] (deserialized) and headers[i]. Iterating yields ConsumerRecords."""

    topic: str
    partition: int
    offsets: Sequence[int]  # a range when no offset is missing (compaction leaves gaps)
    timestamps_ms: Sequence[int]
    keys: Sequence[Any]
    values: Sequence[Any]
    headers: Sequence[tuple[tuple[str, bytes | None], ...]]

    def __len__(self) -> int:
        return len(self.offsets)

    def __iter__(self) -> Iterator[ConsumerRecord]:
        rows = zip(
            itertools.repeat(self.topic),
            itertools.repeat(self.partition),
            self.offsets,
            self.timestamps_ms,
            self.keys,
            self.values,
            self.headers,
            strict=False,  # the columns have one length: checked when the batch was cut
        )
        return map(tuple.__new__, itertools.repeat(ConsumerRecord), rows)  # no Python call per record

    def __repr__(self) -> str:
        span = f"{self.offsets[0]}..{self.offsets[-1]}" if self.offsets else "none"
        return f"<ConsumerBatch {self.topic}-{self.partition} offsets {span}, {len(self)} records>"


@dataclass(eq=False)
class _PartitionState:
    tp: TopicPartition
    position: int | None = None  # next offset poll() hands out
    reset: str | None = None  # "earliest" / "latest" while the position is to be looked up
    fetch_offset: int | None = None  # where the next fetch starts (at or after position)
    buffer: deque[BatchColumns] = field(default_factory=deque)  # the last fetch's records not handed out
    cursor: int = 0  # index in buffer[0] of the next record to hand out
    task: asyncio.Task | None = None
    generation: int = 0  # bumped by every seek, so an answer to an older fetch is dropped
    error: RaftkaError | None = None  # raised by poll until the caller seeks
    retry_at_ms: int = 0
    high_watermark: int | None = None
    log_start_offset: int | None = None

    def seek(self, offset: int | None, reset: str | None) -> None:
        self.position = offset
        self.fetch_offset = offset
        self.reset = reset
        self.buffer.clear()
        self.cursor = 0
        self.error = None
        self.retry_at_ms = 0
        self.generation += 1
        self.cancel_fetch()

    def cancel_fetch(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None


class _Fetched(NamedTuple):
    generation: int
    offset: int
    response: HttpResponse


class Consumer:
    """An asyncio consumer: of explicitly assigned partitions (`assign()`), or, with `group=` and
    `topics=`, of the partitions the group's coordinator assigns to it."""

    def __init__(
        self,
        bootstrap: str | Sequence[str] | None = None,
        *,
        group: str | None = None,
        topics: str | Iterable[str] | None = None,
        auto_commit: bool = True,
        auto_commit_interval_ms: int = DEFAULT_AUTO_COMMIT_INTERVAL_MS,
        instance_id: str | None = None,
        assignor: str | None = None,
        on_assigned: RebalanceCallback | None = None,
        on_revoked: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,
        # Kafka's auto.offset.reset default: a fresh assignment starts at the end.
        auto_offset_reset: str = "latest",
        # Kafka's max.partition.fetch.bytes default: bytes one fetch of one partition may return.
        fetch_bytes_max: int = 1024 * 1024,
        # Kafka's fetch.max.wait.ms and fetch.min.bytes defaults: the long-poll.
        fetch_max_wait_ms: int = 500,
        fetch_min_bytes: int = 1,
        # Kafka's max.poll.records default.
        max_poll_records: int = 500,
        request_timeout_ms: int = 30_000,
        retry_backoff_ms: int = 100,
        # The longest wait between retries of a group request (the producer's default).
        retry_backoff_max_ms: int = 1000,
        key_deserializer: str | Deserializer | None = None,
        value_deserializer: str | Deserializer | None = None,
        transport: HttpTransport | None = None,
    ):
        if auto_offset_reset not in RESET_POLICIES:
            raise ValueError(f"auto_offset_reset must be one of {', '.join(RESET_POLICIES)}")
        if isinstance(topics, str):
            topics = [topics]
        topics = list(topics) if topics is not None else None
        if group is None and topics is not None:
            raise ValueError("topics= subscribes a group member: give group= too (or use assign())")
        if group is not None and not topics:
            raise ValueError("a group consumer needs topics=[...] to subscribe to")
        if group is not None and not group:
            raise ValueError("group must be a non-empty name")
        if auto_commit_interval_ms <= 0:
            raise ValueError(f"auto_commit_interval_ms must be > 0, got {auto_commit_interval_ms}")
        self.group = group
        self.auto_commit = auto_commit
        self.auto_commit_interval_ms = auto_commit_interval_ms
        self.auto_offset_reset = auto_offset_reset
        self.fetch_bytes_max = fetch_bytes_max
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_min_bytes = fetch_min_bytes
        self.max_poll_records = max_poll_records
        self.request_timeout_ms = request_timeout_ms
        self.retry_backoff_ms = retry_backoff_ms
        self._key_deserializer = resolve_deserializer(key_deserializer)
        self._value_deserializer = resolve_deserializer(value_deserializer)
        self._owns_transport = transport is None
        self._transport = transport or HttpTransport(request_timeout_ms=request_timeout_ms)
        self._metadata = ClusterMetadata(self._transport, parse_bootstrap(bootstrap))
        self._states: dict[TopicPartition, _PartitionState] = {}
        self._round_robin = itertools.count()
        self._closed = False
        # -- group state (None and empty without group=) --
        self._membership: GroupMembership | None = None
        if group is not None:
            assert topics is not None, "checked above"
            self._membership = GroupMembership(
                group,
                topics,
                instance_id=instance_id,
                assignor=assignor,
                retry_backoff_ms=retry_backoff_ms,
                retry_backoff_max_ms=max(retry_backoff_ms, retry_backoff_max_ms),
            )
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._on_lost = on_lost
        self._heartbeat_task: asyncio.Task | None = None
        self._heartbeat_wakeup = asyncio.Event()  # the core may have a request due sooner
        self._group_changed = asyncio.Event()  # an answer or error came: poll() looks at the core
        self._group_error: RaftkaError | None = None  # raised by the next poll()
        self._reconcile_lock = asyncio.Lock()  # one reconciliation at a time
        self._reconcile_retry_at_ms = 0  # after a retriable error looking up committed offsets
        self._committed: dict[TopicPartition, int] = {}  # what this member last committed
        self._auto_commit_task: asyncio.Task | None = None
        self._next_auto_commit_ms: int | None = None

    async def __aenter__(self) -> Consumer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- assignment and positions -------------------------------------------------------------------

    def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Read exactly these (topic, partition) pairs; kept ones keep their position."""
        if self._membership is not None:
            raise ValueError(
                f"this consumer is a member of group {self.group!r}: the group assigns its partitions"
            )
        wanted = [TopicPartition(str(t), int(p)) for t, p in partitions]
        for tp, state in list(self._states.items()):
            if tp not in wanted:
                state.seek(None, None)
                del self._states[tp]
        for tp in wanted:
            if tp not in self._states:
                reset = None if self.auto_offset_reset == "error" else self.auto_offset_reset
                self._states[tp] = _PartitionState(tp, reset=reset)

    def assignment(self) -> list[TopicPartition]:
        """The partitions this consumer reads now (with a group: those it owns)."""
        return list(self._states)

    def subscription(self) -> list[str]:
        """The topics a group consumer subscribes to ([] without a group)."""
        return [] if self._membership is None else list(self._membership.topics)

    @property
    def member_id(self) -> str | None:
        """The member id the group coordinator gave (None without a group or while joining)."""
        return None if self._membership is None else self._membership.member_id

    @property
    def member_epoch(self) -> int | None:
        return None if self._membership is None else self._membership.member_epoch

    async def partitions_for(self, topic: str) -> list[int]:
        """The partition numbers of a topic (asks the cluster)."""
        metadata = await self._metadata.topic(topic, refresh=True)
        return [p.partition for p in metadata.partitions]

    def _state(self, tp: tuple[str, int]) -> _PartitionState:
        state = self._states.get(TopicPartition(tp[0], tp[1]))
        if state is None:
            raise ValueError(f"{tp[0]}-{tp[1]} is not assigned to this consumer")
        return state

    def seek(self, tp: tuple[str, int], offset: int) -> None:
        """Make `offset` the next record poll() returns from this partition."""
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        self._state(tp).seek(offset, None)

    def seek_to_beginning(self, *partitions: tuple[str, int]) -> None:
        """Start at the log start offset (all assigned partitions when none is named); takes effect on poll."""
        for tp in partitions or list(self._states):
            self._state(tp).seek(None, "earliest")

    def seek_to_end(self, *partitions: tuple[str, int]) -> None:
        """Start at the high watermark: only records produced from now on."""
        for tp in partitions or list(self._states):
            self._state(tp).seek(None, "latest")

    async def position(self, tp: tuple[str, int]) -> int:
        """The offset of the next record poll() returns from this partition (resolving a pending reset)."""
        state = self._state(tp)
        while state.position is None:
            await self._resolve_position(state)
        return state.position

    def highwater(self, tp: tuple[str, int]) -> int | None:
        """The high watermark the last fetch of this partition saw (None before the first)."""
        return self._state(tp).high_watermark

    async def offsets(self, tp: tuple[str, int]) -> dict[str, int]:
        """The partition's log_start_offset, high_watermark and log_end_offset, asked of its leader."""
        address = await self._metadata.leader_address(tp[0], tp[1])
        response = await self._transport.request(
            "GET", address, topic_path(tp[0], "partitions", tp[1], "offsets")
        )
        return response.json()

    async def offset_for_timestamp(self, tp: tuple[str, int], timestamp_ms: int) -> int | None:
        """The first offset whose record has a timestamp >= timestamp_ms (None if there is none yet)."""
        address = await self._metadata.leader_address(tp[0], tp[1])
        response = await self._transport.request(
            "GET",
            address,
            topic_path(tp[0], "partitions", tp[1], "offsets"),
            params={"timestamp_ms": timestamp_ms},
        )
        return response.json().get("offset")

    async def _resolve_position(self, state: _PartitionState) -> None:
        if state.reset is None:
            raise NoOffsetForPartitionError(
                None,
                f"{state.tp.topic}-{state.tp.partition} has no position and auto_offset_reset is "
                f"'error': seek first",
            )
        generation = state.generation
        offsets = await self.offsets(state.tp)
        if state.generation != generation:
            return  # the caller sought meanwhile: that seek wins
        offset = offsets["log_start_offset"] if state.reset == "earliest" else offsets["high_watermark"]
        state.seek(int(offset), None)

    # -- polling ------------------------------------------------------------------------------------

    async def poll(self, timeout_ms: int = 1000, max_records: int | None = None) -> list[ConsumerRecord]:
        """Records from the assigned partitions, waiting up to `timeout_ms` for the first ones.

        Returns an empty list when nothing arrived in time. Raises non-retriable errors (unknown
        topic, offset out of range with auto_offset_reset="error", a record the deserializer refuses).
        """
        records: list[ConsumerRecord] = []
        for batch in await self.poll_batches(timeout_ms, max_records):
            records += batch
        return records

    async def poll_batches(
        self, timeout_ms: int = 1000, max_records: int | None = None
    ) -> list[ConsumerBatch]:
        """What `poll()` returns, column by column: the same records, positions and errors, without an
        object per record but its key, value and timestamp. One ConsumerBatch per fetched batch whose
        records share a layout, or per stretch of other batches, or the part of one that `max_records`
        leaves room for."""
        if self._closed:
            raise RaftkaError(None, "the consumer is closed")
        limit = self.max_poll_records if max_records is None else max_records
        deadline = monotonic_ms() + max(0, timeout_ms)
        if self._membership is not None:
            self._start_group()
            self._maybe_auto_commit()  # what earlier polls returned: processed by now
        while True:
            if self._membership is not None:
                await self._reconcile()
            await self._resolve_pending()
            for state in list(self._states.values()):
                if state.task is not None and state.task.done():
                    self._absorb(state)  # now, not only once every buffer is empty: round robin
            batches = self._drain(limit)
            self._start_fetches()
            if batches:
                return batches
            now = monotonic_ms()
            if now >= deadline:
                return []
            tasks = [s.task for s in self._states.values() if s.task is not None]
            retry_at = min(
                (s.retry_at_ms for s in self._states.values() if s.task is None and s.retry_at_ms > now),
                default=deadline,
            )
            if self._membership is not None and self._reconcile_retry_at_ms > now:
                retry_at = min(retry_at, self._reconcile_retry_at_ms)
            wait_s = (min(deadline, retry_at) - now) / 1000
            group_waiter = None
            if self._membership is not None:  # wake for the group's news too
                group_waiter = asyncio.ensure_future(self._group_changed.wait())
                tasks.append(group_waiter)
            if not tasks:
                await asyncio.sleep(wait_s)
                continue
            try:
                await asyncio.wait(tasks, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if group_waiter is not None:
                    group_waiter.cancel()

    async def __aiter__(self) -> AsyncIterator[ConsumerRecord]:
        """Records forever: `async for record in consumer:`."""
        while True:
            for record in await self.poll(self.fetch_max_wait_ms):
                yield record

    async def _resolve_pending(self) -> None:
        pending = [
            s for s in self._states.values() if s.position is None and s.error is None and s.task is None
        ]
        now = monotonic_ms()
        due = [s for s in pending if s.retry_at_ms <= now]
        if not due:
            return
        outcomes = await asyncio.gather(*(self._resolve_position(s) for s in due), return_exceptions=True)
        for state, outcome in zip(due, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, RaftkaError) or not outcome.retriable:
                    raise outcome
                self._back_off(state, outcome)

    def _start_fetches(self) -> None:
        now = monotonic_ms()
        for state in self._states.values():
            if (
                state.task is None
                and not state.buffer
                and state.fetch_offset is not None
                and state.error is None
                and state.retry_at_ms <= now
            ):
                self._start_fetch(state)

    def _start_fetch(self, state: _PartitionState) -> None:
        assert state.task is None, "one fetch at a time per partition"
        assert state.fetch_offset is not None, "no offset to fetch from"
        state.task = asyncio.ensure_future(self._fetch(state.tp, state.fetch_offset, state.generation))

    async def _fetch(self, tp: TopicPartition, offset: int, generation: int) -> _Fetched:
        address, leader_epoch = await self._metadata.leader(tp.topic, tp.partition)
        params = {
            "offset": offset,
            "max_bytes": self.fetch_bytes_max,
            "max_wait_ms": self.fetch_max_wait_ms,
            "min_bytes": self.fetch_min_bytes,
        }
        if leader_epoch is not None:
            params["leader_epoch"] = leader_epoch  # a stale one is fenced (KIP-320): refresh, retry
        response = await self._transport.request(
            "GET",
            address,
            topic_path(tp.topic, "partitions", tp.partition, "records"),
            params=params,
            headers={"Accept": BATCH_CONTENT_TYPE},
            timeout_ms=self.request_timeout_ms + self.fetch_max_wait_ms,
        )
        return _Fetched(generation, offset, response)

    def _absorb(self, state: _PartitionState) -> None:
        """Take a finished fetch's answer (or error) into the partition's state."""
        task = state.task
        assert task is not None, "no fetch to absorb"
        assert task.done(), "the fetch is still running"
        state.task = None
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            if not isinstance(error, RaftkaError):
                raise error
            self._on_fetch_error(state, error)
            return
        fetched: _Fetched = task.result()
        if fetched.generation != state.generation or fetched.offset != state.fetch_offset:
            return  # the caller sought elsewhere meanwhile
        response = fetched.response
        headers = response.headers
        if "X-Raftka-High-Watermark" in headers:
            state.high_watermark = int(headers["X-Raftka-High-Watermark"])
        if "X-Raftka-Log-Start-Offset" in headers:
            state.log_start_offset = int(headers["X-Raftka-Log-Start-Offset"])
        body = response.body
        if not body:
            return
        whole = _whole_batches_length(body)
        if whole == 0:
            state.error = RaftkaError(
                None,
                f"{state.tp.topic}-{state.tp.partition} at offset {fetched.offset}: a batch is larger than "
                f"fetch_bytes_max = {self.fetch_bytes_max}; raise it",
            )
            return
        offset = fetched.offset
        header_next = headers.get("X-Raftka-Next-Offset")
        if header_next is not None and whole == len(body):
            next_offset = int(header_next)
        else:
            next_offset = _next_offset_of(body, whole, offset)
        read_ahead = not state.buffer
        if read_ahead:  # the node reads the next fetch while this one is decoded and handed out
            state.fetch_offset = next_offset
            self._start_fetch(state)
        try:
            chunks = decode_batches_columns(body if whole == len(body) else memoryview(body)[:whole])
        except InvalidBatchError as exc:
            if read_ahead:  # fetch this one again, after the back-off
                state.cancel_fetch()
                state.fetch_offset = offset
            self._on_fetch_error(
                state,
                CorruptRecordError(
                    None, f"{state.tp.topic}-{state.tp.partition}: fetched a bad batch: {exc}", retriable=True
                ),
            )
            return
        if chunks and chunks[-1].offsets[-1] >= next_offset:  # a next offset short of the records: trust them
            next_offset = chunks[-1].offsets[-1] + 1
            state.cancel_fetch()  # a read ahead from the wrong offset: _start_fetches starts the right one
        state.fetch_offset = next_offset
        kept = [chunk for chunk in chunks if chunk.offsets[-1] >= offset]  # a batch may start before it
        if kept and state.buffer:  # a read ahead lands behind buffered records: cut below its offset
            kept[0] = _cut(kept[0], bisect.bisect_left(kept[0].offsets, offset), len(kept[0].offsets))
        elif kept:
            state.cursor = bisect.bisect_left(kept[0].offsets, offset)
        elif not state.buffer:
            state.position = next_offset  # only skipped offsets (compaction gaps): move past them
        state.buffer.extend(kept)

    def _on_fetch_error(self, state: _PartitionState, error: RaftkaError) -> None:
        if isinstance(error, OffsetOutOfRangeError):
            if self.auto_offset_reset == "error":
                state.error = error
                return
            if self.auto_offset_reset == "earliest" and error.log_start_offset is not None:
                state.seek(error.log_start_offset, None)
            elif self.auto_offset_reset == "latest" and error.high_watermark is not None:
                state.seek(error.high_watermark, None)
            else:
                state.seek(None, self.auto_offset_reset)
            return
        if error.retriable:
            self._back_off(state, error)
            return
        state.error = error

    def _back_off(self, state: _PartitionState, error: RaftkaError) -> None:
        if error.invalidates_metadata:
            self._metadata.invalidate(state.tp.topic)
        state.retry_at_ms = monotonic_ms() + self.retry_backoff_ms

    def _drain(self, limit: int) -> list[ConsumerBatch]:
        """Up to `limit` buffered records, round robin over partitions; raises a partition's error."""
        states = list(self._states.values())
        if not states:
            return []
        start = next(self._round_robin) % len(states)
        out: list[ConsumerBatch] = []
        room = limit
        for state in states[start:] + states[:start]:
            if state.error is not None and not state.buffer:
                if out:
                    return out
                raise state.error
            while state.buffer and room > 0:
                try:
                    batch = self._take(state, room)
                except SerializationError:
                    if out:
                        return out
                    raise
                out.append(batch)
                room -= len(batch)
                if state.cursor and room > 0:  # neither the chunk nor the room was used up: so
                    return out  # it stopped before a record the deserializers refuse; the next poll raises
            if not state.buffer and state.fetch_offset is not None:
                state.position = state.fetch_offset
            if room <= 0:
                break
        return out

    def _take(self, state: _PartitionState, limit: int) -> ConsumerBatch:
        """Up to `limit` records from the first chunk of the partition's buffer, deserialized. Stops
        before a record the deserializers refuse, which stays first in the buffer; raises
        SerializationError when that record is the first."""
        chunk = state.buffer[0]
        topic, partition = state.tp
        begin = state.cursor
        part = _cut(chunk, begin, min(len(chunk.offsets), begin + limit))
        keys, error = _deserialized(self._key_deserializer, topic, part.keys)
        unrefused = part.values if len(keys) == len(part.values) else part.values[: len(keys)]
        values, value_error = _deserialized(self._value_deserializer, topic, unrefused)
        error = error if len(values) == len(keys) else value_error
        count = len(values)
        if count == 0:
            raise SerializationError(
                None,
                f"{topic}-{partition} offset {part.offsets[0]}: cannot deserialize the record: {error}; "
                f"seek past it to go on",
            ) from error
        if count < len(part.offsets):
            part = _cut(part, 0, count)
            keys = keys[:count]
        headers = [()] * count if part.headers is None else part.headers
        state.position = part.offsets[-1] + 1
        state.cursor = begin + count
        if state.cursor == len(chunk.offsets):
            state.buffer.popleft()
            state.cursor = 0
        return ConsumerBatch(topic, partition, part.offsets, part.timestamps, keys, values, headers)

    # -- consumer groups ------------------------------------------------------------------------------

    async def join(self, timeout_ms: int | None = None) -> list[TopicPartition]:
        """Join the group now (the first poll() does it otherwise) and take the first assignment:
        returns the partitions owned then. It may be empty while other members still hold partitions
        they are giving up: poll() takes them when they come. Raises the join's error (an unknown
        topic, say) and RequestTimeoutError when no answer came within `timeout_ms`."""
        membership = self._require_group()
        if self._closed:
            raise RaftkaError(None, "the consumer is closed")
        self._start_group()
        deadline = None if timeout_ms is None else monotonic_ms() + timeout_ms
        while not membership.joined:
            self._raise_group_error()
            self._group_changed.clear()
            remaining_s = None if deadline is None else (deadline - monotonic_ms()) / 1000
            if remaining_s is not None and remaining_s <= 0:
                raise RequestTimeoutError(
                    None, f"no answer from the coordinator of group {self.group!r} within {timeout_ms} ms"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._group_changed.wait(), remaining_s)
        await self._reconcile()
        return self.assignment()

    async def commit(self, offsets: Mapping[tuple[str, int], int] | None = None) -> dict[TopicPartition, int]:
        """Commit the positions of the owned partitions (the next offset to consume in each), or the
        given {(topic, partition): next offset}; returns what was committed, once the group's offsets
        topic has it (acks=all). Raises CommitFailedError when the member was fenced (it then drops its
        partitions and joins again) or does not own a partition; retriable errors are retried for up
        to request_timeout_ms."""
        self._require_group()
        if self._closed:
            raise RaftkaError(None, "the consumer is closed")
        if offsets is None:
            chosen = self._positions(self._states)
        else:
            chosen = {}
            for tp, offset in offsets.items():
                if int(offset) < 0:
                    raise ValueError(f"offset must be >= 0, got {offset} for {tp[0]}-{tp[1]}")
                chosen[TopicPartition(str(tp[0]), int(tp[1]))] = int(offset)
        await self._await_auto_commit()  # commits land in the order they were made
        if chosen:
            await self._commit_offsets(chosen)
        return chosen

    async def committed(self, tp: tuple[str, int]) -> int | None:
        """The group's committed offset of a partition (the next offset to consume), None if none."""
        self._require_group()
        wanted = TopicPartition(tp[0], tp[1])
        return (await self._committed_offsets([wanted])).get(wanted)

    def _require_group(self) -> GroupMembership:
        if self._membership is None:
            raise RaftkaError(
                None, "this consumer is not in a group: give it group= and topics= to join one and commit"
            )
        return self._membership

    def _start_group(self) -> None:
        if self._heartbeat_task is None:
            self._heartbeat_task = asyncio.ensure_future(self._heartbeat_loop())

    def _raise_group_error(self) -> None:
        error, self._group_error = self._group_error, None
        if error is not None:
            raise error
        task = self._heartbeat_task
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # a bug in the loop: keep saying so

    async def _heartbeat_loop(self) -> None:
        """Send what the core says is due (join or heartbeat), one at a time; feed it the outcome."""
        membership = self._membership
        assert membership is not None, "a group consumer"
        while not membership.left:
            self._heartbeat_wakeup.clear()
            now = monotonic_ms()
            if membership.maybe_expire(now):
                log.warning("group %s: %s; joining again", self.group, membership.fence_reason)
                self._group_changed.set()
            request = membership.next_request(now)
            if request is None:
                wakeup = membership.wakeup_ms()
                timeout_s = None if wakeup is None else max(0, wakeup - now) / 1000
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._heartbeat_wakeup.wait(), timeout_s)
                continue
            await self._send_member_request(membership, request)
            self._group_changed.set()

    async def _send_member_request(self, membership: GroupMembership, request: Any) -> None:
        if isinstance(request, Join):
            path = group_path(membership.group, "members")
        else:
            path = group_path(membership.group, "members", request.member_id, "heartbeat")
        # No longer than a session: past it the core fences the member and joins again anyway.
        timeout_ms = min(self.request_timeout_ms, membership.session_timeout_ms)
        try:
            response = await self._metadata.request_any(
                "POST", path, json=request.body, timeout_ms=timeout_ms
            )
            answer = MemberAnswer.from_json(response.json())
        except RaftkaError as exc:
            outcome = membership.on_error(request, monotonic_ms(), exc.error_code, exc.retriable, exc.message)
            if outcome.fenced:
                log.warning("group %s: %s; dropping its partitions and joining again", self.group, exc)
            elif outcome.report:
                self._group_error = exc
            return
        except (KeyError, TypeError, ValueError) as exc:
            membership.on_error(request, monotonic_ms(), None, False)
            self._group_error = RaftkaError(None, f"POST {path}: the answer is not a member answer: {exc!r}")
            return
        membership.on_answer(request, monotonic_ms(), answer)

    async def _reconcile(self) -> None:
        """Apply what the group's answers ask for, before any record is handed out: drop partitions lost
        to a fence (no commit), give up revoked ones (commit with auto-commit, on_revoked, heartbeat at
        once), take new ones at their committed offsets (on_assigned). A callback's error is raised
        after all of that is done."""
        membership = self._membership
        assert membership is not None, "a group consumer"
        async with self._reconcile_lock:
            self._group_changed.clear()
            self._raise_group_error()
            if membership.maybe_expire(monotonic_ms()):
                log.warning("group %s: %s; joining again", self.group, membership.fence_reason)
                self._heartbeat_wakeup.set()
            failures: list[BaseException] = []
            lost = membership.take_lost()
            if lost:
                self._drop(lost)
                failures += await self._notify(self._on_lost, lost)
            revoke = membership.to_revoke()
            generation = membership.generation
            if revoke and self.auto_commit:
                await self._commit_quietly(self._positions(revoke), "revoked partitions")
            if revoke and membership.generation == generation:  # else fenced meanwhile: lost, next round
                failures += await self._notify(self._on_revoked, revoke)  # still owned: may commit
                self._drop(revoke)
                membership.revoked(revoke)
                self._heartbeat_wakeup.set()
            assign = membership.to_assign()
            if assign and monotonic_ms() >= self._reconcile_retry_at_ms:
                generation = membership.generation
                try:
                    committed = await self._committed_offsets(assign)
                except RaftkaError as exc:
                    if not exc.retriable:
                        raise
                    self._reconcile_retry_at_ms = monotonic_ms() + self.retry_backoff_ms
                else:
                    taken = membership.assigned(assign, generation)
                    for tp in taken:
                        self._start_partition(tp, committed.get(tp))
                    if taken:
                        failures += await self._notify(self._on_assigned, taken)
            if failures:
                raise failures[0]

    def _start_partition(self, tp: TopicPartition, committed: int | None) -> None:
        """Start reading an assigned partition: at its committed offset, else by auto_offset_reset."""
        old = self._states.pop(tp, None)
        if old is not None:
            old.seek(None, None)
        if committed is None:
            reset = None if self.auto_offset_reset == "error" else self.auto_offset_reset
            self._states[tp] = _PartitionState(tp, reset=reset)
            self._committed.pop(tp, None)
        else:
            state = _PartitionState(tp)
            state.seek(committed, None)
            self._states[tp] = state
            self._committed[tp] = committed

    def _drop(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            state = self._states.pop(tp, None)
            if state is not None:
                state.seek(None, None)  # cancels its fetch, forgets its buffer
            self._committed.pop(tp, None)

    async def _notify(self, callback: RebalanceCallback | None, partitions: list[TopicPartition]) -> list:
        if callback is None:
            return []
        try:
            result = callback(list(partitions))
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            return [exc]
        return []

    def _positions(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        out = {}
        for tp in partitions:
            state = self._states.get(tp)
            if state is not None and state.position is not None:
                out[tp] = state.position
        return out

    async def _committed_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        wanted = set(partitions)
        membership = self._require_group()
        try:
            response = await self._metadata.request_any("GET", group_path(membership.group, "offsets"))
        except UnknownGroupError:
            return {}
        out = {}
        for item in response.json().get("offsets") or ():
            [tp] = partitions_from_json([item])
            if tp in wanted and item.get("offset") is not None:
                out[tp] = int(item["offset"])
        return out

    async def _commit_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        """POST the offsets as this member; retriable errors are retried until request_timeout_ms."""
        membership = self._membership
        assert membership is not None, "a group consumer"
        member_id, member_epoch = membership.member_id, membership.member_epoch
        if member_id is None:
            raise CommitFailedError(
                None,
                f"cannot commit to group {self.group!r}: this consumer is not a member now "
                f"({membership.fence_reason or 'it is joining'}); its records since the last commit will "
                f"be delivered again",
            )
        body = {
            "member_id": member_id,
            "member_epoch": member_epoch,
            "offsets": [
                {"topic": tp.topic, "partition": tp.partition, "offset": offset, "metadata": ""}
                for tp, offset in sorted(offsets.items())
            ],
        }
        path = group_path(membership.group, "offsets")
        deadline = monotonic_ms() + self.request_timeout_ms
        backoff_ms = self.retry_backoff_ms
        while True:
            try:
                await self._metadata.request_any("POST", path, json=body)
                break
            except (UnknownMemberError, StaleMemberEpochError) as exc:
                epoch = member_epoch if isinstance(exc, StaleMemberEpochError) else None
                if membership.fenced(monotonic_ms(), member_id, epoch, exc.message):
                    self._heartbeat_wakeup.set()
                    self._group_changed.set()
                raise CommitFailedError(
                    exc.error_code,
                    f"commit to group {self.group!r} failed: {exc.message}; this consumer lost its "
                    f"partitions and joins the group again",
                ) from exc
            except NotPartitionOwnerError as exc:
                raise CommitFailedError(
                    exc.error_code, f"commit to group {self.group!r} failed: {exc.message}"
                ) from exc
            except RaftkaError as exc:
                if not exc.retriable or monotonic_ms() + backoff_ms > deadline:
                    raise
                await asyncio.sleep(backoff_ms / 1000)
                backoff_ms = min(2 * backoff_ms, membership.retry_backoff_max_ms)
        for tp, offset in offsets.items():
            if tp in self._states:
                self._committed[tp] = offset

    async def _commit_quietly(self, offsets: dict[TopicPartition, int], what: str) -> bool:
        """Commit after any auto-commit in flight; a failure is logged, not raised. True if committed."""
        await self._await_auto_commit()
        return await self._commit_logged(offsets, what)

    async def _commit_logged(self, offsets: dict[TopicPartition, int], what: str) -> bool:
        if not offsets:
            return True
        try:
            await self._commit_offsets(offsets)
        except RaftkaError as exc:
            log.warning("group %s: could not commit the offsets of %s: %s", self.group, what, exc)
            return False
        return True

    def _maybe_auto_commit(self) -> None:
        """Every auto_commit_interval_ms, from poll(): commit in the background the positions that moved."""
        membership = self._membership
        assert membership is not None, "a group consumer"
        if not self.auto_commit:
            return
        now = monotonic_ms()
        if self._next_auto_commit_ms is None:  # the first poll starts the interval
            self._next_auto_commit_ms = now + self.auto_commit_interval_ms
            return
        if now < self._next_auto_commit_ms or not membership.joined:
            return
        if self._auto_commit_task is not None and not self._auto_commit_task.done():
            return  # one at a time, so they land in order
        self._next_auto_commit_ms = now + self.auto_commit_interval_ms
        moved = {tp: o for tp, o in self._positions(self._states).items() if self._committed.get(tp) != o}
        if moved:
            self._auto_commit_task = asyncio.ensure_future(self._commit_logged(moved, "an auto-commit"))

    async def _await_auto_commit(self) -> None:
        task = self._auto_commit_task
        if task is not None and not task.done():
            await asyncio.wait([task])  # it never raises: failures are logged

    async def _close_group(self) -> None:
        membership = self._membership
        assert membership is not None, "a group consumer"
        await self._await_auto_commit()
        if self._heartbeat_task is None:
            membership.leave()
            return
        owned = sorted(membership.owned)
        if self.auto_commit and membership.joined:
            moved = {tp: o for tp, o in self._positions(owned).items() if self._committed.get(tp) != o}
            await self._commit_quietly(moved, "the partitions on close")
        if owned:
            for error in await self._notify(self._on_revoked, owned):
                log.warning("group %s: on_revoked failed on close: %r", self.group, error)
        self._heartbeat_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._heartbeat_task
        identity = membership.leave()
        if identity is None:
            return
        member_id, member_epoch = identity
        try:
            await self._metadata.request_any(
                "DELETE",
                group_path(membership.group, "members", member_id),
                params={"member_epoch": member_epoch},
            )
        except RaftkaError as exc:  # its session lapses instead
            log.warning("group %s: could not leave the group: %s", self.group, exc)

    async def close(self) -> None:
        """Stop. A group member first commits its positions (auto-commit), reports its partitions as
        revoked, and leaves the group, so its partitions move to other members at once."""
        if self._closed:
            return
        if self._membership is not None:
            await self._close_group()
        self._closed = True
        tasks = [s.task for s in self._states.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._owns_transport:
            await self._transport.close()


def _cut(chunk: BatchColumns, begin: int, end: int) -> BatchColumns:
    """Records begin .. end - 1 of a chunk; the chunk itself when that is all of it (a copy of the
    columns would touch every record once more)."""
    if begin == 0 and end == len(chunk.offsets):
        return chunk
    return BatchColumns(*(None if column is None else column[begin:end] for column in chunk))


def _deserialized(deserializer: Deserializer, topic: str, column: list) -> tuple[list, Exception | None]:
    """The column deserialized; or, when one is refused, the values before it and the refusal."""
    if type(deserializer) is BytesDeserializer:
        return column, None  # the identity: no call per value
    deserialize = deserializer.deserialize
    try:
        return [deserialize(topic, data) for data in column], None
    except Exception:
        out = []  # find the refused one: the values before it are still handed out
    for data in column:
        try:
            out.append(deserialize(topic, data))
        except Exception as exc:
            return out, exc
    return out, None  # the refusal did not repeat


def _whole_batches_length(body: bytes) -> int:
    """Bytes of `body` that hold whole batches (a fetch answer may end in a cut one)."""
    pos = 0
    total = len(body)
    while pos + 12 <= total:
        _, size = read_size(body, pos)
        if size <= 12 or pos + size > total:
            break
        pos += size
    return pos


def _next_offset_of(body: bytes, whole: int, default: int) -> int:
    next_offset = default
    for header, _ in iter_batches(memoryview(body)[:whole], verify=False):
        next_offset = header.next_offset
    return next_offset
