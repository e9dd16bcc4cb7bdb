"""node/tail_cache.py, and the leader's use of it (node/replica.py): a follower's fetch answered from
memory gets the very bytes the log holds, and what the cache does not hold comes from the log."""

from __future__ import annotations

import asyncio
import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metadata.image import PartitionInfo
from node.replica import Partition
from node.tail_cache import TailCache, TailCacheBudget
from storage.config import LogConfig
from storage.log import PartitionLog
from storage.record_batch import NewRecord, check_producer_batch, encode_batch, iter_batches


def blob(base: int, size: int) -> bytes:
    return bytes([base % 251]) * size


# -- the cache alone ----------------------------------------------------------------------------------


def test_reads_from_a_held_batch_start_up_to_max_bytes_but_at_least_one():
    cache = TailCache(TailCacheBudget())
    for base in (0, 10, 20):
        cache.add(base, base + 10, blob(base, 100))
    assert cache.read(10, 1000) == blob(10, 100) + blob(20, 100)
    assert cache.read(0, 250) == blob(0, 100) + blob(10, 100)
    assert cache.read(20, 1) == blob(20, 100)  # one batch even when larger than max_bytes
    assert cache.read(5, 1000) is None  # inside a batch: the log answers
    assert cache.read(30, 1000) is None  # the log end
    cache.drop_below(20)
    assert (len(cache), cache.bytes) == (1, 100)
    assert cache.read(0, 1000) is None


def test_a_batch_that_does_not_follow_empties_the_cache_first():
    cache = TailCache(TailCacheBudget())
    cache.add(0, 10, blob(0, 100))
    cache.add(10, 20, blob(10, 100))
    cache.add(25, 30, blob(25, 50))  # a gap
    assert (len(cache), cache.bytes, cache.budget.used_bytes) == (1, 50, 50)
    cache.add(28, 40, blob(28, 50))  # an overlap
    assert cache.read(28, 1000) == blob(28, 50)
    assert cache.read(25, 1000) is None
    with pytest.raises(ValueError):
        cache.add(40, 40, b"")


def test_limits_per_partition_and_per_node():
    budget = TailCacheBudget(limit_bytes=1000)
    first, second = TailCache(budget, limit_bytes=500), TailCache(budget, limit_bytes=800)
    for base in range(0, 60, 10):
        first.add(base, base + 10, blob(base, 100))
    assert (len(first), first.bytes) == (5, 500)  # the oldest dropped for room
    assert first.read(0, 10_000) is None and first.read(10, 10_000) is not None
    for base in range(0, 60, 10):
        second.add(base, base + 10, blob(base, 150))
    assert budget.used_bytes <= 1000  # the node's limit holds, whatever each partition may hold
    assert budget.used_bytes == first.bytes + second.bytes
    second.add(60, 70, blob(60, 900))  # never fits beside the first: not kept, and nothing else either
    assert (len(second), second.bytes, budget.used_bytes) == (0, 0, first.bytes)
    first.add(60, 70, blob(60, 600))  # over the partition's own limit
    assert (len(first), first.bytes, budget.used_bytes) == (0, 0, 0)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(1, 5), st.integers(1, 400), st.booleans()),
            st.tuples(st.just("drop"), st.integers(0, 80)),
            st.tuples(st.just("read"), st.integers(0, 80), st.integers(1, 1500)),
            st.tuples(st.just("clear")),
        ),
        max_size=60,
    )
)
def test_against_a_model(steps):
    """Whatever the steps, a read answers with whole batches that were added, contiguous, from the
    offset asked; and the byte counts match what is held."""
    budget = TailCacheBudget(limit_bytes=1500)
    cache = TailCache(budget, limit_bytes=1000)
    added: dict[int, tuple[int, bytes]] = {}  # base -> (next, data), the last added at each base
    end = 0
    for step in steps:
        if step[0] == "add":
            _, count, size, gap = step
            base = end + (3 if gap else 0)
            data = os.urandom(size)
            cache.add(base, base + count, data)
            added[base] = (base + count, data)
            end = base + count
        elif step[0] == "drop":
            cache.drop_below(step[1])
        elif step[0] == "read":
            _, offset, max_bytes = step
            got = cache.read(offset, max_bytes)
            if got is not None:
                # The model: the batches added from `offset` on (the held ones run to the last add).
                parts: list[bytes] = []
                position = offset
                while position < end:
                    following, data = added[position]
                    if parts and sum(map(len, parts)) + len(data) > max_bytes:
                        break
                    parts.append(data)
                    position = following
                assert got == b"".join(parts)
        else:
            cache.clear()
        assert cache.bytes == sum(len(b[2]) for b in cache._batches) == budget.used_bytes
        assert cache.bytes <= 1000
        held = list(cache._batches)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(held))


