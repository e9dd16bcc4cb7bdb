"""The node's HTTP API against a real `raftka node` process: topics, produce, fetch, offsets, health,
metrics, and the table of bad input (each refused with its error code, nothing written)."""

from __future__ import annotations

import asyncio
import base64
import threading
import time

import aiohttp
import orjson
import pytest

from node import replica_stream
from node.fetcher import decode_fetch_response
from node.replica_stream import STREAM_PATH, FollowerStream, StreamError
from raftka.partitioner import partition_for_key
from storage.record_batch import NewRecord, decode_batches, encode_batch
from tests.nodeproc import NodeProcess

BATCH = "application/vnd.raftka.batch"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    proc = NodeProcess(str(tmp_path_factory.mktemp("api") / "data"), "--max-request-bytes", "200000").start()
    yield proc
    assert proc.stop() == 0


def create(node, name, partitions=1, **configs):
    status, body, _ = node.request(
        "POST", "/v1/topics", {"name": name, "partitions": partitions, "configs": configs}
    )
    assert status == 201, body
    return body


def leo(node, topic, partition=0):
    status, body, _ = node.request("GET", f"/v1/topics/{topic}/partitions/{partition}/offsets")
    assert status == 200, body
    return body["log_end_offset"]


def fetch_json(node, topic, partition=0, offset=0, **params):
    query = "&".join(f"{k}={v}" for k, v in {"offset": offset, "max_wait_ms": 0, **params}.items())
    status, body, _ = node.request("GET", f"/v1/topics/{topic}/partitions/{partition}/records?{query}")
    assert status == 200, body
    return body


def test_health_openapi_and_cluster(node):
    assert node.request("GET", "/livez")[0] == 200
    assert node.request("GET", "/readyz")[0] == 200
    status, doc, _ = node.request("GET", "/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.")
    assert "/v1/topics/{topic}/partitions/{partition}/records" in doc["paths"]
    status, cluster, _ = node.request("GET", "/v1/cluster")
    assert cluster["controller_id"] == 1
    assert cluster["brokers"] == [
        {
            "id": 1,
            "address": node.address,
            "rack": None,
            "roles": ["broker", "controller"],
            "status": "active",
            "epoch": cluster["brokers"][0]["epoch"],
        }
    ]
    assert cluster["controller_epoch"] >= 1 and cluster["metadata_offset"] >= 3
    assert cluster["raft"]["state"] == "leader" and cluster["raft"]["voter"] is True
    assert len(cluster["cluster_id"]) == 32


def test_topic_lifecycle(node):
    created = create(node, "life", 2, **{"retention.ms": "60000"})
    assert [p["partition"] for p in created["partitions"]] == [0, 1]
    assert created["configs"]["retention.ms"] == "60000"
    assert created["configs"]["cleanup.policy"] == "delete"  # defaults are shown too
    status, body, _ = node.request("POST", "/v1/topics", {"name": "life"})
    assert (status, body["error_code"]) == (409, 40901)
    names = [t["name"] for t in node.request("GET", "/v1/topics")[1]["topics"]]
    assert "life" in names
    status, body, _ = node.request(
        "PATCH",
        "/v1/topics/life",
        {"partitions": 4, "configs": {"retention.bytes": 1 << 20}, "delete_configs": ["retention.ms"]},
    )
    assert status == 200, body
    assert len(body["partitions"]) == 4
    assert body["configs"]["retention.bytes"] == str(1 << 20)
    assert body["configs"]["retention.ms"] == "604800000"
    status, body, _ = node.request("PATCH", "/v1/topics/life", {"partitions": 2})
    assert (status, body["error_code"]) == (422, 42201)
    assert "only grow" in body["message"]
    node.request("POST", "/v1/topics/life/records", {"records": [{"value": 1, "partition": 3}]})
    assert node.request("DELETE", "/v1/topics/life")[0] == 200
    assert node.request("GET", "/v1/topics/life")[1]["error_code"] == 40401
    create(node, "life", 1)  # the name is free again, with an empty log
    assert leo(node, "life") == 0


