#!/usr/bin/env python3
"""Produce and consume throughput of one node, by batch size: prints a table and writes a PNG plot.

The benchmark starts a node (a fresh data directory under data/bench-node), and for each acks setting
and batch size produces 100-byte records for a few seconds from this one client process: it encodes
each batch with the storage codec (as the client library's Producer does per batch) and posts it on the
binary path with a few requests in flight, timing each request. Then it consumes what it wrote from the
start with the client library's Consumer (`poll_batches`: checksums verified, every record's offset,
timestamp, key and value handed over column by column), checking that it saw offsets 0 .. N-1 once each,
in order, with every key and value byte. Encoding and decoding run in this process, so the figures include
the client's work.

    .venv/bin/python scripts/bench.py [--seconds 3] [--sizes 1,10,100,1000,10000] [--acks 1,all]
                                      [--in-flight 4] [--fetch-bytes 4194304] [--plot docs/bench-produce.png]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time

import aiohttp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from raftka import Consumer  # noqa: E402
from storage.record_batch import NewRecord, encode_batch  # noqa: E402
from tests.nodeproc import NodeProcess  # noqa: E402

BATCH = "application/vnd.raftka.batch"
VALUE_BYTES = 100


async def produce(session, url: str, size: int, acks: str, seconds: float, in_flight: int) -> dict:
    value = os.urandom(VALUE_BYTES)
    records = [NewRecord(b"key-%05d" % i, value, None, ()) for i in range(size)]
    payload = sum(len(r.key) + len(r.value) for r in records)  # key and value bytes of one batch
    latencies: list[float] = []
    sent_records = 0
    sent_bytes = 0
    sent_payload = 0
    first_ms = time.time_ns() // 1_000_000
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal sent_records, sent_bytes, sent_payload
        while time.perf_counter() < deadline:
            batch = encode_batch(records, now_ms=time.time_ns() // 1_000_000)
            started = time.perf_counter()
            async with session.post(
                f"{url}?acks={acks}", data=batch, headers={"Content-Type": BATCH}
            ) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"produce failed: {response.status} {body[:200]!r}")
            latencies.append(time.perf_counter() - started)
            sent_records += size
            sent_bytes += len(batch)
            sent_payload += payload

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "records_s": sent_records / elapsed,
        "mb_s": sent_bytes / elapsed / 1e6,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "records": sent_records,
        "bytes": sent_bytes,
        "payload": sent_payload,
        "first_ms": first_ms,
        "last_ms": time.time_ns() // 1_000_000,
    }


async def consume(address: str, topic: str, produced: dict, fetch_bytes: int) -> dict:
    """Read back partition 0 from offset 0 with the library's Consumer, in batches of columns; raise
    unless offsets 0 .. N-1 came once each and in order, with every key and value byte produced."""
    total = produced["records"]
    async with Consumer(
        address,
        fetch_bytes_max=fetch_bytes,
        max_poll_records=100_000,  # a poll hands out what one fetch brought (fetch_bytes bounds it)
        auto_offset_reset="earliest",
    ) as consumer:
        consumer.assign([(topic, 0)])
        consumer.seek((topic, 0), 0)
        # Look the leader up and connect before the clock starts, as the produce phase did.
        high_watermark = (await consumer.offsets((topic, 0)))["high_watermark"]
        if high_watermark != total:
            raise RuntimeError(f"{topic}: high watermark {high_watermark}, but {total} records were produced")
        expected = 0
        payload = 0
        started = time.perf_counter()
        while expected < total:
            batches = await consumer.poll_batches(timeout_ms=10_000)
            if not batches:
                raise RuntimeError(f"{topic}: no records for 10 s at offset {expected} of {total}")
            for batch in batches:
                count = len(batch)
                if not _is_run(batch.offsets, expected):
                    raise RuntimeError(f"{topic}: expected offsets from {expected}, got {batch!r}")
                if not len(batch.timestamps_ms) == len(batch.keys) == len(batch.values) == count:
                    raise RuntimeError(f"{topic}: columns of different lengths in {batch!r}")
                ends = (batch.timestamps_ms[0], batch.timestamps_ms[-1])  # 4 producers: not in order
                if not produced["first_ms"] <= min(ends) <= max(ends) <= produced["last_ms"]:
                    raise RuntimeError(f"{topic}: a timestamp outside the produce phase in {batch!r}")
                payload += sum(map(len, batch.keys)) + sum(map(len, batch.values))  # touches every record
                expected += count
        elapsed = time.perf_counter() - started
    if expected != total or payload != produced["payload"]:
        raise RuntimeError(
            f"{topic}: read {expected} records and {payload} key and value bytes of {total} and {produced['payload']}"
        )
    # The node keeps the produced batches as they are, so the consumer read exactly produced["bytes"].
    return {"records_s": total / elapsed, "mb_s": produced["bytes"] / elapsed / 1e6}


def _is_run(offsets, first: int) -> bool:
    """Whether `offsets` are exactly first, first + 1, ... (two ranges compare without a loop)."""
    run = range(first, first + len(offsets))
    return offsets == run if type(offsets) is range else list(offsets) == list(run)


async def run(args, node: NodeProcess) -> list[dict]:
    results = []
    connector = aiohttp.TCPConnector(limit=args.in_flight + 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        for acks in args.acks:
            for size in args.sizes:
                topic = f"bench-{acks}-{size}"
                async with session.post(
                    f"{node.url}/v1/topics",
                    json={"name": topic, "partitions": 1, "configs": {"max.message.bytes": 16 << 20}},
                ) as response:
                    if response.status != 201:
                        raise RuntimeError(await response.text())
                url = f"{node.url}/v1/topics/{topic}/partitions/0/records"
                produced = await produce(session, url, size, acks, args.seconds, args.in_flight)
                consumed = await consume(node.address, topic, produced, args.fetch_bytes)
                row = {"acks": acks, "size": size, **{f"produce_{k}": v for k, v in produced.items()}}
                row.update({f"consume_{k}": v for k, v in consumed.items()})
                results.append(row)
                print(
                    f"{acks:>4} {size:>6} {produced['records_s']:>14,.0f} {produced['mb_s']:>9.1f} "
                    f"{produced['p50_ms']:>8.2f} {produced['p99_ms']:>8.2f} {consumed['records_s']:>14,.0f} "
                    f"{consumed['mb_s']:>9.1f}",
                    flush=True,
                )
    return results


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for acks in sorted({r["acks"] for r in results}):
        rows = [r for r in results if r["acks"] == acks]
        sizes = [r["size"] for r in rows]
        left.plot(sizes, [r["produce_records_s"] for r in rows], marker="o", label=f"produce acks={acks}")
        left.plot(
            sizes,
            [r["consume_records_s"] for r in rows],
            marker="s",
            linestyle="--",
            label=f"consume ({acks})",
        )
        right.plot(sizes, [r["produce_p50_ms"] for r in rows], marker="o", label=f"p50 acks={acks}")
        right.plot(
            sizes, [r["produce_p99_ms"] for r in rows], marker="^", linestyle=":", label=f"p99 acks={acks}"
        )
    for axis in (left, right):
        axis.set_xscale("log")
        axis.set_xlabel("records per batch")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    left.set_yscale("log")
    left.set_ylabel("records/s")
    left.set_title("Throughput (one node, one client process)")
    right.set_yscale("log")
    right.set_ylabel("produce request latency (ms)")
    right.set_title("Produce latency")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="produce time per batch size")
    parser.add_argument("--sizes", default="1,10,100,1000,10000")
    parser.add_argument("--acks", default="1,all")
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument(
        "--fetch-bytes",
        type=int,
        default=4 << 20,
        help="the consumer's fetch_bytes_max (a 10,000-record batch fits)",
    )
    parser.add_argument("--plot", default=os.path.join(ROOT, "docs", "bench-produce.png"))
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "data", "bench-node"))
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.acks = args.acks.split(",")
    shutil.rmtree(args.data_dir, ignore_errors=True)
    os.makedirs(args.data_dir)
    print(f"$ {' '.join(sys.argv)}")
    print(
        f"cores: {os.cpu_count()}, {VALUE_BYTES}-byte values, {args.in_flight} requests in flight, {args.seconds}s each"
    )
    node = NodeProcess(os.path.join(args.data_dir, "data"), "--max-request-bytes", str(64 << 20)).start()
    try:
        print(
            f"{'acks':>4} {'batch':>6} {'produce rec/s':>14} {'MB/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'consume rec/s':>14} {'MB/s':>9}"
        )
        results = asyncio.run(run(args, node))
    finally:
        node.stop()
        shutil.rmtree(args.data_dir, ignore_errors=True)
    if args.plot:
        plot(results, args.plot)
        print(f"plot written to {os.path.relpath(args.plot, ROOT)}")
    at_1000 = [r for r in results if r["size"] == 1000]
    for r in at_1000:
        print(
            f"acks={r['acks']} at 1,000-record batches: produce {r['produce_records_s']:,.0f} records/s "
            f"(goal 500,000), consume {r['consume_records_s']:,.0f} records/s (goal 1,000,000)"
        )


if __name__ == "__main__":
    main()
