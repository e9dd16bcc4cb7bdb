"""`raftka drain` (raftka/k8s.py), the pod's preStop hook: its decisions on the node's documents, and
its HTTP loop against a scripted node (a real server on 127.0.0.1). The rehearsal
(tests/test_k8s_rehearsal.py) runs it against real nodes."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from raftka.cli import main as cli_main
from raftka.k8s import Drain, catching_up, led_here


def broker(node_id: int, status: str = "active", epoch: int = 10) -> dict:
    return {"id": node_id, "address": f"n{node_id}:9092", "status": status, "epoch": epoch}


def partition(index: int, leader: int, replicas: list[int], isr: list[int]) -> dict:
    return {"partition": index, "leader": leader, "replicas": replicas, "isr": isr}


def test_catching_up_names_partitions_whose_other_replicas_are_active_but_out_of_sync():
    cluster = {"node_id": 1, "brokers": [broker(1), broker(2), broker(3, "fenced"), broker(4)]}
    topics = [
        {
            "name": "t",
            "partitions": [
                partition(0, 1, [1, 2, 3], [1, 3]),  # 2 is active and catching up: wait
                partition(1, 1, [1, 3, 4], [1, 4]),  # 3 is fenced (dead): nothing to wait for
                partition(2, 2, [2, 4, 3], [2]),  # no replica here: not this node's business
                partition(3, 2, [2, 1, 4], [2, 1, 4]),  # all in sync
            ],
        },
        {"name": "u", "partitions": [partition(0, 4, [4, 1], [4])]},  # 1 itself out of sync: fine
    ]
    assert catching_up(cluster, topics, 1) == ["t-0"]
    assert catching_up(cluster, topics, 4) == ["u-0"]  # 1 is active and out of u-0's ISR
    assert led_here(topics, 1) == ["t-0", "t-1"]
    assert led_here(topics, 3) == []


class FakeNode:
    """A node's HTTP answers, scripted: the cluster document, topics, and the controller's answers to
    shutdown requests (one per request, the last one repeated)."""

    def __init__(self, cluster: dict, topics: list[dict], shutdown_answers: list[tuple[int, dict]]):
        self.cluster = cluster
        self.topics = {t["name"]: t for t in topics}
        self.shutdown_answers = list(shutdown_answers)
        self.shutdown_bodies: list[dict] = []
        self.topic_reads = 0
        self.on_topic_read = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, document) -> None:
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/v1/cluster":
                    return self._send(200, fake.cluster)
                if self.path == "/v1/topics":
                    return self._send(200, {"topics": [{"name": n} for n in fake.topics]})
                name = self.path.removeprefix("/v1/topics/")
                fake.topic_reads += 1
                if fake.on_topic_read is not None:
                    fake.on_topic_read(fake)
                return self._send(200, fake.topics[name])

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                fake.shutdown_bodies.append({"path": self.path, **json.loads(self.rfile.read(length))})
                status, document = fake.shutdown_answers[0]
                if len(fake.shutdown_answers) > 1:
                    fake.shutdown_answers.pop(0)
                return self._send(status, document)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeNode:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()


def drain(node: FakeNode, timeout_s: float = 10, in_sync_wait_s: float = 5) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = Drain(node.address, timeout_s, in_sync_wait_s, say=lines.append, poll_s=0.05).run()
    return code, lines


def three_brokers(status_1: str = "active") -> dict:
    return {"node_id": 1, "brokers": [broker(1, status_1, epoch=42), broker(2), broker(3)]}


def test_a_node_that_is_not_registered_or_fenced_has_nothing_to_drain():
    for cluster in ({"node_id": 1, "brokers": [broker(2)]}, three_brokers("fenced")):
        with FakeNode(cluster, [], [(500, {"message": "must not be asked"})]) as node:
            code, lines = drain(node)
        assert code == 0
        assert "nothing to drain" in lines[-1]
        assert node.shutdown_bodies == []


def test_drain_waits_for_catching_up_replicas_then_moves_leaderships_until_none_is_left():
    topic = {"name": "t", "partitions": [partition(0, 1, [1, 2, 3], [1, 3])]}

    def catch_up_after_a_few_reads(fake):
        if fake.topic_reads == 4:
            topic["partitions"][0]["isr"] = [1, 3, 2]
        if fake.shutdown_bodies:  # the controller moved the leadership
            topic["partitions"][0]["leader"] = 2

    answers = [
        (503, {"error_code": 50303, "message": "no active controller known yet"}),
        (200, {"remaining_leaderships": 1}),
        (200, {"remaining_leaderships": 0}),
    ]
    with FakeNode(three_brokers(), [topic], answers) as node:
        node.on_topic_read = catch_up_after_a_few_reads
        code, lines = drain(node)
    assert code == 0, lines
    assert lines[0] == "waiting for 1 partition(s) whose other replicas are catching up (t-0)"
    assert "every replica is back in sync" in lines
    assert "no active controller known yet" in lines
    assert "node 1 still leads 1 partition(s) that can move" in lines
    assert lines[-1].startswith("node 1 drained in ") and lines[-1].endswith("it leads no partition")
    assert [b["broker_epoch"] for b in node.shutdown_bodies] == [42, 42, 42]
    assert {b["path"] for b in node.shutdown_bodies} == {"/v1/internal/brokers/1/shutdown"}


def test_drain_stops_waiting_for_replicas_after_its_bound_and_names_what_it_could_not_move():
    topic = {"name": "t", "partitions": [partition(0, 1, [1, 2], [1]), partition(1, 1, [1, 3], [1, 3])]}
    with FakeNode(three_brokers(), [topic], [(200, {"remaining_leaderships": 0})]) as node:
        code, lines = drain(node, in_sync_wait_s=0.3)
    assert code == 0
    assert "1 partition(s) still have a replica catching up (t-0); draining anyway" in lines
    # The controller moved nothing (the fake never changes leaders): both are named as unavailable.
    assert "it still leads 2 partition(s) with no other in-sync replica (t-0, t-1)" in lines[-1]


def test_drain_skips_the_wait_when_the_node_is_already_shutting_down():
    topic = {"name": "t", "partitions": [partition(0, 2, [1, 2], [2])]}  # 1 out of the ISR: catching up?
    with FakeNode(three_brokers("shutting_down"), [topic], [(200, {"remaining_leaderships": 0})]) as node:
        code, lines = drain(node)
    assert code == 0
    assert lines == [lines[-1]] and "it leads no partition" in lines[-1]


def test_drain_fails_when_the_leaderships_do_not_move_in_time():
    topic = {"name": "t", "partitions": [partition(0, 1, [1, 2], [1, 2]), partition(1, 1, [1, 3], [1, 3])]}
    with FakeNode(three_brokers(), [topic], [(200, {"remaining_leaderships": 2})]) as node:
        code, lines = drain(node, timeout_s=0.5)
    assert code == 1
    assert "node 1 still leads 2 partition(s) that can move" in lines
    assert "(2 partition(s) led here); stopping anyway" in lines[-1]


def test_drain_gives_up_when_no_controller_answers_for_a_while():
    answer = (503, {"error_code": 50303, "message": "no active controller known yet"})
    with FakeNode(three_brokers(), [], [answer]) as node:
        lines: list[str] = []
        code = Drain(node.address, 60, 0, say=lines.append, poll_s=0.05, controller_wait_s=0.5).run()
    assert code == 1
    assert lines[:2] == [
        "no active controller known yet",
        "no controller answered for 0.5 s: the quorum may be stopping",
    ]
    assert "not drained after" in lines[-1]


def test_drain_fails_at_once_when_no_node_answers(capsys):
    with FakeNode(three_brokers(), [], []) as node:
        address = node.address
    code = cli_main(["drain", "--node", address, "--timeout-s", "30"])
    assert code == 1
    assert f"cannot reach the node at {address}" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--timeout-s", "--in-sync-wait-s"])
def test_drain_options_are_numbers(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["drain", flag, "soon"])
    assert exit_info.value.code == 2
    assert "invalid float value" in capsys.readouterr().err
