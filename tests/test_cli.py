"""The `raftka` command line against a real node started by `raftka node`: topic commands, produce from
stdin, consume (text, keys, JSON, offsets, following), cluster status, and one-line errors with a
non-zero exit status.

One node serves the whole module; each test works in topics of its own.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request

import orjson
import pytest

from raftka import partition_for_key
from raftka.cli import main
from tests.nodeproc import ROOT, free_port

_names = itertools.count()


class CliNode:
    """A node started through `raftka node ...` (the CLI's delegation to node.main)."""

    def __init__(self, data_dir: str):
        self.address = f"127.0.0.1:{free_port()}"
        self.log_path = data_dir + ".log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "raftka.cli",
                "node",
                "--node-id",
                "1",
                "--data-dir",
                data_dir,
                "--listen",
                self.address,
            ],
            cwd=ROOT,
            env=clean_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                with urllib.request.urlopen(f"http://{self.address}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"node not ready:\n{self.output()}")

    def output(self) -> str:
        with open(self.log_path, "rb") as handle:
            return handle.read().decode(errors="replace")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(20)
        self._log.close()
        return code


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTKA_")}
    env["PYTHONPATH"] = ROOT
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    started = CliNode(str(tmp_path_factory.mktemp("cli") / "data"))
    yield started
    assert started.stop() == 0, started.output()
    assert "listening on" in started.output()


class Cli:
    """Runs `raftka.cli.main(argv)` in this process (fast: no interpreter start), capturing its output.

    The node is still a real process; `raftka()` below runs the CLI as a process where that matters
    (stdin from a pipe, Ctrl-C, the environment, the installed entry point).
    """

    def __init__(self, node: CliNode, capsys, monkeypatch, tmp_path):
        self.node = node
        self.capsys = capsys
        self.monkeypatch = monkeypatch
        self.tmp_path = tmp_path

    def __call__(
        self, *args: str, stdin: bytes | None = None, env: bool = True
    ) -> subprocess.CompletedProcess:
        if env:
            self.monkeypatch.setenv("RAFTKA_BOOTSTRAP", self.node.address)
        else:
            self.monkeypatch.delenv("RAFTKA_BOOTSTRAP", raising=False)
        handle = None
        if stdin is not None:  # a regular file as stdin, as in `raftka produce t < file`
            path = self.tmp_path / f"stdin-{next(_names)}"
            path.write_bytes(stdin)
            handle = open(path, "rb")  # noqa: SIM115 - closed below
            self.monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(handle))
        self.capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
        finally:
            if handle is not None:
                handle.close()
        captured = self.capsys.readouterr()
        return subprocess.CompletedProcess(["raftka", *args], code, captured.out, captured.err)


@pytest.fixture
def cli(node, capsysbinary, monkeypatch, tmp_path) -> Cli:
    return Cli(node, capsysbinary, monkeypatch, tmp_path)


