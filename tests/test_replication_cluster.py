"""Real-process replication tests: partition replicas on separate `raftka node` processes, crashed and
restarted with SIGKILL (and paused with SIGSTOP) while clients produce over HTTP.

What they prove (../shared/DESIGN.md "Partition replication" and invariants 1-7, 9):
- under concurrent acks=all producers, repeated kill -9 of the partition leader loses no acknowledged
  record, duplicates none, moves none from the offset it was acknowledged at, keeps each producer's
  order, and leaves the three replicas' logs byte for byte identical;
- a follower that was down catches up and rejoins the ISR, and acks=all keeps working meanwhile;
- min.insync.replicas: acks=all is refused with 50301 before anything is appended; acks=1 still works
  but the high watermark stops;
- a partition whose ISR shrank to a dead leader stays leaderless (clean elections) until that leader
  returns, and then keeps everything it had;
- a replica with a divergent tail (uncommitted acks=1 records) truncates it when it meets the new
  leader, after a clean election (followers paused, so the ISR still held them) and after an unclean
  one (the documented loss of the acks=1 tail);
- and, polled all along through GET .../offsets, the high watermark never goes back (clean elections).

The first test runs three controller nodes (the partition leader is also a Raft voter, and sometimes
the active controller). The others run three controllers plus three broker-only nodes and use a
partition whose replicas are the three broker-only nodes, so killing all of its replicas never
costs the metadata quorum: the controller keeps fencing brokers and shrinking ISRs meanwhile.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import signal
import threading
import time
import urllib.error
from dataclasses import dataclass

import pytest

from raftka.local_cluster import LocalCluster, LocalNode
from storage.config import LogConfig
from storage.log import PartitionLog
from storage.record_batch import decode_batches, iter_batches
from tests.nodeproc import free_port
from tests.test_cluster import FAST, cluster_view, request, topic_on, wait_for

# The test_cluster.py sessions, plus a short replica.lag.time.max.ms so ISR changes are quick.
REPLICATION_ARGS = (*FAST, "--replica-lag-time-max-ms", "2000")
MIN_ISR_2 = {"min.insync.replicas": "2"}


def make_cluster(
    path, controllers: int = 3, brokers: int = 0, extra_args: tuple[str, ...] = REPLICATION_ARGS
) -> LocalCluster:
    return LocalCluster(
        str(path / "cluster"),
        controllers=controllers,
        brokers=brokers,
        http_ports=[free_port() for _ in range(controllers + brokers)],
        raft_ports=[free_port() for _ in range(controllers)],
        extra_args=extra_args,
    )


# -- helpers -------------------------------------------------------------------------------------------


def alive(cluster: LocalCluster, exclude=()) -> list[LocalNode]:
    return [n for n in cluster.nodes if n.alive() and n.node_id not in exclude]


def partition_info(node: LocalNode, topic: str, index: int) -> dict | None:
    described = topic_on(node, topic)
    return described["partitions"][index] if described else None


def offsets_of(node: LocalNode, topic: str, index: int) -> dict | None:
    """The leader's offsets (asked through `node`, which forwards), or None when it cannot answer."""
    status, body = request(node.address, "GET", f"/v1/topics/{topic}/partitions/{index}/offsets", timeout=5)
    return body if status == 200 else None


def produce(node: LocalNode, topic: str, index: int, values, acks: str = "all", timeout_ms: int = 5000):
    path = f"/v1/topics/{topic}/partitions/{index}/records?acks={acks}&timeout_ms={timeout_ms}"
    body = {"records": [{"value": v} for v in values]}
    return request(node.address, "POST", path, body, timeout=timeout_ms / 1000 + 10)


def produce_ok(node: LocalNode, topic: str, index: int, values, acks: str = "all") -> list[int]:
    status, body = produce(node, topic, index, values, acks)
    assert status == 200, (status, body)
    return [o["offset"] for o in body["offsets"]]


