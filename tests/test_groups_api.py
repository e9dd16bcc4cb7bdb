"""The consumer-group API on one real node: bad input (each refused with its code, nothing changed),
static membership, leaving, offset resets for an empty group, delete and list."""

from __future__ import annotations

import time

import pytest

from tests.nodeproc import NodeProcess

GROUP_ARGS = ("--group-heartbeat-interval-ms", "100", "--group-session-timeout-ms", "1500")


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    proc = NodeProcess(str(tmp_path_factory.mktemp("groups") / "data"), *GROUP_ARGS).start()
    status, body, _ = proc.request("POST", "/v1/topics", {"name": "t", "partitions": 4})
    assert status == 201, body
    yield proc
    assert proc.stop() == 0


def join(node, group, **fields):
    status, body, _ = node.request("POST", f"/v1/groups/{group}/members", {"topics": ["t"], **fields})
    assert status == 200, body
    return body


def heartbeat(node, group, answer, owned=None):
    path = f"/v1/groups/{group}/members/{answer['member_id']}/heartbeat"
    owned = answer["assignment"] if owned is None else owned
    return node.request("POST", path, {"member_epoch": answer["member_epoch"], "owned": owned})[:2]


def committed(node, group):
    status, body, _ = node.request("GET", f"/v1/groups/{group}/offsets")
    assert status == 200, body
    return {(o["topic"], o["partition"]): o["offset"] for o in body["offsets"]}


