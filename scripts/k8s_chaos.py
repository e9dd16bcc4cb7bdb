"""Partition-tolerance experiments against Raftka pods: the chaos tooling pointed at a StatefulSet.

    # from a pod in the cluster that may delete the StatefulSet's pods (docs/kubernetes.md):
    python scripts/k8s_chaos.py --namespace raftka --bootstrap raftka.raftka.svc.cluster.local:9092 \\
        --duration 120 --out report/

Theory of operation
-------------------
The same experiment as `raftka chaos run` (raftka/chaos/runner.py), with pods in place of a local
cluster: create the queue topic (replication factor 3, min.insync.replicas 2), start the queue
workload's producer and consumer processes (raftka/chaos/workload.py) against the bootstrap
address, and alternate `heal_s` of quiet with one fault held for `fault_s`:

- `kill`: the pod dies at once, no preStop, no controlled shutdown (`kubectl delete pod
  --grace-period=0 --force`); the StatefulSet creates it again on the same volume, with a new address.
- `restart`: the pod is deleted the way a rolling upgrade or a node drain deletes it (preStop drain,
  SIGTERM, controlled shutdown), and created again.

Targets are chosen by raftka/chaos/nemesis.py's `plan` (shapes `one`, `leader`: the leader of a
random partition, `controller`: the active controller), with a seeded generator. Healing waits for
the pod to be ready again. Afterwards: wait until every pod is ready and every partition is led and
in sync, stop the workload, read every partition through the API, and judge the history with
raftka/chaos/checker.py; the report (history.jsonl, verdict.json, summary.txt, timeline.png) is
raftka/chaos/runner.py's. Network partitions inside a cluster need a CNI that enforces
NetworkPolicy; docs/kubernetes.md shows one by hand.

`KubectlPods` acts on a cluster through kubectl; `RehearsalPods` on a local rehearsal
(scripts/k8s_rehearsal.py), which is how the tests run an experiment without a cluster.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Protocol

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raftka.chaos import checker
from raftka.chaos.nemesis import plan
from raftka.chaos.runner import GROUP, TOPIC, merge, write_report
from raftka.chaos.workload import EventLog, consumer_main, final_read_api, producer_main

FAULTS = ("kill", "restart")
SHAPES = ("one", "leader", "controller")
HEAL_TIMEOUT_S = 180


class Pods(Protocol):
    """The StatefulSet's pods, as the experiment acts on them."""

    def ordinals(self) -> list[int]: ...
    def address(self, ordinal: int) -> str: ...
    def kill(self, ordinal: int) -> None: ...
    def restart(self, ordinal: int) -> None: ...
    def wait_ready(self, ordinal: int, timeout_s: float) -> None: ...