def read_all(node: LocalNode, topic: str, index: int) -> list[tuple[int, object]]:
    """(offset, value) of every committed record, read through `node` (served by the leader)."""
    out: list[tuple[int, object]] = []
    offset = 0
    while True:
        status, body = request(
            node.address,
            "GET",
            f"/v1/topics/{topic}/partitions/{index}/records?offset={offset}&max_wait_ms=0&max_bytes=1000000",
        )
        assert status == 200, body
        out.extend((r["offset"], r["value"]) for r in body["records"])
        if body["next_offset"] >= body["high_watermark"] or not body["records"]:
            assert body["next_offset"] == body["high_watermark"], body
            return out
        offset = body["next_offset"]


def log_dir(node: LocalNode, topic: str, index: int) -> str:
    """Where the node's LogManager keeps the partition's log (`<data dir>/logs/<topic>-<partition>`)."""
    path = os.path.join(node.data_dir, "data", "logs", f"{topic}-{index}")
    assert os.path.isdir(path), f"no log directory {path}"
    return path


def disk_log(node: LocalNode, topic: str, index: int) -> bytes:
    """The replica's segment files, back to back: whole batches exactly as the node stored them.
    Read only, so safe while the node runs (appends are single writes at the end of a file)."""
    directory = log_dir(node, topic, index)
    parts = []
    for path in sorted(glob.glob(os.path.join(directory, "*.log"))):
        with open(path, "rb") as handle:
            parts.append(handle.read())
    return b"".join(parts)


def batches_below(raw: bytes, end_offset: int) -> bytes:
    """The whole batches of `raw` below `end_offset` (checksums verified)."""
    size = 0
    for header, _ in iter_batches(raw, verify=True):
        if header.last_offset >= end_offset:
            break
        size += header.size
    return raw[:size]


def read_log_to(partition_log: PartitionLog, end_offset: int) -> bytes:
    """Every batch of a (closed-cluster) log below `end_offset`, segment after segment."""
    parts, offset = [], partition_log.log_start_offset
    while offset < end_offset:
        data = partition_log.read(offset, 1 << 30, max_offset=end_offset)
        assert data, f"no data at {offset} below {end_offset}"
        parts.append(data)
        for header, _ in iter_batches(data, verify=True):
            offset = header.next_offset
    return b"".join(parts)


def values_of(raw: bytes) -> list[tuple[int, object]]:
    """(offset, value) of every record; values were produced as JSON, and are stored as JSON."""
    return [(r.offset, json.loads(r.value)) for r in decode_batches(raw)]


def wait_state(cluster: LocalCluster, topic: str, index: int, what: str, timeout_s: float, predicate) -> dict:
    """Wait until `predicate(partition info)` holds as seen by some live node; the info."""

    def check():
        for node in alive(cluster):
            try:
                info = partition_info(node, topic, index)
            except OSError:
                continue
            if info is not None:  # the first live node that answers (a restarting one may not yet)
                return info if predicate(info) else None
        return None

    return wait_for(check, timeout_s, what)


def wait_in_sync(cluster: LocalCluster, topic: str, index: int, timeout_s: float = 30) -> dict:
    """Wait until the ISR holds every replica and every replica's log end equals the leader's HW and
    LEO (as the leader knows it); the leader's offsets."""
    info = wait_state(
        cluster, topic, index, "full ISR", timeout_s, lambda p: len(p["isr"]) == len(p["replicas"])
    )

    def caught_up():
        body = offsets_of(alive(cluster)[0], topic, index)
        if body is None:
            return None
        ends = body["replica_log_end_offsets"] or {}
        full = len(ends) == len(info["replicas"]) and set(ends.values()) == {body["log_end_offset"]}
        return body if full and body["high_watermark"] == body["log_end_offset"] else None

    return wait_for(caught_up, timeout_s, f"{topic}-{index}: every replica at the leader's end")


