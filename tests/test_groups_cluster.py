"""Consumer groups on a real 3-node cluster, over the HTTP API (members simulated by the test).

- three members over 6 partitions get 2 each, disjoint, through revoke-before-assign;
- commits: the owner's are taken (acks=all), a stale epoch gets 40906 and a non-owner 40908;
- a member that stops heartbeating is removed after the session timeout and its partitions move;
- the coordinator's node (the leader of the group's __consumer_offsets partition) is killed: the new
  coordinator has every committed offset, and members that lost their membership get 40405 and join
  again;
- any node answers group requests (forwarded to the coordinator).
"""

from __future__ import annotations

import time

import xxhash

from raftka.local_cluster import LocalCluster
from tests.test_cluster import request, wait_for
from tests.test_replication_cluster import REPLICATION_ARGS, make_cluster, wait_state

GROUP_ARGS = (
    *REPLICATION_ARGS,
    "--group-heartbeat-interval-ms",
    "200",
    "--group-session-timeout-ms",
    "2000",
)
TOPIC = "orders"


class Member:
    """A group member driven by hand: it owns exactly what its last answer listed."""

    def __init__(self, cluster: LocalCluster, group: str, via: int):
        self.cluster, self.group, self.via = cluster, group, via
        self.member_id = ""
        self.epoch = 0
        self.owned: list[dict] = []

    @property
    def node(self):
        return self.cluster.nodes[self.via % len(self.cluster.nodes)]

    def join(self) -> dict:
        status, body = request(
            self.node.address, "POST", f"/v1/groups/{self.group}/members", {"topics": [TOPIC]}
        )
        assert status == 200, body
        self._take(body)
        return body

    def heartbeat(self) -> tuple[int, dict]:
        path = f"/v1/groups/{self.group}/members/{self.member_id}/heartbeat"
        status, body = request(
            self.node.address, "POST", path, {"member_epoch": self.epoch, "owned": self.owned}
        )
        if status == 200:
            self._take(body)
        return status, body

    def _take(self, body: dict) -> None:
        self.member_id, self.epoch = body["member_id"], body["member_epoch"]
        self.owned = body["assignment"]  # give up what is not listed, take what is

    def partitions(self) -> set[int]:
        return {p["partition"] for p in self.owned}

    def commit(self, offsets: dict[int, int], epoch: int | None = None) -> tuple[int, dict]:
        document = {
            "member_id": self.member_id,
            "member_epoch": self.epoch if epoch is None else epoch,
            "offsets": [{"topic": TOPIC, "partition": p, "offset": o} for p, o in offsets.items()],
        }
        return request(self.node.address, "POST", f"/v1/groups/{self.group}/offsets", document)


def settle(members: list[Member], rounds: int = 40) -> None:
    """Heartbeat everyone until the assignment covers the 6 partitions, disjoint and balanced."""
    for _ in range(rounds):
        for member in members:
            status, body = member.heartbeat()
            assert status == 200, body
        owned = [member.partitions() for member in members]
        union = set().union(*owned)
        if (
            union == set(range(6))
            and sum(len(o) for o in owned) == 6
            and max(map(len, owned)) - min(map(len, owned)) <= 1
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"no stable assignment: {[sorted(m.partitions()) for m in members]}")


def committed(node, group: str) -> dict[int, int]:
    status, body = request(node.address, "GET", f"/v1/groups/{group}/offsets")
    assert status == 200, body
    return {o["partition"]: o["offset"] for o in body["offsets"] if o["topic"] == TOPIC}


def test_a_group_shares_partitions_keeps_offsets_and_survives_coordinator_and_member_failures(tmp_path):
    cluster = make_cluster(tmp_path, extra_args=GROUP_ARGS).start()
    try:
        entry = cluster.nodes[0]
        body = {"name": TOPIC, "partitions": 6, "replication_factor": 3}
        status, created = request(entry.address, "POST", "/v1/topics", body)
        assert status == 201, created
        group = "billing"

        members = [Member(cluster, group, via=i) for i in range(3)]  # each through another node
        for member in members:
            member.join()
        settle(members)
        assert sorted(len(m.partitions()) for m in members) == [2, 2, 2]

        # Commits: owners' taken; stale epoch and non-owner refused.
        for member in members:
            status, answer = member.commit({p: 100 + p for p in member.partitions()})
            assert status == 200, answer
        assert committed(entry, group) == {p: 100 + p for p in range(6)}
        first, second = members[0], members[1]
        status, answer = first.commit({next(iter(second.partitions())): 1})
        assert (status, answer["error_code"]) == (409, 40908), answer
        assert first.epoch >= 2, first.epoch  # joined at 1, then its assignment shrank at least once
        status, answer = first.commit({next(iter(first.partitions())): 1}, epoch=first.epoch - 2)
        assert (status, answer["error_code"]) == (409, 40906), answer
        assert committed(entry, group) == {p: 100 + p for p in range(6)}

        # A member that stops heartbeating: removed after the session, its partitions move.
        silent = members.pop()
        lost = silent.partitions()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for member in members:
                assert member.heartbeat()[0] == 200
            if set().union(*(m.partitions() for m in members)) == set(range(6)):
                break
            time.sleep(0.1)
        assert set().union(*(m.partitions() for m in members)) == set(range(6)), lost
        status, answer = silent.heartbeat()
        assert (status, answer["error_code"]) == (404, 40405), answer

        # Kill the coordinator's node: the offsets survive, members join again.
        status, described = request(entry.address, "GET", "/v1/topics/__consumer_offsets")
        assert status == 200, described
        count = len(described["partitions"])
        index = xxhash.xxh3_64_intdigest(group.encode()) % count
        coordinator = described["partitions"][index]["leader"]
        cluster.node(coordinator).kill()
        survivor = next(n for n in cluster.nodes if n.node_id != coordinator)
        wait_state(
            cluster,
            "__consumer_offsets",
            index,
            "a new coordinator",
            30,
            lambda p: p["leader"] not in (coordinator, -1),
        )
        assert wait_for(lambda: committed(survivor, group) == {p: 100 + p for p in range(6)}, 30, "offsets")
        for member in members:
            member.via = survivor.node_id - 1
            status, answer = member.heartbeat()
            assert (status, answer["error_code"]) == (404, 40405), answer
            member.owned = []
            member.join()
        settle(members)
        assert sorted(len(m.partitions()) for m in members) == [3, 3]
    finally:
        cluster.stop()
