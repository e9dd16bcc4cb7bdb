"""Link faults through a real Toxiproxy server (raftka/chaos/links.py): which proxy streams a directed
fault touches, that every node-to-node connection (Raft and HTTP) really goes through the proxies,
and short experiments of each link fault with the checker. The server is installed on first use
(`go install` of the pinned version into .tools/bin) when it is not there yet."""

from __future__ import annotations

import json
import os
import time
import urllib.request

import pytest

from node.config import load_config
from raftka.chaos.links import (
    Links,
    ToxiproxyServer,
    directed_streams,
    fault_pairs,
    find_server,
    install_server,
)
from raftka.chaos.nemesis import wait_healthy
from raftka.chaos.runner import Experiment, run
from raftka.local_cluster import LocalCluster, free_ports


def test_what_a_node_sends_is_the_upstream_of_its_proxies_and_the_downstream_of_the_others():
    assert directed_streams(1, 2) == [
        ("raft-1-2", "upstream"),
        ("http-1-2", "upstream"),
        ("raft-2-1", "downstream"),
        ("http-2-1", "downstream"),
    ]


def test_fault_pairs_one_direction_is_what_the_targets_send():
    both = fault_pairs("leader", [2], [1, 2, 3], both=True)
    assert both == [(1, 2), (2, 1), (2, 3), (3, 2)]
    assert fault_pairs("leader", [2], [1, 2, 3], both=False) == [(2, 1), (2, 3)]
    majority = fault_pairs("majority", [1, 2], [1, 2, 3], both=False)
    assert majority == [(1, 3), (2, 3)]
    ring = fault_pairs("ring", [1], [1, 2, 3, 4, 5], both=True)
    assert (1, 3) in ring and (3, 1) in ring and (1, 2) not in ring and (1, 5) not in ring
    assert fault_pairs("ring", [1], [1, 2, 3, 4, 5], both=False) == sorted((a, b) for a, b in ring if a < b)


