#!/usr/bin/env python3
"""CPU per replicated batch in the node's own code: no sockets, no event-loop passes, no other process.

scripts/bench_replication.py measures a whole cluster on a shared 2-core machine, where the drift of
the machine moves single figures by a third. This script runs, in one process and one after the
other, what a batch costs the partition code of three nodes:

- `rf1`: a leader's produce append (the checks, the stamp, the write);
- `rf3`: the same append, then for each of two followers: the leader's read for its fetch, the
  answer encoded and decoded as on the replica stream, the follower's append, and the follower's next
  fetch, which moves the high watermark (node/replica.py, node/fetcher.py);
- `rf3, no tail cache`: `rf3` with the leader's tail cache given no room (node/tail_cache.py), so
  every follower read goes to the log.

The logs are real (a temporary directory under data/), flushed by the interval policy in the
background as in the node, and the process takes the node's allocator settings (node/memory.py):
without them every 133 KB buffer comes from freshly mapped pages, and joining one cost 58 us instead
of 6 us. Each figure is the median over `--rounds` rounds of `--batches` batches,
the variants alternating within each round, as process CPU microseconds per batch.

    .venv/bin/python scripts/bench_replica_path.py [--batches 2000] [--rounds 5] [--records 1000]
        [--value-bytes 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from metadata.image import PartitionInfo
from node.fetcher import decode_fetch_response, encode_fetch_response
from node.memory import tune_malloc
from node.replica import Partition
from node.tail_cache import NODE_TAIL_BYTES_MAX, TailCacheBudget
from storage.config import LogConfig
from storage.log import PartitionLog
from storage.record_batch import NewRecord, check_producer_batch, encode_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEADER_EPOCH = 0
FETCH_MAX_BYTES = 1 << 20  # replica_fetch_max_bytes' default
WARM_UP_BATCHES = 100


def replica(directory: str, node_id: int, isr: tuple[int, ...], budget: TailCacheBudget) -> Partition:
    info = PartitionInfo((1, 2, 3), 1, LEADER_EPOCH, isr, 0)
    log = PartitionLog(os.path.join(directory, f"node-{node_id}"), LogConfig(), background_flush=True)
    partition = Partition("bench", 0, log, info, node_id, budget)
    partition.update(info, 1)
    return partition


async def measure(variant: str, batch: bytes, batches: int) -> float:
    """CPU microseconds per batch for one variant, on fresh logs."""
    os.makedirs(os.path.join(ROOT, "data"), exist_ok=True)
    directory = tempfile.mkdtemp(prefix="bench-replica-path-", dir=os.path.join(ROOT, "data"))
    budget = TailCacheBudget(0 if variant == "rf3, no tail cache" else NODE_TAIL_BYTES_MAX)
    isr = (1,) if variant == "rf1" else (1, 2, 3)
    leader = replica(directory, 1, isr, budget)
    followers = (
        []
        if variant == "rf1"
        else [(2, replica(directory, 2, isr, budget)), (3, replica(directory, 3, isr, budget))]
    )

    def one() -> None:
        leader.append(batch, check_producer_batch(batch))
        for follower_id, follower in followers:
            offset, last_epoch = follower.fetch_position()
            result = leader.read_for_follower(follower_id, offset, last_epoch, LEADER_EPOCH, FETCH_MAX_BYTES)
            for _topic, _index, answer in decode_fetch_response(
                encode_fetch_response([("bench", 0, result)])
            ):
                follower.apply_from_leader(answer)
        for follower_id, follower in followers:  # the next fetches: they move the high watermark
            offset, last_epoch = follower.fetch_position()
            leader.read_for_follower(follower_id, offset, last_epoch, LEADER_EPOCH, FETCH_MAX_BYTES)

    try:
        for _ in range(WARM_UP_BATCHES):
            one()
        started = time.process_time()
        for _ in range(batches):
            one()
        elapsed = time.process_time() - started
        if leader.high_watermark != leader.log.log_end_offset:
            raise AssertionError(
                f"{variant}: HW {leader.high_watermark} behind LEO {leader.log.log_end_offset}"
            )
        for _, follower in followers:
            if follower.log.log_end_offset != leader.log.log_end_offset:
                raise AssertionError(f"{variant}: a follower ended at {follower.log.log_end_offset}")
    finally:
        for partition in [leader, *(f for _, f in followers)]:
            partition.stop()
            partition.log.close()
        shutil.rmtree(directory, ignore_errors=True)
    return elapsed / batches * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--records", type=int, default=1000, help="records per batch")
    parser.add_argument("--value-bytes", type=int, default=100)
    args = parser.parse_args()
    tune_malloc()  # the node's allocator settings (node/memory.py), as node/main.py applies them
    value = os.urandom(args.value_bytes)
    records = [NewRecord(b"key-%05d" % i, value, None, ()) for i in range(args.records)]
    batch = encode_batch(records, now_ms=time.time_ns() // 1_000_000)
    load = os.getloadavg()
    print("command: " + " ".join(["scripts/bench_replica_path.py", *sys.argv[1:]]))
    print(
        f"cores: {os.cpu_count()}, Python {sys.version.split()[0]}, load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start; batches of {args.records} records of "
        f"{args.value_bytes}-byte values ({len(batch):,} bytes)"
    )
    variants = ["rf1", "rf3", "rf3, no tail cache"]
    figures: dict[str, list[float]] = {v: [] for v in variants}
    for round_number in range(args.rounds):
        order = variants if round_number % 2 == 0 else variants[::-1]
        for variant in order:
            figures[variant].append(asyncio.run(measure(variant, batch, args.batches)))
    print(f"CPU microseconds per batch, median of {args.rounds} rounds (all rounds in brackets)")
    rf1 = statistics.median(figures["rf1"])
    for variant in variants:
        median = statistics.median(figures[variant])
        rounds = ", ".join(f"{x:.0f}" for x in figures[variant])
        print(f"  {variant:<20} {median:>6.0f}  ({median / rf1:.2f} x rf1)  [{rounds}]")


if __name__ == "__main__":
    main()
