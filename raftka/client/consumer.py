"""`Consumer`: reads assigned partitions on the binary fetch path, with a poll loop.

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

Not thread-safe: one consumer belongs to one event loop (use SyncConsumer from threads).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from raftka.client._http import BATCH_CONTENT_TYPE, HttpResponse, HttpTransport, parse_bootstrap, topic_path
from raftka.client._metadata import ClusterMetadata, monotonic_ms
from raftka.client.accumulator import TopicPartition
from raftka.client.errors import (
    CorruptRecordError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
    RaftkaError,
    SerializationError,
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
    """An asyncio consumer of explicitly assigned partitions (consumer groups come later)."""

    def __init__(
        self,
        bootstrap: str | Sequence[str] | None = None,
        *,
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
        key_deserializer: str | Deserializer | None = None,
        value_deserializer: str | Deserializer | None = None,
        transport: HttpTransport | None = None,
    ):
        if auto_offset_reset not in RESET_POLICIES:
            raise ValueError(f"auto_offset_reset must be one of {', '.join(RESET_POLICIES)}")
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

    async def __aenter__(self) -> Consumer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- assignment and positions -------------------------------------------------------------------

    def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Read exactly these (topic, partition) pairs; kept ones keep their position."""
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
        return list(self._states)

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
        while True:
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
            wait_s = (min(deadline, retry_at) - now) / 1000
            if not tasks:
                await asyncio.sleep(wait_s)
                continue
            await asyncio.wait(tasks, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)

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

    async def close(self) -> None:
        if self._closed:
            return
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
