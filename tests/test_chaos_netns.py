"""Kernel-level partitions (raftka/chaos/netns.py): the shapes' links, and cuts that really drop
node-to-node traffic while the clients' links (from the root namespace) keep working. Needs root
and iproute2, as the partition nemesis does (CI runs as root)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from raftka.chaos.netns import Network, partition_pairs
from raftka.local_cluster import ROOT


def test_isolating_cuts_both_directions_and_a_ring_keeps_the_neighbours():
    assert partition_pairs("isolate", [1], [1, 2, 3]) == [(1, 2), (1, 3), (2, 1), (3, 1)]
    assert partition_pairs("isolate", [1, 2], [1, 2, 3]) == [(1, 3), (2, 3), (3, 1), (3, 2)]
    ring = partition_pairs("ring", [], [1, 2, 3, 4, 5])
    assert (1, 2) not in ring and (1, 5) not in ring and (1, 3) in ring and (3, 1) in ring
    assert len(ring) == 5 * 2  # each of 5 nodes loses the 2 that are not its neighbours
    assert partition_pairs("ring", [], [1, 2, 3]) == []  # in a ring of 3 everyone is a neighbour


def reach(network: Network, source: int | None, target: int, port: int) -> bool:
    prefix = [] if source is None else network.prefix(source)
    code = f"import socket; socket.create_connection(('{network.host(target)}', {port}), timeout=2).close()"
    return subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True).returncode == 0


def test_a_cut_drops_one_direction_between_nodes_and_never_the_clients():
    network = Network(3).setup()
    servers = []
    try:
        port = 18_000 + network.subnet
        for node in (1, 2):
            server = [
                *network.prefix(node),
                sys.executable,
                "-m",
                "http.server",
                str(port),
                "--bind",
                network.host(node),
            ]
            servers.append(subprocess.Popen(server, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while not (reach(network, None, 1, port) and reach(network, None, 2, port)):
            assert time.monotonic() < deadline, "the servers did not start"
            time.sleep(0.1)
        assert reach(network, 1, 2, port) and reach(network, 3, 2, port)
        network.cut(1, 2)
        assert not reach(network, 1, 2, port)  # 1 cannot send to 2
        assert reach(network, 3, 2, port)  # others can
        assert reach(network, None, 2, port)  # and the clients can
        assert (
            reach(network, 1, 2, port) is False and reach(network, 2, 1, port) is False
        )  # 2's answers to 1 are lost
        network.heal()
        assert reach(network, 1, 2, port) and reach(network, 2, 1, port)
    finally:
        for server in servers:
            server.kill()
        network.teardown()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert network.namespace(1) not in listed


def test_without_namespaces_the_partition_run_fails_on_one_line(tmp_path):
    """Where `ip` refuses (not root), `raftka chaos run --nemesis partition` says why and exits 1."""
    fake = tmp_path / "ip"
    fake.write_text("#!/bin/sh\necho 'RTNETLINK answers: Operation not permitted' >&2\nexit 2\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    command = [
        sys.executable,
        "-m",
        "raftka.cli",
        "chaos",
        "run",
        "--nemesis",
        "partition",
        "--duration",
        "1",
    ]
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "raftka: error: chaos run: cannot make network namespaces"
    ), lines
    assert "Operation not permitted" in lines[0]
