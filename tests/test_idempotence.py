"""The idempotent producer against a real `raftka node` process (issue: retries never duplicate).

- `POST /v1/producers` hands out distinct ids;
- a retry of an appended batch (same bytes) gets its original offsets and appends nothing, also
  after the node restarts (the producer state is rebuilt from the log and its snapshots);
- out-of-order, fenced, unknown-producer and never-handed-out cases are refused with their codes and
  write nothing; the JSON partition route takes the same fields, the topic route refuses them;
- the client's Producer, behind a proxy that drops the node's answers after the node appended,
  retries and writes every record exactly once, in order.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from raftka import Producer
from storage.record_batch import NewRecord, decode_batches, encode_batch
from tests.nodeproc import NodeProcess, free_port

BATCH = "application/vnd.raftka.batch"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    proc = NodeProcess(str(tmp_path_factory.mktemp("idempotence") / "data")).start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        assert proc.stop() == 0


def create(node, name, partitions=1):
    status, body, _ = node.request("POST", "/v1/topics", {"name": name, "partitions": partitions})
    assert status == 201, body


def new_producer(node) -> int:
    status, body, _ = node.request("POST", "/v1/producers", {})
    assert status == 200 and body["producer_epoch"] == 0, body
    return body["producer_id"]


def batch(values, producer_id=-1, epoch=-1, sequence=-1) -> bytes:
    records = [NewRecord(None, v.encode(), None, ()) for v in values]
    return encode_batch(
        records,
        now_ms=int(time.time() * 1000),  # expiry counts from the batch timestamps
        producer_id=producer_id,
        producer_epoch=epoch,
        base_sequence=sequence,
    )


def send(node, topic, body, partition=0):
    path = f"/v1/topics/{topic}/partitions/{partition}/records?acks=all"
    return node.request("POST", path, body, {"Content-Type": BATCH})[:2]


def end_offset(node, topic, partition=0) -> int:
    status, body, _ = node.request("GET", f"/v1/topics/{topic}/partitions/{partition}/offsets")
    assert status == 200, body
    return body["log_end_offset"]


def values(node, topic, partition=0) -> list[str]:
    path = f"/v1/topics/{topic}/partitions/{partition}/records?offset=0&max_wait_ms=0"
    status, body, _ = node.request("GET", path, headers={"Accept": BATCH})
    assert status == 200
    return [r.value.decode() for r in decode_batches(body)]


def test_producer_ids_are_distinct_and_the_body_is_checked(node):
    ids = [new_producer(node) for _ in range(5)]
    assert len(set(ids)) == 5 and ids == sorted(ids)
    status, body, _ = node.request("POST", "/v1/producers", {"transactional_id": "x"})
    assert (status, body["error_code"]) == (422, 42201), body


def test_a_retry_returns_the_original_offsets_and_appends_nothing(node):
    create(node, "retry")
    pid = new_producer(node)
    first = batch(["a", "b"], pid, 0, 0)
    status, body = send(node, "retry", first)
    assert status == 200 and body["duplicate"] is False and body["base_offset"] == 0, body
    second = batch(["c"], pid, 0, 2)
    assert send(node, "retry", second)[1]["base_offset"] == 2
    for again in (first, second, first):  # both are among the last five batches
        status, body = send(node, "retry", again)
        assert status == 200 and body["duplicate"] is True, body
    assert send(node, "retry", first)[1]["base_offset"] == 0
    assert send(node, "retry", second)[1]["base_offset"] == 2
    assert values(node, "retry") == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("case", "make", "status", "code", "fragment"),
    [
        ("gap", lambda pid: batch(["x"], pid, 0, 5), 422, 42203, "expected sequence 3"),
        ("older epoch", lambda pid: batch(["x"], pid, 0, 3), 409, 40902, "older than the current epoch 1"),
        ("new epoch not at 0", lambda pid: batch(["x"], pid, 2, 4), 422, 42203, "must start at sequence 0"),
        ("unknown producer", lambda pid: batch(["x"], pid + 1, 0, 7), 422, 42204, "no state here"),
        ("never handed out", lambda pid: batch(["x"], 10**9, 0, 0), 422, 42201, "never handed out"),
        ("sequence without id", lambda pid: batch(["x"], -1, -1, 3), 422, 42201, "needs a producer_id"),
    ],
    ids=lambda v: v if (isinstance(v, str) and " " in v) or v == "gap" else "",
)
def test_sequence_errors_are_refused_and_write_nothing(node, case, make, status, code, fragment):
    """The producer wrote sequences 0-2 in epoch 0, then sequence 0 in epoch 1 (a fresh start)."""
    topic = f"seq-{case.replace(' ', '-')}"
    create(node, topic)
    pid = new_producer(node)
    new_producer(node)  # pid + 1 was handed out too: "unknown producer" is about state, not the id
    assert send(node, topic, batch(["a", "b", "c"], pid, 0, 0))[0] == 200
    if case != "gap":
        assert send(node, topic, batch(["d"], pid, 1, 0))[0] == 200
    before = end_offset(node, topic)
    got_status, body = send(node, topic, make(pid))
    assert (got_status, body["error_code"]) == (status, code), body
    assert fragment in body["message"], body["message"]
    assert end_offset(node, topic) == before


def test_json_partition_route_takes_the_fields_and_the_topic_route_refuses_them(node):
    create(node, "json", 2)
    pid = new_producer(node)
    document = {
        "records": [{"value": 1}, {"value": 2}],
        "producer_id": pid,
        "producer_epoch": 0,
        "base_sequence": 0,
    }
    answers = [node.request("POST", "/v1/topics/json/partitions/1/records", document)[:2] for _ in range(2)]
    assert [a[0] for a in answers] == [200, 200]
    assert [a[1]["duplicate"] for a in answers] == [False, True]
    assert (
        answers[0][1]["offsets"]
        == answers[1][1]["offsets"]
        == [{"partition": 1, "offset": 0}, {"partition": 1, "offset": 1}]
    )
    assert end_offset(node, "json", 1) == 2
    status, body, _ = node.request("POST", "/v1/topics/json/records", document)
    assert (status, body["error_code"]) == (422, 42201) and "partitions/{partition}" in body["message"]
    partial = {"records": [{"value": 1}], "producer_id": pid}
    status, body, _ = node.request("POST", "/v1/topics/json/partitions/0/records", partial)
    assert (status, body["error_code"]) == (422, 42201) and "producer_epoch" in body["message"]
    assert end_offset(node, "json", 0) == 0


def test_a_retry_after_a_restart_is_still_recognised(node):
    create(node, "restart")
    pid = new_producer(node)
    first = batch(["a", "b"], pid, 0, 0)
    assert send(node, "restart", first)[1]["base_offset"] == 0
    assert node.kill() == -9  # no clean shutdown: the state comes back from the log alone
    node.start()
    status, body = send(node, "restart", first)
    assert status == 200 and body["duplicate"] is True and body["base_offset"] == 0, body
    assert send(node, "restart", batch(["c"], pid, 0, 2))[1]["base_offset"] == 2
    assert values(node, "restart") == ["a", "b", "c"]
    assert new_producer(node) > pid  # ids from a new block after the restart


class AnswerDroppingProxy:
    """A TCP proxy in front of a node (the address the node advertises, so the clients' requests all
    pass it) that, once `drops` is set, passes each produce request on, waits for the node's answer (so
    the records were appended), and closes the client's connection instead of passing the answer
    back: a lost answer. It runs on its own event loop in a thread."""

    def __init__(self, port: int, target_port: int):
        self.port, self.target_port = port, target_port
        self.drops = 0
        self.dropped = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> AnswerDroppingProxy:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port), self.loop
        )
        self.server = started.result(10)
        return self

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _serve(self, client_reader, client_writer) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        try:
            while True:
                head, body = await _read_message(client_reader)
                upstream_writer.write(head + body)
                await upstream_writer.drain()
                answer = b"".join(await _read_message(upstream_reader))
                request_line = head.split(b"\r\n", 1)[0]
                if (
                    request_line.startswith(b"POST")
                    and b"/records" in request_line
                    and self.dropped < self.drops
                ):
                    self.dropped += 1
                    return  # the node appended; the client never hears of it
                client_writer.write(answer)
                await client_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            client_writer.close()
            upstream_writer.close()


async def _read_message(reader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


def test_the_producer_retries_lost_answers_without_duplicates(tmp_path):
    proxy_port, node_port = free_port(), free_port()
    proxy = AnswerDroppingProxy(proxy_port, node_port).start()
    lossy = NodeProcess(str(tmp_path / "data"), "--advertise", f"127.0.0.1:{proxy_port}", port=node_port)
    try:
        lossy.start()
        create(lossy, "lost", 2)
        proxy.drops = 6

        async def scenario():
            async with Producer(
                f"127.0.0.1:{proxy_port}",
                value_serializer="str",
                batch_bytes_max=200,  # a few records per batch: many requests
                request_timeout_ms=5000,
                retry_backoff_ms=20,
            ) as producer:
                futures = [await producer.send("lost", f"v{i:03d}", partition=i % 2) for i in range(60)]
                await producer.flush()
                return [f.result() for f in futures]

        results = asyncio.run(asyncio.wait_for(scenario(), 60))
        assert proxy.dropped == 6
        for partition in (0, 1):
            wanted = [f"v{i:03d}" for i in range(partition, 60, 2)]
            assert values(lossy, "lost", partition) == wanted  # each once, in send order
            assert [r.offset for r in results if r.partition == partition] == list(range(30))
    finally:
        if lossy.proc is not None and lossy.proc.poll() is None:
            lossy.stop()
        proxy.close()


def test_producer_state_expires_after_producer_id_expiration_ms(tmp_path):
    short = NodeProcess(
        str(tmp_path / "data"), "--producer-id-expiration-ms", "1000", "--retention-check-interval-ms", "100"
    ).start()
    try:
        create(short, "expiry")
        pid = new_producer(short)
        now_ms = int(time.time() * 1000)
        first = encode_batch(
            [NewRecord(None, b"a", None, ())],
            now_ms=now_ms,
            producer_id=pid,
            producer_epoch=0,
            base_sequence=0,
        )
        assert send(short, "expiry", first)[0] == 200
        time.sleep(2.0)  # past the expiration, and more than one retention check later
        status, body = send(short, "expiry", batch(["b"], pid, 0, 1))
        assert (status, body["error_code"]) == (422, 42204), body  # forgotten: start again at 0
        status, body = send(short, "expiry", first)
        assert status == 200 and body["duplicate"] is False, body  # no longer recognised as a retry
    finally:
        short.stop()