BAD = [
    ("no topics", "POST", "/v1/groups/g/members", {"topics": []}, 422, 42201, "topics"),
    ("unknown topic", "POST", "/v1/groups/g/members", {"topics": ["nope"]}, 404, 40401, "nope"),
    (
        "bad assignor",
        "POST",
        "/v1/groups/g/members",
        {"topics": ["t"], "assignor": "x"},
        422,
        42201,
        "assignor",
    ),
    ("unknown field", "POST", "/v1/groups/g/members", {"topics": ["t"], "x": 1}, 422, 42201, "x"),
    (
        "empty instance id",
        "POST",
        "/v1/groups/g/members",
        {"topics": ["t"], "instance_id": ""},
        422,
        42201,
        "instance_id",
    ),
    (
        "heartbeat of a stranger",
        "POST",
        "/v1/groups/g/members/nobody/heartbeat",
        {"member_epoch": 1},
        404,
        40405,
        "join again",
    ),
    (
        "heartbeat without epoch",
        "POST",
        "/v1/groups/g/members/nobody/heartbeat",
        {},
        422,
        42201,
        "member_epoch",
    ),
    (
        "bad owned",
        "POST",
        "/v1/groups/g/members/m/heartbeat",
        {"member_epoch": 1, "owned": [{"topic": 1}]},
        422,
        42201,
        "owned[0]",
    ),
    ("commit without offsets", "POST", "/v1/groups/g/offsets", {"offsets": []}, 422, 42201, "offsets"),
    (
        "commit of a missing partition",
        "POST",
        "/v1/groups/g/offsets",
        {"offsets": [{"topic": "t", "partition": 9, "offset": 1}]},
        404,
        40402,
        "t-9",
    ),
    (
        "commit of a negative offset",
        "POST",
        "/v1/groups/g/offsets",
        {"offsets": [{"topic": "t", "partition": 0, "offset": -1}]},
        422,
        42201,
        "offset",
    ),
    (
        "commit twice one partition",
        "POST",
        "/v1/groups/g/offsets",
        {"offsets": [{"topic": "t", "partition": 0, "offset": 1}] * 2},
        422,
        42201,
        "twice",
    ),
    (
        "commit of a stranger",
        "POST",
        "/v1/groups/g/offsets",
        {"member_id": "x", "member_epoch": 1, "offsets": [{"topic": "t", "partition": 0, "offset": 1}]},
        404,
        40405,
        "join again",
    ),
    (
        "reset to nowhere",
        "POST",
        "/v1/groups/g/offsets/reset",
        {"topic": "t", "to": "middle"},
        422,
        42201,
        "to must be",
    ),
    (
        "reset of an unknown topic",
        "POST",
        "/v1/groups/g/offsets/reset",
        {"topic": "nope", "to": "earliest"},
        404,
        40401,
        "nope",
    ),
    (
        "reset without offset",
        "POST",
        "/v1/groups/g/offsets/reset",
        {"topic": "t", "to": "offset"},
        422,
        42201,
        "offset",
    ),
    (
        "reset of a bad partition",
        "POST",
        "/v1/groups/g/offsets/reset",
        {"topic": "t", "to": "earliest", "partitions": [7]},
        422,
        42201,
        "partitions",
    ),
    ("describe an unknown group", "GET", "/v1/groups/never", None, 404, 40406, "never"),
    ("delete an unknown group", "DELETE", "/v1/groups/never", None, 404, 40406, "never"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_group_requests_are_refused_and_change_nothing(node, case):
    _, method, path, body, status, code, fragment = case
    before = node.request("GET", "/v1/groups")[1]["groups"]
    got_status, got, _ = node.request(method, path, body)
    assert (got_status, got["error_code"]) == (status, code), got
    assert fragment in got["message"], got["message"]
    assert node.request("GET", "/v1/groups")[1]["groups"] == before
    assert node.request("GET", "/v1/groups/g")[0] == 404  # no group was made


def test_a_static_member_that_comes_back_keeps_its_partitions_without_a_rebalance(node):
    group = "static"
    first = join(node, group, instance_id="worker-1")
    other = join(node, group, instance_id="worker-2")
    for _ in range(5):
        first = {**first, **heartbeat(node, group, first)[1]}
        other = {**other, **heartbeat(node, group, other)[1]}
    mine = first["assignment"]
    assert len(mine) == 2 and len(other["assignment"]) == 2
    epoch_before = node.request("GET", f"/v1/groups/{group}")[1]["group_epoch"]
    status, body, _ = node.request("DELETE", f"/v1/groups/{group}/members/{first['member_id']}")
    assert status == 200, body
    back = join(node, group, instance_id="worker-1")
    assert back["member_id"] != first["member_id"]
    assert back["assignment"] == mine  # the same partitions, at once
    described = node.request("GET", f"/v1/groups/{group}")[1]
    assert described["group_epoch"] == epoch_before and described["state"] == "stable", described
    status, body = heartbeat(node, group, first)  # the old incarnation is fenced
    assert (status, body["error_code"]) == (404, 40405), body
    for answer in (back, other):
        node.request("DELETE", f"/v1/groups/{group}/members/{answer['member_id']}")


def test_a_dynamic_member_that_leaves_gives_its_partitions_up_at_once(node):
    group = "leaving"
    first = join(node, group)
    second = join(node, group)
    for _ in range(5):
        first = {**first, **heartbeat(node, group, first)[1]}
        second = {**second, **heartbeat(node, group, second)[1]}
    assert len(first["assignment"]) == 2
    assert node.request("DELETE", f"/v1/groups/{group}/members/{second['member_id']}")[0] == 200
    status, answer = heartbeat(node, group, first)
    assert status == 200 and len(answer["assignment"]) == 4, answer
    node.request("DELETE", f"/v1/groups/{group}/members/{first['member_id']}")


def test_offsets_of_an_empty_group_can_be_reset_and_the_group_deleted(node):
    group = "tools"
    for p in range(4):
        records = {"records": [{"value": i} for i in range(10 + p)]}
        assert node.request("POST", f"/v1/topics/t/partitions/{p}/records", records)[0] == 200
    commit = {"offsets": [{"topic": "t", "partition": p, "offset": 3} for p in range(4)]}
    status, body, _ = node.request("POST", f"/v1/groups/{group}/offsets", commit)  # no member: a tool
    assert status == 200, body
    assert committed(node, group) == {("t", p): 3 for p in range(4)}

    def reset(**fields):
        status, body, _ = node.request("POST", f"/v1/groups/{group}/offsets/reset", {"topic": "t", **fields})
        assert status == 200, body
        return {o["partition"]: o["offset"] for o in body["offsets"]}

    ends = {
        p: node.request("GET", f"/v1/topics/t/partitions/{p}/offsets")[1]["high_watermark"] for p in range(4)
    }
    assert reset(to="latest", dry_run=True) == ends
    assert committed(node, group) == {("t", p): 3 for p in range(4)}  # a dry run writes nothing
    assert reset(to="latest") == ends
    assert reset(to="earliest", partitions=[1]) == {1: 0}
    assert reset(to="offset", offset=5, partitions=[2]) == {2: 5}
    assert reset(to="timestamp", timestamp_ms=int(time.time() * 1000) + 60_000, partitions=[3]) == {
        3: ends[3]
    }
    assert committed(node, group) == {("t", 0): ends[0], ("t", 1): 0, ("t", 2): 5, ("t", 3): ends[3]}

    member = join(node, group)
    status, body, _ = node.request(
        "POST", f"/v1/groups/{group}/offsets/reset", {"topic": "t", "to": "earliest"}
    )
    assert (status, body["error_code"]) == (409, 40907), body
    status, body, _ = node.request("POST", f"/v1/groups/{group}/offsets", commit)
    assert (status, body["error_code"]) == (409, 40907), body
    status, body, _ = node.request("DELETE", f"/v1/groups/{group}")
    assert (status, body["error_code"]) == (409, 40907), body
    listed = {g["group"]: g for g in node.request("GET", "/v1/groups")[1]["groups"]}
    assert listed[group]["members"] == 1
    node.request("DELETE", f"/v1/groups/{group}/members/{member['member_id']}")
    status, body, _ = node.request("DELETE", f"/v1/groups/{group}")
    assert status == 200 and body == {"deleted": group}, body
    assert node.request("GET", f"/v1/groups/{group}")[0] == 404
    assert committed(node, group) == {}
