"""Client pieces that need no node: partitioner, serializers, error mapping, the batching core, and the
Producer and Consumer shells against an in-memory fake of the node's HTTP API."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from typing import Any

import orjson
import pytest
import xxhash

from raftka import partition_for_key
from raftka.client._http import HttpResponse, parse_bootstrap, topic_path
from raftka.client.accumulator import Fail, RecordAccumulator, Retry, Split, TopicPartition
from raftka.client.consumer import Consumer
from raftka.client.errors import (
    DeliveryTimeoutError,
    InvalidRequestError,
    NodeNotReadyError,
    NoOffsetForPartitionError,
    NotEnoughReplicasError,
    NotLeaderError,
    OffsetOutOfRangeError,
    ProducerClosedError,
    RaftkaConnectionError,
    RaftkaError,
    RecordTooLargeError,
    RequestTimeoutError,
    SerializationError,
    ServerError,
    TopicExistsError,
    UnknownPartitionError,
    UnknownTopicError,
    error_for_code,
    error_from_response,
)
from raftka.client.producer import Producer, RecordMetadata
from raftka.client.serializers import (
    BytesDeserializer,
    BytesSerializer,
    JsonDeserializer,
    JsonSerializer,
    StringDeserializer,
    StringSerializer,
    resolve_deserializer,
    resolve_serializer,
)
from raftka.partitioner import StickyPartitioner
from storage.producer_state import ProducerStateManager, Verdict
from storage.record_batch import HEADER_SIZE, NewRecord, check_producer_batch, decode_batches, encode_batch

# -- partitioner ------------------------------------------------------------------------------------------


def test_partition_for_key_is_xxh3_modulo_partitions():
    for key in (b"", b"a", b"order-17", bytes(range(256))):
        for partitions in (1, 2, 3, 7, 64):
            assert partition_for_key(key, partitions) == xxhash.xxh3_64_intdigest(key) % partitions


def test_partition_for_key_spreads_keys():
    counts = [0] * 4
    for i in range(4000):
        counts[partition_for_key(f"key-{i}".encode(), 4)] += 1
    assert min(counts) > 800, counts


def test_partition_for_key_refuses_zero_partitions():
    with pytest.raises(ValueError):
        partition_for_key(b"k", 0)


def test_sticky_partitioner_sticks_until_its_batch_closes_then_rotates():
    sticky = StickyPartitioner(random.Random(7))
    first = sticky.partition("t", 3)
    assert {sticky.partition("t", 3) for _ in range(10)} == {first}
    sticky.maybe_rotate("t", (first + 1) % 3, 3)  # another partition's batch: no change
    assert sticky.partition("t", 3) == first
    seen = [first]
    for _ in range(5):
        sticky.maybe_rotate("t", seen[-1], 3)
        seen.append(sticky.partition("t", 3))
    assert seen[1:4] == [(first + 1) % 3, (first + 2) % 3, first]


def test_sticky_partitioner_rechooses_when_the_topic_shrinks_below_it():
    sticky = StickyPartitioner(random.Random(1))
    sticky._sticky["t"] = 5
    assert 0 <= sticky.partition("t", 2) < 2


# -- serializers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("serializer", "deserializer", "data", "encoded"),
    [
        (BytesSerializer(), BytesDeserializer(), b"\x00\xff", b"\x00\xff"),
        (StringSerializer(), StringDeserializer(), "héllo", "héllo".encode()),
        (JsonSerializer(), JsonDeserializer(), {"a": [1, 2.5, None, "x"]}, b'{"a":[1,2.5,null,"x"]}'),
        (JsonSerializer(), JsonDeserializer(), "text", b'"text"'),
    ],
)
def test_serializers_round_trip(serializer, deserializer, data, encoded):
    assert serializer.serialize("t", data) == encoded
    assert deserializer.deserialize("t", encoded) == data


@pytest.mark.parametrize("name", ["bytes", "str", "json"])
def test_none_is_null_both_ways(name):
    assert resolve_serializer(name).serialize("t", None) is None
    assert resolve_deserializer(name).deserialize("t", None) is None


def test_bytes_serializer_takes_bytes_like_and_refuses_str():
    assert BytesSerializer().serialize("t", bytearray(b"ab")) == b"ab"
    assert BytesSerializer().serialize("t", memoryview(b"cd")) == b"cd"
    with pytest.raises(TypeError, match="bytes"):
        BytesSerializer().serialize("t", "text")


def test_string_serializer_refuses_non_str():
    with pytest.raises(TypeError, match="str"):
        StringSerializer().serialize("t", 5)


def test_resolve_takes_names_instances_and_protocol_objects():
    assert isinstance(resolve_serializer(None), BytesSerializer)
    assert isinstance(resolve_serializer("json"), JsonSerializer)
    assert isinstance(resolve_deserializer("str"), StringDeserializer)

    class Upper:  # any object with the Serializer protocol's method: room for Avro later
        def serialize(self, topic: str, data: Any) -> bytes:
            return f"{topic}:{data}".upper().encode()

    custom = Upper()
    assert resolve_serializer(custom) is custom
    with pytest.raises(ValueError, match="unknown serializer"):
        resolve_serializer("avro")
    with pytest.raises(ValueError, match="unknown deserializer"):
        resolve_deserializer("xml")
    with pytest.raises(TypeError):
        resolve_serializer(42)


# -- error mapping ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "cls", "retriable"),
    [
        (40001, InvalidRequestError, False),
        (40401, UnknownTopicError, False),
        (40402, UnknownPartitionError, False),
        (40403, NotLeaderError, True),
        (40801, RequestTimeoutError, True),
        (40901, TopicExistsError, False),
        (41301, RecordTooLargeError, False),
        (41601, OffsetOutOfRangeError, False),
        (42201, InvalidRequestError, False),
        (50001, ServerError, True),
        (50002, ServerError, True),
        (50301, NotEnoughReplicasError, True),
        (50302, NodeNotReadyError, True),
        (50399, NodeNotReadyError, True),
        (50701, ServerError, True),
    ],
)
def test_error_codes_map_to_classes(code, cls, retriable):
    body = orjson.dumps({"error_code": code, "message": f"message {code}"})
    error = error_from_response(code // 100, body)
    assert type(error) is cls
    assert error.error_code == code
    assert error.message == f"message {code}"
    assert error.retriable is retriable
    assert isinstance(error, RaftkaError)


def test_offset_out_of_range_carries_the_valid_range():
    body = orjson.dumps(
        {
            "error_code": 41601,
            "message": "offset 99 is out of range",
            "log_start_offset": 3,
            "high_watermark": 10,
            "log_end_offset": 11,
        }
    )
    error = error_from_response(416, body)
    assert isinstance(error, OffsetOutOfRangeError)
    assert (error.log_start_offset, error.high_watermark, error.log_end_offset) == (3, 10, 11)


def test_an_answer_that_is_not_the_nodes_json_still_maps_by_status():
    error = error_from_response(503, b"<html>bad gateway</html>", where="GET /v1/cluster on h:1")
    assert isinstance(error, NodeNotReadyError)
    assert error.retriable
    assert "GET /v1/cluster on h:1" in error.message
    assert "bad gateway" in error.message
    empty = error_from_response(404, b"")
    assert not empty.retriable
    assert "not a Raftka node" in empty.message or "Raftka error body" in empty.message


def test_connection_errors_are_retriable_and_invalidate_metadata():
    error = RaftkaConnectionError("h:1", "connection refused")
    assert error.retriable
    assert error.invalidates_metadata
    assert error.error_code is None
    assert "h:1" in str(error)


# -- bootstrap addresses ----------------------------------------------------------------------------------


def test_parse_bootstrap(monkeypatch):
    monkeypatch.delenv("RAFTKA_BOOTSTRAP", raising=False)
    assert parse_bootstrap(None) == ["127.0.0.1:9092"]
    monkeypatch.setenv("RAFTKA_BOOTSTRAP", "a:1,b:2")
    assert parse_bootstrap(None) == ["a:1", "b:2"]
    assert parse_bootstrap("http://h:80/, k") == ["h:80", "k:9092"]
    assert parse_bootstrap(["x:1"]) == ["x:1"]
    for bad in ("h:notaport", "h:0", "h:70000", "", " , "):
        with pytest.raises(InvalidRequestError):
            parse_bootstrap(bad)


def test_topic_path_escapes_the_name():
    assert topic_path("orders", "partitions", 3, "records") == "/v1/topics/orders/partitions/3/records"
    assert topic_path("a/b") == "/v1/topics/a%2Fb"


# -- the batching core ------------------------------------------------------------------------------------

TP = TopicPartition("t", 0)


def accumulator(**overrides: Any) -> RecordAccumulator:
    settings: dict[str, Any] = {
        "batch_bytes_max": 1000,
        "linger_ms": 10,
        "max_in_flight": 2,
        "delivery_timeout_ms": 1000,
        "retry_backoff_ms": 100,
        "retry_backoff_max_ms": 400,
        "buffer_bytes_max": 5000,
        "rng": random.Random(3),
    }
    settings.update(overrides)
    return RecordAccumulator(**settings)


def add(acc: RecordAccumulator, now_ms: int, value: bytes = b"v" * 76, tp: tuple[str, int] = TP) -> bool:
    size = 24 + len(value)
    return acc.append(tp, (None, value, now_ms, ()), size, object(), now_ms)


def test_a_batch_waits_for_linger_then_is_sent():
    acc = accumulator()
    assert add(acc, 0) is True  # a new batch: the sender must start its linger clock
    assert add(acc, 1) is False
    assert acc.drain(5) == ([], [])
    assert acc.next_wakeup_ms(5) == 10
    ready, expired = acc.drain(10)
    assert [b.record_count for b in ready] == [2]
    assert expired == []


def test_a_full_batch_is_sent_without_waiting_for_linger():
    acc = accumulator(batch_bytes_max=HEADER_SIZE + 300)
    add(acc, 0)
    add(acc, 0)
    add(acc, 0)  # 3 x 100 bytes: exactly full
    assert add(acc, 0) is True  # the fourth opens a second batch
    ready, _ = acc.drain(0)
    assert [b.record_count for b in ready] == [3]
    assert ready[0].size_bytes == HEADER_SIZE + 300


def test_a_batch_that_fills_exactly_wakes_the_sender():
    acc = accumulator(batch_bytes_max=HEADER_SIZE + 200)
    add(acc, 0)
    assert add(acc, 0) is True


def test_max_in_flight_bounds_requests_per_partition_and_keeps_order():
    acc = accumulator(batch_bytes_max=HEADER_SIZE + 100, max_in_flight=2)
    for _ in range(5):
        add(acc, 0)
    ready, _ = acc.drain(100)
    assert [b.seq for b in ready] == [0, 1]
    assert acc.drain(100) == ([], [])
    acc.on_success(ready[0])
    more, _ = acc.drain(100)
    assert [b.seq for b in more] == [2]
    assert acc.in_flight(TP) == 2


def test_partitions_do_not_wait_for_each_other():
    acc = accumulator(max_in_flight=1)
    add(acc, 0, tp=("t", 0))
    add(acc, 0, tp=("t", 1))
    ready, _ = acc.drain(10)
    assert sorted(b.tp.partition for b in ready) == [0, 1]


def test_retriable_errors_back_off_exponentially_up_to_the_cap():
    acc = accumulator(delivery_timeout_ms=100_000)
    add(acc, 0)
    now = 10
    waits = []
    for _ in range(5):
        (batch,), _ = acc.drain(now)
        outcome = acc.on_failure(batch, NotLeaderError(40403, "moved"), now)
        assert isinstance(outcome, Retry)
        waits.append(outcome.at_ms - now)
        assert acc.drain(outcome.at_ms - 1) == ([], [])  # not before its backoff
        now = outcome.at_ms
    # 100, 200, 400, 400, 400 with +-20% jitter
    for wait, base in zip(waits, [100, 200, 400, 400, 400], strict=True):
        assert base * 0.8 <= wait <= base * 1.2, waits


def test_a_retried_batch_goes_first_again():
    acc = accumulator(batch_bytes_max=HEADER_SIZE + 100, max_in_flight=1, retry_backoff_ms=0)
    add(acc, 0)
    add(acc, 0)
    (first,), _ = acc.drain(0)
    acc.on_failure(first, NotEnoughReplicasError(50301, "isr"), 0)
    (again,), _ = acc.drain(0)
    assert again is first


def test_retries_stop_at_the_delivery_timeout():
    acc = accumulator(delivery_timeout_ms=300, retry_backoff_ms=100, retry_backoff_max_ms=100)
    add(acc, 0)
    (batch,), _ = acc.drain(10)
    assert isinstance(acc.on_failure(batch, NotLeaderError(40403, "x"), 10), Retry)
    (batch,), _ = acc.drain(200)
    outcome = acc.on_failure(batch, NotLeaderError(40403, "still moving"), 250)
    assert isinstance(outcome, Fail)
    assert isinstance(outcome.error, DeliveryTimeoutError)
    assert "still moving" in outcome.error.message
    assert isinstance(outcome.error.__cause__, NotLeaderError)
    assert acc.is_empty
    assert acc.buffered_bytes == 0


def test_non_retriable_errors_fail_at_once():
    acc = accumulator()
    add(acc, 0)
    (batch,), _ = acc.drain(10)
    outcome = acc.on_failure(batch, UnknownTopicError(40401, "gone"), 10)
    assert isinstance(outcome, Fail)
    assert isinstance(outcome.error, UnknownTopicError)
    assert acc.is_empty


def test_a_batch_stuck_in_its_queue_expires():
    acc = accumulator(max_in_flight=1, batch_bytes_max=HEADER_SIZE + 100, delivery_timeout_ms=500)
    add(acc, 0)
    add(acc, 0)
    (first,), _ = acc.drain(0)  # the second waits behind it
    ready, expired = acc.drain(500)
    assert ready == []
    assert [b.seq for b in expired] == [1]
    assert isinstance(acc.timeout_error(expired[0], None), DeliveryTimeoutError)
    acc.on_success(first)
    assert acc.is_empty


def test_a_batch_too_large_for_the_node_is_split_in_halves():
    acc = accumulator(batch_bytes_max=HEADER_SIZE + 500)
    for _ in range(5):
        add(acc, 0)
    (batch,), _ = acc.drain(10)
    outcome = acc.on_failure(batch, RecordTooLargeError(41301, "too large"), 10)
    assert isinstance(outcome, Split)
    assert [p.record_count for p in outcome.parts] == [2, 3]
    ready, _ = acc.drain(10)
    assert ready == list(outcome.parts)
    assert [r for part in ready for r in part.results] == batch.results
    acc.on_success(ready[0])
    assert not acc.done_through(batch.seq)
    acc.on_success(ready[1])
    assert acc.done_through(batch.seq)
    assert acc.buffered_bytes == 0


def test_a_single_record_too_large_fails():
    acc = accumulator()
    add(acc, 0)
    (batch,), _ = acc.drain(10)
    assert isinstance(acc.on_failure(batch, RecordTooLargeError(41301, "x"), 10), Fail)


def test_flush_makes_everything_sendable_and_tracks_completion():
    acc = accumulator(linger_ms=10_000)
    add(acc, 0)
    target = acc.begin_flush()
    assert acc.next_wakeup_ms(1) == 1
    (batch,), _ = acc.drain(1)
    add(acc, 2)  # after the flush began: not waited for
    assert not acc.done_through(target)
    acc.on_success(batch)
    assert acc.done_through(target)
    assert not acc.is_empty
    acc.end_flush()


def test_buffer_room_is_bounded_but_a_lone_large_record_passes():
    acc = accumulator(buffer_bytes_max=1000, batch_bytes_max=1000)
    assert acc.has_room(5000)  # empty: anything goes, else it could never be sent
    add(acc, 0, b"x" * 800)
    assert not acc.has_room(200)
    assert acc.has_room(100)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        accumulator(max_in_flight=0)
    with pytest.raises(ValueError):
        accumulator(batch_bytes_max=10)
    with pytest.raises(ValueError):
        accumulator(retry_backoff_ms=500, retry_backoff_max_ms=100)


# -- Producer and Consumer against a fake node --------------------------------------------------------------


def ok(document: Any) -> HttpResponse:
    return HttpResponse(200, {}, orjson.dumps(document))


class FakeNode:
    """The node's HTTP API, in memory: enough for the producer and consumer shells.

    `faults` is a queue of errors that the next produce requests raise, one each, before appending;
    `lost_answers` is how many of the next produce requests append and then lose their answer (a
    retriable timeout, as when a connection drops after the node appended). Idempotent batches go
    through the real sequence checks (storage.producer_state), as on a partition leader.
    """

    def __init__(self, topics: dict[str, int] | None = None):
        self.topics = topics or {"t": 3}
        self.logs: dict[tuple[str, int], list[tuple]] = {}
        self.faults: deque[RaftkaError] = deque()
        self.requests: list[tuple[str, str, dict]] = []
        self.gate: asyncio.Event | None = None  # when set, produce requests wait for it
        self.in_flight = 0
        self.in_flight_max = 0
        self.metadata_requests = 0
        self.lost_answers = 0
        self.next_producer_id = 0
        self.producer_states: dict[tuple[str, int], ProducerStateManager] = {}

    async def request(self, method: str, address: str, path: str, **kwargs: Any) -> HttpResponse:
        self.requests.append((method, path, kwargs))
        parts = path.strip("/").split("/")
        if path == "/v1/cluster":
            return ok({"cluster_id": "c", "controller_id": 1, "brokers": [{"id": 1, "address": "n1:1"}]})
        if path == "/v1/producers":
            self.next_producer_id += 1
            return ok({"producer_id": self.next_producer_id - 1, "producer_epoch": 0})
        topic = parts[2]
        if topic not in self.topics:
            raise UnknownTopicError(40401, f"unknown topic {topic!r}")
        if len(parts) == 3:
            self.metadata_requests += 1
            return ok(
                {
                    "name": topic,
                    "partitions": [
                        {"partition": p, "leader": 1, "replicas": [1], "isr": [1]}
                        for p in range(self.topics[topic])
                    ],
                }
            )
        partition = int(parts[4])
        log = self.logs.setdefault((topic, partition), [])
        if parts[5] == "offsets":
            return ok({"log_start_offset": 0, "high_watermark": len(log), "log_end_offset": len(log)})
        if method == "POST":
            state = self.producer_states.setdefault((topic, partition), ProducerStateManager(None))
            return await self._produce(log, partition, kwargs, state)
        return self._fetch(log, kwargs["params"])

    async def _produce(
        self, log: list, partition: int, kwargs: dict, state: ProducerStateManager
    ) -> HttpResponse:
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.faults:
                raise self.faults.popleft()
            header = check_producer_batch(kwargs["body"])
            if header.producer_id >= 0:
                check = state.check(
                    header.producer_id, header.producer_epoch, header.base_sequence, header.last_sequence
                )
                if check.verdict is Verdict.DUPLICATE:
                    answer = {"base_offset": check.first_offset, "last_offset": check.last_offset}
                    return ok({"partition": partition, **answer, "duplicate": True})
                if check.verdict is not Verdict.APPEND:
                    code = {Verdict.FENCED: 40902, Verdict.UNKNOWN_PRODUCER: 42204}.get(check.verdict, 42203)
                    raise error_for_code(code, check.message)
            records = decode_batches(kwargs["body"])
            base = len(log)
            log.extend((r.key, r.value, r.timestamp_ms, r.headers) for r in records)
            state.update(header._replace(base_offset=base))
            if self.lost_answers:
                self.lost_answers -= 1
                raise RequestTimeoutError(None, "the answer was lost (appended)")
            return ok({"partition": partition, "base_offset": base, "last_offset": len(log) - 1})
        finally:
            self.in_flight -= 1

    def _fetch(self, log: list, params: dict) -> HttpResponse:
        offset = int(params["offset"])
        if offset > len(log):
            raise OffsetOutOfRangeError(
                41601, "out of range", log_start_offset=0, high_watermark=len(log), log_end_offset=len(log)
            )
        # Serve from a batch boundary 2 records before the offset, as a real log may.
        start = max(0, offset - 2)
        if start >= len(log):
            return HttpResponse(200, {"X-Raftka-High-Watermark": str(len(log))}, b"")
        body = encode_batch([NewRecord(*r) for r in log[start:]], now_ms=0, base_offset=start)
        headers = {"X-Raftka-Next-Offset": str(len(log)), "X-Raftka-High-Watermark": str(len(log))}
        return HttpResponse(200, headers, body)

    async def close(self) -> None:
        pass


def producer(node: FakeNode, **options: Any) -> Producer:
    options.setdefault("linger_ms", 1)
    options.setdefault("retry_backoff_ms", 1)
    options.setdefault("retry_backoff_max_ms", 5)
    return Producer("n1:1", transport=node, rng=random.Random(5), **options)  # type: ignore[arg-type]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_producer_batches_per_partition_and_resolves_offsets_in_order():
    node = FakeNode({"t": 2})

    async def scenario():
        async with producer(node, linger_ms=50, value_serializer="str") as p:
            futures = [await p.send("t", f"v{i}", partition=i % 2) for i in range(10)]
            await p.flush()
            return [f.result() for f in futures]

    results = run(scenario())
    assert results[0] == RecordMetadata("t", 0, 0)
    assert [r.offset for r in results if r.partition == 0] == [0, 1, 2, 3, 4]
    assert [r.offset for r in results if r.partition == 1] == [0, 1, 2, 3, 4]
    assert [r[1] for r in node.logs[("t", 1)]] == [f"v{i}".encode() for i in range(1, 10, 2)]
    produce_requests = [r for r in node.requests if r[0] == "POST" and r[1].endswith("/records")]
    assert len(produce_requests) == 2  # one batch per partition: linger gathered them
    assert all(r[2]["params"] == {"acks": "all"} for r in produce_requests)
    assert all(r[2]["headers"]["Content-Type"] == "application/vnd.raftka.batch" for r in produce_requests)


def test_keyed_records_follow_the_partitioner_and_keyless_ones_stick_together():
    node = FakeNode({"t": 4})

    async def scenario():
        async with producer(node, key_serializer="str") as p:
            keyed = [await p.send("t", b"x", key=f"k{i}") for i in range(20)]
            keyless = [await p.send("t", b"y") for _ in range(5)]
            await p.flush()
            return [f.result() for f in keyed], [f.result() for f in keyless]

    keyed, keyless = run(scenario())
    for i, meta in enumerate(keyed):
        assert meta.partition == partition_for_key(f"k{i}".encode(), 4)
    assert len({m.partition for m in keyless}) == 1


def test_retriable_errors_are_retried_and_refresh_metadata():
    node = FakeNode({"t": 1})
    node.faults.extend(
        [
            NotLeaderError(40403, "not leader"),
            RaftkaConnectionError("n1:1", "connection refused"),
            NotEnoughReplicasError(50301, "isr too small"),
        ]
    )

    async def scenario():
        async with producer(node) as p:
            return await p.send_and_wait("t", b"v")

    assert run(scenario()) == RecordMetadata("t", 0, 0)
    assert not node.faults
    assert node.metadata_requests >= 3  # the first lookup, then a refresh after each stale-metadata error
    assert len(node.logs[("t", 0)]) == 1


def test_non_retriable_errors_fail_the_records_of_the_batch():
    node = FakeNode({"t": 1})
    node.faults.append(InvalidRequestError(42201, "bad batch"))

    async def scenario():
        async with producer(node, linger_ms=20) as p:
            futures = [await p.send("t", b"v") for _ in range(3)]
            await p.flush()  # failures are reported per record, not raised by flush
            return futures

    futures = run(scenario())
    for future in futures:
        with pytest.raises(InvalidRequestError, match="bad batch"):
            future.result()


def test_retries_end_with_a_delivery_timeout():
    node = FakeNode({"t": 1})
    node.faults.extend(NotEnoughReplicasError(50301, "isr too small") for _ in range(1000))

    async def scenario():
        async with producer(
            node, delivery_timeout_ms=300, request_timeout_ms=100, retry_backoff_max_ms=20
        ) as p:
            return await (await p.send("t", b"v"))

    with pytest.raises(DeliveryTimeoutError, match="isr too small"):
        run(scenario())


def test_a_batch_over_the_nodes_limit_is_split_and_delivered():
    node = FakeNode({"t": 1})
    node.faults.append(RecordTooLargeError(41301, "batch over max.message.bytes"))

    async def scenario():
        async with producer(node, linger_ms=20) as p:
            futures = [await p.send("t", str(i).encode()) for i in range(6)]
            await p.flush()
            return [f.result().offset for f in futures]

    assert run(scenario()) == [0, 1, 2, 3, 4, 5]
    assert [r[1] for r in node.logs[("t", 0)]] == [str(i).encode() for i in range(6)]


def test_in_flight_requests_per_partition_are_bounded():
    node = FakeNode({"t": 1})

    async def scenario():
        node.gate = asyncio.Event()
        async with producer(node, max_in_flight=2, batch_bytes_max=HEADER_SIZE + 30) as p:
            futures = [await p.send("t", b"x" * 6) for _ in range(6)]  # one record per batch
            for _ in range(500):
                if node.in_flight == 2:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # room for a third request to show up, if the bound leaked
            assert node.in_flight == 2
            node.gate.set()
            await p.flush()
            return [f.result().offset for f in futures]

    assert sorted(run(scenario())) == list(range(6))
    assert node.in_flight_max == 2


def test_send_to_an_unknown_topic_or_partition_raises_at_once():
    node = FakeNode({"t": 2})

    async def scenario():
        async with producer(node) as p:
            with pytest.raises(UnknownTopicError):
                await p.send("nope", b"v")
            with pytest.raises(UnknownPartitionError):
                await p.send("t", b"v", partition=2)
            with pytest.raises(TypeError):
                await p.send("t", "a str for the bytes serializer")

    run(scenario())


def test_close_flushes_and_later_sends_are_refused():
    node = FakeNode({"t": 1})

    async def scenario():
        p = producer(node, linger_ms=10_000)
        future = await p.send("t", b"v")
        await p.close()
        assert future.result().offset == 0
        with pytest.raises(ProducerClosedError):
            await p.send("t", b"w")

    run(scenario())


def test_close_with_a_timeout_fails_what_is_stuck():
    node = FakeNode({"t": 1})

    async def scenario():
        node.gate = asyncio.Event()  # never set: the node never answers
        p = producer(node)
        future = await p.send("t", b"v")
        await p.close(timeout_ms=50)
        with pytest.raises(ProducerClosedError):
            future.result()

    run(scenario())


def test_headers_and_timestamps_reach_the_batch():
    node = FakeNode({"t": 1})

    async def scenario():
        async with producer(node) as p:
            await p.send_and_wait("t", b"v", key=b"k", headers={"h": "1", "n": None}, timestamp_ms=1234)
            await p.send_and_wait("t", None, key=b"k", headers=[("b", b"\x00")])

    run(scenario())
    assert node.logs[("t", 0)] == [
        (b"k", b"v", 1234, (("h", b"1"), ("n", None))),
        (b"k", None, node.logs[("t", 0)][1][2], (("b", b"\x00"),)),
    ]


def consumer(node: FakeNode, **options: Any) -> Consumer:
    options.setdefault("fetch_max_wait_ms", 10)
    options.setdefault("retry_backoff_ms", 5)
    return Consumer("n1:1", transport=node, **options)  # type: ignore[arg-type]


def fill(node: FakeNode, topic: str, partition: int, count: int) -> None:
    log = node.logs.setdefault((topic, partition), [])
    for _ in range(count):
        log.append((None, f"v{len(log)}".encode(), 1000 + len(log), ()))


def test_consumer_skips_records_below_its_position():
    node = FakeNode({"t": 1})
    fill(node, "t", 0, 10)

    async def scenario():
        async with consumer(node, value_deserializer="str") as c:
            c.assign([("t", 0)])
            c.seek(("t", 0), 5)
            records = await c.poll(1000)
            return records, await c.position(("t", 0))

    records, position = run(scenario())
    assert [r.offset for r in records] == [5, 6, 7, 8, 9]  # the fake served from offset 3
    assert [r.value for r in records] == [f"v{i}" for i in range(5, 10)]
    assert position == 10


def test_consumer_seeks_to_beginning_and_end():
    node = FakeNode({"t": 1})
    fill(node, "t", 0, 4)

    async def scenario():
        async with consumer(node) as c:
            c.assign([("t", 0)])
            assert await c.position(("t", 0)) == 4  # default auto_offset_reset: latest
            assert await c.poll(50) == []
            c.seek_to_beginning()
            first = await c.poll(1000)
            c.seek_to_end(("t", 0))  # lazy, as in Kafka: resolved by position() or the next poll
            assert await c.position(("t", 0)) == 4
            fill(node, "t", 0, 1)
            return first, await c.poll(1000)

    first, last = run(scenario())
    assert [r.offset for r in first] == [0, 1, 2, 3]
    assert [r.offset for r in last] == [4]


@pytest.mark.parametrize(("policy", "expected"), [("earliest", [0, 1, 2]), ("latest", [])])
def test_offset_out_of_range_resets_by_policy(policy, expected):
    node = FakeNode({"t": 1})
    fill(node, "t", 0, 3)

    async def scenario():
        async with consumer(node, auto_offset_reset=policy) as c:
            c.assign([("t", 0)])
            c.seek(("t", 0), 50)
            records = await c.poll(300)
            return [r.offset for r in records], await c.position(("t", 0))

    offsets, position = run(scenario())
    assert offsets == expected
    assert position == 3


def test_offset_out_of_range_raises_with_the_error_policy_until_a_seek():
    node = FakeNode({"t": 1})
    fill(node, "t", 0, 3)

    async def scenario():
        async with consumer(node, auto_offset_reset="error") as c:
            c.assign([("t", 0)])
            with pytest.raises(NoOffsetForPartitionError):
                await c.poll(100)
            c.seek(("t", 0), 50)
            with pytest.raises(OffsetOutOfRangeError) as caught:
                await c.poll(1000)
            assert caught.value.high_watermark == 3
            with pytest.raises(OffsetOutOfRangeError):
                await c.poll(100)
            c.seek(("t", 0), 1)
            return [r.offset for r in await c.poll(1000)]

    assert run(scenario()) == [1, 2]


def test_a_record_the_deserializer_refuses_raises_and_can_be_skipped():
    node = FakeNode({"t": 1})
    node.logs[("t", 0)] = [(None, b'{"a":1}', 0, ()), (None, b"not json", 0, ()), (None, b"[2]", 0, ())]

    async def scenario():
        async with consumer(node, value_deserializer="json", auto_offset_reset="earliest") as c:
            c.assign([("t", 0)])
            first = await c.poll(1000)
            with pytest.raises(SerializationError, match="offset 1"):
                await c.poll(1000)
            c.seek(("t", 0), 2)
            return first, await c.poll(1000)

    first, rest = run(scenario())
    assert [r.value for r in first] == [{"a": 1}]
    assert [r.value for r in rest] == [[2]]


def test_consumer_retries_through_retriable_fetch_errors():
    node = FakeNode({"t": 1})
    fill(node, "t", 0, 2)
    original = node.request
    failures = deque([NotLeaderError(40403, "moving"), RaftkaConnectionError("n1:1", "refused")])

    async def flaky(method: str, address: str, path: str, **kwargs: Any) -> HttpResponse:
        if path.endswith("/records") and failures:
            raise failures.popleft()
        return await original(method, address, path, **kwargs)

    node.request = flaky  # type: ignore[method-assign]

    async def scenario():
        async with consumer(node, auto_offset_reset="earliest") as c:
            c.assign([("t", 0)])
            records = []
            for _ in range(20):
                records += await c.poll(100)
                if len(records) == 2:
                    break
            return [r.offset for r in records]

    assert run(scenario()) == [0, 1]
    assert not failures


def test_poll_without_new_records_returns_empty_after_the_timeout():
    node = FakeNode({"t": 1})

    async def scenario():
        async with consumer(node) as c:
            c.assign([("t", 0)])
            loop = asyncio.get_running_loop()
            started = loop.time()
            records = await c.poll(120)
            return records, loop.time() - started

    records, elapsed = run(scenario())
    assert records == []
    assert 0.1 <= elapsed < 2.0


def test_max_records_caps_a_poll():
    node = FakeNode({"t": 1})
    fill(node, "t", 0, 10)

    async def scenario():
        async with consumer(node, auto_offset_reset="earliest") as c:
            c.assign([("t", 0)])
            first = await c.poll(1000, max_records=4)
            second = await c.poll(1000)
            return [r.offset for r in first], [r.offset for r in second]

    assert run(scenario()) == ([0, 1, 2, 3], [4, 5, 6, 7, 8, 9])


# -- the idempotent producer (the default) --------------------------------------------------------------


def small_batches(node: FakeNode, **options: Any) -> Producer:
    """A producer whose batches hold 2 records of 10-byte values, so a few sends make many requests."""
    return producer(node, batch_bytes_max=HEADER_SIZE + 2 * 40, value_serializer="str", **options)


def values_in(node: FakeNode, topic: str = "t", partition: int = 0) -> list[str]:
    return [r[1].decode() for r in node.logs.get((topic, partition), [])]


def test_idempotent_retries_after_lost_answers_write_each_record_once_in_order():
    node = FakeNode({"t": 2})
    node.lost_answers = 4  # the first four produce requests append, then their answers are lost

    async def scenario():
        async with small_batches(node) as p:
            futures = [await p.send("t", f"value-{i:04d}", partition=i % 2) for i in range(40)]
            await p.flush()
            return [f.result() for f in futures]

    results = run(scenario())
    assert node.lost_answers == 0
    for partition in (0, 1):
        wanted = [f"value-{i:04d}" for i in range(partition, 40, 2)]
        assert values_in(node, "t", partition) == wanted  # no duplicate, send order
        offsets = [r.offset for r in results if r.partition == partition]
        assert offsets == list(range(20))  # a retry answered by the node gets the original offsets
    batches = [r for r in node.requests if r[1].endswith("/records")]
    assert len(batches) > 20  # 20 batches, plus the retries of the lost answers
    assert [r for r in node.requests if r[1] == "/v1/producers"] == [("POST", "/v1/producers", {"json": {}})]


def test_a_failed_batch_with_later_ones_in_flight_keeps_the_order():
    """Batch 1 of 5 in flight is refused (not leader, nothing appended); the node refuses 2-5 as out of
    order (42203); the producer sends them again after 1, in order, and nothing is lost or doubled."""
    node = FakeNode({"t": 1})

    async def scenario():
        async with small_batches(node) as p:
            node.gate = asyncio.Event()
            futures = [await p.send("t", f"value-{i:04d}") for i in range(10)]
            for _ in range(50):
                if node.in_flight == 5:
                    break
                await asyncio.sleep(0.01)
            assert node.in_flight == 5  # five 2-record batches wait at the node
            node.faults.append(NotLeaderError(40403, "not leader"))
            node.gate.set()
            node.gate = None
            await p.flush()
            return [f.result() for f in futures]

    results = run(scenario())
    assert values_in(node) == [f"value-{i:04d}" for i in range(10)]
    assert [r.offset for r in results] == list(range(10))
    assert node.producer_states[("t", 0)].producers[0].epoch == 0  # settled by retries, no reset


def test_a_batch_refused_for_good_resets_the_partition_sequence():
    """A non-retriable refusal leaves a gap no retry fills: the later batches get 42203 at the lowest
    outstanding sequence, the partition's epoch goes up, and they are delivered from sequence 0."""
    node = FakeNode({"t": 1})

    async def scenario():
        # A batch leaves when the next record does not fit or at flush, not after a 1 ms linger: the
        # refused pair is then one batch. (CI once sent the first record alone after the linger, a
        # slow moment between the two sends, and the second was delivered.)
        async with small_batches(node, max_in_flight=1, linger_ms=10_000) as p:
            first = [await p.send("t", f"value-{i:04d}") for i in range(2)]
            await p.flush()
            node.faults.append(InvalidRequestError(42201, "refused"))
            refused = [await p.send("t", f"value-{i:04d}") for i in range(2, 4)]
            await p.flush()
            later = [await p.send("t", f"value-{i:04d}") for i in range(4, 8)]
            await p.flush()
            return first, refused, later

    first, refused, later = run(scenario())
    assert [f.result().offset for f in first] == [0, 1]
    assert all(isinstance(f.exception(), InvalidRequestError) for f in refused)
    assert [f.result().offset for f in later] == [2, 3, 4, 5]
    assert values_in(node) == ["value-0000", "value-0001"] + [f"value-{i:04d}" for i in range(4, 8)]
    state = node.producer_states[("t", 0)].producers[0]
    assert state.epoch == 1 and state.last_sequence == 3  # the reset: epoch 1, sequences 0-3


