"""The idempotent producer on a real 3-node cluster (topic RF=3, min.insync.replicas=2).

- producer ids from different nodes, and from blocks a new controller hands out after the old one
  was killed, never repeat;
- a batch appended by a leader that is then killed, sent again to the new leader, is recognised:
  its original offsets, nothing appended (the followers kept the producer state);
- client Producers (idempotent, the default) sending while the partition leader is killed with
  SIGKILL and restarted, twice: at the end no value is in the log twice, every acknowledged value is
  at the offset it was acknowledged at, and each producer's values are in send order.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

from raftka import Producer
from storage.record_batch import NewRecord, encode_batch
from tests.test_cluster import cluster_view, request, wait_for
from tests.test_replication_cluster import (
    MIN_ISR_2,
    make_cluster,
    offsets_of,
    read_all,
    wait_in_sync,
    wait_state,
)

BATCH = "application/vnd.raftka.batch"
TOPIC = "idem"


def new_producer(node) -> int:
    status, body = request(node.address, "POST", "/v1/producers", {})
    assert status == 200, body
    return body["producer_id"]


def send_batch(node, body: bytes):
    """POST one binary batch with acks=all; (status, answer)."""
    url = f"http://{node.address}/v1/topics/{TOPIC}/partitions/0/records?acks=all&timeout_ms=10000"
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": BATCH})
    try:
        with urllib.request.urlopen(req, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Senders:
    """`count` idempotent Producers on one event loop in a thread, each sending its own values
    (p<n>-<i>) one after another with a few in flight, until stopped."""

    def __init__(self, addresses: list[str], count: int = 3):
        self.addresses, self.count = addresses, count
        self.acked: dict[str, int] = {}  # value -> offset
        self.failed: list[tuple[str, str]] = []
        self.sent: list[list[str]] = [[] for _ in range(count)]
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> Senders:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(120)
        assert not self.thread.is_alive(), "the producers did not finish"

    def acked_count(self) -> int:
        return len(self.acked)

    async def _main(self) -> None:
        await asyncio.gather(*(self._producer(n) for n in range(self.count)))

    async def _producer(self, number: int) -> None:
        pending: list[tuple[str, asyncio.Future]] = []
        async with Producer(
            self.addresses,
            value_serializer="json",  # read back as JSON strings
            linger_ms=2,
            batch_bytes_max=400,  # a few records per batch: many requests, several in flight
            request_timeout_ms=5000,
            delivery_timeout_ms=60_000,
            retry_backoff_ms=50,
        ) as producer:
            i = 0
            while not self.stop_event.is_set():
                value = f"p{number}-{i:06d}"
                i += 1
                self.sent[number].append(value)
                pending.append((value, await producer.send(TOPIC, value, partition=0)))
                if len(pending) >= 20:
                    await self._settle(pending)
                    pending = []
                await asyncio.sleep(0.002)
            await producer.flush()
            await self._settle(pending)

    async def _settle(self, pending) -> None:
        for value, future in pending:
            try:
                self.acked[value] = (await future).offset
            except Exception as exc:  # a delivery timeout: reported, checked below
                self.failed.append((value, repr(exc)))


def test_idempotent_producers_survive_leader_kills_without_duplicates(tmp_path):
    cluster = make_cluster(tmp_path).start()
    senders = None
    try:
        entry = cluster.nodes[0]
        body = {"name": TOPIC, "partitions": 1, "replication_factor": 3, "configs": MIN_ISR_2}
        status, created = request(entry.address, "POST", "/v1/topics", body)
        assert status == 201, created
        wait_in_sync(cluster, TOPIC, 0)

        # Ids from every node are distinct.
        ids = [new_producer(node) for node in cluster.nodes for _ in range(3)]
        assert len(set(ids)) == len(ids), ids

        # A batch the killed leader appended is recognised by the new leader.
        pid = new_producer(entry)
        first = encode_batch(
            [NewRecord(None, f'"x{i}"'.encode(), None, ()) for i in range(3)],  # JSON strings
            now_ms=int(time.time() * 1000),
            producer_id=pid,
            producer_epoch=0,
            base_sequence=0,
        )
        leader = wait_state(cluster, TOPIC, 0, "a leader", 20, lambda p: p["leader"] > 0)["leader"]
        status, answer = send_batch(cluster.node(leader), first)
        assert status == 200 and answer["base_offset"] == 0 and not answer["duplicate"], answer
        victim = cluster.node(leader)
        victim.kill()
        new = wait_state(cluster, TOPIC, 0, "a new leader", 30, lambda p: p["leader"] not in (leader, -1))
        status, answer = send_batch(cluster.node(new["leader"]), first)
        assert status == 200 and answer["duplicate"] is True and answer["base_offset"] == 0, answer
        assert offsets_of(cluster.node(new["leader"]), TOPIC, 0)["log_end_offset"] == 3
        victim.start()
        cluster.wait_ready(60, [victim])
        wait_in_sync(cluster, TOPIC, 0)

        # Blocks from a new controller do not overlap the old ones: kill the controller, restart
        # every node in turn so that each takes a new block, and collect ids again.
        controller = cluster_view(entry)["controller_id"]
        cluster.node(controller).kill()
        survivor = next(n for n in cluster.nodes if n.node_id != controller)
        wait_for(
            lambda: cluster_view(survivor)["controller_id"] not in (controller, -1), 30, "a new controller"
        )
        cluster.node(controller).start()
        cluster.wait_ready(60, [cluster.node(controller)])
        ids += [pid] + [new_producer(node) for node in cluster.nodes for _ in range(2)]
        assert len(set(ids)) == len(ids), ids
        wait_in_sync(cluster, TOPIC, 0)

        # Client Producers through two kills of the partition leader.
        senders = Senders([n.address for n in cluster.nodes]).start()
        wait_for(lambda: senders.acked_count() > 100, 30, "records acknowledged before the kills")
        for _ in range(2):
            leader = wait_state(cluster, TOPIC, 0, "a leader", 30, lambda p: p["leader"] > 0)["leader"]
            before = senders.acked_count()
            cluster.node(leader).kill()
            wait_state(
                cluster, TOPIC, 0, "a new leader", 30, lambda p, old=leader: p["leader"] not in (old, -1)
            )
            wait_for(lambda b=before: senders.acked_count() > b + 50, 40, "acknowledgements after the kill")
            cluster.node(leader).start()
            cluster.wait_ready(60, [cluster.node(leader)])
            wait_in_sync(cluster, TOPIC, 0)
        senders.stop()
        final = wait_in_sync(cluster, TOPIC, 0)
        records = read_all(entry, TOPIC, 0)
        assert [o for o, _ in records] == list(range(final["high_watermark"]))
        where: dict[str, int] = {}
        for offset, value in records:
            assert value not in where, f"{value} at offsets {where[value]} and {offset}"
            where[value] = offset
        print(
            f"\n{len(senders.acked)} values acknowledged, {len(senders.failed)} failed, {len(records)} in the log"
        )
        assert not senders.failed, senders.failed[:5]
        for value, offset in senders.acked.items():
            assert where.get(value) == offset, (
                f"{value} acknowledged at {offset}, found at {where.get(value)}"
            )
        sent = {v for values in senders.sent for v in values}
        assert set(where) - {"x0", "x1", "x2"} <= sent
        for number, values in enumerate(senders.sent):
            in_log = [v for _, v in records if isinstance(v, str) and v.startswith(f"p{number}-")]
            assert in_log == [v for v in values if v in where], f"producer {number} out of order"
    finally:
        if senders is not None and senders.thread.is_alive():
            senders.stop_event.set()
        cluster.stop()