def broker_status(cluster: LocalCluster, node_id: int) -> str | None:
    view = cluster_view(alive(cluster)[0])
    return next((b["status"] for b in view["brokers"] if b["id"] == node_id), None)


def restart(cluster: LocalCluster, *nodes: LocalNode) -> None:
    for node in nodes:
        node.start()
    cluster.wait_ready(60, list(nodes))
    for node in nodes:
        wait_for(
            lambda node=node: broker_status(cluster, node.node_id) == "active",
            20,
            f"node {node.node_id} active",
        )


# -- 1. concurrent acks=all producers while the leader is killed ------------------------------------------


@dataclass
class Outcome:
    producer: int
    values: list[str]
    started: float
    ended: float
    kind: str  # "acked" | "failed" (refused before any append) | "unknown"
    offsets: list[int] | None
    detail: str


def send_once(address: str, topic: str, values: list[str]) -> tuple[str, list[int] | None, str]:
    """One acks=all produce, never retried: acked with offsets, failed (surely not appended) or unknown."""
    path = f"/v1/topics/{topic}/partitions/0/records?acks=all&timeout_ms=5000"
    try:
        status, body = request(address, "POST", path, {"records": [{"value": v} for v in values]}, timeout=15)
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            return "failed", None, "connection refused"
        return "unknown", None, f"{type(exc.reason).__name__}"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return "unknown", None, type(exc).__name__
    if status == 200:
        return "acked", [o["offset"] for o in body["offsets"]], ""
    code, message = body.get("error_code"), str(body.get("message", ""))
    refused_before_append = code == 50301 or (
        code == 40403 and ("is not the leader" in message or "has no leader" in message)
    )
    return ("failed" if refused_before_append else "unknown"), None, f"{code}"


class Producers:
    """`count` threads, each sending its own values (p<id>-<seq>) in small batches, one request at a
    time. Even ids send to the leader they last saw, odd ids to every node in turn (forwarded)."""

    def __init__(self, cluster: LocalCluster, topic: str, count: int = 4, batch: int = 3):
        self.cluster, self.topic, self.batch = cluster, topic, batch
        self.stop_event = threading.Event()
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.leader_hint = 1
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(count)]

    def start(self) -> Producers:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(30)

    def _refresh_leader(self) -> None:
        for node in alive(self.cluster):
            try:
                info = partition_info(node, self.topic, 0)
            except OSError:
                continue
            if info and info["leader"] > 0:
                self.leader_hint = info["leader"]
                return

    def _run(self, producer: int) -> None:
        seq = 0
        turn = producer
        while not self.stop_event.is_set():
            values = [f"p{producer}-{seq + i}" for i in range(self.batch)]
            seq += self.batch
            if producer % 2 == 0:
                target = self.cluster.node(self.leader_hint)
            else:
                target = self.cluster.nodes[turn % len(self.cluster.nodes)]
                turn += 1
            started = time.monotonic()
            kind, offsets, detail = send_once(target.address, self.topic, values)
            with self.lock:
                self.outcomes.append(
                    Outcome(producer, values, started, time.monotonic(), kind, offsets, detail)
                )
            if kind != "acked":
                if producer % 2 == 0:
                    self._refresh_leader()
                time.sleep(0.05)

    def snapshot(self) -> list[Outcome]:
        with self.lock:
            return list(self.outcomes)


