"""`ReplicaFetcher`: this node's followers pull from their leaders, one long-poll per leader.

Theory of operation
-------------------
For each leader that leads partitions this node follows there is one task and one connection (one
connection per follower per leader), carrying every partition followed from that leader: the replica
stream (node/replica_stream.py), an upgrade of a connection to the leader's HTTP port
(`GET /v1/internal/replica/stream`). On it the follower sends one fetch at a time (a fetch frame:
JSON with each partition's fetch offset (its log end offset), the epoch of its last batch and the
leader epoch this node knows) and waits for its answer; the leader parks the fetch until it has data
or `replica_fetch_wait_max_ms` passes. The answer is one frame (`encode_fetch_response`): a
length-prefixed JSON head with each partition's high watermark, log start offset, error or diverging
epoch and data size, then the partitions' raw batches back to back. Each partition's part goes to
`Partition.apply_from_leader`, which appends the batches without decoding them (checksums checked),
truncates on divergence, and takes the high watermark and log start offset. All decisions are in
node/replication.py; this module only moves bytes.

Why a connection and not a POST per fetch: a follower fetches about once per produced batch, and a
full HTTP exchange cost about three times the framing of one message each way on the same machine
(docs/performance.md, "Replication transport"). The same fetch also works as a plain
`POST /v1/internal/replica/fetch` for tools and tests.

`reconcile()` runs after every metadata change: tasks start for new leaders and end for leaders this
node no longer follows. A failed connection, a refused fetch or a leader that moved to another
address closes the connection; the task backs off for `BACKOFF_S` and connects again (the leader may
be gone: the controller will elect another and the metadata will say so). A fetch unanswered for
`ANSWER_GRACE_S` past its long-poll is noticed by a watchdog that looks every `WATCHDOG_S`: it
replaces the task, whose connection closes as it ends, by a new one that connects after
`BACKOFF_S`. (One timer per node rather than a receive timeout per fetch: a timeout costs a timer
set and cancelled on every exchange, about once per produced batch.)

Thread-safety: event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from typing import NamedTuple

import orjson

from node.replica import ReplicaFetchResult
from node.replica_stream import FollowerStream
from node.replication import Diverging

log = logging.getLogger(__name__)

BACKOFF_S = 0.2
ANSWER_GRACE_S = 10.0  # how long past its long-poll a fetch may go unanswered before reconnecting
WATCHDOG_S = 1.0  # how often the unanswered fetches are looked for
CONNECT_TIMEOUT_S = 5.0  # connecting and switching to the replica stream
_HEAD_LENGTH = struct.Struct(">I")


class ReplicaFetchRequest(NamedTuple):
    """One follower fetch, as the leader checked it."""

    replica_id: int
    replica_epoch: int
    max_wait_ms: int
    max_bytes: int
    partitions: list[tuple[str, int, int, int, int]]  # topic, partition, offset, last epoch, leader epoch


def encode_fetch_response(entries: list[tuple[str, int, ReplicaFetchResult]]) -> bytes:
    return b"".join(fetch_response_parts(entries))


def fetch_response_parts(entries: list[tuple[str, int, ReplicaFetchResult]]) -> list:
    """The answer as the pieces that go back to back: the head's length, the head, each partition's
    batches (the replica stream joins them into its frame with no other copy)."""
    head = []
    for topic, index, result in entries:
        head.append(
            {
                "topic": topic,
                "partition": index,
                "error_code": result.error_code,
                "high_watermark": result.high_watermark,
                "log_start_offset": result.log_start_offset,
                "log_end_offset": result.log_end_offset,
                "diverging": None
                if result.diverging is None
                else [result.diverging.epoch, result.diverging.end_offset],
                "size": len(result.data),
            }
        )
    encoded = orjson.dumps({"partitions": head})
    return [_HEAD_LENGTH.pack(len(encoded)), encoded, *(r.data for _, _, r in entries)]


def decode_fetch_response(body) -> list[tuple[str, int, ReplicaFetchResult]]:
    """The partitions of a leader's answer (bytes or a memoryview). Each one's `data` is a memoryview
    into `body`: the batches go to the log as they arrived, without a copy."""
    view = memoryview(body)
    (length,) = _HEAD_LENGTH.unpack_from(view, 0)
    head = orjson.loads(view[4 : 4 + length])
    position = 4 + length
    out = []
    for entry in head["partitions"]:
        size = entry["size"]
        data = view[position : position + size]
        position += size
        diverging = entry["diverging"]
        out.append(
            (
                entry["topic"],
                entry["partition"],
                ReplicaFetchResult(
                    data,
                    entry["high_watermark"],
                    entry["log_start_offset"],
                    entry["log_end_offset"],
                    None if diverging is None else Diverging(diverging[0], diverging[1]),
                    entry["error_code"],
                ),
            )
        )
    if position != len(body):
        raise ValueError(f"replica fetch answer has {len(body) - position} bytes past its partitions")
    return out


class ReplicaFetcher:
    def __init__(self, node):
        self.node = node
        self._tasks: dict[int, asyncio.Task] = {}
        self._answer_due: dict[int, float] = {}  # leader id -> when its outstanding fetch is overdue
        self._watchdog: asyncio.TimerHandle | None = None

    def reconcile(self) -> None:
        followed = self.node.replicas.followed()
        for leader_id, task in list(self._tasks.items()):
            if leader_id not in followed or task.done():
                task.cancel()
                del self._tasks[leader_id]
                self._answer_due.pop(leader_id, None)
        for leader_id in followed:
            if leader_id not in self._tasks:
                self._tasks[leader_id] = asyncio.create_task(self._run(leader_id))
        if self._tasks and self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(WATCHDOG_S, self._check_answers)

    def _check_answers(self) -> None:
        """The watchdog: a fetch still unanswered at its due time replaces its task (see the module notes)."""
        self._watchdog = None
        now = asyncio.get_running_loop().time()
        for leader_id, due in list(self._answer_due.items()):
            task = self._tasks.get(leader_id)
            if now < due or task is None:
                continue
            log.info(
                "fetch from leader %d unanswered for %.0f s past its long-poll; reconnecting",
                leader_id,
                ANSWER_GRACE_S,
            )
            del self._answer_due[leader_id]
            task.cancel()  # its connection closes as it ends
            self._tasks[leader_id] = asyncio.create_task(self._run(leader_id, delay_s=BACKOFF_S))
        self.reconcile()

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self._answer_due.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self, leader_id: int, delay_s: float = 0.0) -> None:
        failures = 0
        stream: FollowerStream | None = None
        address = None
        if delay_s:
            await asyncio.sleep(delay_s)
        try:
            while True:
                partitions = self.node.replicas.followed().get(leader_id, [])
                if not partitions:
                    return
                broker = self.node.store.image.brokers.get(leader_id)
                if broker is None:
                    await asyncio.sleep(BACKOFF_S)
                    continue
                try:
                    if stream is None or stream.closed or address != broker.address:
                        if stream is not None:
                            stream.close()
                        stream, address = None, broker.address
                        stream = await FollowerStream.open(
                            self.node.config.dial(address), self.node.config.node_id, CONNECT_TIMEOUT_S
                        )
                    await self._fetch_once(leader_id, stream, partitions)
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the leader is down, slow or changing: back off and go on
                    failures += 1
                    self._answer_due.pop(leader_id, None)
                    if failures == 1 or failures % 50 == 0:
                        log.info("fetch from leader %d failed (%s); retrying", leader_id, exc)
                    if stream is not None:
                        stream.close()
                    stream = None
                    await asyncio.sleep(BACKOFF_S)
        finally:
            if stream is not None:
                stream.close()

    async def _fetch_once(self, leader_id: int, stream: FollowerStream, partitions) -> None:
        config = self.node.config
        wanted = {}
        request = []
        for partition in partitions:
            fetch_offset, last_epoch = partition.fetch_position()
            wanted[(partition.topic, partition.index)] = partition
            request.append(
                {
                    "topic": partition.topic,
                    "partition": partition.index,
                    "fetch_offset": fetch_offset,
                    "last_fetched_epoch": last_epoch,
                    "leader_epoch": partition.info.leader_epoch,
                }
            )
        document = {
            "replica_id": config.node_id,
            "replica_epoch": self.node.lifecycle.broker_epoch
            if self.node.lifecycle.broker_epoch is not None
            else -1,
            "max_wait_ms": config.replica_fetch_wait_max_ms,
            "max_bytes": config.replica_fetch_max_bytes,
            "partitions": request,
        }
        due = asyncio.get_running_loop().time() + config.replica_fetch_wait_max_ms / 1000 + ANSWER_GRACE_S
        self._answer_due[leader_id] = due
        answer = await stream.exchange(orjson.dumps(document))  # no timeout: the watchdog looks after it
        if self._answer_due.get(leader_id) == due:
            del self._answer_due[leader_id]
        fenced = False
        for topic, index, result in decode_fetch_response(answer):
            partition = wanted.get((topic, index))
            if partition is None or self.node.replicas.partitions.get((topic, index)) is not partition:
                continue  # the replica went away meanwhile
            if result.error_code in (40403, 40905):
                fenced = True  # our metadata or the leader's is behind: wait for it to change
                continue
            try:
                partition.apply_from_leader(result)
            except Exception:
                log.exception("%s-%d: applying the leader's answer failed", topic, index)
                fenced = True
        if fenced:
            await asyncio.sleep(BACKOFF_S)