def test_a_partition_that_lost_the_producer_state_starts_again_at_sequence_0():
    node = FakeNode({"t": 1})

    async def scenario():
        async with small_batches(node) as p:
            await (await p.send("t", "value-0000"))
            node.producer_states.clear()  # expired on the node (42204 for the next batch)
            return await (await p.send("t", "value-0001"))

    assert run(scenario()) == RecordMetadata("t", 0, 1)
    assert values_in(node) == ["value-0000", "value-0001"]
    assert node.producer_states[("t", 0)].producers[0].epoch == 1


def test_idempotence_settings_are_checked():
    with pytest.raises(ValueError, match="acks='all'"):
        Producer("n1:1", acks=1)
    with pytest.raises(ValueError, match="max_in_flight must be <= 5"):
        Producer("n1:1", max_in_flight=6)
    assert Producer("n1:1", acks=1, enable_idempotence=False).idempotent is False
    node = FakeNode({"t": 1})

    async def plain():
        async with producer(node, acks=1, enable_idempotence=False) as p:
            return await p.send_and_wait("t", b"v")

    assert run(plain()) == RecordMetadata("t", 0, 0)
    assert not any(r[1] == "/v1/producers" for r in node.requests)
    assert check_producer_batch(node.requests[-1][2]["body"]).producer_id == -1