class WatermarkWatch:
    """Polls the partition's offsets through every live node in turn (each answer comes from the
    leader of the time), in one thread, so the answers are in real-time order."""

    def __init__(self, cluster: LocalCluster, topic: str, index: int = 0):
        self.cluster, self.topic, self.index = cluster, topic, index
        self.seen: list[tuple[float, int, int, int]] = []  # (time, answering leader epoch, HW, LEO)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> WatermarkWatch:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)

    def _run(self) -> None:
        turn = 0
        while not self.stop_event.is_set():
            node = self.cluster.nodes[turn % len(self.cluster.nodes)]
            turn += 1
            try:
                body = offsets_of(node, self.topic, self.index)
            except (OSError, http.client.HTTPException, ValueError):
                body = None
            if body is not None:
                self.seen.append(
                    (time.monotonic(), body["leader_epoch"], body["high_watermark"], body["log_end_offset"])
                )
            time.sleep(0.01)

    def report(self, what: str) -> list[tuple]:
        """Print and return the regressions."""
        regressions = self.regressions()
        print(f"{what}: {len(self.seen)} high watermark answers, going back: {len(regressions)}")
        for before, after in regressions[:3]:
            print(
                f"  HW went back: epoch {before[1]} HW {before[2]} -> epoch {after[1]} HW {after[2]} "
                f"(LEO {after[3]}), {after[0] - before[0]:.2f} s later"
            )
        return regressions

    def regressions(self) -> list[tuple]:
        """Answers whose HW is below one answered before them (invariant 3: the HW never goes back)."""
        out, best = [], None
        for entry in self.seen:
            if best is not None and entry[2] < best[2]:
                out.append((best, entry))
            if best is None or entry[2] > best[2]:
                best = entry
        return out


def test_acks_all_writes_survive_repeated_leader_kills(tmp_path):
    topic = "chaos"
    cluster = make_cluster(tmp_path).start()
    producers = watch = None
    try:
        entry = cluster.nodes[0]
        body = {"name": topic, "partitions": 1, "replication_factor": 3, "configs": MIN_ISR_2}
        status, created = request(entry.address, "POST", "/v1/topics", body)
        assert status == 201, created
        wait_in_sync(cluster, topic, 0)
        watch = WatermarkWatch(cluster, topic).start()
        producers = Producers(cluster, topic).start()
        time.sleep(1.5)
        failovers = []
        for round_ in range(3):
            leader = wait_state(cluster, topic, 0, "a leader", 20, lambda p: p["leader"] > 0)["leader"]
            victim = cluster.node(leader)
            was_controller = cluster_view(victim)["controller_id"] == leader
            victim.kill()
            killed = time.monotonic()
            new = wait_state(
                cluster, topic, 0, "a new leader", 30, lambda p, old=leader: p["leader"] not in (old, -1)
            )
            elected = time.monotonic() - killed

            def first_ack_after(killed=killed):
                acks = [o.ended for o in producers.snapshot() if o.kind == "acked" and o.started > killed]
                return min(acks) if acks else None

            acked_again = (
                wait_for(first_ack_after, 30, "an acks=all produce acknowledged after the kill") - killed
            )
            assert leader not in new["isr"] and len(new["isr"]) == 2, new
            time.sleep(0.5)
            victim.start()
            restarted = time.monotonic()
            cluster.wait_ready(60, [victim])
            wait_state(
                cluster, topic, 0, "the restarted node back in the ISR", 30, lambda p: len(p["isr"]) == 3
            )
            rejoined = time.monotonic() - restarted
            failovers.append((round_, leader, was_controller, new["leader"], elected, acked_again, rejoined))
            time.sleep(1.0)
        producers.stop()
        watch.stop()
        final = wait_in_sync(cluster, topic, 0)
        hw = final["high_watermark"]
        outcomes = producers.snapshot()
        counts = {
            k: sum(len(o.values) for o in outcomes if o.kind == k) for k in ("acked", "failed", "unknown")
        }
        requests_by_kind = {k: sum(o.kind == k for o in outcomes) for k in ("acked", "failed", "unknown")}
        print(f"\nvalues acknowledged/failed/unknown: {counts} (requests: {requests_by_kind}); HW {hw}")
        for round_, old, controller, new_leader, elected, acked_again, rejoined in failovers:
            print(
                f"round {round_}: killed leader {old}{' (active controller)' if controller else ''}: "
                f"new leader {new_leader} after {elected:.2f} s, first acks=all ack after {acked_again:.2f} s, "
                f"restarted node back in the ISR {rejoined:.2f} s after its start"
            )
        assert counts["acked"] > 0
        regressions = watch.report("under leader kills")

        # The committed log, as the leader serves it.
        records = read_all(entry, topic, 0)
        assert [offset for offset, _ in records] == list(range(hw)), "offsets are dense from 0 to the HW"
        where: dict[str, int] = {}
        for offset, value in records:
            assert value not in where, f"{value} at offsets {where[value]} and {offset}"
            where[value] = offset
        sent = {v for o in outcomes for v in o.values}
        assert set(where) <= sent, f"records nobody sent: {sorted(set(where) - sent)[:10]}"
        for outcome in outcomes:
            if outcome.kind == "acked":
                for value, offset in zip(outcome.values, outcome.offsets, strict=True):
                    assert where.get(value) == offset, (
                        f"{value} acknowledged at {offset}, found at {where.get(value)}"
                    )
            elif outcome.kind == "failed":  # refused before anything was appended
                assert not any(v in where for v in outcome.values), (
                    outcome,
                    [where.get(v) for v in outcome.values],
                )
        kept_unacked = sum(v in where for o in outcomes if o.kind != "acked" for v in o.values)
        print(f"values not acknowledged but committed anyway: {kept_unacked}")
        for producer in range(4):  # each producer's records in its send order (sequential requests)
            seqs = [int(v.split("-")[1]) for _, v in records if v.startswith(f"p{producer}-")]
            assert seqs == sorted(seqs), f"producer {producer} out of order"

        # Every replica's own log: the leader's view of their ends, then the files themselves.
        for node in cluster.nodes:
            body = offsets_of(node, topic, 0)
            assert set(body["replica_log_end_offsets"].values()) == {hw}, body
        truncations = {n.node_id: n.output().count(f"{topic}-0: truncating to") for n in cluster.nodes}
        print(f"truncations of a divergent tail, by node: {truncations}")
        cluster.stop()
        logs = {}
        for node in cluster.nodes:
            partition_log = PartitionLog(log_dir(node, topic, 0), LogConfig())
            try:
                assert partition_log.log_end_offset >= hw, (node.node_id, partition_log.log_end_offset)
                raw = read_log_to(partition_log, hw)
            finally:
                partition_log.close()
            logs[node.node_id] = raw
            assert values_of(raw) == records, f"node {node.node_id}'s log differs from what the leader served"
        assert len(set(logs.values())) == 1, {k: len(v) for k, v in logs.items()}
        assert not regressions, "the high watermark that clients saw went back (invariant 3)"
    finally:
        for running in (producers, watch):
            if running is not None:
                running.stop()
        cluster.stop()