# -- the leader's fetch answers ----------------------------------------------------------------------


def producer_batch(count: int) -> bytes:
    return encode_batch([NewRecord(b"k%d" % i, os.urandom(100), None, ()) for i in range(count)], now_ms=1)


def leader(tmp_path, isr=(1, 2, 3), min_insync: int = 2) -> Partition:
    info = PartitionInfo((1, 2, 3), 1, 4, isr, 0)
    partition = Partition("t", 0, PartitionLog(str(tmp_path / "t-0"), LogConfig()), info, 1)
    partition.update(info, min_insync)
    return partition


def test_a_follower_fetch_from_memory_gets_what_the_log_holds(tmp_path):
    async def scenario():
        partition = leader(tmp_path)
        for count in (5, 1, 30, 2):
            batch = producer_batch(count)
            partition.append(batch, check_producer_batch(batch))
        assert len(partition._tail) == 4  # none committed yet: followers have fetched nothing
        for offset in (0, 5, 6, 36):
            for max_bytes in (1, 4000, 1 << 20):
                answer = partition.read_for_follower(2, offset, -1 if offset == 0 else 4, 4, max_bytes)
                assert answer.error_code == 0
                assert answer.data == partition.log.read(offset, max_bytes)
                assert next(iter_batches(answer.data, verify=True))[0].base_offset == offset
        # Offset 3 is inside the first batch: the log answers, with the batch holding it.
        assert partition.read_for_follower(2, 3, 4, 4, 1 << 20).data == partition.log.read(3, 1 << 20)

    asyncio.run(scenario())


def test_committed_batches_leave_the_cache_and_are_read_from_the_log(tmp_path):
    async def scenario():
        partition = leader(tmp_path)
        for _ in range(3):
            batch = producer_batch(10)
            partition.append(batch, check_producer_batch(batch))
        partition.read_for_follower(2, 20, 4, 4, 1 << 20)
        assert len(partition._tail) == 3  # follower 3 has fetched nothing: the HW is still 0
        partition.read_for_follower(3, 20, 4, 4, 1 << 20)
        assert (partition.high_watermark, len(partition._tail)) == (20, 1)
        assert partition.read_for_follower(3, 0, -1, 4, 1 << 20).data == partition.log.read(0, 1 << 20)
        budget = partition._tail.budget
        assert budget.used_bytes == partition._tail.bytes > 0
        partition.stop()
        assert budget.used_bytes == 0

    asyncio.run(scenario())


def test_a_partition_without_followers_keeps_nothing(tmp_path):
    async def scenario():
        partition = leader(tmp_path, isr=(1,), min_insync=1)
        batch = producer_batch(10)
        partition.append(batch, check_producer_batch(batch))
        assert partition.high_watermark == 10
        assert len(partition._tail) == 0

    asyncio.run(scenario())


def test_a_leader_that_becomes_follower_drops_its_cache(tmp_path):
    async def scenario():
        partition = leader(tmp_path)
        batch = producer_batch(10)
        partition.append(batch, check_producer_batch(batch))
        assert len(partition._tail) == 1
        partition.update(PartitionInfo((1, 2, 3), 2, 5, (1, 2, 3), 1), 2)
        assert not partition.is_leader
        assert (len(partition._tail), partition._tail.budget.used_bytes) == (0, 0)

    asyncio.run(scenario())
