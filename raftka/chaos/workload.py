"""The queue workload of a partition-tolerance experiment: producer and consumer processes that
record every operation in a history (raftka/chaos/checker.py reads it).

- A producer process sends unique values `p<n>-<i>` with the client library's idempotent Producer
  (acks=all), round robin over the partitions, at `rate` values per second with a bounded number
  waiting, and records `invoke`, then `ok` (partition, offset), `fail` (refused: surely not written)
  or `info` (outcome unknown: a delivery timeout, the producer closing).
- A consumer process is a member of the experiment's group; it records each poll's records and each
  change of its assignment (from the consumer's rebalance callbacks, as they happen), and commits
  after each poll (the records are "processed" once recorded).
- The final read drains every partition from its log start to its high watermark through the API,
  and each node's own log from disk after the cluster stopped (one view per replica).

Each process writes its own JSONL file (`<out>/events-<process>.jsonl`), one event per line, `t` in
seconds since the experiment's start (wall clock: the processes share it); the runner merges them.

Thread-safety: each process owns its file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import urllib.request
from typing import Any
from urllib.parse import quote

from raftka.client._http import BATCH_CONTENT_TYPE
from raftka.client.consumer import Consumer
from raftka.client.errors import InvalidRequestError, RaftkaError, RecordTooLargeError
from raftka.client.producer import Producer
from storage.config import LogConfig
from storage.log import PartitionLog
from storage.record_batch import decode_batches, iter_batches

IN_FLIGHT_MAX = (
    2000  # values a producer has sent and not heard back about (a stuck partition must not stop the others)
)
DEFINITE_REFUSALS = (InvalidRequestError, RecordTooLargeError)  # refused before anything was written


class EventLog:
    """One process's events, as JSONL, flushed after each line (a killed run keeps what it had)."""

    def __init__(self, path: str, started_at: float):
        self.started_at = started_at
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, **event: Any) -> None:
        event = {"t": round(time.time() - self.started_at, 6), **event}
        self._file.write(json.dumps(event, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def producer_main(*args) -> None:
    """A producer process's entry point; the arguments are `_produce`'s."""
    asyncio.run(_produce(*args))


async def _produce(
    number: int,
    bootstrap: list[str],
    topic: str,
    partitions: int,
    rate: float,
    out: str,
    started_at: float,
    stop: str,
) -> None:
    process = f"p{number}"
    events = EventLog(os.path.join(out, f"events-{process}.jsonl"), started_at)
    pending: set[asyncio.Task] = set()

    async def settle(value: str, future: asyncio.Future) -> None:
        try:
            metadata = await future
        except DEFINITE_REFUSALS as exc:
            events.write(type="fail", f="send", process=process, value=value, error=repr(exc))
        except (RaftkaError, asyncio.CancelledError) as exc:
            events.write(type="info", f="send", process=process, value=value, error=repr(exc))
        else:
            events.write(
                type="ok",
                f="send",
                process=process,
                value=value,
                partition=metadata.partition,
                offset=metadata.offset,
            )

    producer = Producer(
        bootstrap,
        value_serializer="str",
        linger_ms=2,
        request_timeout_ms=5_000,
        delivery_timeout_ms=30_000,
        retry_backoff_ms=50,
    )
    try:
        i = 0
        while not os.path.exists(stop):
            if len(pending) < IN_FLIGHT_MAX:
                value = f"{process}-{i}"
                events.write(type="invoke", f="send", process=process, value=value)
                try:
                    future = await producer.send(topic, value, partition=i % partitions)
                except RaftkaError as exc:  # refused before it was buffered
                    events.write(type="fail", f="send", process=process, value=value, error=repr(exc))
                else:
                    task = asyncio.create_task(settle(value, future))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                i += 1
            await asyncio.sleep(1 / rate)
        await producer.flush(timeout_ms=35_000)
    finally:
        await producer.close(timeout_ms=1_000)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        events.close()


def consumer_main(*args) -> None:
    """A consumer process's entry point; the arguments are `_consume`'s."""
    asyncio.run(_consume(*args))


async def _consume(
    number: int, bootstrap: list[str], topic: str, group: str, out: str, started_at: float, stop: str
) -> None:
    process = f"c{number}"
    events = EventLog(os.path.join(out, f"events-{process}.jsonl"), started_at)
    owned: set[int] = set()

    def changed(gained: bool):
        """Record each change of the assignment as it happens, inside poll(): a partition lost and
        given back within one poll must show as two changes (the consumer may restart it elsewhere)."""

        def callback(partitions) -> None:
            for tp in partitions:
                (owned.add if gained else owned.discard)(tp.partition)
            events.write(type="ok", f="assign", process=process, partitions=sorted(owned))

        return callback

    consumer = Consumer(
        bootstrap,
        group=group,
        topics=[topic],
        auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=5_000,
        on_assigned=changed(True),
        on_revoked=changed(False),
        on_lost=changed(False),
    )
    try:
        while not os.path.exists(stop):
            try:
                records = await consumer.poll(timeout_ms=200)
            except RaftkaError as exc:
                events.write(type="info", f="poll", process=process, error=repr(exc))
                await asyncio.sleep(0.2)
                continue
            if records:
                events.write(
                    type="ok",
                    f="poll",
                    process=process,
                    records=[[r.partition, r.offset, r.value.decode()] for r in records],
                )
                try:
                    await consumer.commit()
                except RaftkaError as exc:  # fenced or moved: the next poll rejoins
                    events.write(type="info", f="commit", process=process, error=repr(exc))
    finally:
        with contextlib.suppress(RaftkaError, TimeoutError):
            await asyncio.wait_for(consumer.close(), 10)
        events.close()


def final_read_api(address: str, topic: str, partitions: int) -> list[dict]:
    """Every partition from its log start to its high watermark, as its leader serves it (asked
    through `address`, which forwards): one `final-read` event body per partition."""
    views = []
    for partition in range(partitions):
        base = f"http://{address}/v1/topics/{quote(topic, safe='')}/partitions/{partition}"
        with urllib.request.urlopen(f"{base}/offsets", timeout=30) as response:
            bounds = json.loads(response.read())
        start, end = bounds["log_start_offset"], bounds["high_watermark"]
        records: list[list] = []
        offset = start
        while offset < end:
            request = urllib.request.Request(
                f"{base}/records?offset={offset}&max_wait_ms=0&max_bytes=4194304",
                headers={"Accept": BATCH_CONTENT_TYPE},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                data = response.read()
            before = offset
            for record in decode_batches(data):
                if offset <= record.offset < end:
                    records.append([record.offset, record.value.decode()])
                    offset = record.offset + 1
            if offset == before:
                raise RuntimeError(f"{topic}-{partition}: no progress reading at {offset} below {end}")
        views.append(
            {
                "partition": partition,
                "records": records,
                "log_start_offset": start,
                "high_watermark": end,
                "view": "api",
            }
        )
    return views


def final_read_disk(log_dir: str, end_offset: int) -> tuple[int, list[list]]:
    """A stopped node's own log of one partition below `end_offset`: (log start, [[offset, value]])."""
    partition_log = PartitionLog(log_dir, LogConfig())
    try:
        start = partition_log.log_start_offset
        records: list[list] = []
        offset = start
        while offset < min(end_offset, partition_log.log_end_offset):
            data = partition_log.read(offset, 1 << 26, max_offset=end_offset)
            if not data:
                break
            for header, _ in iter_batches(data, verify=True):
                offset = header.next_offset
            records += [[r.offset, r.value.decode()] for r in decode_batches(data) if r.offset < end_offset]
        return start, records
    finally:
        partition_log.close()