# -- 2-4. a partition on three broker-only nodes -------------------------------------------------------------


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    """Three controllers (1-3) and three broker-only nodes (4-6)."""
    cluster = make_cluster(tmp_path_factory.mktemp("six"), controllers=3, brokers=3).start()
    yield cluster
    for node in cluster.nodes:
        node.signal(signal.SIGCONT)
    cluster.stop()


@pytest.fixture
def brokers(six):
    """The six-node cluster with every node up, for one test."""
    for node in six.nodes:
        node.signal(signal.SIGCONT)
    down = [n for n in six.nodes if not n.alive()]
    if down:
        restart(six, *down)
    return six


def topic_on_brokers(cluster: LocalCluster, name: str, configs: dict | None = None) -> int:
    """Create `name` with six partitions; the index of the one whose replicas are [4, 5, 6], led by 4."""
    body = {
        "name": name,
        "partitions": 6,
        "replication_factor": 3,
        "configs": {**MIN_ISR_2, **(configs or {})},
    }
    status, created = request(cluster.nodes[0].address, "POST", "/v1/topics", body)
    assert status == 201, created
    index = next(p["partition"] for p in created["partitions"] if p["replicas"] == [4, 5, 6])
    wait_in_sync(cluster, name, index)
    assert partition_info(cluster.nodes[0], name, index)["leader"] == 4
    return index


