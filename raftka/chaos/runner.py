"""One partition-tolerance experiment, start to report (`raftka chaos run`).

Steps:
1. start a `LocalCluster` (`nodes` controller nodes, free ports, data under `<out>/cluster`), create the
   workload topic (`partitions` partitions, replication factor 3, min.insync.replicas 2);
2. start the workloads' processes (the queue's producers and consumers, raftka/chaos/workload.py;
   the metadata workload's, raftka/chaos/metadata.py) and the nemesis (raftka/chaos/nemesis.py) for
   `duration_s`;
3. heal: stop the nemesis (its last fault heals), wait until every node is ready and every partition
   has a leader and a full ISR, let the producers finish what they have in flight, stop the consumers;
4. final read: the metadata workload's topics (exist? retention.ms?), every queue partition through
   the API (its leader), then the cluster stops and each node's own log of each partition is read
   from disk below the high watermark (one view per replica);
5. check the merged history (raftka/chaos/checker.py) and write `<out>/history.jsonl`,
   `<out>/verdict.json`, `<out>/summary.txt` and, where matplotlib is installed, `<out>/timeline.png`.

The history's clock is the wall clock, in seconds since the experiment's start, shared by all its
processes. Node logs stay in `<out>/cluster/node-*/node.log`.
"""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import random
import shutil
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from raftka.chaos import checker
from raftka.chaos.links import LINK_FAULTS, Links, ToxiproxyServer, find_server, install_server
from raftka.chaos.metadata import check_metadata, final_state, metadata_main
from raftka.chaos.nemesis import SHAPES, ProcessNemesis, wait_healthy
from raftka.chaos.netns import Network
from raftka.chaos.workload import EventLog, consumer_main, final_read_api, final_read_disk, producer_main
from raftka.local_cluster import LocalCluster

TOPIC = "chaos-queue"
GROUP = "chaos-consumers"
HEAL_TIMEOUT_S = 120


@dataclass
class Experiment:
    out: str
    nemesis: list[str] = field(default_factory=lambda: ["kill", "pause"])
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    duration_s: float = 60.0
    fault_s: float = 5.0
    heal_s: float = 5.0
    nodes: int = 3
    partitions: int = 3
    producers: int = 2
    consumers: int = 2
    rate: float = 50.0  # values per second per producer
    workloads: list[str] = field(default_factory=lambda: ["queue", "metadata"])
    metadata_processes: int = 2
    seed: int = 1
    node_args: tuple[str, ...] = ()