def test_json_produce_routes_by_partition_key_and_stickiness(node):
    create(node, "route", 4)
    keys = [f"user-{i}" for i in range(20)]
    status, body, _ = node.request(
        "POST", "/v1/topics/route/records", {"records": [{"key": k, "value": i} for i, k in enumerate(keys)]}
    )
    assert status == 200, body
    assert [o["partition"] for o in body["offsets"]] == [partition_for_key(k.encode(), 4) for k in keys]
    status, body, _ = node.request(
        "POST", "/v1/topics/route/records", {"records": [{"value": i} for i in range(10)]}
    )
    assert len({o["partition"] for o in body["offsets"]}) == 1  # keyless records of one request stay together
    offsets = [o["offset"] for o in body["offsets"]]
    assert offsets == list(range(offsets[0], offsets[0] + 10))
    status, body, _ = node.request(
        "POST", "/v1/topics/route/records", {"records": [{"value": "x", "partition": 2}]}
    )
    assert body["offsets"][0]["partition"] == 2


def test_values_keys_and_headers_round_trip(node):
    create(node, "shapes")
    raw = bytes(range(250, 256))
    records = [
        {"key": "k1", "value": {"nested": [1, 2, {"a": None}]}, "headers": {"trace": "abc", "empty": None}},
        {"key": None, "value": None},
        {"key": "", "value": ""},
        {"key_b64": base64.b64encode(raw).decode(), "value_b64": base64.b64encode(raw).decode()},
        {"value": 42, "timestamp_ms": 1_700_000_000_000},
    ]
    status, body, _ = node.request("POST", "/v1/topics/shapes/partitions/0/records", {"records": records})
    assert status == 200, body
    got = fetch_json(node, "shapes")["records"]
    assert got[0]["key"] == "k1"
    assert got[0]["value"] == {"nested": [1, 2, {"a": None}]}
    assert got[0]["headers"] == {"trace": "abc", "empty": None}
    assert (got[1]["key"], got[1]["value"]) == (None, None)  # a tombstone with no key
    assert (got[2]["key"], got[2]["value"]) == ("", "")  # empty key, empty JSON string
    assert base64.b64decode(got[3]["key_b64"]) == raw
    assert base64.b64decode(got[3]["value_b64"]) == raw
    assert got[4]["timestamp_ms"] == 1_700_000_000_000
    all_b64 = fetch_json(node, "shapes", encoding="base64")["records"]
    assert base64.b64decode(all_b64[0]["value_b64"]) == b'{"nested":[1,2,{"a":null}]}'


def test_binary_produce_and_fetch(node):
    create(node, "bin")
    batch = encode_batch(
        [NewRecord(b"k", b"v%d" % i, None, ()) for i in range(100)], now_ms=int(time.time() * 1000)
    )
    status, body, _ = node.request(
        "POST", "/v1/topics/bin/partitions/0/records?acks=1", batch, {"Content-Type": BATCH}
    )
    assert (status, body["base_offset"], body["last_offset"]) == (200, 0, 99), body
    status, body, _ = node.request(
        "POST", "/v1/topics/bin/partitions/0/records", batch, {"Content-Type": BATCH}
    )
    assert body["base_offset"] == 100
    status, data, headers = node.request(
        "GET", "/v1/topics/bin/partitions/0/records?offset=150&max_wait_ms=0", headers={"Accept": BATCH}
    )
    assert status == 200
    assert headers["X-Raftka-Next-Offset"] == "200"
    assert headers["X-Raftka-High-Watermark"] == "200"
    assert headers["X-Raftka-Log-Start-Offset"] == "0"
    records = decode_batches(data)
    assert records[0].offset == 100  # whole batches: the one holding offset 150 starts at 100
    assert [r.value for r in records if r.offset >= 150][:2] == [b"v50", b"v51"]
    json_view = fetch_json(node, "bin", offset=150)
    assert json_view["records"][0]["offset"] == 150
    assert json_view["next_offset"] == 200


def test_acks_zero_returns_no_offsets_but_appends(node):
    create(node, "acks0")
    status, body, _ = node.request("POST", "/v1/topics/acks0/records?acks=0", {"records": [{"value": 1}]})
    assert status == 200
    assert body["offsets"] == [{"partition": 0, "offset": -1}]
    assert leo(node, "acks0") == 1


