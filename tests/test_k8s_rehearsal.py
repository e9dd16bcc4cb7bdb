"""A local rehearsal of the StatefulSet (scripts/k8s_rehearsal.py): the prod overlay's container args and
environment as rendered, resolved for each pod as the kubelet would, each pod on its own 127.x.y.N
address, the headless Service's DNS names resolving to the pods' current addresses. Three controller
pods and one broker-only pod (the StatefulSet at 4 replicas) must form one cluster; a pod killed and
created again (a new address, the same volume) must come back as the same node; the preStop hook
must drain a pod before SIGTERM stops it cleanly.

The tests run in order on one rehearsal (starting four nodes once keeps the file under a minute)."""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from k8s_rehearsal import Rehearsal  # noqa: E402 - scripts/ is not a package

PODS = 4  # ordinals 0-2 are the controllers, 3 is broker-only
TOPIC = "rehearsal"
PARTITIONS = 6
READY_S = 90  # generous: a loaded 2-core machine


@pytest.fixture(scope="module")
def rehearsal(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp("k8s-rehearsal")
    failed_before = request.session.testsfailed
    with Rehearsal("prod", str(directory), pods=PODS) as rehearsal:
        rehearsal.failed_before = failed_before
        try:
            rehearsal.start().wait_ready(range(PODS), READY_S)
            yield rehearsal
        finally:
            if request.session.testsfailed > failed_before or sys.exc_info()[0] is not None:
                print(rehearsal.logs(40), file=sys.stderr)


@pytest.fixture(autouse=True)
def after_a_failure_fail_at_once(request, rehearsal):
    """Each test goes on from the pods the one before left: after a failure they are in no known state."""
    if request.session.testsfailed > rehearsal.failed_before:
        pytest.fail("an earlier test of this file failed and left the pods in an unknown state")


def cluster(rehearsal, ordinal: int) -> dict:
    status, body = rehearsal.request(ordinal, "GET", "/v1/cluster")
    assert status == 200, body
    return body


def topic(rehearsal, ordinal: int) -> dict:
    status, body = rehearsal.request(ordinal, "GET", f"/v1/topics/{TOPIC}")
    assert status == 200, body
    return body


def produce(rehearsal, ordinal: int, partition: int, values: list[str]) -> int:
    """acks=all through pod `ordinal` (any pod forwards to the leader), retried as a client retries
    while a leadership moves (a dead leader is replaced once the controller fences it); the base offset."""

    def attempt():
        status, body = rehearsal.request(
            ordinal,
            "POST",
            f"/v1/topics/{TOPIC}/partitions/{partition}/records?acks=all",
            {"records": [{"value": v} for v in values]},
            timeout_s=30,
        )
        if status != 200 and (status >= 500 or body.get("error_code") == 40403):
            return None  # retriable: no leader yet, leader unreachable, not enough replicas yet
        assert status == 200, body
        return body["offsets"][0]

    return rehearsal.wait_for(f"a write to partition {partition}", attempt, 60)["offset"]


def read_all(rehearsal, ordinal: int, partition: int) -> list[str]:
    status, body = rehearsal.request(
        ordinal, "GET", f"/v1/topics/{TOPIC}/partitions/{partition}/records?offset=0&max_wait_ms=0"
    )
    assert status == 200, body
    return [record["value"] for record in body["records"]]


def healthy(rehearsal) -> bool:
    """Every partition led by an active broker and fully in sync, as pod 3 sees it."""
    described = topic(rehearsal, 3)
    return all(p["leader"] >= 0 and len(p["isr"]) == len(p["replicas"]) for p in described["partitions"])


def test_the_pods_form_one_cluster_with_their_stable_names(rehearsal):
    views = [cluster(rehearsal, i) for i in range(PODS)]
    assert len({v["cluster_id"] for v in views}) == 1
    assert [v["node_id"] for v in views] == list(range(PODS))  # node id = pod ordinal
    rehearsal.wait_for(
        "every pod sees the same active controller",
        lambda: len({cluster(rehearsal, i)["controller_id"] for i in range(PODS)}) == 1,
        30,
    )
    assert views[0]["controller_id"] in (0, 1, 2)
    brokers = {b["id"]: b for b in views[3]["brokers"]}
    assert sorted(brokers) == list(range(PODS))
    for ordinal, entry in brokers.items():
        assert entry["status"] == "active"
        assert entry["address"] == f"{rehearsal.stable_name(ordinal)}:9092"
        assert entry["roles"] == (["broker", "controller"] if ordinal < 3 else ["broker"])
    assert views[3]["raft"]["voter"] is False  # the broker-only pod follows without voting
    assert all(views[i]["raft"]["voter"] for i in range(3))
    # The Raft peers know each other by the stable DNS names, never by pod addresses.
    assert views[3]["raft"]["leader"].endswith(f".{rehearsal.service}.rehearsal.svc.cluster.local:9093")

    status, body = rehearsal.request(
        3,
        "POST",
        "/v1/topics",
        {
            "name": TOPIC,
            "partitions": PARTITIONS,
            "replication_factor": 3,
            "configs": {"min.insync.replicas": "2"},
        },
    )
    assert status == 201, body
    rehearsal.wait_for("the topic is fully in sync", lambda: healthy(rehearsal), 60)
    for p in range(PARTITIONS):
        assert produce(rehearsal, p % PODS, p, [f"first-{p}-{i}" for i in range(5)]) == 0


def test_a_killed_pod_comes_back_on_a_new_address_as_the_same_node(rehearsal):
    before = {b["id"]: b for b in cluster(rehearsal, 3)["brokers"]}
    old_address = rehearsal.pods[1].ip
    rehearsal.kill(1)  # SIGKILL: no preStop, no controlled shutdown
    rehearsal.delete(1, graceful=False)
    for p in range(PARTITIONS):  # acks=all keeps working with two of three replicas
        produce(rehearsal, 3, p, [f"while-1-is-gone-{p}"])
    pod = rehearsal.create(1)
    assert pod.ip != old_address
    rehearsal.wait_ready([1], READY_S)
    with open(os.path.join(rehearsal.claims_dir, "data-raftka-1", "data", "meta.properties")) as handle:
        assert "node.id=1\n" in handle.read()
    after = rehearsal.wait_for(
        "broker 1 registered again",
        lambda: {
            b["id"]: b for b in cluster(rehearsal, 3)["brokers"] if b["id"] == 1 and b["status"] == "active"
        },
        30,
    )
    assert after[1]["address"] == before[1]["address"]  # the same stable name
    assert after[1]["epoch"] > before[1]["epoch"]  # a new incarnation of the same node
    assert cluster(rehearsal, 1)["node_id"] == 1
    rehearsal.wait_for("pod 1's replicas back in sync", lambda: healthy(rehearsal), 60)
    for p in range(PARTITIONS):
        values = read_all(rehearsal, 1, p)
        assert values == [f"first-{p}-{i}" for i in range(5)] + [f"while-1-is-gone-{p}"]


def test_pod_0_recreated_is_reached_again_by_the_pods_that_dial_it(rehearsal):
    """Every other node dials pod 0 (pysyncobj: the larger address connects), so pod 0 on a new address
    rejoins only if they look its name up again: a stale DNS cache would keep it out of the quorum."""
    old_address = rehearsal.pods[0].ip
    result = rehearsal.delete(0)
    assert result.pre_stop_code == 0, result.pre_stop_output
    assert result.exit_code == 0 and not result.killed
    assert rehearsal.create(0).ip != old_address
    rehearsal.wait_ready([0], READY_S)
    rehearsal.wait_for(
        "pod 0 follows the quorum's metadata",
        lambda: cluster(rehearsal, 0)["metadata_offset"] >= cluster(rehearsal, 3)["metadata_offset"] > 0,
        30,
    )
    rehearsal.wait_for("pod 0's replicas back in sync", lambda: healthy(rehearsal), 60)


def test_the_prestop_hook_drains_a_pod_before_sigterm_stops_it(rehearsal):
    status, body = rehearsal.request(3, "POST", "/v1/cluster/elect-leaders")  # spread the leaders again
    assert status == 200, body
    leaders = [p["leader"] for p in topic(rehearsal, 3)["partitions"]]
    target = max(range(PODS), key=leaders.count)
    assert leaders.count(target) >= 1
    seen = {}

    def after_prestop(result):
        # The kubelet has run the hook and not yet sent SIGTERM: the node leads nothing, is out of
        # every ISR and, from its next heartbeat on, says it is not ready (it leaves the client Service).
        described = topic(rehearsal, 3 if target != 3 else 0)
        seen["leaders"] = [p["leader"] for p in described["partitions"]]
        seen["isr_members"] = {r for p in described["partitions"] for r in p["isr"]}
        seen["ready"] = not rehearsal.wait_for(
            "the drained node not ready", lambda: not rehearsal.ready(target), 30
        )

    pod = rehearsal.pods[target]
    result = rehearsal.delete(target, between=after_prestop)
    assert result.pre_stop_code == 0, result.pre_stop_output
    assert f"node {target} drained in" in result.pre_stop_output
    assert "it leads no partition" in result.pre_stop_output
    assert target not in seen["leaders"]
    assert target not in seen["isr_members"]
    assert seen["ready"] is False
    assert result.exit_code == 0 and not result.killed
    log = pod.output()
    assert f"controlled shutdown: no leaderships left on broker {target}" in log  # SIGTERM's, at once
    assert f"node {target} stopped cleanly" in log
    # Writes go on while the pod is gone, and it comes back.
    survivor = next(i for i in range(PODS) if i != target)
    for p in range(PARTITIONS):
        produce(rehearsal, survivor, p, [f"while-{target}-is-drained-{p}"])
    rehearsal.create(target)
    rehearsal.wait_ready([target], READY_S)
    rehearsal.wait_for("the cluster back in sync", lambda: healthy(rehearsal), 60)


def test_a_pod_given_another_pods_volume_refuses_to_start(rehearsal):
    """The node id is kept in the volume: a claim bound to the wrong pod (a restore under the wrong
    name) stops the container at once instead of joining as the wrong node."""
    rehearsal.kill(3)
    rehearsal.delete(3, graceful=False)
    code, output = rehearsal.run_once(2, claim_of=3)
    assert code == 1
    assert "belongs to node 3, not node 2" in output
    rehearsal.create(3)
    rehearsal.wait_ready([3], READY_S)