def raftka(
    node: CliNode | None,
    *args: str,
    stdin: bytes | None = None,
    bootstrap_env: bool = True,
    timeout: float = 30,
) -> subprocess.CompletedProcess:
    """Run `raftka ARGS` with RAFTKA_BOOTSTRAP pointing at the node."""
    env = clean_env(RAFTKA_BOOTSTRAP=node.address) if node is not None and bootstrap_env else clean_env()
    return subprocess.run(
        [sys.executable, "-m", "raftka.cli", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The failure's stderr, checked to be exactly one `raftka: error: ...` line."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("raftka: error: "), lines
    return lines[0]


def columns_aligned(table: str) -> None:
    """Every cell of a column starts at the same character position as its header."""
    lines = table.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    for line in lines[1:]:
        cells = [m.start() for m in re.finditer(r"\S+", line)]
        assert cells == starts[: len(cells)], (lines[0], line)


def new_topic(cli: Cli, partitions: int = 1) -> str:
    name = f"cli-{next(_names)}"
    ok(cli("topic", "create", name, "--partitions", str(partitions)))
    return name


# -- node ---------------------------------------------------------------------------------------------------


def test_raftka_node_runs_the_node(node):
    # The module's node was started as `raftka node ...`; it must be this very process that serves.
    assert node.proc.poll() is None
    assert "listening on" in node.output()
    with urllib.request.urlopen(f"http://{node.address}/v1/cluster", timeout=5) as answer:
        assert orjson.loads(answer.read())["brokers"][0]["address"] == node.address


# -- topics -------------------------------------------------------------------------------------------------


def test_topic_create_list_describe_alter_delete(cli):
    name = f"cli-{next(_names)}"
    created = ok(
        cli(
            "topic",
            "create",
            name,
            "-p",
            "3",
            "--config",
            "retention.ms=60000",
            "-c",
            "cleanup.policy=compact",
        )
    )
    assert created.strip() == f"created topic {name} (3 partition(s), replication factor 1)"

    listing = ok(cli("topic", "list"))
    assert listing.splitlines()[0].split() == ["TOPIC", "PARTITIONS", "REPLICATION"]
    assert [name, "3", "1"] in [line.split() for line in listing.splitlines()]
    columns_aligned(listing)

    described = ok(cli("topic", "describe", name))
    blocks = described.strip().split("\n\n")
    assert blocks[0].startswith(f"Topic: {name}  id: ")
    assert "partitions: 3  replication factor: 1" in blocks[0]
    partitions = blocks[1].splitlines()
    assert partitions[0].split() == [
        "PARTITION",
        "LEADER",
        "REPLICAS",
        "ISR",
        "LEADER_EPOCH",
        "LOG_START_OFFSET",
        "HIGH_WATERMARK",
    ]
    assert [line.split() for line in partitions[1:]] == [
        [str(p), "1", "1", "1", "0", "0", "0"] for p in range(3)
    ]
    columns_aligned(blocks[1])
    configs = dict(line.split() for line in blocks[2].splitlines()[1:])
    assert configs["retention.ms"] == "60000"
    assert configs["cleanup.policy"] == "compact"
    columns_aligned(blocks[2])

    altered = ok(
        cli(
            "topic",
            "alter",
            name,
            "--partitions",
            "5",
            "--config",
            "segment.ms=3600000",
            "--delete-config",
            "retention.ms",
        )
    )
    assert altered.strip() == f"altered topic {name} (5 partition(s))"
    document = orjson.loads(ok(cli("topic", "describe", name, "--format", "json")))
    assert len(document["partitions"]) == 5
    assert document["configs"]["segment.ms"] == "3600000"
    assert document["configs"]["retention.ms"] == "604800000"

    assert ok(cli("topic", "delete", name)).strip() == f"deleted topic {name}"
    listed = orjson.loads(ok(cli("topic", "list", "--format", "json")))
    assert name not in [t["name"] for t in listed["topics"]]
    assert name in one_line_error(cli("topic", "describe", name))


def test_creating_an_existing_topic_fails_unless_if_not_exists(cli):
    name = new_topic(cli)
    error = one_line_error(cli("topic", "create", name))
    assert name in error
    assert "exist" in error
    assert cli("topic", "create", name, "--if-not-exists").returncode == 0


def test_topic_errors_are_one_line(cli):
    missing = f"missing-{next(_names)}"
    for args in (
        ("topic", "describe", missing),
        ("topic", "delete", missing),
        ("topic", "alter", missing, "--partitions", "3"),
    ):
        assert missing in one_line_error(cli(*args))
    assert "name" in one_line_error(cli("topic", "create", "bad name!"))
    assert "retention.ms" in one_line_error(cli("topic", "create", "x-y", "--config", "retention.ms=soon"))
    assert "NAME=VALUE" in one_line_error(cli("topic", "create", "x-y", "--config", "novalue"))
    assert "nothing to alter" in one_line_error(cli("topic", "alter", "anything"))


def test_usage_errors_exit_2(cli):
    result = cli("topic", "create")
    assert result.returncode == 2
    assert b"usage:" in result.stderr
    assert cli("consume", "t", "--max-messages", "zero").returncode == 2
    assert cli("produce", "t", "--acks", "2").returncode == 2


# -- produce and consume ------------------------------------------------------------------------------------


def test_produce_lines_from_a_pipe_and_consume_them_from_the_beginning(node, cli):
    topic = new_topic(cli)
    produced = raftka(node, "produce", topic, stdin=b"first\nsecond line\r\n\nlast without newline")
    assert produced.returncode == 0, produced.stderr
    # stdin is not a terminal: one progress line on stderr
    assert re.fullmatch(
        rf"produced 4 records to {topic} in [0-9.]+ s \([0-9]+ records/s\)\n", produced.stderr.decode()
    )
    consumed = ok(cli("consume", topic, "--from-beginning", "--max-messages", "4"))
    assert consumed == "first\nsecond line\n\nlast without newline\n"


def test_produce_from_a_file_with_keys(node, cli, tmp_path):
    topic = new_topic(cli, partitions=3)
    lines = [f"user-{i % 7}:event {i}" for i in range(300)]
    source = tmp_path / "events.txt"
    source.write_text("\n".join(lines) + "\n")
    with open(source, "rb") as handle:
        produced = subprocess.run(
            [sys.executable, "-m", "raftka.cli", "produce", topic, "--key-separator", ":"],
            stdin=handle,
            capture_output=True,
            env=clean_env(RAFTKA_BOOTSTRAP=node.address),
            cwd=ROOT,
            timeout=30,
        )
    assert produced.returncode == 0, produced.stderr
    assert f"produced 300 records to {topic}" in produced.stderr.decode()
    printed = ok(
        cli("consume", topic, "--from-beginning", "-n", "300", "--print-key", "--key-separator", "=")
    )
    assert sorted(printed.splitlines()) == sorted(line.replace(":", "=", 1) for line in lines)
    output = ok(cli("consume", topic, "--from-beginning", "-n", "300", "--format", "json"))
    records = [orjson.loads(line) for line in output.splitlines()]
    assert len(records) == 300
    for record in records:
        assert record["partition"] == partition_for_key(record["key"].encode(), 3)
    for partition in range(3):
        mine = [r for r in records if r["partition"] == partition]
        assert [r["offset"] for r in mine] == list(range(len(mine)))
        numbers = [int(r["value"].split()[1]) for r in mine]
        assert numbers == sorted(numbers)


def test_a_line_without_the_key_separator_is_an_error(cli):
    topic = new_topic(cli)
    result = cli("produce", topic, "-k", ":", stdin=b"a:1\nb:2\nno separator\nc:3\n")
    assert result.returncode == 1
    progress, error = result.stderr.decode().splitlines()  # stdin is a file: the progress line first
    assert progress.startswith(f"produced 2 records to {topic}")
    assert error.startswith("raftka: error: line 3 has no key separator ':'")
    assert "sent the 2 record(s) before it" in error
    assert ok(cli("consume", topic, "--from-beginning", "--timeout-ms", "1000")) == "1\n2\n"


def test_produce_to_a_partition_with_acks(cli):
    topic = new_topic(cli, partitions=2)
    ok(cli("produce", topic, "--partition", "1", "--acks", "1", stdin=b"x\ny\n"))
    ok(cli("produce", topic, "--partition", "1", "--acks", "0", stdin=b"z\n"))
    assert ok(cli("consume", topic, "--partition", "1", "--from-beginning", "-n", "3")) == "x\ny\nz\n"
    assert ok(cli("consume", topic, "--partition", "0", "--from-beginning", "--timeout-ms", "300")) == ""


def test_produce_to_a_missing_topic_or_partition_fails(cli):
    missing = f"missing-{next(_names)}"
    assert f"create it with `raftka topic create {missing}`" in one_line_error(
        cli("produce", missing, stdin=b"x\n")
    )
    topic = new_topic(cli)
    assert "partition 4" in one_line_error(cli("produce", topic, "--partition", "4", stdin=b"x\n"))


def test_consume_json_format(cli):
    topic = new_topic(cli)
    ok(cli("produce", topic, "-k", "|", stdin=b'k1|{"a": 1}\n|empty key\n'))
    lines = ok(cli("consume", topic, "--from-beginning", "-n", "2", "--format", "json")).splitlines()
    records = [orjson.loads(line) for line in lines]
    assert [set(r) for r in records] == [
        {"partition", "offset", "key", "value", "headers", "timestamp_ms"}
    ] * 2
    assert [(r["partition"], r["offset"], r["key"], r["value"], r["headers"]) for r in records] == [
        (0, 0, "k1", '{"a": 1}', {}),
        (0, 1, "", "empty key", {}),
    ]
    assert all(abs(r["timestamp_ms"] - time.time() * 1000) < 60_000 for r in records)


def test_consume_shows_bytes_that_are_not_utf8_as_base64(node, cli):
    topic = new_topic(cli)
    status = _post_json(
        node,
        f"/v1/topics/{topic}/records",
        {"records": [{"key": None, "value_b64": "/wA=", "headers": {"h": "v"}}]},
    )
    assert status == 200
    (line,) = ok(cli("consume", topic, "--from-beginning", "-n", "1", "--format", "json")).splitlines()
    record = orjson.loads(line)
    assert record["key"] is None
    assert record["value"] is None
    assert record["value_b64"] == "/wA="
    assert record["headers"] == {"h": "v"}
    text = cli("consume", topic, "--from-beginning", "-n", "1", "--print-key")
    assert text.returncode == 0
    assert text.stdout == b"null\t\xff\x00\n"


def _post_json(node: CliNode, path: str, body: dict) -> int:
    request = urllib.request.Request(
        f"http://{node.address}{path}",
        data=orjson.dumps(body),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status


def test_consume_from_an_offset(cli):
    topic = new_topic(cli)
    ok(cli("produce", topic, stdin=b"a\nb\nc\nd\n"))
    assert ok(cli("consume", topic, "--offset", "2", "-n", "2")) == "c\nd\n"
    error = one_line_error(cli("consume", topic, "--offset", "99", "-n", "1"))
    assert "99" in error
    assert "out of range" in error
    assert "exclude" in one_line_error(cli("consume", topic, "--offset", "1", "--from-beginning"))


def test_consume_stops_after_timeout_ms_without_records(cli):
    topic = new_topic(cli)
    started = time.monotonic()
    assert ok(cli("consume", topic, "--timeout-ms", "300")) == ""
    assert time.monotonic() - started < 10


def test_consume_follows_new_records_until_ctrl_c(node, cli):
    topic = new_topic(cli)
    ok(cli("produce", topic, stdin=b"old\n"))
    follower = subprocess.Popen(
        # -X faulthandler: if it does not stop after Ctrl-C, SIGABRT makes it print every thread's stack.
        [
            sys.executable,
            "-X",
            "faulthandler",
            "-m",
            "raftka.cli",
            "--bootstrap",
            node.address,
            "consume",
            topic,
        ],
        bufsize=0,  # raw pipes: no line hides in a Python buffer where select() cannot see it
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
        cwd=ROOT,
        preexec_fn=default_sigint,
    )
    assert follower.stdout is not None
    assert follower.stderr is not None
    try:
        # It starts at the end, whenever it is up: tick until it prints a tick it saw arrive.
        first = None
        for tick in range(100):
            ok(cli("produce", topic, stdin=f"tick {tick}\n".encode()))
            ready, _, _ = select.select([follower.stdout], [], [], 0.2)
            if ready:
                first = follower.stdout.readline()
                break
        assert first is not None, "the follower printed nothing"
        assert first.startswith(b"tick ")  # never "old": it started at the end
        seen = int(first.split()[1])
        ok(cli("produce", topic, stdin=b"last\n"))
        rest = [readline_within(follower.stdout, 10) for _ in range(tick - seen)]
        assert rest == [f"tick {i}\n".encode() for i in range(seen + 1, tick + 1)]
        assert readline_within(follower.stdout, 10) == b"last\n"  # printed as it arrives, not at exit
        assert follower.poll() is None  # still following
        follower.send_signal(signal.SIGINT)
        try:
            code = follower.wait(10)
        except subprocess.TimeoutExpired:
            follower.send_signal(signal.SIGABRT)
            follower.wait(10)
            stacks = follower.stderr.read().decode(errors="replace")
            raise AssertionError(f"still running 10 s after Ctrl-C; its threads:\n{stacks}") from None
        assert code == 0
        assert follower.stdout.read() == b""
        assert b"Traceback" not in follower.stderr.read()
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def default_sigint() -> None:
    """In the child, before it starts: Ctrl-C as a terminal delivers it. A test run started in the
    background by a shell without job control (`.ci/run &`) hands its children SIGINT ignored, and
    Python then installs no KeyboardInterrupt handler: the consumer would never see the signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def readline_within(pipe, timeout_s: float) -> bytes:
    ready, _, _ = select.select([pipe], [], [], timeout_s)
    assert ready, f"no line within {timeout_s}s"
    return pipe.readline()


def test_consume_a_missing_topic_fails(cli):
    missing = f"missing-{next(_names)}"
    assert missing in one_line_error(cli("consume", missing, "-n", "1"))
    topic = new_topic(cli)
    assert "partition 3" in one_line_error(cli("consume", topic, "--partition", "3", "-n", "1"))


# -- cluster and connection errors --------------------------------------------------------------------------


def test_cluster_status(node, cli):
    table = ok(cli("cluster", "status"))
    header, _, brokers = table.partition("\n\n")
    assert header.startswith("Cluster: ")
    assert "controller: 1 (epoch 1)" in header and "brokers: 1" in header
    lines = brokers.strip().splitlines()
    assert lines[0].split() == ["NODE_ID", "ADDRESS", "RACK", "ROLES", "STATUS", "READY"]
    assert lines[1].split() == ["1", node.address, "-", "broker,controller", "active", "ready"]
    columns_aligned(brokers.strip())
    document = orjson.loads(ok(cli("cluster", "status", "--format", "json")))
    assert document["brokers"] == [
        {
            "node_id": 1,
            "address": node.address,
            "rack": None,
            "roles": ["broker", "controller"],
            "status": "active",
            "ready": "ready",
        }
    ]
    assert document["controller_id"] == 1 and document["controller_epoch"] == 1


def test_bootstrap_flag_before_or_after_the_command(node, cli):
    assert "controller" in ok(cli("--bootstrap", node.address, "cluster", "status", env=False))
    assert "controller" in ok(cli("cluster", "status", "-b", node.address, env=False))


@pytest.mark.parametrize(
    "args",
    [
        ("topic", "list"),
        ("topic", "create", "x"),
        ("cluster", "status"),
        ("consume", "t", "-n", "1"),
        ("produce", "t"),
    ],
)
def test_an_unreachable_node_gets_a_helpful_one_line_error(cli, args):
    address = f"127.0.0.1:{free_port()}"
    error = one_line_error(cli("--bootstrap", address, *args, stdin=b"x\n"))
    assert address in error
    assert "connection refused" in error
    assert "is it running?" in error
    assert "RAFTKA_BOOTSTRAP" in error


def test_an_unreachable_node_from_the_environment_as_a_process():
    address = f"127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "raftka.cli", "topic", "list"],
        capture_output=True,
        env=clean_env(RAFTKA_BOOTSTRAP=address),
        cwd=ROOT,
        timeout=30,
    )
    error = one_line_error(result)
    assert address in error
    assert "connection refused" in error


def test_a_bad_bootstrap_address_is_an_error(cli):
    assert "HOST:PORT" in one_line_error(cli("--bootstrap", "host:port", "topic", "list"))


def test_the_installed_entry_point():
    script = os.path.join(os.path.dirname(sys.executable), "raftka")
    result = subprocess.run([script, "--version"], capture_output=True, env=clean_env(), timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == "raftka 0.1.0"