def run(experiment: Experiment, http_ports: list[int], raft_ports: list[int]) -> dict:
    """Run it and write the report; returns the checker's verdict."""
    os.makedirs(experiment.out, exist_ok=True)
    for stale in glob.glob(os.path.join(experiment.out, "events-*.jsonl")):
        os.remove(stale)
    cluster_dir = os.path.join(experiment.out, "cluster")
    shutil.rmtree(cluster_dir, ignore_errors=True)
    nodes = range(1, experiment.nodes + 1)
    server, links = _links(experiment, http_ports, raft_ports)
    try:
        network = Network(experiment.nodes).setup() if "partition" in experiment.nemesis else None
    except BaseException:
        if server is not None:
            server.stop()
        raise
    cluster = LocalCluster(
        cluster_dir,
        controllers=experiment.nodes,
        http_ports=http_ports,
        raft_ports=raft_ports,
        extra_args=experiment.node_args,
        hosts=None if network is None else [network.host(i) for i in nodes],
        prefixes=None if network is None else [network.prefix(i) for i in nodes],
        node_args=None if links is None else {i: ["--connect-via", links.connect_via(i)] for i in nodes},
    )
    started_at = time.time()
    nemesis_log = EventLog(os.path.join(experiment.out, "events-nemesis.jsonl"), started_at)
    lock = threading.Lock()

    def record(**event) -> None:
        with lock:
            nemesis_log.write(**event)

    context = multiprocessing.get_context("spawn")
    workers: list = []
    try:
        cluster.start(wait_s=60)
        bootstrap = [n.address for n in cluster.nodes]
        _create_topic(cluster, experiment)
        wait_healthy(cluster, TOPIC, HEAL_TIMEOUT_S)
        produce_stop = os.path.join(experiment.out, "stop-producers")
        consume_stop = os.path.join(experiment.out, "stop-consumers")
        for path in (produce_stop, consume_stop):
            if os.path.exists(path):
                os.remove(path)
        for number in range(experiment.consumers):
            args = (number, bootstrap, TOPIC, GROUP, experiment.out, started_at, consume_stop)
            workers.append(context.Process(target=consumer_main, args=args, daemon=True))
        producers = []
        if "metadata" in experiment.workloads:
            for number in range(experiment.metadata_processes):
                args = (number, bootstrap, experiment.out, started_at, produce_stop, experiment.seed)
                producers.append(context.Process(target=metadata_main, args=args, daemon=True))
        for number in range(experiment.producers if "queue" in experiment.workloads else 0):
            args = (
                number,
                bootstrap,
                TOPIC,
                experiment.partitions,
                experiment.rate,
                experiment.out,
                started_at,
                produce_stop,
            )
            producers.append(context.Process(target=producer_main, args=args, daemon=True))
        workers += producers
        for worker in workers:
            worker.start()
        nemesis = ProcessNemesis(
            cluster,
            TOPIC,
            experiment.nemesis,
            experiment.shapes,
            random.Random(experiment.seed),
            record,
            experiment.fault_s,
            experiment.heal_s,
            network,
            links,
        ).start()
        time.sleep(experiment.duration_s)
        nemesis.stop()
        record(type="phase", f="heal")
        wait_healthy(cluster, TOPIC, HEAL_TIMEOUT_S)
        _touch(produce_stop)
        for worker in producers:
            worker.join(60)
        time.sleep(2.0)  # let the consumers read the last records
        _touch(consume_stop)
        for worker in workers:
            worker.join(30)
        record(type="phase", f="final-read")
        if "metadata" in experiment.workloads:
            names = sorted({e["topic"] for e in merge(experiment.out) if e.get("f") == "metadata"})
            record(
                type="ok",
                f="metadata-final",
                process="final",
                topics=final_state(cluster.nodes[0].address, names),
            )
        views = final_read_api(cluster.nodes[0].address, TOPIC, experiment.partitions)
        for view in views:
            record(type="ok", f="final-read", process="final", **view)
        cluster.stop()
        for node in cluster.nodes:
            for view in views:
                directory = os.path.join(node.data_dir, "data", "logs", f"{TOPIC}-{view['partition']}")
                if not os.path.isdir(directory):
                    continue
                start, records = final_read_disk(directory, view["high_watermark"])
                record(
                    type="ok",
                    f="final-read",
                    process="final",
                    partition=view["partition"],
                    records=records,
                    log_start_offset=start,
                    high_watermark=view["high_watermark"],
                    view=f"node-{node.node_id}-disk",
                )
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
        cluster.kill()
        if network is not None:
            network.teardown()
        if server is not None:
            server.stop()
        nemesis_log.close()
    history = merge(experiment.out)
    verdict = checker.check(history)
    if "metadata" in experiment.workloads:
        verdict["metadata"] = check_metadata(history)
        verdict["valid"] = verdict["valid"] and verdict["metadata"]["valid"]
    verdict["experiment"] = {k: v for k, v in experiment.__dict__.items() if k not in ("node_args",)} | {
        "node_args": list(experiment.node_args)
    }
    write_report(experiment.out, history, verdict)
    return verdict


def _links(experiment: Experiment, http_ports: list[int], raft_ports: list[int]):
    """(Toxiproxy server, Links) when the experiment has link faults, else (None, None). The server is
    installed first if it is missing (Go needed); RuntimeError says why it cannot run."""
    if not any(f in LINK_FAULTS for f in experiment.nemesis):
        return None, None
    if "partition" in experiment.nemesis:
        raise RuntimeError(
            "partition and link-* faults cannot share a run: the nodes in network namespaces cannot reach "
            "the proxies on 127.0.0.1"
        )
    binary = find_server() or install_server()
    server = ToxiproxyServer(binary, os.path.join(experiment.out, "toxiproxy.log")).start()
    try:
        addresses = {
            i: (f"127.0.0.1:{http_ports[i - 1]}", f"127.0.0.1:{raft_ports[i - 1]}")
            for i in range(1, experiment.nodes + 1)
        }
        return server, Links(server, addresses).setup()
    except BaseException:
        server.stop()
        raise


