"""node/fetcher.py: a follower whose fetch goes unanswered reconnects; one that is answered does not.

A stand-in leader (an aiohttp endpoint at the replica stream's path that accepts the upgrade as the
node does) either never answers or answers every fetch with an empty result; the fetcher runs
against it with a short grace."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiohttp import web

from node import fetcher, replica_stream
from node.fetcher import ReplicaFetcher, fetch_response_parts
from node.replica import ReplicaFetchResult
from node.replica_stream import STREAM_PATH


class FakePartition:
    topic = "t"
    index = 0
    info = SimpleNamespace(leader_epoch=3)

    def __init__(self):
        self.applied = 0

    def fetch_position(self):
        return 0, -1

    def apply_from_leader(self, result):
        self.applied += 1


async def run_against(answer: bool, seconds: float) -> tuple[int, int, FakePartition]:
    """(connections the leader saw, fetches it got, the partition) after `seconds`."""
    seen = {"connections": 0, "fetches": 0}

    async def stream(request):
        seen["connections"] += 1
        leader = await replica_stream.accept(request, 1 << 20)
        while await leader.next_fetch() is not None:
            seen["fetches"] += 1
            if answer:
                await asyncio.sleep(0.05)  # a long-poll that ends with nothing new
                await leader.send_answer(fetch_response_parts([("t", 0, ReplicaFetchResult(b"", 0, 0, 0))]))
        leader.close()
        return leader.response

    app = web.Application()
    app.router.add_get(STREAM_PATH, stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    partition = FakePartition()
    node = SimpleNamespace(
        config=SimpleNamespace(
            node_id=2, dial=lambda a: a, replica_fetch_wait_max_ms=50, replica_fetch_max_bytes=1 << 20
        ),
        replicas=SimpleNamespace(followed=lambda: {1: [partition]}, partitions={("t", 0): partition}),
        store=SimpleNamespace(
            image=SimpleNamespace(brokers={1: SimpleNamespace(address=f"127.0.0.1:{port}")})
        ),
        lifecycle=SimpleNamespace(broker_epoch=7),
    )
    replica_fetcher = ReplicaFetcher(node)
    replica_fetcher.reconcile()
    await asyncio.sleep(seconds)
    await replica_fetcher.stop()
    await runner.cleanup()
    return seen["connections"], seen["fetches"], partition


@pytest.fixture
def short_grace(monkeypatch):
    monkeypatch.setattr(fetcher, "ANSWER_GRACE_S", 0.3)
    monkeypatch.setattr(fetcher, "WATCHDOG_S", 0.1)
    monkeypatch.setattr(fetcher, "BACKOFF_S", 0.05)


def test_an_unanswered_fetch_makes_the_follower_reconnect(short_grace):
    connections, fetches, partition = asyncio.run(run_against(answer=False, seconds=1.6))
    # Each connection carries one fetch, unanswered for 50 ms + 0.3 s, then the watchdog (0.1 s)
    # replaces the task, which connects again after 50 ms: about 3-4 connections in 1.6 s.
    assert connections >= 3
    assert fetches == connections
    assert partition.applied == 0


def test_answered_fetches_keep_one_connection(short_grace):
    connections, fetches, partition = asyncio.run(run_against(answer=True, seconds=1.6))
    assert connections == 1
    assert fetches >= 10  # one after another, each answered after 50 ms
    assert partition.applied == fetches or partition.applied == fetches - 1  # the last may be cut by stop
