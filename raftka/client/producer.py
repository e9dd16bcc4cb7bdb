"""`Producer`: batches records per partition and sends them to partition leaders on the binary path.

The decisions (when a batch is full or due, retry or fail, split, backoff) live in the pure
`RecordAccumulator`; this module is the asyncio shell around it: it serializes and partitions records,
runs one sender task that drains sendable batches, sends each with the storage codec's encoding to
the partition's leader, and resolves one future per record.

See docs/client.md for the settings and the delivery guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from raftka.client._http import BATCH_CONTENT_TYPE, HttpTransport, parse_bootstrap, topic_path
from raftka.client._metadata import ClusterMetadata, monotonic_ms
from raftka.client.accumulator import (
    IDEMPOTENT_IN_FLIGHT_MAX,
    Fail,
    ProducerBatch,
    RecordAccumulator,
    Retry,
    Split,
    record_size,
)
from raftka.client.errors import (
    InvalidRequestError,
    ProducerClosedError,
    RaftkaError,
    UnknownPartitionError,
)
from raftka.client.serializers import Serializer, resolve_serializer
from raftka.partitioner import StickyPartitioner, partition_for_key
from storage.record_batch import RECORD_HEADER_SIZE, encode_batch

log = logging.getLogger(__name__)

ACKS = ("all", "1", "0")

Headers = Mapping[str, str | bytes | None] | Iterable[tuple[str, str | bytes | None]]


class RecordMetadata(NamedTuple):
    """Where a record was written. offset is -1 with acks=0 (the node does not say)."""

    topic: str
    partition: int
    offset: int


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def normalize_acks(acks: str | int) -> str:
    text = str(acks).lower()
    if text == "-1":
        text = "all"
    if text not in ACKS:
        raise ValueError(f"acks must be 'all', 1 or 0, got {acks!r}")
    return text


def normalize_headers(headers: Headers | None) -> tuple[tuple[str, bytes | None], ...]:
    if not headers:
        return ()
    items = headers.items() if isinstance(headers, Mapping) else headers
    out = []
    for name, value in items:
        if not isinstance(name, str):
            raise TypeError(f"header names are str, got {type(name).__name__}")
        if isinstance(value, str):
            value = value.encode()
        elif value is not None and not isinstance(value, bytes):
            if not isinstance(value, bytearray | memoryview):
                raise TypeError(f"header {name!r}: values are str, bytes or None, got {type(value).__name__}")
            value = bytes(value)
        out.append((name, value))
    return tuple(out)


class Producer:
    """An asyncio producer. Use `async with Producer(...) as producer:` or call `close()`.

    `send()` returns once the record is buffered, with a future that resolves to its RecordMetadata
    (or raises its delivery error); `send_and_wait()` awaits that future too.
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str] | None = None,
        *,
        acks: str | int = "all",
        # Kafka 4.0's linger.ms default: 5 ms buys fuller batches for a latency few will notice.
        linger_ms: int = 5,
        # The node's default max.message.bytes is 1 MiB + 12: a full batch fits it.
        batch_bytes_max: int = 1024 * 1024,
        # Idempotence (Kafka's enable.idempotence, on by default since 3.0): retries never write a
        # record twice and a partition keeps its order; needs acks="all" (accumulator.py).
        enable_idempotence: bool = True,
        # Requests in flight per partition: default 5 with idempotence (Kafka's default, and the most
        # the node remembers), else 1, the only value that keeps order without sequence numbers.
        max_in_flight: int | None = None,
        # Kafka's delivery.timeout.ms default (2 minutes).
        delivery_timeout_ms: int = 120_000,
        # Kafka's request.timeout.ms default.
        request_timeout_ms: int = 30_000,
        # Kafka's retry.backoff.ms and retry.backoff.max.ms defaults.
        retry_backoff_ms: int = 100,
        retry_backoff_max_ms: int = 1_000,
        # Kafka's buffer.memory default: send() waits when this much is buffered and unacknowledged.
        buffer_bytes_max: int = 32 * 1024 * 1024,
        key_serializer: str | Serializer | None = None,
        value_serializer: str | Serializer | None = None,
        transport: HttpTransport | None = None,
        rng: random.Random | None = None,
    ):
        if delivery_timeout_ms < linger_ms + request_timeout_ms:
            raise ValueError("delivery_timeout_ms must be at least linger_ms + request_timeout_ms")
        self.acks = normalize_acks(acks)
        if enable_idempotence and self.acks != "all":
            raise ValueError(
                f"enable_idempotence needs acks='all' (got acks={acks!r}); pass enable_idempotence=False"
            )
        self.idempotent = enable_idempotence
        if max_in_flight is None:
            max_in_flight = IDEMPOTENT_IN_FLIGHT_MAX if enable_idempotence else 1
        self.request_timeout_ms = request_timeout_ms
        self._key_serializer = resolve_serializer(key_serializer)
        self._value_serializer = resolve_serializer(value_serializer)
        rng = rng or random.Random()
        self._accumulator = RecordAccumulator(
            batch_bytes_max=batch_bytes_max,
            linger_ms=linger_ms,
            max_in_flight=max_in_flight,
            delivery_timeout_ms=delivery_timeout_ms,
            retry_backoff_ms=retry_backoff_ms,
            retry_backoff_max_ms=retry_backoff_max_ms,
            buffer_bytes_max=buffer_bytes_max,
            rng=rng,
            idempotent=enable_idempotence,
        )
        self.producer_id: int | None = None  # from POST /v1/producers before the first idempotent batch
        self._sticky = StickyPartitioner(rng)
        self._owns_transport = transport is None
        self._transport = transport or HttpTransport(request_timeout_ms=request_timeout_ms)
        self._metadata = ClusterMetadata(self._transport, parse_bootstrap(bootstrap))
        # Made by _start() on the first send, inside the running loop.
        self._loop: asyncio.AbstractEventLoop
        self._wakeup: asyncio.Event
        self._progress: asyncio.Event
        self._sender: asyncio.Task | None = None
        self._requests: set[asyncio.Task] = set()
        self._closing = False
        self._closed = False

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- sending ------------------------------------------------------------------------------------

    async def send(
        self,
        topic: str,
        value: Any = None,
        *,
        key: Any = None,
        partition: int | None = None,
        headers: Headers | None = None,
        timestamp_ms: int | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        """Buffer one record; returns a future of its RecordMetadata.

        Waits only to learn the topic's partitions (once per topic) and when `buffer_bytes_max` is
        full. Raises at once for an unknown topic or partition and for a value the serializer refuses.
        """
        # The hot path of the client: kept to plain tuples and inlined arithmetic on purpose.
        if self._closing:
            raise ProducerClosedError()
        if self._sender is None:
            self._start()
        key_bytes = self._key_serializer.serialize(topic, key)
        value_bytes = self._value_serializer.serialize(topic, value)
        record_headers = normalize_headers(headers) if headers else ()
        now_ms = monotonic_ms()
        metadata = self._metadata.cached(topic, now_ms) or await self._metadata.topic(topic)
        count = len(metadata.partitions)
        if partition is None:
            if key_bytes is not None:
                partition = partition_for_key(key_bytes, count)
            else:
                partition = self._sticky.partition(topic, count)
        elif not isinstance(partition, int) or partition < 0:
            raise InvalidRequestError(None, f"partition must be a non-negative int, got {partition!r}")
        elif partition >= count:
            count = len((await self._metadata.topic(topic, refresh=True)).partitions)
            if partition >= count:
                raise UnknownPartitionError(
                    40402, f"topic {topic!r} has no partition {partition} (it has {count})"
                )
        if record_headers:
            size = record_size(key_bytes, value_bytes, record_headers)
        else:
            size = (
                RECORD_HEADER_SIZE
                + (len(key_bytes) if key_bytes else 0)
                + (len(value_bytes) if value_bytes else 0)
            )
        accumulator = self._accumulator
        if accumulator.buffered_bytes and accumulator.buffered_bytes + size > accumulator.buffer_bytes_max:
            await self._wait_for_room(size)
            now_ms = monotonic_ms()
        if timestamp_ms is None:
            timestamp_ms = time.time_ns() // 1_000_000
        future: asyncio.Future[RecordMetadata] = self._loop.create_future()
        record = (key_bytes, value_bytes, timestamp_ms, record_headers)  # a NewRecord, as a plain tuple
        if accumulator.append((topic, partition), record, size, future, now_ms):
            self._wakeup.set()
            # A batch opened or closed: let the sender run now. Without this a caller that never
            # suspends would starve it until the buffer fills.
            await asyncio.sleep(0)
        return future

    async def _wait_for_room(self, size: int) -> None:
        while not self._accumulator.has_room(size):
            self._progress.clear()
            await self._progress.wait()
            if self._closing:
                raise ProducerClosedError()

    async def send_and_wait(self, topic: str, value: Any = None, **kwargs: Any) -> RecordMetadata:
        """send() and wait for the record's delivery result."""
        return await (await self.send(topic, value, **kwargs))

    async def flush(self, timeout_ms: int | None = None) -> None:
        """Send every buffered record now and wait until each was acknowledged or failed.

        Failures are reported through each record's future, not raised here. Raises TimeoutError
        if `timeout_ms` passes first.
        """
        if self._sender is None or self._closed:
            return
        target = self._accumulator.begin_flush()
        self._wakeup.set()
        try:
            async with asyncio.timeout(None if timeout_ms is None else timeout_ms / 1000):
                while not self._accumulator.done_through(target):
                    if self._sender.done():  # only a bug ends it early: say so rather than hang
                        raise RuntimeError("the producer's sender task stopped") from self._sender.exception()
                    self._progress.clear()
                    await self._progress.wait()
        finally:
            self._accumulator.end_flush()

    async def close(self, timeout_ms: int | None = None) -> None:
        """Flush (up to `timeout_ms`), then stop. Records still unsent after the timeout fail."""
        if self._closed:
            return
        self._closing = True
        try:
            with contextlib.suppress(TimeoutError):
                await self.flush(timeout_ms)
        finally:
            self._closed = True
            for batch in self._accumulator.abort_queued():
                self._fail(batch, ProducerClosedError("the producer closed before the record was sent"))
            for task in list(self._requests):
                task.cancel()
            if self._sender is not None:
                self._sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._sender
            if self._requests:
                await asyncio.gather(*self._requests, return_exceptions=True)
            if self._sender is not None:
                self._progress.set()  # wake senders blocked on buffer room: they raise ProducerClosedError
            if self._owns_transport:
                await self._transport.close()

    async def partitions_for(self, topic: str) -> list[int]:
        metadata = await self._metadata.topic(topic)
        return [p.partition for p in metadata.partitions]

    # -- the sender task ----------------------------------------------------------------------------

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Event()
        self._sender = self._loop.create_task(self._run_sender(), name="raftka-producer")
        self._sender.add_done_callback(lambda _task: self._progress.set())

    async def _run_sender(self) -> None:
        accumulator = self._accumulator
        while True:
            self._wakeup.clear()
            if self.idempotent and self.producer_id is None:
                await self._init_producer_id()
            now = monotonic_ms()
            ready, expired = accumulator.drain(now)
            for batch in expired:
                self._fail(batch, accumulator.timeout_error(batch, batch.last_error))
            for batch in ready:
                self._maybe_rotate_sticky(batch)
                task = asyncio.create_task(self._send_batch(batch))
                self._requests.add(task)
                task.add_done_callback(self._requests.discard)
            if expired:
                self._on_progress()
            wake_ms = accumulator.next_wakeup_ms(now)
            if wake_ms is None:
                await self._wakeup.wait()
            elif wake_ms > now:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout((wake_ms - now) / 1000):
                        await self._wakeup.wait()

    async def _init_producer_id(self) -> None:
        """Get this producer's id (any node hands one out), retrying with backoff until one answers.
        Records waiting meanwhile still fail at their delivery timeout."""
        attempt = 0
        while True:
            try:
                document = (await self._metadata.request_any("POST", "/v1/producers", json={})).json()
                self.producer_id = int(document["producer_id"])
                log.debug("idempotent producer id %d", self.producer_id)
                return
            except (RaftkaError, KeyError, TypeError, ValueError) as exc:
                if isinstance(exc, RaftkaError) and not exc.retriable:
                    self._fail_all(exc)
                attempt += 1
                log.debug("no producer id yet (%s); retrying", exc)
            _, expired = self._accumulator.drain_expired(monotonic_ms())
            for batch in expired:
                self._fail(batch, self._accumulator.timeout_error(batch, batch.last_error))
            if expired:
                self._on_progress()
            await asyncio.sleep(self._accumulator.backoff_ms(attempt) / 1000)

    def _fail_all(self, error: RaftkaError) -> None:
        for batch in self._accumulator.abort_queued():
            self._fail(batch, error)
        self._on_progress()

    def _maybe_rotate_sticky(self, batch: ProducerBatch) -> None:
        metadata = self._metadata.cached(batch.tp.topic)
        if metadata is not None and metadata.partitions:
            self._sticky.maybe_rotate(batch.tp.topic, batch.tp.partition, len(metadata.partitions))

    async def _send_batch(self, batch: ProducerBatch) -> None:
        topic, partition = batch.tp
        try:
            exhausted = self._accumulator.epoch_exhausted(batch)
            if exhausted is not None:
                raise exhausted
            if batch.encoded is None:
                if self.idempotent:
                    batch.encoded = encode_batch(
                        batch.records,
                        now_ms=wall_clock_ms(),
                        producer_id=self.producer_id,
                        producer_epoch=batch.producer_epoch,
                        base_sequence=batch.base_sequence,
                    )
                else:
                    batch.encoded = encode_batch(batch.records, now_ms=wall_clock_ms())
            address = await self._metadata.leader_address(topic, partition)
            response = await self._transport.request(
                "POST",
                address,
                topic_path(topic, "partitions", partition, "records"),
                params={"acks": self.acks},
                body=batch.encoded,
                headers={"Content-Type": BATCH_CONTENT_TYPE},
                timeout_ms=self.request_timeout_ms,
            )
            document = response.json()
            base_offset = int(document["base_offset"])
        except RaftkaError as error:
            self._on_batch_error(batch, error)
        except (KeyError, TypeError, ValueError) as exc:
            self._on_batch_error(
                batch, RaftkaError(None, f"unexpected produce answer from the node: {exc!r}", retriable=False)
            )
        except asyncio.CancelledError:
            self._fail(batch, ProducerClosedError("the producer closed before the record was acknowledged"))
            raise
        else:
            self._accumulator.on_success(batch)
            for i, future in enumerate(batch.results):
                if not future.done():
                    offset = base_offset + i if base_offset >= 0 else -1
                    future.set_result(RecordMetadata(topic, partition, offset))
        finally:
            self._on_progress()

    def _on_batch_error(self, batch: ProducerBatch, error: RaftkaError) -> None:
        if error.invalidates_metadata:
            self._metadata.invalidate(batch.tp.topic)
        if self._closed:  # no retries after close: the accumulator is gone
            self._fail(batch, error)
            return
        outcome = self._accumulator.on_failure(batch, error, monotonic_ms())
        if isinstance(outcome, Fail):
            self._fail(batch, outcome.error)
        elif isinstance(outcome, Retry):
            log.debug("retrying %s after %s: %s", batch.tp, outcome.at_ms - monotonic_ms(), error)
        else:
            assert isinstance(outcome, Split)
            log.debug("splitting a batch of %d records for %s: %s", batch.record_count, batch.tp, error)

    def _fail(self, batch: ProducerBatch, error: RaftkaError) -> None:
        log.debug("%d record(s) for %s failed: %s", batch.record_count, batch.tp, error)
        for future in batch.results:
            if not future.done():
                future.set_exception(error)
                # Mark it retrieved: a caller that drops its futures must not get one asyncio
                # "exception was never retrieved" log line per record. Awaiting it still raises.
                future.exception()

    def _on_progress(self) -> None:
        self._progress.set()
        self._wakeup.set()