def test_fetch_long_polls_until_data_arrives(node):
    create(node, "poll")
    result = {}

    def waiter():
        started = time.monotonic()
        status, body, _ = node.request(
            "GET", "/v1/topics/poll/partitions/0/records?offset=0&max_wait_ms=10000"
        )
        result.update(status=status, body=body, waited=time.monotonic() - started)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.5)
    assert "status" not in result  # still waiting
    node.request("POST", "/v1/topics/poll/records", {"records": [{"value": "late"}]})
    thread.join(15)
    assert result["status"] == 200
    assert [r["value"] for r in result["body"]["records"]] == ["late"]
    assert result["waited"] < 9  # woken by the append, not by the timeout
    empty = fetch_json(node, "poll", offset=1, max_wait_ms=100)
    assert (empty["records"], empty["next_offset"]) == ([], 1)


def test_offsets_and_timestamps(node):
    create(node, "times")
    base = 1_800_000_000_000
    node.request(
        "POST",
        "/v1/topics/times/records",
        {"records": [{"value": i, "timestamp_ms": base + 10 * i} for i in range(10)]},
    )
    status, body, _ = node.request("GET", "/v1/topics/times/partitions/0/offsets")
    assert body == {
        "log_start_offset": 0,
        "high_watermark": 10,
        "log_end_offset": 10,
        "leader_epoch": body["leader_epoch"],
        "replica_log_end_offsets": {"1": 10},
    }
    status, body, _ = node.request("GET", f"/v1/topics/times/partitions/0/offsets?timestamp_ms={base + 35}")
    assert body == {"offset": 4, "timestamp_ms": base + 40}
    status, body, _ = node.request(
        "GET", f"/v1/topics/times/partitions/0/offsets?timestamp_ms={base + 10**6}"
    )
    assert status == 200
    assert body == {"offset": None, "timestamp_ms": None}


def test_fetch_out_of_range_gives_the_valid_range(node):
    create(node, "range")
    node.request("POST", "/v1/topics/range/records", {"records": [{"value": 1}]})
    status, body, _ = node.request("GET", "/v1/topics/range/partitions/0/records?offset=5")
    assert (status, body["error_code"]) == (416, 41601)
    assert (body["log_start_offset"], body["high_watermark"]) == (0, 1)


def test_metrics(node):
    create(node, "metered")
    node.request("POST", "/v1/topics/metered/records", {"records": [{"value": 1}, {"value": 2}]})
    status, text, _ = node.request("GET", "/metrics")
    assert status == 200
    text = text.decode()
    assert 'raftka_produced_records_total{topic="metered"} 2.0' in text
    assert 'raftka_log_end_offset{partition="0",topic="metered"} 2.0' in text
    assert 'raftka_high_watermark{partition="0",topic="metered"} 2.0' in text
    assert "raftka_http_request_seconds_bucket" in text
    assert "raftka_controller_active 1.0" in text
    assert 'raftka_brokers{status="active"} 1.0' in text and 'raftka_brokers{status="fenced"} 0.0' in text
    assert "raftka_offline_partitions 0.0" in text
    offset = float(
        next(line for line in text.splitlines() if line.startswith("raftka_metadata_offset ")).split()[1]
    )
    assert offset == node.request("GET", "/v1/cluster")[1]["metadata_offset"]


