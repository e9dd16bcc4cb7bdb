"""The Python client against a real node process: produce and consume round trips, ordering, the
partitioner agreeing with the node, flush and close, positions, offset-out-of-range policies, admin,
the blocking wrappers and connection failures.

One node serves the whole module (started once); each test works in topics of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from raftka import (
    Admin,
    Consumer,
    Producer,
    RecordMetadata,
    SyncAdmin,
    SyncConsumer,
    SyncProducer,
    partition_for_key,
)
from raftka.client.errors import (
    InvalidRequestError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
    RaftkaConnectionError,
    TopicExistsError,
    UnknownPartitionError,
    UnknownTopicError,
)
from tests.nodeproc import NodeProcess, free_port

_names = itertools.count()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    process = NodeProcess(str(tmp_path_factory.mktemp("client") / "data")).start()
    yield process
    assert process.stop() == 0, process.output()


def run(coro, timeout_s: float = 30):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def new_topic(node: NodeProcess, partitions: int = 1, **configs: Any) -> str:
    name = f"client-{next(_names)}"
    body: dict[str, Any] = {"name": name, "partitions": partitions}
    if configs:
        body["configs"] = {k.replace("_", "."): str(v) for k, v in configs.items()}
    status, answer, _ = node.request("POST", "/v1/topics", body)
    assert status == 201, answer
    return name


async def read_all(
    address: str, topic: str, partitions: list[int], expected: int, **options: Any
) -> list[Any]:
    """Every record of the partitions from the beginning, until `expected` arrived (or 10 s passed)."""
    async with Consumer(address, auto_offset_reset="earliest", **options) as consumer:
        consumer.assign([(topic, p) for p in partitions])
        records: list[Any] = []
        deadline = time.monotonic() + 10
        while len(records) < expected and time.monotonic() < deadline:
            records += await consumer.poll(500)
        return records


# -- produce and consume -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("serializer", "keys", "values"),
    [
        ("bytes", [b"k1", None, b""], [b"\x00\xffbinary", b"", None]),
        ("str", ["clé", None, "k"], ["héllo wörld", "", None]),
        ("json", [{"id": 1}, None, [1, 2]], [{"a": [1, 2.5, None]}, "text", None]),
    ],
)
def test_round_trip_with_each_serializer(node, serializer, keys, values):
    topic = new_topic(node)

    async def scenario():
        async with Producer(node.address, key_serializer=serializer, value_serializer=serializer) as producer:
            sent = [
                await producer.send_and_wait(topic, v, key=k, headers={"h": "x", "n": None})
                for k, v in zip(keys, values, strict=True)
            ]
        records = await read_all(
            node.address, topic, [0], 3, key_deserializer=serializer, value_deserializer=serializer
        )
        return sent, records

    sent, records = run(scenario())
    assert sent == [RecordMetadata(topic, 0, i) for i in range(3)]
    assert [r.key for r in records] == keys
    assert [r.value for r in records] == values
    assert [r.offset for r in records] == [0, 1, 2]
    assert all(r.headers == (("h", b"x"), ("n", None)) for r in records)
    assert all(abs(r.timestamp_ms - time.time() * 1000) < 60_000 for r in records)


def test_order_is_kept_per_partition_and_keys_stay_together(node):
    topic = new_topic(node, partitions=3)
    count = 3000

    async def scenario():
        async with Producer(node.address, linger_ms=2, batch_bytes_max=4096) as producer:
            futures = [
                await producer.send(topic, str(i).encode(), key=f"key-{i % 25}".encode())
                for i in range(count)
            ]
            await producer.flush()
            results = [f.result() for f in futures]
        return results, await read_all(node.address, topic, [0, 1, 2], count)

    results, records = run(scenario())
    assert len(records) == count
    for partition in range(3):
        mine = [r for r in records if r.partition == partition]
        assert [r.offset for r in mine] == list(range(len(mine)))
        # within a partition, the values (send order) increase: the producer's order is kept
        values = [int(r.value) for r in mine]
        assert values == sorted(values)
    by_key: dict[bytes, set[int]] = {}
    for record in records:
        by_key.setdefault(record.key, set()).add(record.partition)
    assert all(len(partitions) == 1 for partitions in by_key.values())
    for i, meta in enumerate(results):
        assert meta.partition == partition_for_key(f"key-{i % 25}".encode(), 3)
    placed = {(m.partition, m.offset): i for i, m in enumerate(results)}
    assert {(r.partition, r.offset): int(r.value) for r in records} == placed


def test_keys_go_to_the_same_partition_as_on_the_nodes_json_path(node):
    topic = new_topic(node, partitions=5)
    keys = [f"customer-{i}" for i in range(40)]
    status, answer, _ = node.request(
        "POST", f"/v1/topics/{topic}/records", {"records": [{"key": k, "value": 1} for k in keys]}
    )
    assert status == 200, answer
    by_node = [o["partition"] for o in answer["offsets"]]

    async def scenario():
        async with Producer(node.address, key_serializer="str") as producer:
            futures = [await producer.send(topic, b"v", key=k) for k in keys]
            await producer.flush()
            return [f.result().partition for f in futures]

    assert run(scenario()) == by_node
    assert len(set(by_node)) > 1


def test_keyless_records_fill_one_partition_per_batch(node):
    topic = new_topic(node, partitions=4)

    async def scenario():
        async with Producer(node.address, linger_ms=1000) as producer:
            futures = [await producer.send(topic, b"x") for _ in range(50)]
            await producer.flush()
            return {f.result().partition for f in futures}

    assert len(run(scenario())) == 1


def test_close_delivers_what_was_buffered(node):
    topic = new_topic(node, partitions=2)

    async def scenario():
        producer = Producer(node.address, linger_ms=60_000)  # only flush or close would send these
        futures = [await producer.send(topic, b"v", partition=i % 2) for i in range(100)]
        assert not any(f.done() for f in futures)
        await producer.close()
        return [f.result() for f in futures]

    results = run(scenario())
    assert sorted(r.offset for r in results if r.partition == 0) == list(range(50))
    _, offsets, _ = node.request("GET", f"/v1/topics/{topic}/partitions/1/offsets")
    assert offsets["high_watermark"] == 50


def test_flush_waits_for_acknowledgements(node):
    topic = new_topic(node)

    async def scenario():
        async with Producer(node.address, linger_ms=60_000) as producer:
            futures = [await producer.send(topic, b"v") for _ in range(10)]
            await producer.flush()
            done = all(f.done() for f in futures)
            await producer.flush()  # nothing pending: returns at once
            return done

    assert run(scenario()) is True
    _, offsets, _ = node.request("GET", f"/v1/topics/{topic}/partitions/0/offsets")
    assert offsets["high_watermark"] == 10


@pytest.mark.parametrize(("acks", "first_offset"), [("0", -1), ("1", 0), ("all", 0), (1, 0)])
def test_acks(node, acks, first_offset):
    topic = new_topic(node)

    async def scenario():
        idempotent = str(acks) == "all"  # idempotence needs acks=all
        async with Producer(node.address, acks=acks, enable_idempotence=idempotent) as producer:
            return await producer.send_and_wait(topic, b"v")

    assert run(scenario()) == RecordMetadata(topic, 0, first_offset)
    _, offsets, _ = node.request("GET", f"/v1/topics/{topic}/partitions/0/offsets")
    assert offsets["high_watermark"] == 1


def test_a_batch_over_max_message_bytes_is_split_until_it_fits(node):
    topic = new_topic(node, max_message_bytes=2048)

    async def scenario():
        async with Producer(node.address, linger_ms=100) as producer:  # one 20 KB batch at first
            futures = [await producer.send(topic, b"%04d" % i + b"x" * 196) for i in range(100)]
            await producer.flush()
            return [f.result().offset for f in futures]

    assert run(scenario()) == list(range(100))
    records = run(read_all(node.address, topic, [0], 100))
    assert [int(r.value[:4]) for r in records] == list(range(100))


def test_send_to_an_unknown_topic_or_partition_fails_at_once(node):
    topic = new_topic(node, partitions=2)

    async def scenario():
        async with Producer(node.address) as producer:
            with pytest.raises(UnknownTopicError):
                await producer.send("no-such-topic", b"v")
            with pytest.raises(UnknownPartitionError):
                await producer.send(topic, b"v", partition=7)

    run(scenario())


# -- consumer positions ------------------------------------------------------------------------------------


def produce_values(node: NodeProcess, topic: str, values: list[str], partition: int = 0) -> None:
    async def scenario():
        async with Producer(node.address, value_serializer="str") as producer:
            for value in values:
                await producer.send(topic, value, partition=partition)

    run(scenario())


def test_consumer_from_beginning_end_and_offset(node):
    topic = new_topic(node)
    produce_values(node, topic, [f"old-{i}" for i in range(5)])

    async def scenario():
        tp = (topic, 0)
        async with Consumer(node.address, value_deserializer="str") as consumer:
            consumer.assign([tp])
            consumer.seek_to_beginning()
            from_beginning = await consumer.poll(2000)
            consumer.seek(tp, 3)
            from_three = await consumer.poll(2000)
            consumer.seek_to_end(tp)
            end = await consumer.position(tp)
            quiet = await consumer.poll(200)
            async with Producer(node.address, value_serializer="str") as producer:
                await producer.send_and_wait(topic, "new")
            new = await consumer.poll(3000)
            return (
                from_beginning,
                from_three,
                end,
                quiet,
                new,
                await consumer.position(tp),
                consumer.highwater(tp),
            )

    from_beginning, from_three, end, quiet, new, position, highwater = run(scenario())
    assert [r.value for r in from_beginning] == [f"old-{i}" for i in range(5)]
    assert [r.offset for r in from_three] == [3, 4]
    assert end == 5
    assert quiet == []
    assert [(r.offset, r.value) for r in new] == [(5, "new")]
    assert position == 6
    assert highwater == 6


def test_a_fresh_assignment_starts_at_the_end_by_default(node):
    topic = new_topic(node)
    produce_values(node, topic, ["before"])

    async def scenario():
        async with Consumer(node.address) as consumer:
            consumer.assign([(topic, 0)])
            return await consumer.position((topic, 0)), await consumer.poll(200)

    assert run(scenario()) == (1, [])


def test_poll_waits_for_records_that_arrive_later(node):
    topic = new_topic(node)

    async def scenario():
        async with Consumer(node.address, value_deserializer="str") as consumer:
            consumer.assign([(topic, 0)])
            await consumer.position((topic, 0))

            async def produce_later():
                await asyncio.sleep(0.3)
                async with Producer(node.address, value_serializer="str") as producer:
                    await producer.send_and_wait(topic, "late")

            task = asyncio.create_task(produce_later())
            records = await consumer.poll(5000)
            await task
            return [r.value for r in records]

    assert run(scenario()) == ["late"]


@pytest.mark.parametrize(
    ("policy", "expected_offsets", "position"), [("earliest", [0, 1, 2], 3), ("latest", [], 3)]
)
def test_offset_out_of_range_is_reset_by_policy(node, policy, expected_offsets, position):
    topic = new_topic(node)
    produce_values(node, topic, ["a", "b", "c"])

    async def scenario():
        async with Consumer(node.address, auto_offset_reset=policy) as consumer:
            consumer.assign([(topic, 0)])
            consumer.seek((topic, 0), 1000)
            records = []
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and len(records) < len(expected_offsets):
                records += await consumer.poll(300)
            if not expected_offsets:
                records += await consumer.poll(300)
            return [r.offset for r in records], await consumer.position((topic, 0))

    assert run(scenario()) == (expected_offsets, position)


def test_offset_out_of_range_raises_with_the_error_policy(node):
    topic = new_topic(node)
    produce_values(node, topic, ["a", "b", "c"])

    async def scenario():
        async with Consumer(node.address, auto_offset_reset="error") as consumer:
            consumer.assign([(topic, 0)])
            with pytest.raises(NoOffsetForPartitionError):
                await consumer.poll(100)
            consumer.seek((topic, 0), 1000)
            with pytest.raises(OffsetOutOfRangeError) as caught:
                await consumer.poll(2000)
            consumer.seek((topic, 0), 2)
            return caught.value, [r.offset for r in await consumer.poll(2000)]

    error, offsets = run(scenario())
    assert error.error_code == 41601
    assert error.log_start_offset == 0
    assert error.high_watermark == 3
    assert offsets == [2]


def test_consumer_of_an_unknown_topic_fails(node):
    async def scenario():
        async with Consumer(node.address, auto_offset_reset="earliest") as consumer:
            consumer.assign([("no-such-topic", 0)])
            await consumer.poll(1000)

    with pytest.raises(UnknownTopicError):
        run(scenario())


def test_offsets_by_timestamp(node):
    topic = new_topic(node)

    async def scenario():
        async with Producer(node.address) as producer:
            for i, ts in enumerate([1_000, 2_000, 3_000]):
                await producer.send_and_wait(topic, str(i).encode(), timestamp_ms=ts)
        async with Admin(node.address) as admin:
            return [await admin.offset_for_timestamp(topic, 0, t) for t in (0, 1_500, 3_000, 9_000)]

    assert run(scenario()) == [0, 1, 2, None]


# -- admin --------------------------------------------------------------------------------------------------


def test_admin_topic_round_trip(node):
    name = f"admin-{next(_names)}"

    async def scenario():
        async with Admin(node.address) as admin:
            created = await admin.create_topic(
                name, 2, 1, {"retention.ms": 60_000, "cleanup.policy": "compact"}
            )
            listed = await admin.list_topics()
            with pytest.raises(TopicExistsError):
                await admin.create_topic(name, 1)
            altered = await admin.alter_topic(
                name, partitions=4, configs={"segment.bytes": "1048576"}, delete_configs=["retention.ms"]
            )
            described = await admin.describe_topic(name)
            offsets = await admin.list_offsets(name, 3)
            await admin.delete_topic(name)
            with pytest.raises(UnknownTopicError):
                await admin.describe_topic(name)
            with pytest.raises(UnknownTopicError):
                await admin.delete_topic(name)
            after = await admin.list_topics()
            return created, listed, altered, described, offsets, after

    created, listed, altered, described, offsets, after = run(scenario())
    assert created.name == name
    assert created.topic_id
    assert [p.partition for p in created.partitions] == [0, 1]
    assert created.partitions[0].leader == 1
    assert created.partitions[0].isr == (1,)
    assert created.configs["retention.ms"] == "60000"
    assert created.configs["cleanup.policy"] == "compact"
    assert any(t.name == name and t.partitions == 2 and t.replication_factor == 1 for t in listed)
    assert len(altered.partitions) == 4
    assert described.configs["segment.bytes"] == "1048576"
    assert described.configs["retention.ms"] == "604800000"  # back to the default
    assert described.configs["cleanup.policy"] == "compact"
    assert (offsets.log_start_offset, offsets.high_watermark) == (0, 0)
    assert all(t.name != name for t in after)


@pytest.mark.parametrize(
    ("name", "partitions", "configs"),
    [("bad name!", 1, None), ("ok-name-x", 0, None), ("ok-name-y", 1, {"retention.ms": "soon"})],
)
def test_admin_refusals_are_invalid_request_errors(node, name, partitions, configs):
    async def scenario():
        async with Admin(node.address) as admin:
            await admin.create_topic(name, partitions, configs=configs)

    with pytest.raises(InvalidRequestError) as caught:
        run(scenario())
    assert caught.value.error_code == 42201
    assert not caught.value.retriable


def test_admin_cluster(node):
    async def scenario():
        async with Admin(node.address) as admin:
            return await admin.describe_cluster(), await admin.node_ready(node.address)

    cluster, ready = run(scenario())
    assert cluster.cluster_id
    assert cluster.controller_id == 1
    assert [(b.node_id, b.address) for b in cluster.brokers] == [(1, node.address)]
    assert ready is True


def test_admin_tries_the_next_bootstrap_address(node):
    async def scenario():
        async with Admin(f"127.0.0.1:{free_port()},{node.address}") as admin:
            return await admin.describe_cluster()

    assert run(scenario()).controller_id == 1


# -- blocking wrappers ------------------------------------------------------------------------------------


def test_blocking_clients(node):
    name = f"sync-{next(_names)}"
    with SyncAdmin(node.address) as admin:
        admin.create_topic(name, 2)
        assert admin.describe_topic(name).name == name
        assert admin.describe_cluster().controller_id == 1
    with SyncProducer(node.address, value_serializer="json", key_serializer="str") as producer:
        futures = [producer.send(name, {"n": i}, key=f"k{i}") for i in range(20)]
        producer.flush()
        results = [f.result(timeout=10) for f in futures]
        assert producer.send_and_wait(name, {"n": 20}, partition=0).partition == 0
        with pytest.raises(UnknownTopicError):
            producer.send("no-such-topic", {})
    assert all(r.offset >= 0 for r in results)
    with SyncConsumer(node.address, value_deserializer="json", auto_offset_reset="earliest") as consumer:
        consumer.assign([(name, 0), (name, 1)])
        assert sorted(consumer.assignment()) == [(name, 0), (name, 1)]
        records = []
        deadline = time.monotonic() + 10
        while len(records) < 21 and time.monotonic() < deadline:
            records += consumer.poll(500)
        consumer.seek((name, 0), 0)
        assert consumer.position((name, 0)) == 0
    assert sorted(r.value["n"] for r in records) == list(range(21))


# -- unreachable nodes ------------------------------------------------------------------------------------


def test_an_unreachable_bootstrap_raises_a_connection_error():
    address = f"127.0.0.1:{free_port()}"

    async def scenario():
        async with Producer(address) as producer:
            with pytest.raises(RaftkaConnectionError) as caught:
                await producer.send("t", b"v")
            return caught.value

    error = run(scenario())
    assert error.retriable
    assert address in str(error)
    assert "refused" in error.reason


def test_the_producer_rides_out_a_node_restart(tmp_path):
    """Connection refused while the node is down is retriable: the records land once it is back."""
    data = str(tmp_path / "data")
    first = NodeProcess(data).start()
    first.request("POST", "/v1/topics", {"name": "restart", "partitions": 1})

    async def scenario():
        async with Producer(first.address, retry_backoff_ms=50, retry_backoff_max_ms=200) as producer:
            before = await producer.send_and_wait("restart", b"before")
            assert first.stop() == 0
            during = await producer.send("restart", b"during")  # metadata is cached: buffered, retried
            await asyncio.sleep(0.5)
            assert not during.done()
            second = await asyncio.get_running_loop().run_in_executor(
                None, lambda: NodeProcess(data, port=first.port).start()
            )
            try:
                return before, await during
            finally:
                assert second.stop() == 0

    before, during = run(scenario(), timeout_s=60)
    assert before == RecordMetadata("restart", 0, 0)
    assert during == RecordMetadata("restart", 0, 1)
