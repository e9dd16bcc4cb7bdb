"""The producer's batching and retry decisions, as a pure core (no IO, no event loop, no clock).

Theory of operation
-------------------
Records are appended to the open batch of their partition. A batch closes when the next record would
push it past `batch_bytes_max`; it becomes *sendable* when it is closed, or `linger_ms` passed since its
first record, or a flush or close asks for everything now. `drain(now_ms)` hands out sendable batches
from the head of each partition's queue while that partition has fewer than `max_in_flight` requests
out, oldest first, so batches of one partition leave in the order their records were sent.

The shell (`Producer`) sends each drained batch and reports back: `on_success` frees its bytes,
`on_failure` decides between

- retry: a retriable error with time left before the batch's delivery deadline
  (`delivery_timeout_ms` after its first record); the batch goes back to the head of its queue and
  waits `retry_backoff_ms * 2**(attempts - 1)` (capped at `retry_backoff_max_ms`, with ±20% jitter
  from the seeded rng) before it is sendable again;
- split: the node said the batch is too large (41301) and it holds more than one record; it becomes
  two batches of half the records each, at the head of the queue, tried again at once;
- fail: anything else; every record of the batch fails with the error (or a DeliveryTimeoutError whose
  cause is the last error, when time ran out).

A batch waiting in a queue past its deadline fails in `drain` without being sent. A retried batch
goes back into its queue in creation order (before every batch created after it; the halves of a
split batch in the order of their records).

Idempotence (`idempotent=True`, the producer's default): each partition has a producer epoch and a
next sequence. A batch takes its (epoch, base sequence) when it is first drained and keeps them
through every retry, so the partition's leader recognises a retry of a batch it already appended
and answers with the original offsets (storage/producer_state.py); a batch that skips ahead is
refused as out of order (42203) and nothing is appended. So:

- a partition sends a retried batch only when none of its requests is in flight: after a failure
  the batches go again one by one, in sequence order;
- an out-of-order (42203) or unknown-producer (42204) answer while a batch with a lower sequence of
  the partition is still in flight or queued is retried: the earlier batch is missing, and comes
  first;
- the same answer for the partition's lowest outstanding sequence, a batch the node refused for good
  (a non-retriable error), or a batch split after it had a sequence, leaves a gap that no retry can
  fill: the partition *resets*. Once its requests are all back, its epoch goes up by one, its next
  sequence is 0, and every batch still queued takes a new sequence when drained. The leader takes a
  higher epoch starting at sequence 0 as a fresh start. Only batches the node never appended are
  renumbered: a sequence error says the batch is not in the log.
- a batch whose delivery timeout passes after an attempt with an unknown outcome (a timeout, a lost
  answer) fails without a reset: the next batch's answer settles it (appended: it follows; not:
  42203 at the lowest sequence, and a reset).

A new batch is sent only while it is fewer than 5 batches after the partition's oldest batch not yet
settled (acknowledged or failed for good), whatever `max_in_flight` allows: the leader remembers the
last five batches, and the oldest one's retry must still find itself among them.

Ordering: with idempotence, a partition's records are written in send order, retries included, with
up to `max_in_flight` (at most 5) requests in flight: the node refuses a batch that arrives before
its predecessor (concurrent HTTP requests travel on separate connections), and it is retried after
it. Without idempotence only `max_in_flight = 1` keeps the order.

Limits: a partition's epoch can go up 32767 times in one producer's life (every later batch of that
partition fails with ProducerFencedError); a request that the node still holds after the client gave
up on it (more than `request_timeout_ms`) and appends after a reset renumbered its batch would
duplicate it.

Memory is bounded: `has_room(size)` says whether the buffered bytes stay within `buffer_bytes_max`;
the shell waits for room before appending (a record larger than the whole buffer is let through alone).

Thread-safety: none; one producer uses it from one event loop.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from raftka.client.errors import (
    DeliveryTimeoutError,
    OutOfOrderSequenceError,
    ProducerFencedError,
    RaftkaError,
    RecordTooLargeError,
    UnknownProducerIdError,
)
from storage.record_batch import HEADER_SIZE, RECORD_HEADER_SIZE, NewRecord

_JITTER = 0.2  # ±20% on every backoff, so that producers behind one failure do not retry in lockstep
EPOCH_MAX = 2**15 - 1
SEQUENCE_MAX = 2**31 - 1
IDEMPOTENT_IN_FLIGHT_MAX = 5  # the node remembers a producer's last five batches per partition


def record_size(key: bytes | None, value: bytes | None, headers) -> int:
    """Bytes one record takes in an encoded batch (exact: the codec's fixed-width framing)."""
    size = RECORD_HEADER_SIZE
    if key:
        size += len(key)
    if value:
        size += len(value)
    for name, hvalue in headers:
        size += 6 + len(name.encode()) + (len(hvalue) if hvalue else 0)
    return size


class TopicPartition(NamedTuple):
    topic: str
    partition: int


@dataclass(eq=False)
class ProducerBatch:
    """Records bound for one partition, sent as one request; `results` are the shell's opaque handles."""

    tp: TopicPartition
    seq: int
    created_ms: int
    deadline_ms: int
    records: list[NewRecord | tuple] = field(default_factory=list)  # (key, value, timestamp_ms, headers)
    results: list[Any] = field(default_factory=list)
    size_bytes: int = HEADER_SIZE
    closed: bool = False
    attempts: int = 0
    retry_at_ms: int = 0
    last_error: RaftkaError | None = None
    encoded: bytes | None = None  # kept across retries: the bytes are the same every time
    producer_epoch: int = -1  # idempotence: set when first drained, kept through retries
    base_sequence: int = -1
    batch_number: int = -1  # the partition's count of sequenced batches when this one got its sequence
    order: tuple = ()  # where the batch's records stand in its partition: (seq,), a split half adds (0,)/(1,)

    def __post_init__(self) -> None:
        if not self.order:
            self.order = (self.seq,)

    @property
    def record_count(self) -> int:
        return len(self.records)


@dataclass
class PartitionSequence:
    """An idempotent producer's position on one partition."""

    epoch: int = 0
    next_sequence: int = 0
    reset_pending: bool = False
    in_flight: set = field(default_factory=set)  # the base sequences of the requests out now
    next_number: int = 0  # batches given a sequence so far, counted
    unacked: set = field(default_factory=set)  # numbers of the batches sent and not yet settled


class Retry(NamedTuple):
    at_ms: int


class Split(NamedTuple):
    parts: tuple[ProducerBatch, ProducerBatch]


class Fail(NamedTuple):
    error: RaftkaError


class RecordAccumulator:
    def __init__(
        self,
        *,
        batch_bytes_max: int,
        linger_ms: int,
        max_in_flight: int,
        delivery_timeout_ms: int,
        retry_backoff_ms: int,
        retry_backoff_max_ms: int,
        buffer_bytes_max: int,
        rng: random.Random | None = None,
        idempotent: bool = False,
    ):
        if batch_bytes_max <= HEADER_SIZE:
            raise ValueError(f"batch_bytes_max must be larger than a batch header ({HEADER_SIZE} bytes)")
        if linger_ms < 0:
            raise ValueError("linger_ms must be >= 0")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if idempotent and max_in_flight > IDEMPOTENT_IN_FLIGHT_MAX:
            raise ValueError(f"max_in_flight must be <= {IDEMPOTENT_IN_FLIGHT_MAX} with idempotence")
        if delivery_timeout_ms < 0:
            raise ValueError("delivery_timeout_ms must be >= 0")
        if retry_backoff_ms < 0 or retry_backoff_max_ms < retry_backoff_ms:
            raise ValueError("need 0 <= retry_backoff_ms <= retry_backoff_max_ms")
        if buffer_bytes_max < batch_bytes_max:
            raise ValueError("buffer_bytes_max must be at least batch_bytes_max")
        self.batch_bytes_max = batch_bytes_max
        self.linger_ms = linger_ms
        self.max_in_flight = max_in_flight
        self.delivery_timeout_ms = delivery_timeout_ms
        self.retry_backoff_ms = retry_backoff_ms
        self.retry_backoff_max_ms = retry_backoff_max_ms
        self.buffer_bytes_max = buffer_bytes_max
        self._rng = rng or random.Random()
        self.idempotent = idempotent
        self._sequences: dict[TopicPartition, PartitionSequence] = {}
        self._queues: dict[TopicPartition, deque[ProducerBatch]] = {}
        self._in_flight: dict[TopicPartition, int] = {}
        self._incomplete: dict[int, int] = {}  # batch seq -> batches with that seq not yet done
        self._next_seq = 0
        self._flushing = 0
        self.buffered_bytes = 0

    # -- appending ----------------------------------------------------------------------------------

    def has_room(self, size: int) -> bool:
        return self.buffered_bytes == 0 or self.buffered_bytes + size <= self.buffer_bytes_max

    def append(
        self, tp: tuple[str, int], record: NewRecord | tuple, size: int, result: Any, now_ms: int
    ) -> bool:
        """Add a record to its partition's open batch (opening one if needed).

        Returns True when the sender should look again: a batch was opened (its linger clock starts)
        or closed (it is sendable now).
        """
        queue = self._queues.get(tp)
        if queue is None:
            tp = TopicPartition(*tp)
            queue = self._queues[tp] = deque()
        batch = queue[-1] if queue else None
        wake = False
        if batch is not None and not batch.closed and batch.size_bytes + size > self.batch_bytes_max:
            batch.closed = True
            wake = True
        if batch is None or batch.closed:
            batch = self._new_batch(TopicPartition(*tp), now_ms)
            queue.append(batch)
            wake = True
        batch.records.append(record)
        batch.results.append(result)
        batch.size_bytes += size
        self.buffered_bytes += size
        if batch.size_bytes >= self.batch_bytes_max:
            batch.closed = True
            wake = True
        return wake

    def _new_batch(self, tp: TopicPartition, now_ms: int) -> ProducerBatch:
        seq = self._next_seq
        self._next_seq += 1
        self._incomplete[seq] = 1
        self.buffered_bytes += HEADER_SIZE
        return ProducerBatch(tp, seq, now_ms, now_ms + self.delivery_timeout_ms)

    # -- sending ------------------------------------------------------------------------------------

    def _sendable(self, batch: ProducerBatch, now_ms: int) -> bool:
        if batch.attempts:
            return now_ms >= batch.retry_at_ms
        return batch.closed or self._flushing > 0 or now_ms >= batch.created_ms + self.linger_ms

    def drain(self, now_ms: int) -> tuple[list[ProducerBatch], list[ProducerBatch]]:
        """(batches to send now, batches that expired in their queue and must fail)."""
        return self._drain(now_ms, send=True)

    def drain_expired(self, now_ms: int) -> tuple[list[ProducerBatch], list[ProducerBatch]]:
        """([], batches that expired in their queue): while nothing may be sent (no producer id yet)."""
        return self._drain(now_ms, send=False)

    def _drain(self, now_ms: int, send: bool) -> tuple[list[ProducerBatch], list[ProducerBatch]]:
        ready: list[ProducerBatch] = []
        expired: list[ProducerBatch] = []
        for tp, queue in self._queues.items():
            while queue and now_ms >= queue[0].deadline_ms:
                batch = queue.popleft()
                expired.append(batch)
            while send and queue and self._in_flight.get(tp, 0) < self.max_in_flight:
                batch = queue[0]
                if not self._sendable(batch, now_ms):
                    break
                if self.idempotent and not self._sequence(tp, batch, queue):
                    break
                queue.popleft()
                batch.closed = True
                self._in_flight[tp] = self._in_flight.get(tp, 0) + 1
                ready.append(batch)
        for batch in expired:
            self._finish(batch)
        return ready, expired

    def _sequence(self, tp: TopicPartition, batch: ProducerBatch, queue: deque) -> bool:
        """Idempotence: whether the head batch may go now, giving it its sequence when it has none."""
        state = self._sequences.get(tp)
        if state is None:
            state = self._sequences[tp] = PartitionSequence()
        if self._in_flight.get(tp, 0):
            if state.reset_pending or batch.attempts:
                return False  # after a failure, one request at a time until the gap is settled
        elif state.reset_pending:
            state.reset_pending = False
            state.epoch += 1
            state.next_sequence = 0
            state.unacked.clear()
            for queued in queue:
                queued.producer_epoch = queued.base_sequence = queued.batch_number = -1
                queued.encoded = None
        if batch.base_sequence < 0:
            if state.epoch > EPOCH_MAX:
                return True  # the shell fails it: see epoch_exhausted
            if self._window_full(state):
                return False
            batch.producer_epoch = state.epoch
            batch.base_sequence = state.next_sequence
            batch.batch_number = state.next_number
            batch.encoded = None
            state.next_sequence = (state.next_sequence + batch.record_count) % (SEQUENCE_MAX + 1)
            state.next_number += 1
            state.unacked.add(batch.batch_number)
        state.in_flight.add(batch.base_sequence)
        return True

    @staticmethod
    def _window_full(state: PartitionSequence) -> bool:
        """Whether a new batch would be 5 or more batches after the oldest one not yet settled.

        The leader remembers a producer's last five batches per partition; a retry of an older one is
        refused as out of order (and would be renumbered by a reset: a duplicate). Requests travel on
        separate HTTP connections, so later batches can succeed while an earlier one's answer is lost:
        counting requests in flight is not enough, the distance from the oldest unsettled batch is."""
        return bool(state.unacked) and state.next_number - min(state.unacked) >= IDEMPOTENT_IN_FLIGHT_MAX

    def _held_back(self, tp: TopicPartition, head: ProducerBatch) -> bool:
        """Idempotence: the head waits for the partition's requests to come back (not for a clock)."""
        if not self.idempotent or not self._in_flight.get(tp, 0):
            return False
        state = self._sequences.get(tp)
        if state is None:
            return False
        return bool(
            head.attempts or state.reset_pending or (head.base_sequence < 0 and self._window_full(state))
        )

    def epoch_exhausted(self, batch: ProducerBatch) -> ProducerFencedError | None:
        """The error for a batch of a partition whose epoch went past 32767 (None: it may be sent)."""
        if not self.idempotent or batch.base_sequence >= 0:
            return None
        return ProducerFencedError(
            None, f"{batch.tp.topic}-{batch.tp.partition}: its sequence was restarted {EPOCH_MAX} times"
        )

    def next_wakeup_ms(self, now_ms: int) -> int | None:
        """When drain() may next have work without any new event (None: only an event can make work)."""
        wake: int | None = None
        for tp, queue in self._queues.items():
            if not queue:
                continue
            head = queue[0]
            due = head.deadline_ms
            if self._in_flight.get(tp, 0) < self.max_in_flight and not self._held_back(tp, head):
                if head.attempts:
                    due = min(due, head.retry_at_ms)
                elif head.closed or self._flushing:
                    due = now_ms
                else:
                    due = min(due, head.created_ms + self.linger_ms)
            wake = due if wake is None else min(wake, due)
        return wake

    # -- outcomes -----------------------------------------------------------------------------------

    def on_success(self, batch: ProducerBatch) -> None:
        self._release(batch)
        self._finish(batch)

    def on_failure(self, batch: ProducerBatch, error: RaftkaError, now_ms: int) -> Retry | Split | Fail:
        """Decide what happens to a batch whose request failed; a Fail has left the accumulator."""
        self._release(batch)
        batch.last_error = error
        queue = self._queues.setdefault(batch.tp, deque())
        sequenced = self.idempotent and batch.base_sequence >= 0
        if isinstance(error, RecordTooLargeError) and batch.record_count > 1:
            parts = self._split(batch)
            for part in parts:
                self._requeue(queue, part)
            if sequenced:
                state = self._sequences[batch.tp]
                state.reset_pending = True
                state.unacked.discard(batch.batch_number)
            return Split(parts)
        retriable = error.retriable
        if sequenced and isinstance(error, OutOfOrderSequenceError | UnknownProducerIdError):
            retriable = True  # the batch is not in the log: after its predecessors, or after a reset
            if not self._lower_outstanding(batch, queue):
                self._sequences[batch.tp].reset_pending = True
        if retriable:
            backoff = self.backoff_ms(batch.attempts + 1)
            if now_ms + backoff < batch.deadline_ms:
                batch.attempts += 1
                batch.retry_at_ms = now_ms + backoff
                self._requeue(queue, batch)
                return Retry(batch.retry_at_ms)
            error = self.timeout_error(batch, error)
        elif sequenced:
            self._sequences[batch.tp].reset_pending = True  # refused for good: a gap
        self._finish(batch)
        return Fail(error)

    def _lower_outstanding(self, batch: ProducerBatch, queue: deque) -> bool:
        """Whether a batch of the partition with a lower sequence (same epoch) is in flight or queued."""
        state = self._sequences[batch.tp]
        if any(sequence < batch.base_sequence for sequence in state.in_flight):
            return True
        return any(
            0 <= b.base_sequence < batch.base_sequence and b.producer_epoch == batch.producer_epoch
            for b in queue
        )

    @staticmethod
    def _requeue(queue: deque, batch: ProducerBatch) -> None:
        """Put a retried batch (or a split half) back before every batch whose records come after."""
        for position, queued in enumerate(queue):
            if queued.order > batch.order:
                queue.insert(position, batch)
                return
        queue.append(batch)

    def timeout_error(self, batch: ProducerBatch, cause: RaftkaError | None) -> DeliveryTimeoutError:
        reason = f": {cause.message}" if cause is not None else ""
        error = DeliveryTimeoutError(
            cause.error_code if cause is not None else None,
            f"{batch.record_count} record(s) for {batch.tp.topic}-{batch.tp.partition} not delivered "
            f"within delivery_timeout_ms = {self.delivery_timeout_ms} after {batch.attempts + 1} "
            f"attempt(s){reason}",
        )
        error.__cause__ = cause
        return error

    def backoff_ms(self, attempt: int) -> int:
        """Exponential backoff for the attempt-th retry (1-based), capped, with jitter."""
        base = min(self.retry_backoff_ms * (2 ** (attempt - 1)), self.retry_backoff_max_ms)
        return max(0, round(base * (1 + self._rng.uniform(-_JITTER, _JITTER))))

    def _split(self, batch: ProducerBatch) -> tuple[ProducerBatch, ProducerBatch]:
        half = batch.record_count // 2
        parts = []
        for which, records, results in (
            (0, batch.records[:half], batch.results[:half]),
            (1, batch.records[half:], batch.results[half:]),
        ):
            part = ProducerBatch(
                batch.tp,
                batch.seq,
                batch.created_ms,
                batch.deadline_ms,
                records,
                results,
                closed=True,
                order=(*batch.order, which),
            )
            part.size_bytes = HEADER_SIZE + sum(record_size(r[0], r[1], r[3]) for r in records)
            parts.append(part)
        # The halves carry the bytes of the whole and each needs its own header.
        self.buffered_bytes += HEADER_SIZE
        self._incomplete[batch.seq] += 1
        return parts[0], parts[1]

    def _release(self, batch: ProducerBatch) -> None:
        count = self._in_flight.get(batch.tp, 0)
        assert count > 0, f"{batch.tp} has no request in flight to complete"
        self._in_flight[batch.tp] = count - 1
        if self.idempotent and batch.base_sequence >= 0:
            self._sequences[batch.tp].in_flight.discard(batch.base_sequence)

    def _finish(self, batch: ProducerBatch) -> None:
        if self.idempotent and batch.batch_number >= 0:
            self._sequences[batch.tp].unacked.discard(batch.batch_number)
        self.buffered_bytes -= batch.size_bytes
        assert self.buffered_bytes >= 0, "buffered bytes went negative"
        left = self._incomplete[batch.seq] - 1
        if left:
            self._incomplete[batch.seq] = left
        else:
            del self._incomplete[batch.seq]

    # -- flush and close ----------------------------------------------------------------------------

    def begin_flush(self) -> int:
        """Make every batch sendable now; returns the seq that flush waits for (see done_through)."""
        self._flushing += 1
        return self._next_seq - 1

    def end_flush(self) -> None:
        assert self._flushing > 0, "end_flush without begin_flush"
        self._flushing -= 1

    def done_through(self, seq: int) -> bool:
        """Whether every batch opened up to `seq` has completed (succeeded or failed)."""
        return not self._incomplete or min(self._incomplete) > seq

    def abort_queued(self) -> list[ProducerBatch]:
        """Take every batch that is not in flight out of the accumulator (close without waiting)."""
        aborted: list[ProducerBatch] = []
        for queue in self._queues.values():
            aborted.extend(queue)
            queue.clear()
        for batch in aborted:
            self._finish(batch)
        return aborted

    @property
    def is_empty(self) -> bool:
        return not self._incomplete

    def in_flight(self, tp: TopicPartition) -> int:
        return self._in_flight.get(tp, 0)