def test_a_follower_that_was_down_catches_up_and_rejoins_the_isr(brokers):
    cluster, topic = brokers, "catch-up"
    index = topic_on_brokers(cluster, topic)
    entry, leader, follower = cluster.node(1), cluster.node(4), cluster.node(6)
    produce_ok(entry, topic, index, [f"before-{i}" for i in range(20)])
    follower.kill()
    killed = time.monotonic()
    started = time.monotonic()
    status, body = produce(entry, topic, index, ["while-shrinking"], timeout_ms=10_000)
    stalled = time.monotonic() - started
    assert status == 200, body  # waits for the ISR to drop the dead follower, then commits
    info = wait_state(cluster, topic, index, "ISR without node 6", 10, lambda p: p["isr"] == [4, 5])
    shrunk = time.monotonic() - killed
    for round_ in range(30):  # acks=all with ISR 2 of 3 >= min.insync.replicas 2
        produce_ok(entry, topic, index, [f"down-{round_}-{i}" for i in range(10)])
    body = offsets_of(entry, topic, index)
    assert body["replica_log_end_offsets"]["6"] < body["log_end_offset"] == body["high_watermark"] == 321, (
        body
    )
    assert info["leader"] == 4
    follower.start()
    restarted = time.monotonic()
    cluster.wait_ready(60, [follower])
    final = wait_in_sync(cluster, topic, index)
    rejoined = time.monotonic() - restarted
    print(
        f"\nacks=all with a dead follower still in the ISR waited {stalled:.2f} s; ISR shrank {shrunk:.2f} s "
        f"after the kill; the restarted follower caught up and rejoined {rejoined:.2f} s after its start"
    )
    assert final["replica_log_end_offsets"] == {"4": 321, "5": 321, "6": 321}
    assert partition_info(entry, topic, index)["leader"] == leader.node_id
    raws = {
        n.node_id: batches_below(disk_log(n, topic, index), 321) for n in (leader, cluster.node(5), follower)
    }
    assert len(set(raws.values())) == 1 and len(values_of(raws[6])) == 321
    assert values_of(raws[6]) == read_all(entry, topic, index)


def test_min_insync_replicas_refuses_acks_all_before_appending(brokers):
    cluster, topic = brokers, "min-insync"
    index = topic_on_brokers(cluster, topic)
    entry, leader = cluster.node(1), cluster.node(4)
    produce_ok(entry, topic, index, [f"v{i}" for i in range(5)])
    cluster.node(5).kill()
    cluster.node(6).kill()
    wait_state(cluster, topic, index, "ISR down to the leader", 15, lambda p: p["isr"] == [4])
    before = offsets_of(leader, topic, index)
    assert before["high_watermark"] == before["log_end_offset"] == 5, before
    for via in (leader, entry):  # on the leader itself, and forwarded to it
        status, body = produce(via, topic, index, ["refused"])
        assert status == 503 and body["error_code"] == 50301, body
        assert "min.insync.replicas is 2" in body["message"], body
    after = offsets_of(leader, topic, index)
    assert (after["high_watermark"], after["log_end_offset"]) == (5, 5), after
    assert produce_ok(entry, topic, index, ["one"], acks="1") == [5]
    after = offsets_of(leader, topic, index)
    assert (after["high_watermark"], after["log_end_offset"]) == (5, 6), after  # the HW stops below min ISR
    assert [v for _, v in read_all(entry, topic, index)] == [f"v{i}" for i in range(5)]  # nothing past the HW
    restart(cluster, cluster.node(5))
    wait_state(cluster, topic, index, "node 5 back in the ISR", 20, lambda p: p["isr"] == [4, 5])
    assert produce_ok(entry, topic, index, ["all-again"]) == [6]
    assert [v for _, v in read_all(entry, topic, index)] == [*(f"v{i}" for i in range(5)), "one", "all-again"]
    restart(cluster, cluster.node(6))
    wait_in_sync(cluster, topic, index)


