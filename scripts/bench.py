#!/usr/bin/env python3
"""Produce and consume throughput of one node, by batch size: prints a table and writes a PNG plot.

The benchmark starts a node (a fresh data directory under data/bench-node), and for each acks setting
and batch size produces 100-byte records for a few seconds from this one client process: it encodes
each batch with the storage codec (as the client library's Producer does per batch) and posts it on the
binary path with a few requests in flight, timing each request. Then it consumes what it wrote from the
start, on the binary path, decoding every record. Encoding and decoding run in this process, so the
figures include the client's work.

    .venv/bin/python scripts/bench.py [--seconds 3] [--sizes 1,10,100,1000,10000] [--acks 1,all]
                                      [--in-flight 4] [--plot docs/bench-produce.png]
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

from storage.record_batch import NewRecord, decode_batches, encode_batch  # noqa: E402
from tests.nodeproc import NodeProcess  # noqa: E402

BATCH = "application/vnd.raftka.batch"
VALUE_BYTES = 100


async def produce(session, url: str, size: int, acks: str, seconds: float, in_flight: int) -> dict:
    value = os.urandom(VALUE_BYTES)
    records = [NewRecord(b"key-%05d" % i, value, None, ()) for i in range(size)]
    latencies: list[float] = []
    sent_records = 0
    sent_bytes = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal sent_records, sent_bytes
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
    }


async def consume(session, url: str, total: int) -> dict:
    offset = 0
    received = 0
    received_bytes = 0
    started = time.perf_counter()
    while offset < total:
        async with session.get(
            f"{url}?offset={offset}&max_bytes={4 << 20}&max_wait_ms=0", headers={"Accept": BATCH}
        ) as response:
            data = await response.read()
            if response.status != 200:
                raise RuntimeError(f"fetch failed: {response.status} {data[:200]!r}")
            next_offset = int(response.headers["X-Raftka-Next-Offset"])
        records = [r for r in decode_batches(data, verify=True) if r.offset >= offset]
        received += len(records)
        received_bytes += len(data)
        offset = next_offset
    elapsed = time.perf_counter() - started
    return {"records_s": received / elapsed, "mb_s": received_bytes / elapsed / 1e6}


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
                consumed = await consume(session, url, produced["records"])
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