def test_connect_via_maps_peer_addresses_and_names_a_bad_entry():
    config = load_config(["--connect-via", "127.0.0.1:9093=127.0.0.1:21001, 127.0.0.1:9402=127.0.0.1:21002"])
    assert config.dial("127.0.0.1:9093") == "127.0.0.1:21001"
    assert config.dial("127.0.0.1:9402") == "127.0.0.1:21002"
    assert config.dial("127.0.0.1:9999") == "127.0.0.1:9999"  # not listed: dialled as it is
    assert load_config([]).dial("127.0.0.1:9093") == "127.0.0.1:9093"
    for bad, message in [
        ("127.0.0.1:9093", "is not ADDRESS=VIA"),
        ("127.0.0.1:9093=nowhere", "must be HOST:PORT"),
        ("127.0.0.1:1=127.0.0.1:2,127.0.0.1:1=127.0.0.1:3", "listed twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_config(["--connect-via", bad])


def test_without_a_server_or_go_the_run_fails_on_one_line(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("RAFTKA_TOXIPROXY_SERVER", str(tmp_path / "missing"))
    assert find_server() is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no go
    with pytest.raises(RuntimeError, match="Go is not on the PATH"):
        install_server()
    env = {**os.environ, "PATH": str(tmp_path), "RAFTKA_TOXIPROXY_SERVER": str(tmp_path / "missing")}
    args = ["--duration", "5", "--out", str(tmp_path / "report")]
    done = subprocess.run(
        [sys.executable, "-m", "raftka.cli", "chaos", "run", "--nemesis", "link-slow", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stdout == "", done
    assert done.stderr.count("\n") == 1 and "Go is not on the PATH" in done.stderr, done.stderr
    both = subprocess.run(
        [sys.executable, "-m", "raftka.cli", "chaos", "run", "--nemesis", "partition,link-cut", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert both.returncode == 1 and both.stderr.count("\n") == 1, both
    assert "cannot share a run" in both.stderr


@pytest.fixture(scope="module")
def toxiproxy_binary() -> str:
    return find_server() or install_server()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=3) as response:
        return json.loads(response.read())


def _until(what: str, check, timeout_s: float = 40.0):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s (last: {last!r})")


def test_raft_and_replication_go_through_the_proxies(tmp_path, toxiproxy_binary):
    server = ToxiproxyServer(toxiproxy_binary, str(tmp_path / "toxiproxy.log")).start()
    ports = free_ports(6)
    addresses = {i: (f"127.0.0.1:{ports[i - 1]}", f"127.0.0.1:{ports[i + 2]}") for i in (1, 2, 3)}
    links = Links(server, addresses).setup()
    cluster = LocalCluster(
        str(tmp_path / "cluster"),
        controllers=3,
        http_ports=ports[:3],
        raft_ports=ports[3:],
        node_args={i: ["--connect-via", links.connect_via(i)] for i in (1, 2, 3)},
    )
    try:
        cluster.start(wait_s=60)
        body = json.dumps(
            {
                "name": "links",
                "partitions": 3,
                "replication_factor": 3,
                "configs": {"min.insync.replicas": "2"},
            }
        ).encode()
        request = urllib.request.Request(
            f"{cluster.nodes[0].url}/v1/topics", data=body, headers={"Content-Type": "application/json"}
        )
        urllib.request.urlopen(request, timeout=30).read()
        wait_healthy(cluster, "links", 60)
        controller = _get(f"{cluster.nodes[0].url}/v1/cluster")["controller_id"]
        others = [i for i in (1, 2, 3) if i != controller]

        # Cutting every proxy to and from the controller: the other two elect a new one (Raft went
        # through the proxies), fence the old one and drop it from every ISR (so did the heartbeats
        # and the replication streams), while clients still reach it directly.
        links.apply("link-cut", fault_pairs("controller", [controller], [1, 2, 3], both=True))
        assert all(not p["enabled"] for n, p in links.state().items() if str(controller) in n.split("-")[1:])
        observer = cluster.node(others[0]).url

        def moved():
            view = _get(f"{observer}/v1/cluster")
            fenced = [b for b in view["brokers"] if b["id"] == controller and b["status"] != "active"]
            return view["controller_id"] in others and fenced and view

        _until("a new controller among the others, the old one fenced", moved)
        topic = _until(
            "the isolated node out of every ISR",
            lambda: (
                (t := _get(f"{observer}/v1/topics/links"))
                and all(controller not in p["isr"] and p["leader"] in others for p in t["partitions"])
                and t
            ),
        )
        assert all(len(p["isr"]) == 2 for p in topic["partitions"]), topic
        assert _get(f"{cluster.node(controller).url}/livez") is not None  # the client path is untouched

        links.heal()
        assert all(p["enabled"] and not p["toxics"] for p in links.state().values())
        healed = wait_healthy(cluster, "links", 60)
        assert all(len(p["isr"]) == 3 for p in healed["partitions"]), healed
        _until(
            "every node back as an active broker",
            lambda: all(b["status"] == "active" for b in _get(f"{observer}/v1/cluster")["brokers"]),
        )
    finally:
        cluster.kill()
        server.stop()


@pytest.mark.parametrize(
    ("nemesis", "shapes"),
    [
        (["link-cut", "link-half-open"], ["leader", "controller", "majority"]),
        (["link-slow", "link-bandwidth", "link-reset", "link-limit"], ["leader", "minority", "one"]),
    ],
)
def test_a_short_link_experiment_finds_no_anomaly(tmp_path, toxiproxy_binary, nemesis, shapes):
    out = str(tmp_path / "report")
    experiment = Experiment(
        out=out, nemesis=nemesis, shapes=shapes, duration_s=20, fault_s=3, heal_s=2, seed=11, rate=40
    )
    ports = free_ports(6)
    verdict = run(experiment, ports[:3], ports[3:])
    with open(os.path.join(out, "summary.txt"), encoding="utf-8") as handle:
        print(handle.read())
    assert verdict["valid"], json.dumps(verdict["anomalies"], indent=1)[:4000]
    windows = verdict["availability"]["windows"]
    assert len(windows) >= 3 and {w["fault"] for w in windows} <= set(nemesis), windows
    with open(os.path.join(out, "history.jsonl"), encoding="utf-8") as handle:
        starts = [e for e in map(json.loads, handle) if e["type"] == "nemesis" and e["f"] == "start"]
    assert all(e["links"] for e in starts), starts  # every fault hit some link
    counts = verdict["counts"]
    assert counts["sends"]["ok"] > 200, counts
    assert verdict["metadata"]["valid"] and verdict["metadata"]["counts"]["ok"] > 20, verdict["metadata"]
