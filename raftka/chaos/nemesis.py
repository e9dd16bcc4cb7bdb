"""Process faults (nemeses) for a `LocalCluster`: kill and restart, pause and resume.

Theory of operation
-------------------
A nemesis alternates between healthy and faulty: `heal_s` of quiet, then one fault held for
`fault_s`, then it heals and waits again, until the experiment ends; the last fault always heals. Each
fault picks its targets by a *shape*, with the experiment's seeded random generator:

- `one`: a random node; `leader`: the leader of a random partition of the workload's topic;
  `controller`: the active controller; `minority`: a random minority of the nodes (1 of 3);
  `majority`: a random majority (2 of 3); `ring` (partitions only; one node for the others).

Faults:
- `kill`: SIGKILL the targets; healing starts them again (same data directory).
- `pause`: SIGSTOP the targets; healing sends SIGCONT.
- `partition`: the nodes run in network namespaces (raftka/chaos/netns.py); the targets are cut off
  from the other nodes in both directions (`minority`/`majority`: the two halves), or, with the
  `ring` shape, each node keeps only its two neighbours; healing removes every cut. Clients keep
  reaching every node.
- `link-*` (raftka/chaos/links.py): the same shapes, on the Toxiproxy proxies every node-to-node
  connection goes through: cut, slow, throttled, half-open, reset or closed after a byte limit;
  except for `link-cut`, one direction or both (the event's `direction`). Healing removes them all.

Every start and stop is an event in the history (`{"type": "nemesis", "f": "start"|"stop", "fault",
"shape", "targets"}`), so the checker can measure availability in and after each fault window.
`plan` decides (pure: seeded rng and the cluster's view in, a list of targets out); `ProcessNemesis`
applies it to the processes.

Thread-safety: one thread (the runner's nemesis thread) drives it.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import urllib.request
from collections.abc import Callable

from raftka.chaos.links import LINK_FAULTS, fault_pairs

FAULTS = ("kill", "pause", "partition", *LINK_FAULTS)
SHAPES = ("one", "leader", "controller", "minority", "majority", "ring")


def plan(
    shape: str, rng: random.Random, node_ids: list[int], leaders: list[int], controller: int | None
) -> list[int]:
    """The node ids a fault of this shape hits (never empty)."""
    ids = sorted(node_ids)
    if shape == "leader":
        known = [leader for leader in leaders if leader in ids]
        return [rng.choice(known)] if known else [rng.choice(ids)]
    if shape == "controller":
        return [controller] if controller in ids else [rng.choice(ids)]
    if shape == "minority":
        return sorted(rng.sample(ids, (len(ids) - 1) // 2 or 1))
    if shape == "majority":
        return sorted(rng.sample(ids, len(ids) // 2 + 1))
    if shape in ("one", "ring"):  # a ring has no targets of its own: for the others, one node
        return [rng.choice(ids)]
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


class ProcessNemesis:
    def __init__(
        self,
        cluster,
        topic: str,
        faults: list[str],
        shapes: list[str],
        rng: random.Random,
        record: Callable[..., None],
        fault_s: float,
        heal_s: float,
        network=None,
        links=None,
    ):
        """`network`: a raftka/chaos/netns.py Network the nodes run in (needed by `partition`);
        `links`: a raftka/chaos/links.py Links the nodes connect through (needed by `link-*`)."""
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}")
        self.cluster, self.topic = cluster, topic
        self.faults, self.shapes = faults, shapes
        self.rng, self.record = rng, record
        self.fault_s, self.heal_s = fault_s, heal_s
        self.network, self.links = network, links
        if "partition" in faults and network is None:
            raise ValueError("the partition fault needs the nodes in network namespaces (a Network)")
        if any(f in LINK_FAULTS for f in faults) and links is None:
            raise ValueError("link faults need the nodes connected through Toxiproxy (a Links)")
        self.stop_event = threading.Event()
        self.windows = 0
        self.thread = threading.Thread(target=self._run, name="nemesis", daemon=True)

    def start(self) -> ProcessNemesis:
        self.thread.start()
        return self

    def stop(self) -> None:
        """End after the current fault healed."""
        self.stop_event.set()
        self.thread.join(self.fault_s + 120)

    def _run(self) -> None:
        while not self.stop_event.wait(self.heal_s):
            fault = self.rng.choice(self.faults)
            shape = self.rng.choice(self.shapes)
            ids = [n.node_id for n in self.cluster.nodes]
            targets = plan(shape, self.rng, ids, *self._view())
            detail = {}
            if fault in LINK_FAULTS:
                both = fault == "link-cut" or self.rng.random() < 0.5
                pairs = fault_pairs(shape, targets, ids, both)
                detail = {"direction": "both" if both else "one", "links": [list(p) for p in pairs]}
            self.record(type="nemesis", f="start", fault=fault, shape=shape, targets=targets, **detail)
            nodes = [self.cluster.node(i) for i in targets]
            if fault in LINK_FAULTS:
                self.links.apply(fault, pairs)
            elif fault == "kill":
                for node in nodes:
                    node.kill()
            elif fault == "pause":
                for node in nodes:
                    node.signal(signal.SIGSTOP)
            else:
                for source, target in fault_pairs(shape, targets, ids, both=True):
                    self.network.cut(source, target)
            self.stop_event.wait(self.fault_s)
            if fault in LINK_FAULTS:
                self.links.heal()
            elif fault == "kill":
                for node in nodes:
                    node.start()
            elif fault == "pause":
                for node in nodes:
                    node.signal(signal.SIGCONT)
            else:
                self.network.heal()
            self.record(type="nemesis", f="stop", fault=fault, shape=shape, targets=targets)
            self.windows += 1

    def _view(self) -> tuple[list[int], int | None]:
        """(leaders of the topic's partitions, active controller) from any node that answers."""
        for node in self.cluster.nodes:
            if not node.alive():
                continue
            try:
                with urllib.request.urlopen(f"{node.url}/v1/topics/{self.topic}", timeout=2) as response:
                    leaders = [p["leader"] for p in json.loads(response.read())["partitions"]]
                with urllib.request.urlopen(f"{node.url}/v1/cluster", timeout=2) as response:
                    controller = json.loads(response.read())["controller_id"]
                return leaders, controller
            except (OSError, ValueError, KeyError):
                continue
        return [], None


def wait_healthy(cluster, topic: str, timeout_s: float) -> dict:
    """Until every node is ready and every partition of the topic has a leader and a full ISR."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            cluster.wait_ready(max(1.0, deadline - time.monotonic()))
            with urllib.request.urlopen(f"{cluster.nodes[0].url}/v1/topics/{topic}", timeout=5) as response:
                described = json.loads(response.read())
            last = described
            if all(p["leader"] >= 0 and len(p["isr"]) == len(p["replicas"]) for p in described["partitions"]):
                return described
        except (OSError, ValueError, RuntimeError) as exc:
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"the cluster did not heal within {timeout_s} s: {last!r}")
