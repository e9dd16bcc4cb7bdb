#!/usr/bin/env python3
"""Consumer group rebalance times: a member joins, leaves cleanly, dies (p50 and max).

Starts a `LocalCluster` of 3 nodes (free ports, data under data/bench-groups, removed at the end;
every node process is killed at the end) with the nodes' default group settings, creates a topic of
12 partitions (replication factor 3), and runs client-library `Consumer(group=...)`s that poll in a
loop, as an application does. Each round measures, from the event to the moment the consumers'
own views (`assignment()`) cover all 12 partitions with no partition owned twice and counts that
differ by at most one:

- join: 2 members are settled; a 3rd is created and starts polling;
- leave: of 3 settled members, one closes (commits and leaves the group);
- death: of 3 settled members, one runs in a child process that is killed with SIGKILL, so the
  coordinator notices only when its session lapses (`group-session-timeout-ms`, 10 s by default).

Before each event the bench waits a random time (seeded) between 0 and the heartbeat interval, so
that the event does not always fall right after the members' heartbeats (they settle together).

Goal (the issue): a clean join or leave settles in under 1 s (p50).

    .venv/bin/python scripts/bench_groups.py [--rounds 5] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from raftka import Admin, Consumer  # noqa: E402
from raftka.local_cluster import LocalCluster  # noqa: E402
from tests.nodeproc import free_port  # noqa: E402

TOPIC = "bench-groups"
PARTITIONS = 12
SETTLE_TIMEOUT_S = 60
HEARTBEAT_INTERVAL_S = 0.5  # the nodes' default group-heartbeat-interval-ms


class Member:
    """A consumer polling in a task, as an application's loop does."""

    def __init__(self, bootstrap: list[str], group: str):
        self.consumer = Consumer(bootstrap, group=group, topics=[TOPIC], auto_offset_reset="earliest")
        self.task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await self.consumer.poll(timeout_ms=100)

    def owned(self) -> set:
        return set(self.consumer.assignment())

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.consumer.close()


def settled(members: list[Member]) -> bool:
    views = [m.owned() for m in members]
    union = set().union(*views)
    counts = [len(v) for v in views]
    return len(union) == PARTITIONS and sum(counts) == PARTITIONS and max(counts) - min(counts) <= 1


async def wait_settled(members: list[Member], started: float) -> float:
    while time.monotonic() - started < SETTLE_TIMEOUT_S:
        if settled(members):
            return time.monotonic() - started
        await asyncio.sleep(0.005)
    raise RuntimeError(f"not settled after {SETTLE_TIMEOUT_S} s: {[sorted(m.owned()) for m in members]}")


def victim_main(bootstrap: list[str], group: str, ready) -> None:
    async def run() -> None:
        consumer = Consumer(bootstrap, group=group, topics=[TOPIC], auto_offset_reset="earliest")
        while True:
            await consumer.poll(timeout_ms=100)
            if consumer.assignment():
                ready.set()

    asyncio.run(run())


async def random_phase(rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(0, HEARTBEAT_INTERVAL_S))


async def one_round(bootstrap: list[str], number: int, rng: random.Random) -> dict[str, float]:
    out = {}
    # join: 2 settled, a 3rd joins
    group = f"join-{number}"
    members = [Member(bootstrap, group) for _ in range(2)]
    await wait_settled(members, time.monotonic())
    await random_phase(rng)
    started = time.monotonic()
    members.append(Member(bootstrap, group))
    out["join"] = await wait_settled(members, started)
    # leave: one of the 3 closes
    leaving = members.pop(0)
    await random_phase(rng)
    started = time.monotonic()
    await leaving.close()
    out["leave"] = await wait_settled(members, started)
    for member in members:
        await member.close()
    # death: one of 3 is a child process, killed
    group = f"death-{number}"
    ready = multiprocessing.get_context("spawn").Event()
    child = multiprocessing.get_context("spawn").Process(target=victim_main, args=(bootstrap, group, ready))
    child.start()
    members = [Member(bootstrap, group) for _ in range(2)]
    while not ready.is_set():
        await asyncio.sleep(0.05)
    for _ in range(200):  # until the three are settled (the child owns a third)
        views = [m.owned() for m in members]
        if sum(len(v) for v in views) == PARTITIONS - PARTITIONS // 3:
            break
        await asyncio.sleep(0.05)
    await random_phase(rng)
    started = time.monotonic()
    child.kill()
    child.join()
    out["death"] = await wait_settled(members, started)
    for member in members:
        await member.close()
    return out


async def main_async(args: argparse.Namespace, bootstrap: list[str]) -> dict[str, list[float]]:
    async with Admin(bootstrap) as admin:
        await admin.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3)
    results: dict[str, list[float]] = {"join": [], "leave": [], "death": []}
    rng = random.Random(args.seed)
    for number in range(args.rounds):
        figures = await one_round(bootstrap, number, rng)
        print("round", number, " ".join(f"{k} {v * 1000:.0f} ms" for k, v in figures.items()), flush=True)
        for key, value in figures.items():
            results[key].append(value)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the data directory and node logs")
    parser.add_argument("--seed", type=int, default=1, help="seeds the random phase of the events")
    args = parser.parse_args()
    print("command: " + " ".join(["scripts/bench_groups.py", *sys.argv[1:]]))
    load = os.getloadavg()
    print(f"cores: {os.cpu_count()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start")
    data_dir = os.path.join(ROOT, "data", "bench-groups")
    shutil.rmtree(data_dir, ignore_errors=True)
    cluster = LocalCluster(
        data_dir,
        controllers=3,
        http_ports=[free_port() for _ in range(3)],
        raft_ports=[free_port() for _ in range(3)],
    )
    try:
        cluster.start(wait_s=60)
        bootstrap = [n.address for n in cluster.nodes]
        results = asyncio.run(main_async(args, bootstrap))
    finally:
        cluster.kill()
        if not args.keep:
            cluster.remove_data()
    print(
        f"\n{PARTITIONS} partitions, 3 nodes, node defaults (heartbeat 0.5 s, session 10 s); {args.rounds} rounds"
    )
    for key, values in results.items():
        print(
            f"{key:>6}: p50 {statistics.median(values) * 1000:7.0f} ms, max {max(values) * 1000:7.0f} ms "
            f"({', '.join(f'{v * 1000:.0f}' for v in values)})"
        )
    joins, leaves = statistics.median(results["join"]), statistics.median(results["leave"])
    met = joins < 1 and leaves < 1
    print(f"goal (clean join and leave p50 under 1 s): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