class KubectlPods:
    """Pods of StatefulSet `statefulset` in `namespace`, through the kubectl command."""

    def __init__(
        self, namespace: str, statefulset: str = "raftka", kubectl: str = "kubectl", port: int = 9092
    ):
        self.namespace, self.statefulset, self.kubectl, self.port = namespace, statefulset, kubectl, port

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [self.kubectl, "--namespace", self.namespace, *args], capture_output=True, text=True, timeout=120
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip() or done.returncode}")
        return done

    def name(self, ordinal: int) -> str:
        return f"{self.statefulset}-{ordinal}"

    def ordinals(self) -> list[int]:
        replicas = self._run("get", "statefulset", self.statefulset, "-o", "jsonpath={.spec.replicas}").stdout
        return list(range(int(replicas)))

    def address(self, ordinal: int) -> str:
        service = self._run(
            "get", "statefulset", self.statefulset, "-o", "jsonpath={.spec.serviceName}"
        ).stdout.strip()
        return f"{self.name(ordinal)}.{service}.{self.namespace}.svc:{self.port}"

    def kill(self, ordinal: int) -> None:
        # The kubelet stops the old container at once; the StatefulSet creates the pod again, and the
        # node's lock on its data directory keeps a new container from starting before the old is gone.
        self._run("delete", "pod", self.name(ordinal), "--grace-period=0", "--force", "--wait=false")

    def restart(self, ordinal: int) -> None:
        self._run("delete", "pod", self.name(ordinal), "--wait=false")

    def wait_ready(self, ordinal: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            # The pod may not exist yet (being created again): `kubectl wait` fails at once then.
            done = self._run(
                "wait", "--for=condition=Ready", f"pod/{self.name(ordinal)}", "--timeout=10s", check=False
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"pod {self.name(ordinal)} not ready after {timeout_s:.0f} s: {done.stderr}"
                )
            time.sleep(1)


class RehearsalPods:
    """The pods of a scripts/k8s_rehearsal.py Rehearsal (tests, and runs on one machine)."""

    def __init__(self, rehearsal):
        self.rehearsal = rehearsal
        self._lock = threading.Lock()

    def ordinals(self) -> list[int]:
        return list(range(self.rehearsal.replicas))

    def address(self, ordinal: int) -> str:
        with self._lock:
            return f"{self.rehearsal.pods[ordinal].ip}:{self.rehearsal.http_port}"

    def kill(self, ordinal: int) -> None:
        with self._lock:
            self.rehearsal.kill(ordinal)
            self.rehearsal.delete(ordinal, graceful=False)
            self.rehearsal.create(ordinal)

    def restart(self, ordinal: int) -> None:
        with self._lock:
            self.rehearsal.delete(ordinal)
            self.rehearsal.create(ordinal)

    def wait_ready(self, ordinal: int, timeout_s: float) -> None:
        self.rehearsal.wait_ready([ordinal], timeout_s)


def _get(address: str, path: str) -> dict:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
        return json.loads(response.read())


def _view(pods: Pods) -> tuple[list[int], int | None]:
    """(leaders of the queue topic's partitions, active controller) from the first pod that answers."""
    for ordinal in pods.ordinals():
        try:
            address = pods.address(ordinal)
            leaders = [p["leader"] for p in _get(address, f"/v1/topics/{TOPIC}")["partitions"]]
            return leaders, _get(address, "/v1/cluster")["controller_id"]
        except (OSError, ValueError, KeyError, RuntimeError):
            continue
    return [], None


def wait_healthy(pods: Pods, timeout_s: float) -> None:
    """Every pod ready, every partition of the queue topic led and fully in sync."""
    deadline = time.monotonic() + timeout_s
    for ordinal in pods.ordinals():
        pods.wait_ready(ordinal, max(1.0, deadline - time.monotonic()))
    last: object = None
    while time.monotonic() < deadline:
        leaders, _ = _view(pods)
        try:
            described = _get(pods.address(0), f"/v1/topics/{TOPIC}")["partitions"]
            last = described
            if leaders and all(p["leader"] >= 0 and len(p["isr"]) == len(p["replicas"]) for p in described):
                return
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(0.5)
    raise RuntimeError(f"the pods did not heal within {timeout_s:.0f} s: {last!r}")


def nemesis(
    pods: Pods,
    faults: list[str],
    shapes: list[str],
    rng: random.Random,
    record: Callable[..., None],
    fault_s: float,
    heal_s: float,
    stop: threading.Event,
    heal_timeout_s: float = HEAL_TIMEOUT_S,
) -> None:
    """Faults until `stop` is set; the last one always heals (or raises: the pod did not come back)."""
    while not stop.wait(heal_s):
        fault, shape = rng.choice(faults), rng.choice(shapes)
        (target,) = plan(shape, rng, pods.ordinals(), *_view(pods))
        record(type="nemesis", f="start", fault=fault, shape=shape, targets=[target])
        (pods.kill if fault == "kill" else pods.restart)(target)
        stop.wait(fault_s)
        pods.wait_ready(target, heal_timeout_s)
        record(type="nemesis", f="stop", fault=fault, shape=shape, targets=[target])


def run(
    pods: Pods,
    bootstrap: list[str],
    out: str,
    *,
    faults: list[str],
    shapes: list[str],
    duration_s: float,
    fault_s: float,
    heal_s: float,
    partitions: int = 3,
    producers: int = 2,
    consumers: int = 2,
    rate: float = 50.0,
    seed: int = 1,
    heal_timeout_s: float = HEAL_TIMEOUT_S,
) -> dict:
    """One experiment; writes the report into `out` and returns the checker's verdict. RuntimeError
    when the pods do not heal within `heal_timeout_s` (a pod that does not come back is a finding)."""
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        if name.startswith("events-") or name.startswith("stop-"):
            os.remove(os.path.join(out, name))
    started_at = time.time()
    nemesis_log = EventLog(os.path.join(out, "events-nemesis.jsonl"), started_at)
    lock = threading.Lock()

    def record(**event) -> None:
        with lock:
            nemesis_log.write(**event)

    document = {
        "name": TOPIC,
        "partitions": partitions,
        "replication_factor": 3,
        "configs": {"min.insync.replicas": "2"},
    }
    request = urllib.request.Request(
        f"http://{pods.address(0)}/v1/topics",
        data=json.dumps(document).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
    wait_healthy(pods, heal_timeout_s)
    produce_stop, consume_stop = os.path.join(out, "stop-producers"), os.path.join(out, "stop-consumers")
    context = multiprocessing.get_context("spawn")
    consumer_processes = [
        context.Process(
            target=consumer_main,
            args=(n, bootstrap, TOPIC, GROUP, out, started_at, consume_stop),
            daemon=True,
        )
        for n in range(consumers)
    ]
    producer_processes = [
        context.Process(
            target=producer_main,
            args=(n, bootstrap, TOPIC, partitions, rate, out, started_at, produce_stop),
            daemon=True,
        )
        for n in range(producers)
    ]
    workers = consumer_processes + producer_processes
    stop = threading.Event()
    failures: list[BaseException] = []

    def strike() -> None:
        try:
            nemesis(pods, faults, shapes, random.Random(seed), record, fault_s, heal_s, stop, heal_timeout_s)
        except BaseException as exc:
            failures.append(exc)
            stop.set()

    thread = threading.Thread(target=strike, name="nemesis", daemon=True)
    try:
        for worker in workers:
            worker.start()
        thread.start()
        stop.wait(duration_s)
        stop.set()
        thread.join(fault_s + heal_timeout_s + 60)
        if failures:
            raise RuntimeError(f"the nemesis failed: {failures[0]}") from failures[0]
        record(type="phase", f="heal")
        wait_healthy(pods, heal_timeout_s)
        open(produce_stop, "w").close()
        for worker in producer_processes:
            worker.join(60)
        time.sleep(2.0)  # let the consumers read the last records
        open(consume_stop, "w").close()
        for worker in consumer_processes:
            worker.join(30)
        record(type="phase", f="final-read")
        for view in final_read_api(pods.address(0), TOPIC, partitions):
            record(type="ok", f="final-read", process="final", **view)
    finally:
        stop.set()
        for worker in workers:
            if worker.is_alive():
                worker.kill()
        nemesis_log.close()
    history = merge(out)
    verdict = checker.check(history)
    verdict["experiment"] = {
        "pods": pods.ordinals(),
        "faults": faults,
        "shapes": shapes,
        "duration_s": duration_s,
        "fault_s": fault_s,
        "heal_s": heal_s,
        "seed": seed,
    }
    write_report(out, history, verdict)
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A partition-tolerance experiment against Raftka pods.")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--statefulset", default="raftka")
    parser.add_argument(
        "--bootstrap", required=True, help="the client Service, e.g. raftka.NS.svc.cluster.local:9092"
    )
    parser.add_argument("--nemesis", default="kill,restart", help="kill, restart (default both)")
    parser.add_argument("--shapes", default="one,leader,controller")
    parser.add_argument("--duration", type=float, default=120)
    parser.add_argument("--fault-s", type=float, default=5)
    parser.add_argument("--heal-s", type=float, default=10)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="report")
    args = parser.parse_args(argv)
    faults = [f for f in args.nemesis.split(",") if f]
    shapes = [s for s in args.shapes.split(",") if s]
    if set(faults) - set(FAULTS) or set(shapes) - set(SHAPES) or not faults or not shapes:
        parser.error(f"--nemesis takes {', '.join(FAULTS)}; --shapes {', '.join(SHAPES)}")
    verdict = run(
        KubectlPods(args.namespace, args.statefulset),
        [args.bootstrap],
        args.out,
        faults=faults,
        shapes=shapes,
        duration_s=args.duration,
        fault_s=args.fault_s,
        heal_s=args.heal_s,
        partitions=args.partitions,
        seed=args.seed,
    )
    with open(os.path.join(args.out, "summary.txt"), encoding="utf-8") as handle:
        print(handle.read(), end="")
    return 0 if verdict["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