def leave_leader_alone_with_a_tail(cluster: LocalCluster, topic: str, index: int) -> None:
    """10 committed records; followers 5 and 6 killed and out of the ISR; 3 acks=1 records on leader 4
    only (above the HW); then leader 4 killed too."""
    entry = cluster.node(1)
    assert produce_ok(entry, topic, index, [f"committed-{i}" for i in range(10)]) == list(range(10))
    cluster.node(5).kill()
    cluster.node(6).kill()
    wait_state(cluster, topic, index, "ISR down to the leader", 15, lambda p: p["isr"] == [4])
    assert produce_ok(entry, topic, index, [f"tail-{i}" for i in range(3)], acks="1") == [10, 11, 12]
    body = offsets_of(entry, topic, index)
    assert (body["high_watermark"], body["log_end_offset"]) == (10, 13), body
    cluster.node(4).kill()
    wait_state(cluster, topic, index, "no leader", 15, lambda p: p["leader"] == -1 and p["isr"] == [4])


def check_truncated(
    cluster: LocalCluster, topic: str, index: int, old: LocalNode, mark: int, new_values: list[str]
):
    """After `old` restarted: it cut its tail at 10 and now holds the new leader's log exactly."""
    entry = cluster.node(1)
    final = wait_in_sync(cluster, topic, index)
    hw = final["high_watermark"]
    assert hw == 10 + len(new_values), final
    expected = [(i, f"committed-{i}") for i in range(10)] + [(10 + i, v) for i, v in enumerate(new_values)]
    assert read_all(entry, topic, index) == expected
    raws = {n: disk_log(cluster.node(n), topic, index) for n in (4, 5, 6)}
    assert len(set(raws.values())) == 1, {
        n: len(r) for n, r in raws.items()
    }  # whole files, not just to the HW
    assert values_of(raws[old.node_id]) == expected
    log_text = old.output()[mark:]
    assert f"{topic}-{index}: truncating to 10 " in log_text, log_text[-3000:]


def test_an_unclean_election_truncates_the_old_leaders_divergent_tail(brokers):
    cluster, topic = brokers, "unclean"
    index = topic_on_brokers(cluster, topic, {"unclean.leader.election.enable": "true"})
    entry, old = cluster.node(1), cluster.node(4)
    watch = WatermarkWatch(cluster, topic, index).start()
    leave_leader_alone_with_a_tail(cluster, topic, index)
    restart(cluster, cluster.node(5), cluster.node(6))
    # Unclean: the first of 5 and 6 to come back leads, with an ISR of itself; the other joins.
    info = wait_state(
        cluster,
        topic,
        index,
        "5 and 6 in the ISR",
        20,
        lambda p: p["leader"] in (5, 6) and p["isr"] == [5, 6],
    )
    new_values = [f"new-{i}" for i in range(4)]
    assert produce_ok(entry, topic, index, new_values) == [10, 11, 12, 13]  # over offsets 10-12 of 4's tail
    mark = len(old.output())
    restart(cluster, old)
    check_truncated(cluster, topic, index, old, mark, new_values)
    assert partition_info(entry, topic, index)["leader_epoch"] > 0 and info["leader"] != 4
    # The documented loss: tail-0..2 were acknowledged with acks=1 and are gone from every replica.
    watch.stop()
    watch.report("\nunclean election (the HW may go back here: not asserted)")