def _create_topic(cluster: LocalCluster, experiment: Experiment) -> None:
    body = json.dumps(
        {
            "name": TOPIC,
            "partitions": experiment.partitions,
            "replication_factor": min(3, experiment.nodes),
            "configs": {"min.insync.replicas": str(min(2, experiment.nodes))},
        }
    ).encode()
    request = urllib.request.Request(
        f"{cluster.nodes[0].url}/v1/topics",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def _touch(path: str) -> None:
    with open(path, "w", encoding="utf-8"):
        pass


def merge(out: str) -> list[dict]:
    """Every process's events, in time order (a torn last line of a killed process is skipped)."""
    events = []
    for path in sorted(glob.glob(os.path.join(out, "events-*.jsonl"))):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.endswith("\n"):
                    events.append(json.loads(line))
    events.sort(key=lambda e: e["t"])
    return events


def write_report(out: str, history: list[dict], verdict: dict) -> None:
    with open(os.path.join(out, "history.jsonl"), "w", encoding="utf-8") as handle:
        for event in history:
            handle.write(json.dumps(event, separators=(",", ":")) + "\n")
    with open(os.path.join(out, "verdict.json"), "w", encoding="utf-8") as handle:
        json.dump(verdict, handle, indent=2, default=str)
    summary = checker.summarize(verdict)
    if "metadata" in verdict:
        meta = verdict["metadata"]
        summary += (
            f"\nmetadata: {'valid' if meta['valid'] else 'INVALID'}; operations {meta['counts']}; "
            f"anomalies {meta['anomaly_count']}\n"
        )
        for anomaly in meta["anomalies"][:5]:
            summary += f"  {anomaly}\n"
    png = timeline(out, history)
    summary += f"\ntimeline: {png}\n" if png else "\ntimeline: not drawn (matplotlib is not installed)\n"
    with open(os.path.join(out, "summary.txt"), "w", encoding="utf-8") as handle:
        handle.write(summary)


def timeline(out: str, history: list[dict]) -> str | None:
    """A PNG of acknowledged sends per second and their latency, fault windows shaded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    invoked = {}
    acked_t, latency = [], []
    windows, open_windows = [], {}
    for event in history:
        key = (event.get("process"), event.get("value"))
        if event.get("f") == "send" and event["type"] == "invoke":
            invoked[key] = event["t"]
        elif event.get("f") == "send" and event["type"] == "ok" and key in invoked:
            acked_t.append(event["t"])
            latency.append(event["t"] - invoked[key])
        elif event["type"] == "nemesis":
            label = f"{event['fault']} {event.get('shape', '')} {event.get('targets')}"
            if event["f"] == "start":
                open_windows[event["fault"]] = (event["t"], label)
            elif event["fault"] in open_windows:
                begin, label = open_windows.pop(event["fault"])
                windows.append((begin, event["t"], label))
    end = max((e["t"] for e in history), default=1.0)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    seconds = int(end) + 1
    per_second = [0] * seconds
    for t in acked_t:
        per_second[min(int(t), seconds - 1)] += 1
    top.plot(range(seconds), per_second, drawstyle="steps-post")
    top.set_ylabel("acknowledged sends / s")
    bottom.plot(acked_t, [x * 1000 for x in latency], ".", markersize=2)
    bottom.set_yscale("log")
    bottom.set_ylabel("send latency (ms)")
    bottom.set_xlabel("seconds since start")
    for number, (begin, finish, label) in enumerate(windows):
        for axis in (top, bottom):
            axis.axvspan(begin, finish, color="tab:red", alpha=0.15)
        height = max(per_second or [1]) * (1 - 0.1 * (number % 3))  # staggered: neighbours do not overlap
        top.text(begin, height, label, fontsize=7, va="top")
    figure.tight_layout()
    path = os.path.join(out, "timeline.png")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
