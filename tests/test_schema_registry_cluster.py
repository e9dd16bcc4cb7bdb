"""The schema registry on a real 3-node cluster: writes sent to nodes that are not the controller reach
it (one hop) and are readable at once on the node asked, then on every node; Confluent's client with
the three nodes as its URLs; Avro produce and fetch across nodes; and after kill -9 of the active
controller every subject, version, id and setting is still there on the survivors, ids stay stable
(the same schema keeps its id, a new one never takes an old id), and the killed node comes back with
the same registry."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from tests.test_cluster import cluster_view, request, wait_for
from tests.test_replication_cluster import make_cluster, wait_in_sync

V1 = "application/vnd.schemaregistry.v1+json"


def call(node, method: str, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://{node.address}{path}", data=data, method=method, headers={"Content-Type": V1}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def record(name: str, *fields: tuple) -> str:
    return json.dumps(
        {
            "type": "record",
            "name": name,
            "fields": [{"name": n, "type": t, **({"default": d[0]} if d else {})} for n, t, *d in fields],
        }
    )


def call_settled(node, method: str, path: str, body=None, timeout_s: float = 30.0):
    """`call`, repeated while the answer is a 503 (no controller known yet right after a failover)."""
    answers: list = []

    def settled():
        answers.append(call(node, method, path, body))
        return answers[-1][0] != 503

    wait_for(settled, timeout_s, f"{method} {path} answered without 503 (last: {answers[-1:]})")
    return answers[-1]


def registry_view(node) -> tuple:
    """Everything the registry holds, as one node answers it."""
    status, schemas = call(node, "GET", "/schemas?deleted=true")
    assert status == 200, schemas
    configs = {}
    for subject in sorted({s["subject"] for s in schemas}):
        configs[subject] = call(node, "GET", f"/config/{quote(subject, safe='')}")[1]
    return schemas, configs, call(node, "GET", "/config")[1], call(node, "GET", "/mode")[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = make_cluster(tmp_path_factory.mktemp("registry"))
    c.start()
    yield c
    c.stop()


def controller(cluster) -> int:
    live = next(n for n in cluster.nodes if n.alive())
    wait_for(lambda: cluster_view(live)["controller_id"] > 0, 30, "a controller")
    return cluster_view(live)["controller_id"]


def test_concurrent_registrations_through_every_node(cluster):
    """Different schemas registered at once through different nodes get distinct ids and versions;
    the same schema sent at once through every node (a client retrying on another node after a lost
    answer) is one id and one version."""
    controller(cluster)
    nodes = cluster.nodes
    schemas = [record("Many", ("a", "int"), *[(f"f{i}", "int", i) for i in range(n)]) for n in range(6)]

    def register_via(args):
        node, subject, schema = args
        return call_settled(node, "POST", f"/subjects/{subject}/versions", {"schema": schema})

    jobs = [(nodes[i % len(nodes)], f"many-{i}-value", schema) for i, schema in enumerate(schemas)]
    jobs += [(node, "same-value", schemas[0]) for node in nodes for _ in range(2)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(register_via, jobs))
    assert all(status == 200 for status, _ in answers), answers
    distinct = [body["id"] for _, body in answers[: len(schemas)]]
    assert len(set(distinct)) == len(schemas), distinct
    same = {(body["id"], body["version"]) for _, body in answers[len(schemas) :]}
    assert same == {(distinct[0], 1)}, same
    for node in nodes:
        wait_for(
            lambda node=node: call(node, "GET", "/subjects/same-value/versions")[1] == [1],
            10,
            f"one version of same-value on node {node.node_id}",
        )


def test_registry_survives_controller_failover(cluster):
    leader_id = controller(cluster)
    followers = [n for n in cluster.nodes if n.node_id != leader_id]
    entry = followers[0]
    v1 = record("Event", ("kind", "string"))
    v2 = record("Event", ("kind", "string"), ("weight", "int", 1))
    broken = record("Event", ("kind", "int"))

    # Writes through a node that is not the controller; read-your-writes on that node.
    status, first = call(entry, "POST", "/subjects/events-value/versions", {"schema": v1})
    assert status == 200, first
    status, latest = call(entry, "GET", "/subjects/events-value/versions/latest")
    assert status == 200 and latest["id"] == first["id"], latest
    status, second = call(followers[1], "POST", "/subjects/events-value/versions", {"schema": v2})
    assert status == 200 and second["version"] == 2, second
    status, refused = call(followers[1], "POST", "/subjects/events-value/versions", {"schema": broken})
    assert (status, refused["error_code"]) == (409, 40901), refused
    status, answer = call(entry, "PUT", "/config/events-value", {"compatibility": "FULL_TRANSITIVE"})
    assert status == 200, answer
    status, answer = call(entry, "PUT", "/config", {"compatibility": "FORWARD"})
    assert status == 200, answer
    status, gone = call(entry, "POST", "/subjects/gone-value/versions", {"schema": '"bytes"'})
    assert status == 200, gone
    assert call(entry, "DELETE", "/subjects/gone-value")[0] == 200  # soft-deleted: kept, hidden

    # Confluent's client with every node as a URL.
    client = SchemaRegistryClient({"url": ",".join(n.url for n in cluster.nodes)})
    other_id = client.register_schema("metrics-value", Schema(record("Metric", ("v", "double")), "AVRO"))
    assert (
        client.register_schema("metrics-value", Schema(record("Metric", ("v", "double")), "AVRO")) == other_id
    )

    # Avro produce through one node, fetched decoded through another (the leader answers).
    status, body = request(
        entry.address, "POST", "/v1/topics", {"name": "events", "partitions": 1, "replication_factor": 3}
    )
    assert status == 201, body
    wait_in_sync(cluster, "events", 0)
    status, body = request(
        entry.address,
        "POST",
        "/v1/topics/events/records",
        {"value_subject": "events-value", "records": [{"value": {"kind": "click"}}]},
    )
    assert status == 200, body

    # Every node converges on the same registry.
    wanted = registry_view(entry)
    for node in cluster.nodes:
        wait_for(lambda node=node: registry_view(node) == wanted, 10, f"the registry on node {node.node_id}")

    # kill -9 the active controller: nothing is lost, ids stay what they were.
    cluster.node(leader_id).kill()
    survivor = followers[0]
    wait_for(lambda: cluster_view(survivor)["controller_id"] not in (leader_id, -1), 30, "a new controller")
    for node in followers:
        assert registry_view(node) == wanted
    status, again = call_settled(followers[1], "POST", "/subjects/events-value/versions", {"schema": v2})
    assert status == 200 and (again["id"], again["version"]) == (second["id"], 2), again
    status, third = call_settled(survivor, "POST", "/subjects/new-value/versions", {"schema": '"string"'})
    assert status == 200, third
    assert third["id"] > max(first["id"], second["id"], other_id), third  # never an old id
    path = "/v1/topics/events/partitions/0/records?offset=0&max_wait_ms=0&decode=avro"

    def decoded():  # the partition may have lost its leader with the controller: wait for the next one
        status, answer = request(followers[1].address, "GET", path)
        return answer if status == 200 else None

    records = wait_for(decoded, 30, "the events partition readable again")
    assert records["records"][0]["value"] == {"kind": "click", "weight": 1}  # the latest version, v2
    assert records["records"][0]["value_schema_id"] == second["id"]
    with pytest.raises(SchemaRegistryError) as caught:
        SchemaRegistryClient({"url": survivor.url}).register_schema("events-value", Schema(broken, "AVRO"))
    assert caught.value.error_code == 40901  # the subject's FULL_TRANSITIVE level survived too

    # The killed node returns with the same registry (its journal, then the log it missed).
    cluster.node(leader_id).start()
    cluster.wait_ready(60, [cluster.node(leader_id)])
    final = registry_view(survivor)
    wait_for(
        lambda: registry_view(cluster.node(leader_id)) == final, 20, "the registry on the restarted node"
    )
    assert final[2] == {"compatibilityLevel": "FORWARD"}
    assert final[1]["events-value"] == {"compatibilityLevel": "FULL_TRANSITIVE"}
    assert {(s["subject"], s["version"], s["id"]) for s in final[0]} >= {
        ("events-value", 1, first["id"]),
        ("events-value", 2, second["id"]),
        ("metrics-value", 1, other_id),
        ("new-value", 1, third["id"]),
        ("gone-value", 1, gone["id"]),
    }
