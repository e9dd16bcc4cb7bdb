"""`Consumer.poll_batches` against a real node process: the columns hold every field of every record,
and `poll()` and `poll_batches()` share one buffer (positions, seeks in the middle of a batch,
`max_records` cutting a fetched chunk, deserializers and their refusals, compaction gaps, the round
robin, the fetch read ahead). Answers no real node gives (a damaged batch, a wrong next offset, a batch
starting before the read ahead's offset) come from the in-memory fake node of test_client_units.

One node serves the whole module (started once, with a fast log cleaner); each test works in topics of
its own. Batches are produced whole on the binary path, so each test knows where they begin and end.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from raftka import Consumer, ConsumerRecord, SyncConsumer
from raftka.client import ConsumerBatch, TopicPartition
from raftka.client._http import HttpResponse
from raftka.client.errors import SerializationError
from storage.record_batch import NewRecord, decode_batches, encode_batch
from tests.nodeproc import NodeProcess
from tests.test_client import new_topic, run
from tests.test_client_units import FakeNode, fill

NOW = time.time_ns() // 1_000_000  # a timestamp older than segment.ms would roll a segment per batch


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    data = tmp_path_factory.mktemp("consumer-batches") / "data"
    process = NodeProcess(str(data), "--cleaner-interval-ms", "200").start()
    yield process
    assert process.stop() == 0, process.output()


def produce(node: NodeProcess, topic: str, records: list[NewRecord], partition: int = 0) -> None:
    """One batch, as it is: the node appends it whole."""
    status, answer, _ = node.request(
        "POST",
        f"/v1/topics/{topic}/partitions/{partition}/records?acks=all",
        encode_batch(records, now_ms=NOW),
        {"Content-Type": "application/vnd.raftka.batch"},
    )
    assert status == 200, answer


def same_layout(first: int, count: int) -> list[NewRecord]:
    """Records that share one layout (the decoder's fast path): keys and values of fixed length."""
    return [NewRecord(b"k%04d" % i, b"value-%06d" % i, NOW + i % 3) for i in range(first, first + count)]


def records_of(batches: list[ConsumerBatch]) -> list[ConsumerRecord]:
    return [record for batch in batches for record in batch]


async def poll_batches_until(consumer: Consumer, count: int, **kwargs: Any) -> list[ConsumerBatch]:
    batches: list[ConsumerBatch] = []
    deadline = time.monotonic() + 10
    while sum(map(len, batches)) < count and time.monotonic() < deadline:
        batches += await consumer.poll_batches(500, **kwargs)
    return batches


def test_a_batch_holds_every_field_of_every_record_column_by_column(node):
    topic = new_topic(node)
    mixed = [
        NewRecord(b"k%d" % i, None if i == 4 else b"v" * i, NOW + 7 * i, [("h", b"%d" % i)] if i % 3 else ())
        for i in range(10)
    ]
    produce(node, topic, mixed)  # decoded record by record
    produce(node, topic, same_layout(10, 40))  # decoded by strided slices

    async def scenario():
        async with Consumer(node.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([(topic, 0)])
            return await poll_batches_until(consumer, 50)

    batches = run(scenario())
    assert [(b.topic, b.partition, b.offsets) for b in batches] == [
        (topic, 0, range(10)),
        (topic, 0, range(10, 50)),
    ]
    expected = mixed + same_layout(10, 40)
    assert [k for b in batches for k in b.keys] == [r.key for r in expected]
    assert [v for b in batches for v in b.values] == [r.value for r in expected]
    assert [t for b in batches for t in b.timestamps_ms] == [r.timestamp_ms for r in expected]
    assert [h for b in batches for h in b.headers] == [tuple(r.headers) for r in expected]
    assert records_of(batches) == [
        ConsumerRecord(topic, 0, i, r.timestamp_ms, r.key, r.value, tuple(r.headers))
        for i, r in enumerate(expected)
    ]


def test_deserializers_apply_to_whole_columns(node):
    topic = new_topic(node)
    produce(node, topic, [NewRecord(b"k%d" % i, orjson.dumps({"i": i}), NOW) for i in range(20)])
    produce(node, topic, [NewRecord(None, None, NOW)])  # a null key and a tombstone stay None

    with SyncConsumer(
        node.address, key_deserializer="str", value_deserializer="json", auto_offset_reset="earliest"
    ) as consumer:
        consumer.assign([(topic, 0)])
        batches: list[ConsumerBatch] = []
        for _ in range(20):
            batches += consumer.poll_batches(500)
            if sum(map(len, batches)) == 21:
                break
    assert [k for b in batches for k in b.keys] == [f"k{i}" for i in range(20)] + [None]
    assert [v for b in batches for v in b.values] == [{"i": i} for i in range(20)] + [None]


def test_poll_and_poll_batches_share_one_buffer(node):
    topic = new_topic(node)
    produce(node, topic, same_layout(0, 60))
    produce(node, topic, same_layout(60, 40))

    async def scenario():
        async with Consumer(node.address, auto_offset_reset="earliest", value_deserializer="str") as consumer:
            tp = (topic, 0)
            consumer.assign([tp])
            seen = []
            for step, take in enumerate([10, 25, 30, 1000]):
                if step % 2:
                    got = records_of(await consumer.poll_batches(5000, max_records=take))
                else:
                    got = await consumer.poll(5000, max_records=take)
                seen.append(([r.offset for r in got], await consumer.position(tp)))
            return seen

    seen = run(scenario())
    assert seen == [
        (list(range(0, 10)), 10),
        (list(range(10, 35)), 35),
        (list(range(35, 65)), 65),  # across the boundary of the two produced batches
        (list(range(65, 100)), 100),
    ]


def test_max_records_cuts_a_fetched_chunk_into_consecutive_batches(node):
    topic = new_topic(node, partitions=2)
    for partition in (0, 1):
        produce(node, topic, same_layout(0, 50), partition)

    async def scenario():
        async with Consumer(node.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([(topic, 0), (topic, 1)])
            calls = []  # per poll: (batch, the partition's position after the poll)
            while sum(len(batch) for call in calls for batch, _ in call) < 100:
                batches = await consumer.poll_batches(5000, max_records=7)
                calls.append([(b, await consumer.position((topic, b.partition))) for b in batches])
            return calls

    calls = run(scenario())
    assert all(sum(len(batch) for batch, _ in call) <= 7 for call in calls)
    for partition in (0, 1):
        mine = [
            (batch, position) for call in calls for batch, position in call if batch.partition == partition
        ]
        assert len(mine) >= 8  # 50 records, 7 at the most per poll
        assert [offset for batch, _ in mine for offset in batch.offsets] == list(range(50))
        assert all(type(batch.offsets) is range for batch, _ in mine)
        assert [position for _, position in mine] == [batch.offsets[-1] + 1 for batch, _ in mine]


def test_a_finished_fetch_is_served_while_another_partition_has_records_left(node):
    topic = new_topic(node, partitions=2)
    produce(node, topic, same_layout(0, 200), partition=1)
    produce(node, topic, same_layout(0, 20), partition=0)

    async def scenario():
        async with Consumer(node.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([(topic, 1)])
            await poll_batches_until(consumer, 1, max_records=10)  # partition 1 buffers 190 more
            consumer.assign([(topic, 0), (topic, 1)])
            consumer.seek((topic, 0), 0)
            served = []  # the partition of every batch, in order
            while served.count(0) == 0 or sum(1 for p in served if p == 1) < 19:
                served += [batch.partition for batch in await consumer.poll_batches(1000, max_records=10)]
                await asyncio.sleep(0.02)  # room for partition 0's fetch: a poll with records never waits
            return served

    served = run(scenario())
    assert 1 in served[served.index(0) :], f"partition 0 waited until partition 1 was drained: {served}"


def test_a_seek_into_the_middle_of_a_batch_starts_there(node):
    topic = new_topic(node)
    produce(node, topic, same_layout(0, 50))
    produce(node, topic, same_layout(50, 50))

    async def scenario():
        async with Consumer(node.address, auto_offset_reset="earliest") as consumer:
            tp = (topic, 0)
            consumer.assign([tp])
            consumer.seek(tp, 20)  # the node serves the batch from offset 0: the cursor starts past 20
            first = await poll_batches_until(consumer, 80)
            consumer.seek(tp, 73)
            second = await poll_batches_until(consumer, 1, max_records=5)
            consumer.seek(tp, 3)  # back, while records from 78 on are still buffered
            third = await poll_batches_until(consumer, 97)
            return first, second, third, await consumer.position(tp)

    first, second, third, position = run(scenario())
    assert [r.offset for r in records_of(first)] == list(range(20, 100))
    assert [b.offsets for b in second] == [range(73, 78)]
    assert [r.value for r in records_of(second)] == [b"value-%06d" % i for i in range(73, 78)]
    assert [r.offset for r in records_of(third)] == list(range(3, 100))
    assert position == 100


@pytest.mark.parametrize(
    ("refused", "cause"), [("key", UnicodeDecodeError), ("value", orjson.JSONDecodeError)]
)
def test_a_refused_record_ends_the_poll_and_stays_until_a_seek(node, refused, cause):
    topic = new_topic(node, partitions=2)
    records = [NewRecord(b"k%d" % i, orjson.dumps(i), NOW) for i in range(200)]
    bad = {"key": records[12]._replace(key=b"\xff"), "value": records[12]._replace(value=b"not json")}
    produce(node, topic, [*records[:12], bad[refused], *records[13:20]], partition=0)
    produce(node, topic, records, partition=1)

    async def scenario():
        async with Consumer(
            node.address, auto_offset_reset="earliest", key_deserializer="str", value_deserializer="json"
        ) as consumer:
            consumer.assign([(topic, 1)])
            await poll_batches_until(consumer, 1, max_records=15)  # partition 1 holds records from now on
            consumer.assign([(topic, 0), (topic, 1)])
            calls = []
            while sum(len(b) for call in calls for b in call if b.partition == 0) < 12:
                calls.append(await consumer.poll_batches(1000, max_records=15))
                await asyncio.sleep(0.02)  # room for partition 0's fetch: a poll with records never waits
            assert await consumer.position((topic, 0)) == 12
            for poll in (consumer.poll_batches, consumer.poll):  # the record stays in place
                with pytest.raises(SerializationError, match=f"{topic}-0 offset 12") as caught:
                    while True:  # partition 1 hands out records on every other poll
                        await poll(1000)
                assert isinstance(caught.value.__cause__, cause)
            assert await consumer.position((topic, 0)) == 12
            consumer.seek((topic, 0), 13)
            consumer.assign([(topic, 0)])
            return calls, await poll_batches_until(consumer, 7)

    calls, after = run(scenario())
    stopped = [call for call in calls if any(b.partition == 0 for b in call)]
    assert [[b.partition for b in call] for call in stopped] == [[0]]  # the poll ended at the refused record
    assert [b.offsets for b in stopped[0]] == [range(12)]
    assert [list(b.values) for b in after] == [list(range(13, 20))]
    assert [list(b.keys) for b in after] == [[f"k{i}" for i in range(13, 20)]]


def test_compaction_gaps_come_out_as_offset_lists(node):
    topic = new_topic(
        node, **{"segment.bytes": 1024, "cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01"}
    )
    latest: dict[bytes, int] = {}
    for first in range(0, 200, 10):  # every third key is written once; the others over and over
        keys = [b"once-%d" % i if i % 3 == 0 else b"key-%d" % (i % 8) for i in range(first, first + 10)]
        latest.update((key, i) for i, key in enumerate(keys, first))
        produce(node, topic, [NewRecord(key, b"%d" % i, NOW + i) for i, key in enumerate(keys, first)])

    async def read_everything() -> tuple[list[ConsumerBatch], int]:
        async with Consumer(node.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([(topic, 0)])
            batches: list[ConsumerBatch] = []
            while await consumer.position((topic, 0)) < 200:
                batches += await consumer.poll_batches(1000)
            return batches, await consumer.position((topic, 0))

    deadline = time.monotonic() + 20
    while True:  # until the cleaner has left gaps inside batches
        batches, position = run(read_everything())
        if any(type(b.offsets) is list for b in batches) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert any(type(b.offsets) is list for b in batches), "the cleaner did not compact the topic in time"
    assert position == 200
    offsets = [offset for batch in batches for offset in batch.offsets]
    assert len(offsets) < 200
    assert offsets == sorted(set(offsets))
    for batch in batches:
        assert [r.offset for r in batch] == list(batch.offsets)
        assert len(batch.keys) == len(batch.values) == len(batch.timestamps_ms) == len(batch)
        assert [int(v) for v in batch.values] == list(batch.offsets)  # each value is its offset
        assert [t - NOW for t in batch.timestamps_ms] == list(batch.offsets)
    survivors = {key: int(value) for b in batches for key, value in zip(b.keys, b.values, strict=True)}
    assert survivors == latest  # the latest value of every key survives


def test_the_read_ahead_keeps_records_in_order_and_at_most_two_fetches_held(node):
    topic = new_topic(node)
    for first in range(0, 400, 20):
        produce(node, topic, same_layout(first, 20))  # 885 bytes each: two batches per 2,000-byte fetch

    async def scenario():
        async with Consumer(node.address, auto_offset_reset="earliest", fetch_bytes_max=2000) as consumer:
            tp = (topic, 0)
            consumer.assign([tp])
            state = consumer._states[TopicPartition(topic, 0)]
            offsets: list[int] = []
            held_max = 0
            while len(offsets) < 400:
                for batch in await consumer.poll_batches(1000, max_records=7):
                    offsets += batch.offsets
                assert await consumer.position(tp) == offsets[-1] + 1
                await asyncio.sleep(0.005)  # room for the read ahead to land while records are buffered
                held = sum(len(chunk.offsets) for chunk in state.buffer) - state.cursor
                held_max = max(held_max, held + (40 if state.task is not None else 0))
            return offsets, held_max

    offsets, held_max = run(scenario())
    assert offsets == list(range(400))
    assert 40 < held_max <= 80  # the buffer and one more fetch (in flight or decoded), never a third


class _FakeNodeAnswering(FakeNode):
    """The in-memory node, with the answers to fetches passed through `change(offset, response)`."""

    def __init__(self, change):
        super().__init__({"t": 1})
        self.change = change
        self.fetched_offsets: list[int] = []

    def _fetch(self, log: list, params: dict) -> HttpResponse:
        self.fetched_offsets.append(int(params["offset"]))
        return self.change(int(params["offset"]), super()._fetch(log, params))


def _consume_the_fake(fake: FakeNode, polls: int) -> list[int]:
    """The offsets of 10 records, polled `polls` times from the start."""

    async def scenario():
        async with Consumer(
            "n1:1", transport=fake, fetch_max_wait_ms=10, retry_backoff_ms=5, auto_offset_reset="earliest"
        ) as consumer:
            consumer.assign([("t", 0)])
            return [record.offset for _ in range(polls) for record in await consumer.poll(100)]

    fill(fake, "t", 0, 10)
    return run(scenario())


def test_a_bad_answer_is_fetched_again_and_its_read_ahead_taken_back():
    damaged: list[int] = []

    def damage_the_first(offset: int, response: HttpResponse) -> HttpResponse:
        if damaged or not response.body:
            return response
        damaged.append(offset)
        body = bytearray(response.body)
        body[-1] ^= 0xFF  # a checksum mismatch
        return HttpResponse(response.status, response.headers, bytes(body))

    fake = _FakeNodeAnswering(damage_the_first)
    assert _consume_the_fake(fake, 5) == list(range(10))
    assert damaged == [0]
    assert fake.fetched_offsets.count(0) == 2  # once damaged, once again after the back-off


def test_a_next_offset_short_of_the_records_is_corrected_by_them():
    def short(offset: int, response: HttpResponse) -> HttpResponse:
        return HttpResponse(response.status, {**response.headers, "X-Raftka-Next-Offset": "1"}, response.body)

    fake = _FakeNodeAnswering(short)
    assert _consume_the_fake(fake, 5) == list(range(10))  # every record once, none twice
    assert 1 not in fake.fetched_offsets[1:] or fake.fetched_offsets.count(1) == 1


def test_a_read_ahead_answer_that_starts_before_its_offset_is_cut():
    def five_from_two_before(offset: int, response: HttpResponse) -> HttpResponse:
        records = decode_batches(response.body)[:5] if response.body else []
        if not records:
            return response
        body = encode_batch(
            [NewRecord(*r[2:4], r[1], r[4]) for r in records], now_ms=NOW, base_offset=records[0].offset
        )
        return HttpResponse(
            200, {**response.headers, "X-Raftka-Next-Offset": str(records[-1].offset + 1)}, body
        )

    fake = _FakeNodeAnswering(five_from_two_before)
    fill(fake, "t", 0, 30)

    async def scenario():
        async with Consumer(
            "n1:1", transport=fake, fetch_max_wait_ms=10, auto_offset_reset="earliest", max_poll_records=2
        ) as consumer:
            consumer.assign([("t", 0)])
            offsets: list[int] = []
            while len(offsets) < 30:
                offsets += [record.offset for record in await consumer.poll(1000)]
                await asyncio.sleep(0.005)  # the read ahead lands while records are buffered
            return offsets

    assert run(scenario()) == list(range(30))
    assert fake.fetched_offsets[:3] == [0, 5, 8]  # the second started before the first was handed out