GOOD_BATCH = encode_batch([NewRecord(b"k", b"v", None, ())], now_ms=1_764_000_000_000)
CORRUPT_BATCH = GOOD_BATCH[:-1] + bytes([GOOD_BATCH[-1] ^ 0xFF])
JSON_HEADERS = {"Content-Type": "application/json"}
BAD_INPUT = [
    # (name, method, path, body, headers, status, error_code, message fragment)
    (
        "malformed json",
        "POST",
        "/v1/topics/bad/records",
        b"{not json",
        JSON_HEADERS,
        400,
        40001,
        "not valid JSON",
    ),
    ("body not an object", "POST", "/v1/topics/bad/records", b"[1,2]", JSON_HEADERS, 422, 42201, "records"),
    ("records missing", "POST", "/v1/topics/bad/records", {"rec": []}, None, 422, 42201, '"records"'),
    ("records empty", "POST", "/v1/topics/bad/records", {"records": []}, None, 422, 42201, "non-empty"),
    # internal endpoints (broker to controller, follower to leader)
    (
        "register without address",
        "POST",
        "/v1/internal/brokers/7/register",
        {"roles": ["broker"]},
        None,
        422,
        42201,
        "address",
    ),
    (
        "register bad roles",
        "POST",
        "/v1/internal/brokers/7/register",
        {"address": "h:1", "roles": ["boss"]},
        None,
        422,
        42201,
        "roles",
    ),
    (
        "register bad node id",
        "POST",
        "/v1/internal/brokers/x/register",
        {"address": "h:1", "roles": ["broker"]},
        None,
        422,
        42201,
        "node id",
    ),
    (
        "heartbeat of an unknown broker",
        "POST",
        "/v1/internal/brokers/7/heartbeat",
        {"broker_epoch": 1, "metadata_version": 1},
        None,
        409,
        40904,
        "register again",
    ),
    (
        "heartbeat without epoch",
        "POST",
        "/v1/internal/brokers/1/heartbeat",
        {"metadata_version": 1},
        None,
        422,
        42201,
        "broker_epoch",
    ),
    (
        "replica fetch without partitions",
        "POST",
        "/v1/internal/replica/fetch",
        {"replica_id": 2},
        None,
        422,
        42201,
        "partitions",
    ),
    (
        "replica fetch bad wait",
        "POST",
        "/v1/internal/replica/fetch",
        {"replica_id": 2, "partitions": [], "max_wait_ms": "x"},
        None,
        422,
        42201,
        "max_wait_ms",
    ),
    (
        "replica fetch bad entry",
        "POST",
        "/v1/internal/replica/fetch",
        {"replica_id": 2, "partitions": [{"topic": "bad"}]},
        None,
        422,
        42201,
        "bad partition entry",
    ),
    (
        "alter partition missing fields",
        "POST",
        "/v1/internal/alter-partition",
        {"broker_id": 1},
        None,
        422,
        42201,
        "alter-partition needs",
    ),
    (
        "alter partition from an old incarnation",
        "POST",
        "/v1/internal/alter-partition",
        {
            "broker_id": 1,
            "broker_epoch": 999,
            "topic_id": "nope",
            "partition": 0,
            "leader_epoch": 0,
            "partition_epoch": 0,
            "isr": [1],
        },
        None,
        409,
        40904,
        "broker 1 epoch 999",
    ),
    (
        "record not object",
        "POST",
        "/v1/topics/bad/records",
        {"records": [{"value": 1}, 5]},
        None,
        422,
        42201,
        "records[1]",
    ),
    ("unknown field", "POST", "/v1/topics/bad/records", {"records": [{"vale": 1}]}, None, 422, 42201, "vale"),
    (
        "key wrong type",
        "POST",
        "/v1/topics/bad/records",
        {"records": [{"key": 5, "value": 1}]},
        None,
        422,
        42201,
        "key",
    ),
    (
        "key and key_b64",
        "POST",
        "/v1/topics/bad/records",
        {"records": [{"key": "a", "key_b64": "YQ=="}]},
        None,
        422,
        42201,
        "both",
    ),
    (
        "bad base64",
        "POST",
        "/v1/topics/bad/records",
        {"records": [{"value_b64": "***"}]},
        None,
        422,
        42201,
        "base64",
    ),
    (
        "header not string",
        "POST",
        "/v1/topics/bad/records",
        {"records": [{"headers": {"h": 1}}]},
        None,
        422,
        42201,
        "headers",
    ),
    (
        "negative partition",
        "POST",
        "/v1/topics/bad/records",
        {"records": [{"partition": -1}]},
        None,
        422,
        42201,
        "partition",
    ),
    (
        "bad timestamp",
        "POST",
        "/v1/topics/bad/records",
        {"records": [{"timestamp_ms": "x"}]},
        None,
        422,
        42201,
        "timestamp_ms",
    ),
    (
        "unknown partition",
        "POST",
        "/v1/topics/bad/records",
        {"records": [{"value": 1}, {"partition": 9}]},
        None,
        404,
        40402,
        "partition 9",
    ),
    (
        "bad acks",
        "POST",
        "/v1/topics/bad/records?acks=2",
        {"records": [{"value": 1}]},
        None,
        422,
        42201,
        "acks",
    ),
    (
        "unknown topic",
        "POST",
        "/v1/topics/missing/records",
        {"records": [{"value": 1}]},
        None,
        404,
        40401,
        "raftka topic create",
    ),
    (
        "unknown topic partition path",
        "POST",
        "/v1/topics/bad/partitions/7/records",
        {"records": [{"value": 1}]},
        None,
        404,
        40402,
        "no partition 7",
    ),
    (
        "partition field in path form",
        "POST",
        "/v1/topics/bad/partitions/0/records",
        {"records": [{"partition": 0}]},
        None,
        422,
        42201,
        "not allowed",
    ),
    (
        "corrupt batch",
        "POST",
        "/v1/topics/bad/partitions/0/records",
        CORRUPT_BATCH,
        {"Content-Type": BATCH},
        422,
        42202,
        "checksum",
    ),
    (
        "truncated batch",
        "POST",
        "/v1/topics/bad/partitions/0/records",
        GOOD_BATCH[:40],
        {"Content-Type": BATCH},
        422,
        42201,
        "truncated",
    ),
    (
        "two batches",
        "POST",
        "/v1/topics/bad/partitions/0/records",
        GOOD_BATCH * 2,
        {"Content-Type": BATCH},
        422,
        42201,
        "were given",
    ),
    (
        "bad content type",
        "POST",
        "/v1/topics/bad/partitions/0/records",
        b"x",
        {"Content-Type": "text/plain"},
        415,
        41501,
        "text/plain",
    ),
    (
        "body over max_request_bytes",
        "POST",
        "/v1/topics/bad/records",
        {"records": [{"value": "x" * 250_000}]},
        None,
        413,
        41301,
        "max_request_bytes",
    ),
    (
        "record over max.message.bytes",
        "POST",
        "/v1/topics/bad/records",
        {"records": [{"value": "x" * 3000}]},
        None,
        413,
        41301,
        "max.message.bytes",
    ),
    (
        "batch over max.message.bytes",
        "POST",
        "/v1/topics/bad/partitions/0/records",
        encode_batch([NewRecord(None, b"x" * 3000, None, ())], now_ms=1),
        {"Content-Type": BATCH},
        413,
        41301,
        "max.message.bytes",
    ),
    (
        "negative offset",
        "GET",
        "/v1/topics/bad/partitions/0/records?offset=-1",
        None,
        None,
        422,
        42201,
        "offset",
    ),
    (
        "huge offset",
        "GET",
        "/v1/topics/bad/partitions/0/records?offset=99999999999999999999",
        None,
        None,
        422,
        42201,
        "offset",
    ),
    (
        "offset not a number",
        "GET",
        "/v1/topics/bad/partitions/0/records?offset=abc",
        None,
        None,
        422,
        42201,
        "integer",
    ),
    ("offset missing", "GET", "/v1/topics/bad/partitions/0/records", None, None, 422, 42201, "required"),
    (
        "offset past the end",
        "GET",
        "/v1/topics/bad/partitions/0/records?offset=1000",
        None,
        None,
        416,
        41601,
        "out of range",
    ),
    (
        "partition not a number",
        "GET",
        "/v1/topics/bad/partitions/x/records?offset=0",
        None,
        None,
        422,
        42201,
        "partition",
    ),
    (
        "bad accept",
        "GET",
        "/v1/topics/bad/partitions/0/records?offset=0",
        None,
        {"Accept": "text/csv"},
        406,
        40601,
        "text/csv",
    ),
    (
        "fetch unknown topic",
        "GET",
        "/v1/topics/missing/partitions/0/records?offset=0",
        None,
        None,
        404,
        40401,
        "missing",
    ),
    ("bad topic name", "POST", "/v1/topics", {"name": "no/slash"}, None, 422, 42201, "topic name"),
    ("dot topic name", "POST", "/v1/topics", {"name": ".."}, None, 422, 42201, "not allowed"),
    ("long topic name", "POST", "/v1/topics", {"name": "a" * 250}, None, 422, 42201, "249"),
    (
        "zero partitions",
        "POST",
        "/v1/topics",
        {"name": "zero", "partitions": 0},
        None,
        422,
        42201,
        "partitions",
    ),
    (
        "string partitions",
        "POST",
        "/v1/topics",
        {"name": "zero", "partitions": "3"},
        None,
        422,
        42201,
        "partitions",
    ),
    (
        "replication too high",
        "POST",
        "/v1/topics",
        {"name": "rf", "replication_factor": 3},
        None,
        422,
        42201,
        "replication_factor",
    ),
    (
        "unknown config",
        "POST",
        "/v1/topics",
        {"name": "cfg", "configs": {"retention.mss": 1}},
        None,
        422,
        42201,
        "retention.mss",
    ),
    (
        "bad config value",
        "POST",
        "/v1/topics",
        {"name": "cfg", "configs": {"retention.ms": "soon"}},
        None,
        422,
        42201,
        "retention.ms",
    ),
    (
        "bad cleanup policy",
        "POST",
        "/v1/topics",
        {"name": "cfg", "configs": {"cleanup.policy": "shred"}},
        None,
        422,
        42201,
        "cleanup.policy",
    ),
    (
        "min isr above rf",
        "POST",
        "/v1/topics",
        {"name": "cfg", "configs": {"min.insync.replicas": 2}},
        None,
        422,
        42201,
        "min.insync.replicas",
    ),
    ("name missing", "POST", "/v1/topics", {"partitions": 1}, None, 422, 42201, "name"),
    ("unknown path", "GET", "/v2/nothing", None, None, 404, 40404, "/v2/nothing"),
    ("wrong method", "PUT", "/v1/topics", None, None, 405, 40501, "PUT"),
]


