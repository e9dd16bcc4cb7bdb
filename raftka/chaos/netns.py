"""Kernel-level network partitions: each node in a network namespace of its own (root only).

Theory of operation
-------------------
`Network.setup(count)` makes a Linux bridge in the root namespace with address `10.<b>.0.254/24`, and
for node i a namespace with a veth pair: one end on the bridge, the other inside the namespace as
`eth0` with address `10.<b>.0.i/24` (`<b>` is picked per run so that two runs do not collide). A node
runs under `ip netns exec <its namespace>` (LocalCluster's `prefixes`) and listens on its own address;
the workload's processes stay in the root namespace and reach every node through the bridge, so a
partition cuts node-to-node links only (Raft, replication fetches, forwarding, heartbeats), never the
clients' links.

`cut(a, b)` drops every packet node a sends to node b, in the kernel: a blackhole route to b's address
inside a's namespace (`ip route add blackhole 10.<b>.0.<b's number>/32`). Cutting both directions
is a full partition of the pair; one direction leaves b's packets reaching a but never answered, as
a half-broken link does. It needs only the `ip` tool (iproute2), which is on every Linux machine: no
firewall package. `heal()` removes every cut; `teardown()` removes the namespaces, veths and bridge.

Partitions by shape (`partition_pairs`, pure): isolate a set of nodes from the others, split the
nodes into two halves, or a *ring* where each node reaches only its neighbours (every node sees a
majority of 3 or 5, but no two see the same one).

Thread-safety: one thread (the nemesis's) drives it.
"""

from __future__ import annotations

import os
import subprocess
from itertools import permutations

BRIDGE_CIDR = 24


def _ip(*args: str, namespace: str | None = None) -> None:
    command = ["ip", "netns", "exec", namespace, "ip", *args] if namespace else ["ip", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")


def partition_pairs(kind: str, isolated: list[int], nodes: list[int]) -> list[tuple[int, int]]:
    """The directed links (from, to) to cut: `isolate` cuts `isolated` from everyone else both ways
    (the halves of a split are `isolated` and the rest); `ring` leaves each node its neighbours in
    node order and cuts the rest."""
    if kind == "isolate":
        rest = [n for n in nodes if n not in isolated]
        return sorted({(a, b) for a in isolated for b in rest} | {(b, a) for a in isolated for b in rest})
    if kind == "ring":
        ordered = sorted(nodes)
        count = len(ordered)
        neighbours = {ordered[i]: {ordered[(i - 1) % count], ordered[(i + 1) % count]} for i in range(count)}
        return sorted((a, b) for a, b in permutations(ordered, 2) if b not in neighbours[a])
    raise ValueError(f"unknown partition kind {kind!r}")


class Network:
    def __init__(self, count: int):
        self.count = count
        self.tag = f"rk{os.getpid() % 10000}"
        self.subnet = 64 + os.getpid() % 128  # 10.<subnet>.0.0/24
        self.bridge = f"{self.tag}br"
        self.cuts: set[tuple[int, int]] = set()
        self.ready = False

    def namespace(self, node: int) -> str:
        return f"{self.tag}n{node}"

    def host(self, node: int) -> str:
        return f"10.{self.subnet}.0.{node}"

    def prefix(self, node: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(node)]

    def setup(self) -> Network:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"10.{self.subnet}.0.254/{BRIDGE_CIDR}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for node in range(1, self.count + 1):
                name, outside, inside = self.namespace(node), f"{self.tag}v{node}", f"{self.tag}p{node}"
                _ip("netns", "add", name)
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                _ip("link", "set", outside, "master", self.bridge)
                _ip("link", "set", outside, "up")
                _ip("link", "set", inside, "netns", name)
                _ip("link", "set", inside, "name", "eth0", namespace=name)
                _ip("addr", "add", f"{self.host(node)}/{BRIDGE_CIDR}", "dev", "eth0", namespace=name)
                _ip("link", "set", "eth0", "up", namespace=name)
                _ip("link", "set", "lo", "up", namespace=name)
        except (RuntimeError, FileNotFoundError) as exc:
            self.teardown()
            raise RuntimeError(
                f"cannot make network namespaces for a partition experiment (root and iproute2 are needed): {exc}"
            ) from None
        self.ready = True
        return self

    def cut(self, source: int, target: int) -> None:
        """Drop every packet `source` sends to `target`."""
        if (source, target) not in self.cuts:
            _ip("route", "add", "blackhole", f"{self.host(target)}/32", namespace=self.namespace(source))
            self.cuts.add((source, target))

    def heal(self) -> None:
        for source, target in sorted(self.cuts):
            _ip("route", "del", "blackhole", f"{self.host(target)}/32", namespace=self.namespace(source))
        self.cuts.clear()

    def teardown(self) -> None:
        """Remove everything `setup` made (what exists of it); never raises."""
        for node in range(1, self.count + 1):
            subprocess.run(["ip", "link", "del", f"{self.tag}v{node}"], capture_output=True)
            subprocess.run(["ip", "netns", "del", self.namespace(node)], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        self.cuts.clear()
        self.ready = False