def test_retried_batches_go_back_in_creation_order():
    acc = accumulator(
        batch_bytes_max=HEADER_SIZE + 100, max_in_flight=3, idempotent=True, delivery_timeout_ms=100_000
    )
    tp = ("t", 0)
    for i in range(3):
        acc.append(tp, (None, b"x" * 80, 0, ()), 90, i, now_ms=0)
    ready, _ = acc.drain(now_ms=100)
    assert [b.base_sequence for b in ready] == [0, 1, 2]
    error = NotLeaderError(40403, "not leader")
    for batch in (ready[2], ready[0], ready[1]):  # answers arrive in another order
        assert isinstance(acc.on_failure(batch, error, now_ms=100), Retry)
    again, _ = acc.drain(now_ms=10_000)
    assert [b.base_sequence for b in again] == [0]  # after a failure: one at a time, in sequence order
    acc.on_success(again[0])
    again, _ = acc.drain(now_ms=10_000)
    assert [b.base_sequence for b in again] == [1]


def test_a_new_batch_waits_while_it_would_be_five_after_the_oldest_unsettled_one():
    """Regression: with answers arriving out of order (separate HTTP connections), batches 1-4
    succeeded while batch 0's answer was lost, so batch 5 went out; the leader then remembered 1-5
    only, refused the retry of 0 as out of order, and a reset wrote batch 0 a second time."""
    acc = accumulator(
        batch_bytes_max=HEADER_SIZE + 100, max_in_flight=5, idempotent=True, delivery_timeout_ms=100_000
    )
    tp = ("t", 0)
    for i in range(7):
        acc.append(tp, (None, b"x" * 80, 0, ()), 90, i, now_ms=0)
    ready, _ = acc.drain(now_ms=100)
    assert [b.base_sequence for b in ready] == [0, 1, 2, 3, 4]
    acc.on_success(ready[1])  # a later answer first: one request fewer in flight
    assert acc.drain(now_ms=100)[0] == []  # but batch 5 would be the 6th since batch 0: wait
    assert acc.next_wakeup_ms(100) == ready[0].deadline_ms  # no busy loop: an answer wakes the sender
    assert isinstance(
        acc.on_failure(ready[0], RaftkaConnectionError("n1:1", "lost answer"), now_ms=100), Retry
    )
    again, _ = acc.drain(now_ms=10_000)
    assert again == []  # the retry of 0 waits for the others, and nothing new goes out
    for batch in ready[2:]:
        acc.on_success(batch)
    again, _ = acc.drain(now_ms=10_000)
    assert [b.base_sequence for b in again] == [0]  # the retry, alone
    acc.on_success(again[0])
    later, _ = acc.drain(now_ms=10_000)
    assert [b.base_sequence for b in later] == [5, 6]
