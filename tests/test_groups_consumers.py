"""Client `Consumer(group=...)` processes against a real 3-node cluster.

Three consumer processes in one group share a topic of 6 partitions (2 each). Each one "processes" a
record by writing it to its own file, and commits after each poll. Then:

- with no failure, every record is consumed exactly once across the three;
- a second run of the group starts at the committed offsets: nothing from the first run again;
- one consumer is killed with SIGKILL: after the session timeout its partitions move to the other
  two, and every record is consumed at least once (only the killed consumer's records after its last
  commit may come twice).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time

from raftka import Consumer, SyncProducer
from tests.test_cluster import request, wait_for
from tests.test_replication_cluster import REPLICATION_ARGS, make_cluster

GROUP_ARGS = (*REPLICATION_ARGS, "--group-heartbeat-interval-ms", "200", "--group-session-timeout-ms", "2000")
TOPIC = "work"
GROUP = "workers"
PER_PARTITION = 100


def consumer_main(bootstrap: list[str], out_path: str, stop_path: str) -> None:
    """A consumer process: poll, write each record (the processing), commit, until the stop file."""

    async def run() -> None:
        consumer = Consumer(
            bootstrap, group=GROUP, topics=[TOPIC], auto_commit=False, auto_offset_reset="earliest"
        )
        with open(out_path, "a", encoding="utf-8") as out:
            while not os.path.exists(stop_path):
                records = await consumer.poll(timeout_ms=100)
                for record in records:
                    out.write(f"{record.partition} {record.offset} {record.value.decode()}\n")
                out.flush()
                os.fsync(out.fileno())
                if records:
                    await consumer.commit()
        await consumer.close()

    asyncio.run(run())


def consumed(paths: list[str]) -> list[tuple[int, int, str]]:
    out = []
    for path in paths:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    if line.endswith("\n"):
                        partition, offset, value = line.split()
                        out.append((int(partition), int(offset), value))
    return out


def produce(bootstrap: list[str], first: int) -> set[tuple[int, int, str]]:
    """PER_PARTITION records to each partition; (partition, offset, value) of each."""
    sent = set()
    with SyncProducer(bootstrap, value_serializer="str") as producer:
        futures = [
            (p, f"v{first + i}-{p}", producer.send(TOPIC, f"v{first + i}-{p}", partition=p))
            for i in range(PER_PARTITION)
            for p in range(6)
        ]
        for partition, value, future in futures:
            sent.add((partition, future.result(30).offset, value))
    return sent


def start_consumers(bootstrap: list[str], tmp_path, run: int) -> tuple[list, list[str], str]:
    context = multiprocessing.get_context("spawn")
    stop = str(tmp_path / f"stop-{run}")
    paths = [str(tmp_path / f"run{run}-consumer{i}.txt") for i in range(3)]
    procs = [context.Process(target=consumer_main, args=(bootstrap, path, stop)) for path in paths]
    for proc in procs:
        proc.start()
    return procs, paths, stop


def stop_consumers(procs, stop: str) -> None:
    with open(stop, "w", encoding="utf-8"):
        pass
    for proc in procs:
        proc.join(30)
        assert proc.exitcode is not None, "a consumer did not stop"


def assignment_sizes(node) -> list[int]:
    status, body = request(node.address, "GET", f"/v1/groups/{GROUP}")
    if status != 200:
        return []
    return sorted(len(m["assignment"]) for m in body["members"])


def test_consumer_processes_share_partitions_and_consume_every_record(tmp_path):
    cluster = make_cluster(tmp_path, extra_args=GROUP_ARGS).start()
    procs = []
    try:
        bootstrap = [n.address for n in cluster.nodes]
        entry = cluster.nodes[0]
        status, created = request(
            entry.address, "POST", "/v1/topics", {"name": TOPIC, "partitions": 6, "replication_factor": 3}
        )
        assert status == 201, created

        # Run 1: no failure. Every record exactly once, 2 partitions per consumer.
        procs, paths, stop = start_consumers(bootstrap, tmp_path, 1)
        wait_for(lambda: assignment_sizes(entry) == [2, 2, 2], 60, "three members with 2 partitions each")
        first = produce(bootstrap, 0)
        wait_for(lambda: {r for r in consumed(paths)} >= first, 60, "every record of run 1 consumed")
        stop_consumers(procs, stop)
        run1 = consumed(paths)
        assert len(run1) == len(set(run1)) == len(first), "a record was consumed twice with no failure"
        assert set(run1) == first
        for path in paths:  # each consumer read its own partitions only
            assert len({p for p, _, _ in consumed([path])}) == 2, path

        # Run 2: starts at the committed offsets; one consumer is killed between two produce rounds.
        procs, paths, stop = start_consumers(bootstrap, tmp_path, 2)
        wait_for(lambda: assignment_sizes(entry) == [2, 2, 2], 60, "three members with 2 partitions each")
        second = produce(bootstrap, PER_PARTITION)
        wait_for(lambda: {r for r in consumed(paths)} >= second, 60, "the first half of run 2 consumed")
        victim = procs[0]
        victim_partitions = {p for p, _, _ in consumed(paths[:1])}
        assert len(victim_partitions) == 2, victim_partitions
        victim.kill()
        victim.join(10)
        killed_at = time.monotonic()
        second |= produce(bootstrap, 2 * PER_PARTITION)
        wait_for(lambda: {r for r in consumed(paths)} >= second, 60, "every record of run 2 consumed")
        moved_after = time.monotonic() - killed_at
        wait_for(lambda: assignment_sizes(entry) == [3, 3], 30, "two members with 3 partitions each")
        stop_consumers(procs[1:], stop)
        run2 = consumed(paths)
        assert not set(run2) & first, "run 2 consumed records committed in run 1"
        assert set(run2) == second
        duplicates = len(run2) - len(set(run2))
        survivors = {p for path in paths[1:] for p, _, _ in consumed([path])}
        print(
            f"\nrun 2: {len(run2)} records consumed, {duplicates} twice; all consumed {moved_after:.1f} s after the kill"
        )
        assert survivors == set(range(6)), "the killed consumer's partitions moved to the others"
        assert moved_after >= 1.0, "its partitions moved before its session (2 s) could have lapsed"
        victim_records = set(consumed(paths[:1]))
        for record in {r for r in run2 if run2.count(r) > 1}:
            assert record in victim_records, f"{record} twice, but not one of the killed consumer's"
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        cluster.stop()
