"""The leader's waits on the event loop (node/replica.py): follower fetches parked until an append, and
acks=all produces waiting for the high watermark. Both are plain futures; these tests pin down when
they complete, that a waiter that gives up leaves nothing behind, and the errors they end with."""

from __future__ import annotations

import asyncio
import os

import pytest

from metadata.image import PartitionInfo
from node.errors import ApiError
from node.replica import WAKE_DEFER_PASSES, Partition, wait_for_append
from storage.config import LogConfig
from storage.log import PartitionLog
from storage.record_batch import NewRecord, encode_batch


def batch(count: int = 3) -> bytes:
    return encode_batch([NewRecord(None, os.urandom(10), None, ()) for _ in range(count)], now_ms=1)


def leader_partition(tmp_path, isr=(1, 2, 3), min_insync: int = 2) -> Partition:
    partition_log = PartitionLog(str(tmp_path / "t-0"), LogConfig())
    info = PartitionInfo((1, 2, 3), 1, 0, isr, 0)
    partition = Partition("t", 0, partition_log, info, 1)
    partition.update(info, min_insync)
    assert partition.is_leader
    return partition


async def passes(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def parked_fetch(*partitions: Partition, timeout_s: float = 10) -> asyncio.Task:
    """A follower fetch parked on these partitions, as the leader's fetch handler parks it."""
    return asyncio.ensure_future(wait_for_append(list(partitions), timeout_s))


def test_a_parked_fetch_wakes_a_few_passes_after_an_append_and_once_for_many(tmp_path):
    async def scenario():
        partition = leader_partition(tmp_path)
        parked = [parked_fetch(partition), parked_fetch(partition)]
        await passes(1)
        assert len(partition._parked) == 2
        partition.append(batch())
        partition.append(batch())  # the same wake carries both appends
        await passes(WAKE_DEFER_PASSES - 1)
        assert not any(f.done() for f in partition._parked)
        await passes(1)
        assert partition._parked == []
        assert not partition._wake_scheduled
        await passes(1)  # the fetch handlers run on
        assert all(f.done() and f.result() is None for f in parked)

    asyncio.run(scenario())
    assert WAKE_DEFER_PASSES >= 1


def test_one_fetch_parks_on_all_its_partitions_and_the_first_append_wakes_it(tmp_path):
    async def scenario():
        first = leader_partition(tmp_path / "a")
        second = leader_partition(tmp_path / "b")
        fetch = parked_fetch(first, second)
        await passes(1)
        assert first._parked == second._parked and len(first._parked) == 1
        second.append(batch())
        await passes(WAKE_DEFER_PASSES + 1)
        assert fetch.done() and fetch.result() is None
        assert first._parked[0].done()  # left behind, done: the next park drops it
        again = parked_fetch(first)
        await passes(1)
        assert len(first._parked) == 1 and not first._parked[0].done()
        again.cancel()

    asyncio.run(scenario())


def test_a_parked_fetch_times_out_and_a_cancelled_one_is_dropped(tmp_path):
    async def scenario():
        partition = leader_partition(tmp_path)
        timed = parked_fetch(partition, timeout_s=0.01)
        assert await asyncio.wait_for(timed, 5) is None  # the timeout answers with no data
        given_up = parked_fetch(partition)
        await passes(1)
        given_up.cancel()  # the follower's connection closed while its fetch was parked
        await passes(1)
        assert partition._parked[-1].cancelled()
        kept = parked_fetch(partition)
        await passes(1)
        assert len(partition._parked) == 1 and not partition._parked[0].done()  # the done ones were dropped
        kept.cancel()

    asyncio.run(scenario())


def test_losing_the_leadership_wakes_parked_fetches_at_once(tmp_path):
    async def scenario():
        partition = leader_partition(tmp_path)
        parked = parked_fetch(partition)
        await passes(1)
        partition.update(PartitionInfo((1, 2, 3), 2, 1, (1, 2, 3), 1), 2)
        assert not partition.is_leader
        assert partition._parked == []  # no deferral: the follower gets its fencing answer now
        await passes(1)
        assert parked.done()
        stopped = leader_partition(tmp_path / "other")
        parked = parked_fetch(stopped)
        await passes(1)
        stopped.stop()
        await passes(1)
        assert parked.done()

    asyncio.run(scenario())


def test_acks_all_completes_when_the_high_watermark_passes_the_batch(tmp_path):
    async def scenario():
        partition = leader_partition(tmp_path)
        first = partition.append(batch(3))
        second = partition.append(batch(3))
        waits = [
            asyncio.ensure_future(partition.wait_committed(first.last_offset, 10)),
            asyncio.ensure_future(partition.wait_committed(second.last_offset, 10)),
        ]
        await passes(2)
        partition.read_for_follower(2, 3, 0, 0, 1 << 20)
        partition.read_for_follower(3, 3, 0, 0, 1 << 20)  # HW 3: the first batch is committed
        await passes(2)
        assert waits[0].done() and waits[0].result() is None
        assert not waits[1].done()
        assert len(partition._waiters) == 1  # the committed entry left with the HW move
        partition.read_for_follower(2, 6, 0, 0, 1 << 20)
        partition.read_for_follower(3, 6, 0, 0, 1 << 20)
        await asyncio.wait_for(waits[1], 5)
        assert partition._waiters == []
        assert partition.high_watermark == 6

    asyncio.run(scenario())


def test_acks_all_times_out_with_an_unknown_outcome_and_leaves_no_waiter(tmp_path):
    async def scenario():
        partition = leader_partition(tmp_path)
        info = partition.append(batch())
        with pytest.raises(ApiError) as raised:
            await partition.wait_committed(info.last_offset, 0.01)
        assert raised.value.error_code == 50304
        assert partition._waiters == []
        waiting = asyncio.ensure_future(partition.wait_committed(info.last_offset, 10))
        await passes(1)
        waiting.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert partition._waiters == []

    asyncio.run(scenario())


def test_acks_all_fails_when_the_leadership_moves(tmp_path):
    async def scenario():
        partition = leader_partition(tmp_path)
        info = partition.append(batch())
        waiting = asyncio.ensure_future(partition.wait_committed(info.last_offset, 10))
        await passes(1)
        partition.update(PartitionInfo((1, 2, 3), 2, 1, (1, 2, 3), 1), 2)
        with pytest.raises(ApiError) as raised:
            await waiting
        assert raised.value.error_code == 40403
        assert partition._waiters == []

    asyncio.run(scenario())
