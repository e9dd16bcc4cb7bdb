"""Short partition-tolerance experiments in CI: each nemesis against a real 3-node cluster, with the
queue workload and the history checker (raftka/chaos). Any anomaly fails the build; longer runs are
`raftka chaos run` (docs/reliability.md)."""

from __future__ import annotations

import json
import os

import pytest

from raftka.chaos.runner import Experiment, run
from raftka.local_cluster import free_ports


@pytest.mark.parametrize(
    ("nemesis", "shapes"),
    [
        ("kill", ["leader", "controller", "minority"]),
        ("pause", ["leader", "majority", "one"]),
        ("partition", ["leader", "majority", "ring"]),  # network namespaces: CI runs as root
    ],
)
def test_a_short_experiment_finds_no_anomaly(tmp_path, nemesis, shapes):
    out = str(tmp_path / "report")
    experiment = Experiment(
        out=out, nemesis=[nemesis], shapes=shapes, duration_s=14, fault_s=3, heal_s=3, seed=7, rate=40
    )  # both workloads: the queue and the metadata (topic create, alter, delete)
    ports = free_ports(6)
    verdict = run(experiment, ports[:3], ports[3:])
    with open(os.path.join(out, "summary.txt"), encoding="utf-8") as handle:
        print(handle.read())
    assert verdict["valid"], json.dumps(verdict["anomalies"], indent=1)[:4000]
    windows = verdict["availability"]["windows"]
    assert len(windows) >= 2 and all(w["fault"] == nemesis for w in windows), windows
    counts = verdict["counts"]
    assert counts["sends"]["ok"] > 200, counts
    assert counts["values"]["polled"] >= counts["values"]["acked"] * 0.9, counts  # the consumers kept up
    metadata = verdict["metadata"]
    assert metadata["valid"] and metadata["counts"]["ok"] > 20, metadata
    for name in ("history.jsonl", "verdict.json", "summary.txt"):
        assert os.path.getsize(os.path.join(out, name)) > 0
