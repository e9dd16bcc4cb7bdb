#!/usr/bin/env python3
"""Compare record framings for the client-side encoder: fixed-width struct fields (Raftka's format)
against a pure-Python varint framing of the same fields (Kafka's style). Prints records/s for each.

    .venv/bin/python scripts/bench_codec.py [--records 200000] [--value-bytes 100]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from storage.record_batch import NewRecord, decode_records, encode_batch


def _zigzag_varint(value: int, out: bytearray) -> None:
    value = (value << 1) ^ (value >> 63)
    while value & ~0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def encode_varint_records(records: list[NewRecord], first_ts: int) -> bytes:
    """Kafka-style record framing: length, attributes, varint deltas and lengths."""
    out = bytearray()
    for index, (key, value, ts, _headers) in enumerate(records):
        body = bytearray(b"\x00")
        _zigzag_varint(ts - first_ts, body)
        _zigzag_varint(index, body)
        _zigzag_varint(-1 if key is None else len(key), body)
        if key:
            body += key
        _zigzag_varint(-1 if value is None else len(value), body)
        if value:
            body += value
        _zigzag_varint(0, body)
        _zigzag_varint(len(body), out)
        out += body
    return bytes(out)


def measure(label: str, fn, count: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    rate = count / best
    print(f"{label:<42} {rate / 1e6:8.2f} M records/s")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    now = 1_764_000_000_000
    value = os.urandom(args.value_bytes)
    records = [NewRecord(b"key-%d" % (i % 1000), value, now + i, ()) for i in range(args.batch)]
    rounds = max(1, args.records // args.batch)
    total = rounds * args.batch
    print(f"{total} records of {args.value_bytes}-byte values, {args.batch} per batch, best of 3")
    fixed = measure(
        "fixed-width struct framing (encode_batch)",
        lambda: [encode_batch(records, now_ms=now) for _ in range(rounds)],
        total,
    )
    varint = measure(
        "pure-Python varint framing (records only)",
        lambda: [encode_varint_records(records, now) for _ in range(rounds)],
        total,
    )
    batch = encode_batch(records, now_ms=now)
    measure(
        "fixed-width decode (decode_records)", lambda: [decode_records(batch) for _ in range(rounds)], total
    )
    print(f"fixed / varint encode ratio: {fixed / varint:.1f}x")


if __name__ == "__main__":
    main()
