"""The node as a process: kill -9 and restart, clean shutdown, retention and compaction seen through the
API, configuration from flags, environment and TOML, and refusals at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests.nodeproc import ROOT, NodeProcess, free_port


def wait_until(predicate, timeout_s: float = 15.0, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


def read_all(node: NodeProcess, topic: str, partition: int = 0, start: int = 0) -> list[dict]:
    records = []
    offset = start
    while True:
        status, body, _ = node.request(
            "GET", f"/v1/topics/{topic}/partitions/{partition}/records?offset={offset}&max_wait_ms=0"
        )
        assert status == 200, body
        records.extend(body["records"])
        if body["next_offset"] >= body["high_watermark"] or body["next_offset"] == offset:
            return records
        offset = body["next_offset"]


def test_sigkill_keeps_every_acknowledged_record(tmp_path):
    data = str(tmp_path / "data")
    node = NodeProcess(data).start()
    node.request(
        "POST", "/v1/topics", {"name": "durable", "partitions": 2, "configs": {"segment.bytes": 4096}}
    )
    acknowledged = {}
    for round_number in range(3):
        for i in range(40):
            records = [{"key": f"k{j}", "value": {"round": round_number, "i": i, "j": j}} for j in range(5)]
            status, body, _ = node.request(
                "POST", "/v1/topics/durable/records?acks=all", {"records": records}
            )
            assert status == 200, body
            for record, placed in zip(records, body["offsets"], strict=True):
                acknowledged[(placed["partition"], placed["offset"])] = record["value"]
        node.kill()
        node = NodeProcess(data, port=node.port).start()
        assert "unclean shutdown" in node.output()
    try:
        for partition in range(2):
            stored = {r["offset"]: r["value"] for r in read_all(node, "durable", partition)}
            expected = {o: v for (p, o), v in acknowledged.items() if p == partition}
            assert stored == expected  # every acknowledged record, at its offset, and nothing else
    finally:
        assert node.stop() == 0


def test_sigterm_is_a_clean_shutdown(tmp_path):
    data = str(tmp_path / "data")
    node = NodeProcess(data).start()
    node.request("POST", "/v1/topics", {"name": "t", "partitions": 1})
    node.request("POST", "/v1/topics/t/records", {"records": [{"value": i} for i in range(10)]})
    assert node.stop() == 0
    assert os.path.exists(os.path.join(data, "logs", ".clean_shutdown"))
    assert "stopped cleanly" in node.output()
    node = NodeProcess(data, port=node.port).start()
    try:
        assert "loaded 1 logs (clean shutdown, 0 recovered)" in node.output()
        assert [r["value"] for r in read_all(node, "t")] == list(range(10))
        assert not os.path.exists(os.path.join(data, "logs", ".clean_shutdown"))
    finally:
        assert node.stop() == 0


def test_retention_is_visible_through_the_api(tmp_path):
    node = NodeProcess(str(tmp_path / "data"), "--retention-check-interval-ms", "200").start()
    try:
        configs = {"segment.bytes": 1024, "retention.bytes": 2048}
        node.request("POST", "/v1/topics", {"name": "short", "partitions": 1, "configs": configs})
        for i in range(30):
            node.request(
                "POST", "/v1/topics/short/records", {"records": [{"value": "x" * 80, "key": str(i)}]}
            )

        def start_offset():
            return node.request("GET", "/v1/topics/short/partitions/0/offsets")[1]["log_start_offset"]

        first = wait_until(start_offset)
        assert first > 0
        status, body, _ = node.request("GET", "/v1/topics/short/partitions/0/records?offset=0")
        assert (status, body["error_code"]) == (416, 41601)
        records = read_all(node, "short", start=first)
        assert [r["offset"] for r in records] == list(range(first, 30))
    finally:
        assert node.stop() == 0


def test_compaction_is_visible_through_the_api(tmp_path):
    node = NodeProcess(str(tmp_path / "data"), "--cleaner-interval-ms", "200").start()
    try:
        configs = {"segment.bytes": 1024, "cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01"}
        node.request("POST", "/v1/topics", {"name": "table", "partitions": 1, "configs": configs})
        latest = {}
        for i in range(200):
            key = f"key-{i % 8}"
            latest[key] = i
            node.request("POST", "/v1/topics/table/records", {"records": [{"key": key, "value": i}]})

        def compacted():
            records = read_all(node, "table")
            return records if len(records) < 60 else None

        records = wait_until(compacted)
        offsets = [r["offset"] for r in records]
        assert offsets == sorted(set(offsets))  # offsets kept, strictly increasing
        seen = {}
        for r in records:
            seen[r["key"]] = r["value"]
        assert seen == latest  # the latest value of every key survives
        assert offsets[-1] == 199
    finally:
        assert node.stop() == 0


def test_configuration_from_environment_and_toml(tmp_path):
    port = free_port()
    config_file = tmp_path / "node.toml"
    config_file.write_text(
        f'listen = "127.0.0.1:{free_port()}"\nauto_create_topics = true\nlog_format = "json"\n'
    )
    # The environment beats the file; the file beats the defaults.
    node = NodeProcess(
        str(tmp_path / "data"),
        "--config",
        str(config_file),
        port=port,
        env={"RAFTKA_DEFAULT_PARTITIONS": "2"},
    )
    node.start()
    try:
        status, body, _ = node.request("POST", "/v1/topics/auto/records", {"records": [{"value": 1}]})
        assert status == 200, body
        assert len(node.request("GET", "/v1/topics/auto")[1]["partitions"]) == 2
    finally:
        assert node.stop() == 0
    lines = [line for line in node.output().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    assert any("listening on" in entry["message"] for entry in parsed)
    assert all({"ts", "level", "logger", "message"} <= entry.keys() for entry in parsed)


def run_node(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "node", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_bad_configuration_is_a_one_line_error(tmp_path):
    result = run_node("--listen", "nowhere")
    assert result.returncode == 2
    assert result.stderr.strip() == "raftka node: error: listen must be HOST:PORT, got 'nowhere'"
    result = run_node("--node-id", "x")
    assert result.returncode == 2
    assert "--node-id must be an integer" in result.stderr
    result = run_node(env={"RAFTKA_AUTO_CREATE_TOPICS": "maybe"})
    assert result.returncode == 2
    assert "RAFTKA_AUTO_CREATE_TOPICS" in result.stderr
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("listen = \n")
    result = run_node("--config", str(bad_toml))
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('lisen = "x"\n')
    result = run_node("--config", str(unknown))
    assert "unknown option 'lisen'" in result.stderr


def test_a_data_dir_of_another_node_is_refused(tmp_path):
    data = str(tmp_path / "data")
    node = NodeProcess(data).start()
    assert node.stop() == 0
    result = run_node("--data-dir", data, "--node-id", "2", "--listen", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "belongs to node 1, not node 2" in result.stderr


def test_a_busy_port_is_a_one_line_error(tmp_path):
    node = NodeProcess(str(tmp_path / "a")).start()
    try:
        result = run_node("--data-dir", str(tmp_path / "b"), "--listen", node.address)
        assert result.returncode == 1
        assert f"cannot listen on {node.address}" in result.stderr
    finally:
        assert node.stop() == 0