def test_a_clean_election_truncates_a_tail_the_paused_followers_never_fetched(brokers):
    cluster, topic = brokers, "paused"
    index = topic_on_brokers(cluster, topic)
    entry, old = cluster.node(1), cluster.node(4)
    watch = WatermarkWatch(cluster, topic, index).start()
    assert produce_ok(entry, topic, index, [f"committed-{i}" for i in range(10)]) == list(range(10))
    epoch = partition_info(entry, topic, index)["leader_epoch"]
    followers = [cluster.node(5), cluster.node(6)]
    try:
        for node in followers:
            node.signal(signal.SIGSTOP)
        paused = time.monotonic()
        time.sleep(0.6)  # their parked fetches (500 ms) end unanswered: the tail below reaches nobody
        assert produce_ok(old, topic, index, [f"tail-{i}" for i in range(3)], acks="1") == [10, 11, 12]
        old.kill()
        for node in followers:
            node.signal(signal.SIGCONT)
        paused_for = time.monotonic() - paused
    finally:
        for node in followers:
            node.signal(signal.SIGCONT)
    assert paused_for < 1.5, f"paused {paused_for:.2f} s: the followers may have left the ISR"
    # The ISR still held 5 and 6 when 4 died: a clean election of 5 (first in assignment order).
    info = wait_state(
        cluster, topic, index, "node 5 leads", 20, lambda p: p["leader"] == 5 and p["isr"] == [5, 6]
    )
    assert info["leader_epoch"] == epoch + 1, info
    new_values = [f"new-{i}" for i in range(4)]
    assert produce_ok(entry, topic, index, new_values) == [10, 11, 12, 13]
    for path in ("records?offset=0&", "offsets?"):  # a client that knows only the old epoch is fenced
        status, body = request(
            entry.address, "GET", f"/v1/topics/{topic}/partitions/{index}/{path}leader_epoch={epoch}"
        )
        assert status == 409 and body["error_code"] == 40905, body
        status, body = request(
            entry.address, "GET", f"/v1/topics/{topic}/partitions/{index}/{path}leader_epoch={epoch + 1}"
        )
        assert status == 200, body
    mark = len(old.output())
    restart(cluster, old)
    check_truncated(cluster, topic, index, old, mark, new_values)
    watch.stop()
    regressions = watch.report("\nclean election after the followers' pause")
    assert not regressions, "the high watermark that clients saw went back (invariant 3)"


def test_a_partition_whose_isr_died_stays_leaderless_until_it_returns(brokers):
    cluster, topic = brokers, "leaderless"
    index = topic_on_brokers(cluster, topic)
    entry = cluster.node(1)
    watch = WatermarkWatch(cluster, topic, index).start()
    leave_leader_alone_with_a_tail(cluster, topic, index)
    restart(cluster, cluster.node(5), cluster.node(6))
    time.sleep(2.5)  # more than a session: nothing may elect 5 or 6, which are not in the ISR
    info = partition_info(entry, topic, index)
    assert info["leader"] == -1 and info["isr"] == [4], info
    status, body = produce(entry, topic, index, ["nowhere"], acks="1")
    assert status == 404 and body["error_code"] == 40403 and "has no leader" in body["message"], body
    restart(cluster, cluster.node(4))
    info = wait_state(cluster, topic, index, "node 4 leads again", 20, lambda p: p["leader"] == 4)
    final = wait_in_sync(cluster, topic, index)
    assert final["high_watermark"] == 13, final  # the acks=1 tail was kept, and is committed now
    expected = [(i, f"committed-{i}") for i in range(10)] + [(10 + i, f"tail-{i}") for i in range(3)]
    assert read_all(entry, topic, index) == expected
    raws = {n: batches_below(disk_log(cluster.node(n), topic, index), 13) for n in (4, 5, 6)}
    assert len(set(raws.values())) == 1 and values_of(raws[5]) == expected
    watch.stop()
    regressions = watch.report("\nleaderless, then its old leader back")
    # Product bug (see the report): the returning leader answers GET .../offsets with the provisional
    # HW of its fresh replica (0) until its ISR grows, although 10 was published before; the module notes
    # of node/replication.py say a new leader does not publish a HW below the start of its epoch.
    assert not regressions, f"GET offsets: the high watermark went back (invariant 3): {regressions[:2]}"