async def raw_stream(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection switched to the replica stream by hand, to send what the node's own client never
    would."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(replica_stream.upgrade_request(address, 9))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert f"upgrade: {replica_stream.PROTOCOL}".encode() in head.lower(), head
    return reader, writer


async def refusal(reader: asyncio.StreamReader) -> tuple[int, dict, bytes]:
    """(kind, reason) of the frame the node sent, and what followed it before the connection ended."""
    kind, length = replica_stream.HEADER.unpack(await asyncio.wait_for(reader.readexactly(5), 10))
    reason = orjson.loads(await reader.readexactly(length))
    return kind, reason, await asyncio.wait_for(reader.read(), 10)


def test_replica_stream_answers_fetches_and_refuses_bad_ones(node):
    """The followers' replication connection (node/replica_stream.py): fetch after fetch on one
    upgraded connection, each answered by one frame; a bad fetch gets a REFUSED frame with its error
    code and message, and the node closes the connection."""
    create(node, "stream")
    status, body, _ = node.request(
        "POST", "/v1/topics/stream/records", {"records": [{"value": "one"}, {"value": "two"}]}
    )
    assert status == 200, body

    def fetch(offset, wait_ms=0):
        entry = {"topic": "stream", "partition": 0, "fetch_offset": offset}
        entry.update(last_fetched_epoch=-1, leader_epoch=0)
        return {"replica_id": 9, "max_wait_ms": wait_ms, "partitions": [entry]}

    async def session():
        stream = await FollowerStream.open(node.address, 9, 10)
        try:
            answers = [
                decode_fetch_response(await stream.exchange(orjson.dumps(fetch(o)))) for o in (0, 1, 2)
            ]
        finally:
            stream.close()
        refused = []
        for bad in (b"{not json", orjson.dumps({"replica_id": 9})):
            stream = await FollowerStream.open(node.address, 9, 10)
            with pytest.raises(StreamError) as caught:
                await stream.exchange(bad)
            refused.append(str(caught.value))
            stream.close()
        reader, writer = await raw_stream(node.address)  # a frame of another kind than a fetch
        writer.write(replica_stream.frame(replica_stream.ANSWER, [b"{}"]))
        refused.append(await refusal(reader))
        writer.close()
        reader, writer = await raw_stream(node.address)  # a fetch over --max-request-bytes (200000)
        writer.write(replica_stream.HEADER.pack(replica_stream.FETCH, 200_001))
        refused.append(await refusal(reader))
        writer.close()
        return answers, refused

    answers, refused = asyncio.run(session())
    values = []
    for answer in answers:
        [(topic, index, result)] = answer
        assert (topic, index, result.error_code, result.high_watermark) == ("stream", 0, 0, 2)
        values.append([r.value for r in decode_batches(result.data)])
    assert values[0] == [b'"one"', b'"two"']  # the whole batch holding offset 0 (JSON values)
    assert values[2] == []  # at the log end: nothing (max_wait_ms 0)
    assert refused[0].startswith("the leader refused the fetch: 40001: a replica fetch is not valid JSON")
    assert refused[1].startswith("the leader refused the fetch: 42201:") and "partitions" in refused[1]
    kind, reason, after = refused[2]
    assert (kind, reason["error_code"], after) == (replica_stream.REFUSED, 42201, b"")
    assert reason["message"] == "a follower sends fetch frames (kind 1), not kind 2"
    kind, reason, after = refused[3]
    assert (kind, reason["error_code"], after) == (replica_stream.REFUSED, 41301, b"")
    assert reason["message"] == "a replica fetch of 200001 bytes is over the limit of 200000"
    assert leo(node, "stream") == 2


def test_replica_stream_needs_the_upgrade(node):
    """Without 'Upgrade: raftka-replica/1' the path is an ordinary HTTP error (426, 42601), and a
    client that asks for it gets a StreamError naming the answer."""
    status, body, _ = node.request("GET", STREAM_PATH)
    assert status == 426 and body["error_code"] == 42601, body
    assert replica_stream.PROTOCOL in body["message"]

    async def websocket_client():
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await http.ws_connect(f"http://{node.address}{STREAM_PATH}")
            return caught.value.status

    assert asyncio.run(websocket_client()) == 426
    status, body, _ = node.request("GET", "/livez")  # the node goes on serving
    assert status == 200


def test_replica_stream_carries_large_answers_whole_and_wakes_parked_fetches(node):
    """Answers of 125-260 KB (a socket read may hold part of one: tests/test_replica_stream.py splits
    frames everywhere): a follower reads every batch back, and a fetch parked at the log end gets the
    next one."""
    create(node, "stream-big")
    path = "/v1/topics/stream-big/partitions/0/records"

    def big_batch(tag: str) -> bytes:
        records = [NewRecord(b"k%d" % i, (tag * 100)[:100].encode(), None, ()) for i in range(1000)]
        return encode_batch(records, now_ms=1)

    for tag in ("a", "b"):
        status, body, _ = node.request("POST", path, big_batch(tag), {"Content-Type": BATCH})
        assert status == 200, body

    def fetch(offset, wait_ms=0):
        entry = {"topic": "stream-big", "partition": 0, "fetch_offset": offset}
        entry.update(last_fetched_epoch=-1 if offset == 0 else 0, leader_epoch=0)
        return {"replica_id": 9, "max_wait_ms": wait_ms, "max_bytes": 1 << 20, "partitions": [entry]}

    async def session():
        stream = await FollowerStream.open(node.address, 9, 10)
        try:
            first = await asyncio.wait_for(stream.exchange(orjson.dumps(fetch(0))), 10)
            parked = asyncio.ensure_future(stream.exchange(orjson.dumps(fetch(2000, wait_ms=10_000))))
            await asyncio.sleep(0.2)
            assert not parked.done()  # parked at the log end
            status, body, _ = await asyncio.to_thread(
                node.request, "POST", path, big_batch("c"), {"Content-Type": BATCH}
            )
            assert status == 200, body
            second = await asyncio.wait_for(parked, 10)
        finally:
            stream.close()
        return first, second

    first, second = asyncio.run(session())
    assert len(first) > 250_000 and len(second) > 125_000
    [(_, _, both)] = decode_fetch_response(first)
    values = [r.value for r in decode_batches(both.data)]
    assert values == [b"a" * 100] * 1000 + [b"b" * 100] * 1000
    [(_, _, third)] = decode_fetch_response(second)
    assert [r.offset for r in decode_batches(third.data)] == list(range(2000, 3000))
    assert {r.value for r in decode_batches(third.data)} == {b"c" * 100}


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_refused_and_writes_nothing(node, case):
    _, method, path, body, headers, status, code, fragment = case
    if node.request("GET", "/v1/topics/bad")[0] == 404:
        create(node, "bad", 2, **{"max.message.bytes": 2048})
    topics_before = node.request("GET", "/v1/topics")[1]
    before = [leo(node, "bad", p) for p in range(2)]
    got_status, got, _ = node.request(method, path, body, headers)
    assert got_status == status, got
    assert got["error_code"] == code, got
    assert fragment in got["message"], got["message"]
    assert [leo(node, "bad", p) for p in range(2)] == before
    assert node.request("GET", "/v1/topics")[1] == topics_before


def test_auto_create_topics(tmp_path):
    proc = NodeProcess(str(tmp_path / "data"), "--auto-create-topics", "--default-partitions", "3").start()
    try:
        status, body, _ = proc.request("POST", "/v1/topics/fresh/records", {"records": [{"value": 1}]})
        assert status == 200, body
        assert len(proc.request("GET", "/v1/topics/fresh")[1]["partitions"]) == 3
    finally:
        assert proc.stop() == 0
