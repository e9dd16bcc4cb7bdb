"""The chaos tooling pointed at pods (scripts/k8s_chaos.py): a short experiment with kill and restart
faults against a local rehearsal of the prod StatefulSet (pods created again on new addresses, the
workload's clients resolving the pods' stable names), judged by the history checker; and the kubectl
commands the same experiment sends to a real cluster, against a recording stand-in for kubectl."""

from __future__ import annotations

import json
import os
import stat
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import k8s_chaos  # noqa: E402 - scripts/ is not a package
from k8s_rehearsal import DNS_SUFFIX_ENV, DNS_TABLE_ENV, Rehearsal  # noqa: E402


def test_an_experiment_with_pods_killed_and_restarted_finds_no_anomaly(tmp_path, monkeypatch):
    rehearsal = Rehearsal("prod", str(tmp_path / "pods"), pods=3)
    # The workload's processes run "in the cluster": the stable names resolve as they do for the pods.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([rehearsal.shim_dir, ROOT]))
    monkeypatch.setenv(DNS_TABLE_ENV, rehearsal.dns_table)
    monkeypatch.setenv(DNS_SUFFIX_ENV, f"svc.{rehearsal.domain}")
    out = str(tmp_path / "report")
    with rehearsal:
        rehearsal.start().wait_ready(range(3), 90)
        try:
            verdict = k8s_chaos.run(
                k8s_chaos.RehearsalPods(rehearsal),
                [f"{rehearsal.stable_name(i)}:{rehearsal.http_port}" for i in range(3)],
                out,
                faults=["kill", "restart"],
                shapes=["one", "leader", "controller"],
                duration_s=14,
                fault_s=2,
                heal_s=2,
                rate=30,
                seed=13,  # a restart of a partition leader first, then a kill of the controller
                heal_timeout_s=90,
            )
        except BaseException:
            print(rehearsal.logs(40), file=sys.stderr)
            raise
    with open(os.path.join(out, "history.jsonl")) as handle:
        history = [json.loads(line) for line in handle]
    started = [e for e in history if e["type"] == "nemesis" and e["f"] == "start"]
    assert started, "the nemesis never struck"
    assert [(e["fault"], e["shape"]) for e in started][:2] == [("restart", "leader"), ("kill", "controller")][
        : len(started)
    ]
    assert len([e for e in history if e["type"] == "nemesis" and e["f"] == "stop"]) == len(started)
    assert verdict["counts"]["values"]["acked"] > 0, verdict["counts"]
    assert verdict["counts"]["values"]["polled"] > 0, verdict["counts"]
    with open(os.path.join(out, "summary.txt")) as handle:
        assert verdict["valid"], handle.read()


FAKE_KUBECTL = """#!{python}
import json, sys
args = sys.argv[1:]
with open({log!r}, "a") as handle:
    handle.write(json.dumps(args) + "\\n")
if "jsonpath={{.spec.replicas}}" in args:
    print("5", end="")
elif "jsonpath={{.spec.serviceName}}" in args:
    print("raftka-headless", end="")
elif args[2] == "wait":
    with open({log!r}) as handle:
        waits = sum(1 for line in handle if '"wait"' in line)
    sys.exit(0 if waits > 1 else 1)  # the pod does not exist yet at the first wait
"""


def test_the_kubectl_commands_of_an_experiment(tmp_path):
    log = str(tmp_path / "calls.jsonl")
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(FAKE_KUBECTL.format(python=sys.executable, log=log))
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IXUSR)
    pods = k8s_chaos.KubectlPods("prod-ns", kubectl=str(kubectl))
    assert pods.ordinals() == [0, 1, 2, 3, 4]
    assert pods.address(2) == "raftka-2.raftka-headless.prod-ns.svc:9092"
    pods.kill(1)
    pods.restart(4)
    pods.wait_ready(4, 30)
    with open(log) as handle:
        calls = [json.loads(line) for line in handle]
    assert all(call[:2] == ["--namespace", "prod-ns"] for call in calls)
    assert [call[2:] for call in calls[2:]] == [
        ["delete", "pod", "raftka-1", "--grace-period=0", "--force", "--wait=false"],
        ["delete", "pod", "raftka-4", "--wait=false"],
        ["wait", "--for=condition=Ready", "pod/raftka-4", "--timeout=10s"],
        ["wait", "--for=condition=Ready", "pod/raftka-4", "--timeout=10s"],
    ]
