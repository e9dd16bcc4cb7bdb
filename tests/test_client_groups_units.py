"""Consumer groups, client side, with no node: the membership core (raftka/client/group_membership.py)
driven by hand, and the Consumer, Admin and CLI shells against an in-memory group API whose decisions
are the node's own pure coordinator (node/groups.py `Group`), on a clock that moves only when a test
moves it. The rest of the node's API is tests/test_client_units.py's FakeNode."""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections import defaultdict, deque
from typing import Any
from urllib.parse import unquote

import orjson
import pytest

from node.groups import Group, GroupError
from raftka import cli
from raftka.client._http import HttpResponse
from raftka.client.accumulator import TopicPartition
from raftka.client.admin import Admin
from raftka.client.blocking import SyncConsumer
from raftka.client.consumer import Consumer
from raftka.client.errors import (
    CommitFailedError,
    GroupNotEmptyError,
    NodeNotReadyError,
    NoOffsetForPartitionError,
    NotPartitionOwnerError,
    RaftkaConnectionError,
    RaftkaError,
    StaleMemberEpochError,
    UnknownGroupError,
    UnknownMemberError,
    UnknownTopicError,
    error_for_code,
    error_from_response,
)
from raftka.client.group_membership import (
    GroupMembership,
    Heartbeat,
    Join,
    MemberAnswer,
    group_path,
)
from tests.test_client_units import FakeNode, fill, ok, run

T0, T1, T2, T3 = (TopicPartition("t", p) for p in range(4))


# -- the membership core --------------------------------------------------------------------------------


def answer(
    member_id: str = "m1", epoch: int = 1, assignment=(), interval_ms: int = 1000, **fields
) -> MemberAnswer:
    return MemberAnswer(
        member_id,
        epoch,
        frozenset(assignment),
        interval_ms,
        fields.pop("session_timeout_ms", 10_000),
        fields.pop("reconciling", False),
    )


def joined(assignment=(T0, T1), **options: Any) -> GroupMembership:
    """A core that joined at time 0 and took `assignment`."""
    core = GroupMembership("g", ["t"], **options)
    join = core.next_request(0)
    assert core.on_answer(join, 0, answer(assignment=assignment))
    assert core.assigned(core.to_assign(), core.generation) == sorted(assignment)
    return core


def test_a_member_joins_at_once_then_heartbeats_on_the_interval_with_what_it_owns():
    core = GroupMembership("g", ["t", "t", "u"], instance_id="i-1", assignor="range")
    join = core.next_request(0)
    assert isinstance(join, Join)
    assert join.body == {"topics": ["t", "u"], "instance_id": "i-1", "assignor": "range"}
    assert core.next_request(0) is None  # one request in flight
    assert core.wakeup_ms() is None
    core.on_answer(join, 5, answer(assignment=[T0, T1], interval_ms=1000))
    assert core.joined
    assert core.to_assign() == [T0, T1]
    assert core.to_revoke() == []
    assert core.assigned([T0, T1], core.generation) == [T0, T1]
    assert core.wakeup_ms() == 1005
    assert core.next_request(1004) is None
    beat = core.next_request(1005)
    assert beat == Heartbeat("m1", 1, (T0, T1))
    assert beat.body == {
        "member_epoch": 1,
        "owned": [{"topic": "t", "partition": 0}, {"topic": "t", "partition": 1}],
    }


def test_a_reconciling_answer_brings_the_next_heartbeat_forward():
    core = GroupMembership("g", ["t"], reconcile_backoff_ms=100)
    join = core.next_request(0)
    core.on_answer(join, 0, answer(assignment=[], interval_ms=1000, reconciling=True))
    assert core.wakeup_ms() == 100
    beat = core.next_request(100)
    core.on_answer(beat, 100, answer(epoch=2, assignment=[T0], interval_ms=1000))
    assert core.wakeup_ms() == 1100
    assert core.to_assign() == [T0]


def test_a_revoked_partition_is_given_up_only_when_the_shell_says_so_then_the_heartbeat_goes_at_once():
    core = joined([T0, T1, T2])
    beat = core.next_request(1000)
    core.on_answer(beat, 1000, answer(epoch=2, assignment=[T0]))
    assert core.to_revoke() == [T1, T2]
    assert core.next_request(1001) is None  # the shell commits first; the partitions are still owned
    assert core.next_request(2000).owned == (T0, T1, T2)  # a heartbeat meanwhile still lists them
    core.on_answer(core._in_flight, 2000, answer(epoch=2, assignment=[T0]))
    core.revoked([T1, T2])
    assert core.to_revoke() == []
    assert core.wakeup_ms() == 0
    assert core.next_request(2001) == Heartbeat("m1", 2, (T0,))


def test_a_revoked_partition_that_comes_back_is_kept():
    core = joined([T0, T1])
    core.on_answer(core.next_request(1000), 1000, answer(epoch=2, assignment=[T0]))
    assert core.to_revoke() == [T1]
    core.on_answer(core.next_request(2000), 2000, answer(epoch=3, assignment=[T0, T1]))
    assert core.to_revoke() == []
    assert core.owned == {T0, T1}


@pytest.mark.parametrize("code", [40405, 40906])
def test_a_fenced_heartbeat_loses_everything_and_joins_again_at_once(code):
    core = joined([T0, T1])
    generation = core.generation
    beat = core.next_request(1000)
    outcome = core.on_error(beat, 1000, code, False, "removed")
    assert outcome.fenced and not outcome.report
    assert core.take_lost() == [T0, T1]
    assert core.take_lost() == []
    assert core.owned == set()
    assert not core.joined
    assert core.generation == generation + 1
    assert core.fence_reason == "removed"
    rejoin = core.next_request(1000)
    assert isinstance(rejoin, Join)
    core.on_answer(rejoin, 1001, answer(member_id="m2", assignment=[T1]))
    assert core.member_id == "m2"
    assert core.to_assign() == [T1]


def test_an_answer_to_a_request_sent_before_a_fence_is_dropped():
    core = joined([T0])
    beat = core.next_request(1000)
    core.fenced(1000, "m1", None, "a commit said 40405")
    assert not core.on_answer(beat, 1001, answer(epoch=2, assignment=[T0]))
    assert not core.joined
    assert core.on_error(beat, 1001, 40405, False) == (False, False)
    assert isinstance(core.next_request(1001), Join)


def test_partitions_taken_across_a_fence_are_refused():
    core = joined([T0])
    core.on_answer(core.next_request(1000), 1000, answer(epoch=2, assignment=[T0, T1]))
    generation = core.generation  # the shell starts looking up T1's committed offset ...
    core.on_error(core.next_request(2000), 2000, 40906, False)  # ... and the member is fenced meanwhile
    core.on_answer(core.next_request(2000), 2000, answer(member_id="m2", assignment=[T1]))
    assert core.assigned([T1], generation) == []  # the old lookup: drop it
    assert core.assigned([T1], core.generation) == [T1]


def test_partitions_no_longer_assigned_when_taken_are_refused():
    core = joined([T0])
    core.on_answer(core.next_request(1000), 1000, answer(epoch=2, assignment=[T0, T1, T2]))
    core.on_answer(core.next_request(2000), 2000, answer(epoch=3, assignment=[T0, T1]))
    assert core.assigned([T1, T2], core.generation) == [T1]


def test_no_answer_for_a_whole_session_loses_the_partitions():
    core = joined([T0])  # session 10 s, answered at 0
    for now in (1000, 2000, 4000):
        core.on_error(core.next_request(now), now, None, True)
    assert not core.maybe_expire(9999)
    assert core.maybe_expire(10_000)
    assert core.take_lost() == [T0]
    assert "no answer" in core.fence_reason
    assert not core.maybe_expire(20_000)  # not joined: nothing to expire


def test_errors_back_off_exponentially_and_only_refusals_are_reported():
    core = GroupMembership("g", ["t"], retry_backoff_ms=100, retry_backoff_max_ms=350)
    waits = []
    now = 0
    for retriable in (True, True, True, False):
        request = core.next_request(now)
        outcome = core.on_error(request, now, None if retriable else 40401, retriable)
        assert outcome.report is not retriable
        waits.append(core.wakeup_ms() - now)
        now = core.wakeup_ms()
    assert waits == [100, 200, 350, 350]
    core.on_answer(core.next_request(now), now, answer())
    core.on_error(core.next_request(now + 1000), now + 1000, None, True)
    assert core.wakeup_ms() == now + 1100  # an answer reset the backoff


def test_a_commit_fences_only_the_identity_it_used():
    core = joined([T0])
    core.on_answer(core.next_request(1000), 1000, answer(epoch=2, assignment=[T0]))
    assert not core.fenced(1000, "m0", None, "another member id")
    assert not core.fenced(1000, "m1", 1, "an older epoch: the current one may be fine")
    assert core.joined
    assert core.fenced(1000, "m1", 2, "stale")
    assert core.take_lost() == [T0]


def test_leave_stops_the_requests_and_says_whom_to_remove():
    core = joined([T0])
    assert core.leave() == ("m1", 1)
    assert core.next_request(10**9) is None
    assert core.wakeup_ms() is None
    assert GroupMembership("g", ["t"]).leave() is None  # never joined: nothing to leave


def test_bad_settings_and_answers_are_refused():
    with pytest.raises(ValueError):
        GroupMembership("g", [])
    with pytest.raises(ValueError):
        GroupMembership("g", ["t"], retry_backoff_ms=100, retry_backoff_max_ms=10)
    with pytest.raises(KeyError):
        MemberAnswer.from_json({"member_epoch": 1, "assignment": []})
    with pytest.raises(ValueError):
        MemberAnswer.from_json({"member_id": "", "member_epoch": 1, "assignment": []})
    parsed = MemberAnswer.from_json(
        {
            "member_id": "m",
            "member_epoch": 3,
            "assignment": [{"topic": "t", "partition": 2}],
            "heartbeat_interval_ms": 500,
            "session_timeout_ms": 6000,
            "reconciling": True,
        }
    )
    assert parsed == MemberAnswer("m", 3, frozenset([T2]), 500, 6000, True)


def test_group_paths_escape_their_parts():
    assert (
        group_path("a b/c", "members", "m/1", "heartbeat") == "/v1/groups/a%20b%2Fc/members/m%2F1/heartbeat"
    )


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (40405, UnknownMemberError),
        (40406, UnknownGroupError),
        (40906, StaleMemberEpochError),
        (40907, GroupNotEmptyError),
        (40908, NotPartitionOwnerError),
    ],
)
def test_group_error_codes_map_to_classes(code, cls):
    error = error_from_response(code // 100, orjson.dumps({"error_code": code, "message": "m"}))
    assert type(error) is cls
    assert not error.retriable


# -- the group API, in memory ---------------------------------------------------------------------------


class FakeGroupNode(FakeNode):
    """FakeNode plus the group routes, deciding with node/groups.py's Group on a clock of its own
    (`now_ms`, moved only by tests: sessions never lapse by themselves). `group_faults[action]` holds
    errors the next requests of that action raise ("join", "heartbeat", "leave", "commit",
    "fetch_offsets"). `commits` records every accepted commit as (group, member_id, {tp: offset})."""

    def __init__(
        self,
        topics: dict[str, int] | None = None,
        *,
        heartbeat_interval_ms: int = 20,
        session_timeout_ms: int = 60_000,
    ):
        super().__init__(topics)
        self.now_ms = 0
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.session_timeout_ms = session_timeout_ms
        self.groups: dict[str, Group] = {}
        self.offsets: dict[str, dict[TopicPartition, int]] = {}
        self.group_faults: dict[str, deque[RaftkaError]] = defaultdict(deque)
        self.commits: list[tuple[str, str | None, dict[TopicPartition, int]]] = []
        self.group_log: list[tuple[float, str, str, dict | None]] = []  # (loop time, method, path, body)
        self.say_reconciling = True  # False: answers never ask for an early heartbeat
        self.hold_next_offsets_fetch: asyncio.Event | None = None  # the next GET .../offsets waits for it
        self._member_ids = itertools.count(1)

    async def request(self, method: str, address: str, path: str, **kwargs: Any) -> HttpResponse:
        if not path.startswith("/v1/groups"):
            response = await super().request(method, address, path, **kwargs)
            if path.endswith("/records") and not response.body:  # a long poll, as the node's
                await asyncio.sleep(int(kwargs["params"]["max_wait_ms"]) / 1000)
            return response
        self.requests.append((method, path, kwargs))
        hold = self.hold_next_offsets_fetch
        if hold is not None and method == "GET" and path.endswith("/offsets"):
            self.hold_next_offsets_fetch = None
            await hold.wait()
        self.group_log.append((asyncio.get_running_loop().time(), method, path, kwargs.get("json")))
        parts = [unquote(p) for p in path.split("/")[3:]]
        try:
            return self._route(method, parts, kwargs.get("json") or {}, kwargs.get("params") or {})
        except GroupError as error:
            raise error_for_code(error.error_code, error.message) from None

    def _fault(self, action: str) -> None:
        if self.group_faults[action]:
            raise self.group_faults[action].popleft()

    def _route(self, method: str, parts: list[str], body: dict, params: dict) -> HttpResponse:
        if not parts:
            return ok(
                {"groups": [self._listing(name) for name in sorted(set(self.groups) | set(self.offsets))]}
            )
        name, rest = parts[0], parts[1:]
        group = self.groups.get(name)
        if rest == [] and method == "GET":
            return ok(self._describe(name))
        if rest == [] and method == "DELETE":
            self._known(name)
            if group is not None and not group.is_empty:
                raise GroupError(40907, f"group {name!r} has members")
            self.groups.pop(name, None)
            self.offsets.pop(name, None)
            return ok({"deleted": name})
        if rest == ["members"]:
            self._fault("join")
            missing = [t for t in body["topics"] if t not in self.topics]
            if missing:
                raise GroupError(40401, f"unknown topic(s): {', '.join(missing)}")
            group = self.groups.setdefault(
                name,
                Group(
                    name,
                    session_timeout_ms=self.session_timeout_ms,
                    heartbeat_interval_ms=self.heartbeat_interval_ms,
                    rebalance_timeout_ms=self.session_timeout_ms,
                ),
            )
            member_id = f"member-{next(self._member_ids)}"
            got = group.join(
                self.now_ms,
                member_id,
                body["topics"],
                body.get("instance_id"),
                body.get("assignor"),
                self.topics.__getitem__,
            )
            return ok(answer_json(got, self.say_reconciling))
        if len(rest) == 3 and rest[2] == "heartbeat":
            self._fault("heartbeat")
            owned = [TopicPartition(o["topic"], o["partition"]) for o in body["owned"]]
            got = self._member_group(name, rest[1]).heartbeat(
                self.now_ms, rest[1], body["member_epoch"], owned, self.topics.__getitem__
            )
            return ok(answer_json(got, self.say_reconciling))
        if len(rest) == 2 and rest[0] == "members" and method == "DELETE":
            self._fault("leave")
            epoch = int(params.get("member_epoch", -1))
            self._member_group(name, rest[1]).leave(self.now_ms, rest[1], None if epoch < 0 else epoch)
            return ok({})
        if rest == ["offsets"] and method == "POST":
            self._fault("commit")
            offsets = {TopicPartition(o["topic"], o["partition"]): o["offset"] for o in body["offsets"]}
            member_id = body.get("member_id")
            if member_id is None:
                if group is not None and not group.is_empty:
                    raise GroupError(40907, f"group {name!r} has members")
            else:
                self._member_group(name, member_id).check_commit(member_id, body["member_epoch"], offsets)
            self.offsets.setdefault(name, {}).update(offsets)
            self.commits.append((name, member_id, offsets))
            return ok({"offsets": body["offsets"]})
        if rest == ["offsets"] and method == "GET":
            self._fault("fetch_offsets")
            committed = self.offsets.get(name, {})
            return ok(
                {
                    "group": name,
                    "offsets": [
                        {"topic": t, "partition": p, "offset": o, "metadata": "", "commit_timestamp_ms": 0}
                        for (t, p), o in sorted(committed.items())
                    ],
                }
            )
        if rest == ["offsets", "reset"]:
            return ok(self._reset(name, body))
        raise GroupError(40404, f"no such path: {method} {'/'.join(parts)}")

    def _member_group(self, name: str, member_id: str) -> Group:
        group = self.groups.get(name)
        if group is None:
            raise GroupError(40405, f"member {member_id} is not in group {name!r}")
        return group

    def _known(self, name: str) -> None:
        if name not in self.groups and name not in self.offsets:
            raise GroupError(40406, f"group {name!r} has no members and no committed offsets")

    def _listing(self, name: str) -> dict:
        group = self.groups.get(name)
        return {
            "group": name,
            "state": "empty" if group is None else group.state,
            "members": 0 if group is None else len(group.members),
        }

    def _describe(self, name: str) -> dict:
        self._known(name)
        group = self.groups.get(name)
        committed = self.offsets.get(name, {})
        members = [] if group is None else sorted(group.members.values(), key=lambda m: m.member_id)
        subscribed = set(committed) | {
            TopicPartition(t, p) for m in members for t in m.topics for p in range(self.topics[t])
        }
        rows = []
        for tp in sorted(subscribed):
            end = len(self.logs.get(tp, []))
            offset = committed.get(tp)
            lag = None if offset is None else max(0, end - offset)
            rows.append(
                {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "committed_offset": offset,
                    "log_end_offset": end,
                    "lag": lag,
                }
            )
        return {
            "group": name,
            "state": self._listing(name)["state"],
            "assignor": None if group is None else group.assignor,
            "group_epoch": 0 if group is None else group.group_epoch,
            "members": [
                {
                    "member_id": m.member_id,
                    "instance_id": m.instance_id,
                    "member_epoch": m.epoch,
                    "topics": list(m.topics),
                    "assignment": [{"topic": t, "partition": p} for t, p in sorted(m.answer)],
                    "target": [{"topic": t, "partition": p} for t, p in sorted(m.target)],
                }
                for m in members
            ],
            "offsets": rows,
            "total_lag": sum(r["lag"] or 0 for r in rows),
        }

    def _reset(self, name: str, body: dict) -> dict:
        group = self.groups.get(name)
        if group is not None and not group.is_empty:
            raise GroupError(40907, f"group {name!r} has members")
        topic = body["topic"]
        if topic not in self.topics:
            raise GroupError(40401, f"unknown topic {topic!r}")
        out = []
        for partition in sorted(set(body.get("partitions", range(self.topics[topic])))):
            end = len(self.logs.get((topic, partition), []))
            target = {"earliest": 0, "latest": end}.get(body["to"])
            if body["to"] == "offset":
                target = max(0, min(body["offset"], end))
            elif body["to"] == "timestamp":  # fill() stamps record i with 1000 + i
                log = self.logs.get((topic, partition), [])
                target = next((i for i, r in enumerate(log) if r[2] >= body["timestamp_ms"]), end)
            out.append({"topic": topic, "partition": partition, "offset": target})
        if not body.get("dry_run"):
            self.offsets.setdefault(name, {}).update(
                {TopicPartition(o["topic"], o["partition"]): o["offset"] for o in out}
            )
        return {"offsets": out, "dry_run": bool(body.get("dry_run"))}

    # -- what tests do to the coordinator --

    def join_directly(self, name: str = "g", topics: tuple[str, ...] = ("t",)) -> str:
        """A member that joined without a consumer (it never heartbeats: the clock does not move)."""
        self._route("POST", [name, "members"], {"topics": list(topics)}, {})
        return self.members(name)[-1]

    def members(self, name: str = "g") -> list[str]:
        group = self.groups.get(name)
        return [] if group is None else sorted(group.members)

    def remove(self, member_id: str, name: str = "g") -> None:
        """The coordinator forgets a member (its session lapsed, or the coordinator moved)."""
        self.groups[name].leave(self.now_ms, member_id)

    def forget(self, member_id: str, name: str = "g") -> None:
        """remove() if the coordinator still has the member."""
        if member_id in self.members(name):
            self.remove(member_id, name)

    def outdate_epoch(self, member_id: str, name: str = "g") -> None:
        """The member's epoch moves on twice without it hearing: its own is now stale (40906)."""
        member = self.groups[name].members[member_id]
        member.previous_epoch, member.epoch = member.epoch + 1, member.epoch + 2

    def committed(self, name: str = "g") -> dict[tuple[str, int], int]:
        return {tuple(tp): o for tp, o in self.offsets.get(name, {}).items()}


def answer_json(got, say_reconciling: bool = True) -> dict:
    return {
        "member_id": got.member_id,
        "member_epoch": got.member_epoch,
        "assignment": [{"topic": t, "partition": p} for t, p in got.assignment],
        "heartbeat_interval_ms": got.heartbeat_interval_ms,
        "session_timeout_ms": got.session_timeout_ms,
        "reconciling": got.reconciling and say_reconciling,
    }


def member(node: FakeGroupNode, **options: Any) -> Consumer:
    options.setdefault("group", "g")
    options.setdefault("topics", ["t"])
    options.setdefault("fetch_max_wait_ms", 10)
    options.setdefault("retry_backoff_ms", 5)
    options.setdefault("auto_offset_reset", "earliest")
    options.setdefault("auto_commit_interval_ms", 60_000)  # tests that want it set it lower
    return Consumer("n1:1", transport=node, **options)  # type: ignore[arg-type]


def filled(topics: dict[str, int], count: int, **options: Any) -> FakeGroupNode:
    node = FakeGroupNode(topics, **options)
    for topic, partitions in topics.items():
        for partition in range(partitions):
            fill(node, topic, partition, count)
    return node


def offsets_of(records) -> dict[tuple[str, int], list[int]]:
    out: dict[tuple[str, int], list[int]] = defaultdict(list)
    for r in records:
        out[(r.topic, r.partition)].append(r.offset)
    return dict(out)


async def poll_until(consumer: Consumer, done, rounds: int = 200, timeout_ms: int = 20) -> list:
    """Poll until done(records so far) holds; fails after `rounds` polls."""
    records: list = []
    for _ in range(rounds):
        records += await consumer.poll(timeout_ms)
        if done(records):
            return records
    raise AssertionError(f"not done after {rounds} polls: {offsets_of(records)}")


def rejoined_then(c: Consumer, node: FakeGroupNode, old_id: str, count: int):
    """A poll_until test: `count` records, and once `c` joined again under a new member id the
    coordinator forgets the old one (a fenced member holds its partitions until its session lapses)."""

    def done(records: list) -> bool:
        if c.member_id not in (None, old_id):
            node.forget(old_id)
        return len(records) == count

    return done


def commit_requests(node: FakeGroupNode) -> list[dict]:
    return [
        kw["json"] for method, path, kw in node.requests if method == "POST" and path.endswith("/offsets")
    ]


# -- joining and reading ----------------------------------------------------------------------------------


def test_a_member_joins_on_its_first_poll_and_starts_at_committed_offsets_else_the_reset_policy():
    node = filled({"t": 3}, 5)
    node.offsets["g"] = {T0: 3}

    async def scenario():
        async with member(node, value_deserializer="str") as c:
            records = await poll_until(c, lambda rs: len(rs) == 2 + 5 + 5)
            return records, c.assignment(), c.member_id, await c.committed(("t", 0))

    records, assignment, member_id, committed = run(scenario())
    assert sorted(assignment) == [T0, T1, T2]
    assert member_id == "member-1"
    assert offsets_of(records) == {("t", 0): [3, 4], ("t", 1): [0, 1, 2, 3, 4], ("t", 2): [0, 1, 2, 3, 4]}
    assert committed == 3
    assert node.members() == []  # close left the group
    assert node.committed() == {("t", 0): 5, ("t", 1): 5, ("t", 2): 5}  # and committed first


def test_the_latest_policy_starts_uncommitted_partitions_at_the_end():
    node = filled({"t": 2}, 4)
    node.offsets["g"] = {T1: 1}

    async def scenario():
        async with member(node, auto_offset_reset="latest") as c:
            assert sorted(await c.join()) == [T0, T1]
            first = await poll_until(c, lambda rs: len(rs) == 3)
            fill(node, "t", 0, 2)
            return first, await poll_until(c, lambda rs: len(rs) == 2)

    first, later = run(scenario())
    assert offsets_of(first) == {("t", 1): [1, 2, 3]}
    assert offsets_of(later) == {("t", 0): [4, 5]}


def test_the_error_policy_raises_for_a_partition_without_a_committed_offset():
    node = filled({"t": 1}, 2)

    async def scenario():
        async with member(node, auto_offset_reset="error") as c:
            with pytest.raises(NoOffsetForPartitionError):
                await poll_until(c, lambda rs: False, rounds=50)

    run(scenario())


def test_a_join_refused_for_good_is_raised_by_poll_and_join():
    node = FakeGroupNode({"t": 1})

    async def scenario():
        async with member(node, topics=["missing"]) as c:
            with pytest.raises(UnknownTopicError, match="missing"):
                await c.join(timeout_ms=2000)
            with pytest.raises(UnknownTopicError):
                await poll_until(c, lambda rs: False, rounds=200)

    run(scenario())
    assert node.members() == []


def test_two_members_share_the_partitions_and_a_revoked_one_is_committed_before_it_moves():
    node = filled({"t": 4}, 5)
    revoked: list = []
    assigned2: list = []

    async def scenario():
        async with member(node, on_revoked=revoked.append) as c1:
            first = await poll_until(c1, lambda rs: len(rs) == 20)
            async with member(node, on_assigned=assigned2.extend) as c2:
                seen2: list = []
                for _ in range(300):
                    first += await c1.poll(10)
                    seen2 += await c2.poll(10)
                    if len(c1.assignment()) == 2 and len(c2.assignment()) == 2:
                        break
                owned1, owned2 = set(c1.assignment()), set(c2.assignment())
                for partition in range(4):
                    fill(node, "t", partition, 1)
                new1, new2 = [], []
                for _ in range(300):
                    new1 += await c1.poll(10)
                    new2 += await c2.poll(10)
                    if len(new1) + len(new2) == 4:
                        break
                return first, seen2, owned1, owned2, new1, new2

    first, seen2, owned1, owned2, new1, new2 = run(scenario())
    assert owned1 | owned2 == {T0, T1, T2, T3}
    assert not owned1 & owned2
    assert len(first) == 20  # c1 read everything before c2 came, and nothing twice
    assert seen2 == []  # c2 started where c1 committed: no record is read twice
    assert revoked[0] == sorted(owned2)
    assert sorted(assigned2) == sorted(owned2)
    assert {(r.topic, r.partition) for r in new1} == set(owned1)  # each reads only its own partitions
    assert {(r.topic, r.partition) for r in new2} == set(owned2)
    assert all(r.offset == 5 for r in new1 + new2)
    # c1 committed the moved partitions before the heartbeat that gave them up.
    c1_id = next(m for _, m, offsets in node.commits if set(offsets) == owned2)
    order = [
        (method, path, kw.get("json"))
        for method, path, kw in node.requests
        if c1_id in path or (kw.get("json") or {}).get("member_id") == c1_id
    ]
    commit_at = next(i for i, (_, path, body) in enumerate(order) if path.endswith("/offsets"))
    gave_up_at = next(
        i
        for i, (_, path, body) in enumerate(order)
        if path.endswith("/heartbeat") and len(body["owned"]) == 2
    )
    assert commit_at < gave_up_at
    assert node.commits[0][2] == dict.fromkeys(owned2, 5)


@pytest.mark.parametrize("fence", ["remove", "outdate_epoch"])
def test_a_fenced_member_drops_its_partitions_without_committing_and_joins_again(fence):
    node = filled({"t": 1}, 5)
    lost: list = []

    async def scenario():
        async with member(node, on_lost=lost.append) as c:
            first = await poll_until(c, lambda rs: len(rs) == 5)
            old_id = c.member_id
            getattr(node, fence)(old_id)
            again = await poll_until(c, rejoined_then(c, node, old_id, 5))
            commits_before_close = list(node.commits)
            return first, again, old_id, c.member_id, commits_before_close

    _, again, old_id, new_id, commits = run(scenario())
    assert lost == [[T0]]
    assert commits == []  # nothing was committed for the lost partition
    assert new_id != old_id
    assert [r.offset for r in again] == [0, 1, 2, 3, 4]  # delivered again: nothing was committed
    assert node.members() == []


def test_a_fence_heard_while_committing_a_revocation_loses_the_partitions_instead():
    node = filled({"t": 2}, 3)
    events: list = []

    async def scenario():
        async with member(
            node,
            on_revoked=lambda tps: events.append(("revoked", tps)),
            on_lost=lambda tps: events.append(("lost", tps)),
            on_assigned=lambda tps: events.append(("assigned", tps)),
        ) as c1:
            await poll_until(c1, lambda rs: len(rs) == 6)
            old_id = c1.member_id
            node.group_faults["commit"].append(UnknownMemberError(40405, "gone"))
            async with member(node) as c2:
                for _ in range(300):
                    await c1.poll(10)
                    await c2.poll(10)
                    if c1.member_id not in (None, old_id):
                        node.forget(old_id)
                    if len(c1.assignment()) == 1 and len(c2.assignment()) == 1:
                        break
                return list(events), old_id, c1.member_id

    seen, old_id, new_id = run(scenario())
    assert seen[0] == ("assigned", [T0, T1])
    assert seen[1] == ("lost", [T0, T1])  # not "revoked": the revocation's commit heard of the fence
    assert seen[2][0] == "assigned"
    assert len(seen) == 3
    assert new_id != old_id
    assert not any(member_id == old_id for _, member_id, _ in node.commits)


def test_a_partition_looked_up_before_a_fence_is_not_taken_after_it():
    node = FakeGroupNode({"t": 1})

    async def scenario():
        held = node.hold_next_offsets_fetch = asyncio.Event()
        async with member(node) as c1, member(node) as c2:
            joining = asyncio.ensure_future(c1.join())  # takes t-0: its offset lookup is held
            for _ in range(100):
                if node.members():
                    break
                await asyncio.sleep(0.01)
            old_id = node.members()[0]
            node.remove(old_id)  # c1 is fenced while it looks t-0 up ...
            assert await c2.join() == [T0]  # ... and t-0 goes to c2
            for _ in range(100):
                if c1.member_id not in (None, old_id):
                    break
                await asyncio.sleep(0.01)
            held.set()  # the stale lookup answers now
            await joining
            await c1.poll(50)
            return c1.assignment(), c2.assignment()

    owned1, owned2 = run(scenario())
    assert owned1 == []
    assert owned2 == [T0]


def test_retriable_heartbeat_errors_keep_the_partitions():
    node = filled({"t": 1}, 2)
    lost: list = []

    async def scenario():
        async with member(node, on_lost=lost.append) as c:
            await poll_until(c, lambda rs: len(rs) == 2)
            node.group_faults["heartbeat"].extend(
                [NodeNotReadyError(50302, "loading"), RaftkaConnectionError("n1:1", "refused")]
            )
            member_id = c.member_id
            fill(node, "t", 0, 1)
            more = await poll_until(c, lambda rs: len(rs) == 1)
            for _ in range(100):
                if not node.group_faults["heartbeat"]:
                    break
                await c.poll(10)
            await poll_until(c, lambda rs: True)
            return member_id, c.member_id, more

    before, after, more = run(scenario())
    assert not node.group_faults["heartbeat"]
    assert before == after
    assert lost == []
    assert [r.offset for r in more] == [2]


def test_poll_applies_a_rebalance_while_it_waits():
    node = filled({"t": 2}, 0)

    async def scenario():
        async with member(node, fetch_max_wait_ms=5000) as c1, member(node) as c2:
            await c1.join()
            assert sorted(c1.assignment()) == [T0, T1]
            await c1.poll(10)  # its fetches are out: long polls of 5 s
            await c2.join()
            # c1 waits in a long poll with nothing to read: the rebalance must not wait for it to end.
            poll1 = asyncio.ensure_future(c1.poll(5000))
            for _ in range(200):
                await c2.poll(10)
                if c2.assignment():
                    break
            still_polling = not poll1.done()
            poll1.cancel()
            return still_polling, c1.assignment(), c2.assignment()

    still_polling, owned1, owned2 = run(scenario())
    assert still_polling
    assert len(owned1) == 1
    assert len(owned2) == 1


def test_a_member_heartbeats_at_once_after_giving_a_partition_up():
    node = filled({"t": 2}, 1, heartbeat_interval_ms=400)
    node.say_reconciling = False  # so that only the revocation can bring c1's heartbeat forward

    async def scenario():
        async with member(node) as c1:
            await c1.join()
            async with member(node) as c2:
                for _ in range(300):
                    await c1.poll(10)
                    await c2.poll(10)
                    if len(c1.assignment()) == 1 and len(c2.assignment()) == 1:
                        break
                return c1.member_id

    c1_id = run(scenario())
    c1_log = [
        entry for entry in node.group_log if c1_id in entry[2] or (entry[3] or {}).get("member_id") == c1_id
    ]
    committed_at = next(at for at, method, path, _ in c1_log if path.endswith("/offsets"))
    gave_up_at = next(
        at for at, _, path, body in c1_log if path.endswith("/heartbeat") and len(body["owned"]) == 1
    )
    assert gave_up_at - committed_at < 0.2  # not a whole 400 ms interval later


# -- commits ------------------------------------------------------------------------------------------------


def test_commit_commits_the_positions_or_the_given_offsets():
    node = filled({"t": 2}, 5)

    async def scenario():
        async with member(node, auto_commit=False) as c:
            await c.join()
            records = await c.poll(1000, max_records=3)
            positions = {tp: await c.position(tp) for tp in c.assignment()}
            everything = await c.commit()
            chosen = await c.commit({("t", 1): 1})
            return records, positions, everything, chosen

    records, positions, everything, chosen = run(scenario())
    assert len(records) == 3
    assert everything == positions
    assert chosen == {T1: 1}
    assert node.committed() == {("t", 0): positions[T0], ("t", 1): 1}  # auto_commit=False: no commit on close
    assert node.members() == []


def test_commit_of_a_partition_the_member_does_not_own_fails():
    node = filled({"t": 1, "u": 1}, 1)

    async def scenario():
        async with member(node, auto_commit=False) as c:
            await c.join()
            with pytest.raises(CommitFailedError) as caught:
                await c.commit({("u", 0): 1})
            return caught.value, c.member_id

    error, member_id = run(scenario())
    assert error.error_code == 40908
    assert isinstance(error.__cause__, NotPartitionOwnerError)
    assert "does not own u-0" in error.message
    assert member_id is not None  # not a fence: the member keeps going


@pytest.mark.parametrize(("fence", "code"), [("remove", 40405), ("outdate_epoch", 40906)])
def test_a_fenced_commit_fails_and_the_member_joins_again(fence, code):
    # Heartbeats far apart, so the commit, not a heartbeat, is the first to hear of the fence.
    node = filled({"t": 1}, 4, heartbeat_interval_ms=60_000)
    lost: list = []

    async def scenario():
        async with member(node, auto_commit=False, on_lost=lost.append) as c:
            first = await poll_until(c, lambda rs: len(rs) == 4)
            getattr(node, fence)(c.member_id)
            old_id = c.member_id
            with pytest.raises(CommitFailedError) as caught:
                await c.commit()
            node.groups["g"].heartbeat_interval_ms = 20  # from the rejoin on
            again = await poll_until(c, rejoined_then(c, node, old_id, 4))
            return first, caught.value, again

    _, error, again = run(scenario())
    assert error.error_code == code
    assert "joins the group again" in error.message
    assert lost == [[T0]]
    assert [r.offset for r in again] == [0, 1, 2, 3]
    assert node.commits == []


def test_retriable_commit_errors_are_retried():
    node = filled({"t": 1}, 2)

    async def scenario():
        async with member(node, auto_commit=False) as c:
            await poll_until(c, lambda rs: len(rs) == 2)
            node.group_faults["commit"].extend(
                [NodeNotReadyError(50302, "loading"), NodeNotReadyError(50302, "x")]
            )
            return await c.commit()

    assert run(scenario()) == {T0: 2}
    assert node.committed() == {("t", 0): 2}


def test_auto_commit_commits_what_earlier_polls_returned_and_close_commits_the_rest():
    node = filled({"t": 1}, 10)

    async def scenario():
        async with member(node, auto_commit_interval_ms=50) as c:
            first = await poll_until(
                c, lambda rs: len(rs) >= 1, timeout_ms=1000
            )  # joins, starts the interval
            assert node.commits == []
            await asyncio.sleep(0.08)
            second = await c.poll(1000, max_records=2)  # on entry: commits what `first` returned
            for _ in range(100):
                if node.commits:
                    break
                await asyncio.sleep(0.01)
            return first, second, dict(node.committed())

    first, second, committed_by_auto = run(scenario())
    assert committed_by_auto == {("t", 0): len(first)}
    assert node.committed() == {("t", 0): len(first) + len(second)}  # close committed the rest
    assert node.members() == []


def test_close_commits_reports_the_partitions_as_revoked_and_leaves():
    node = filled({"t": 2}, 3)
    revoked: list = []

    async def scenario():
        c = member(node, on_revoked=revoked.append)
        await poll_until(c, lambda rs: len(rs) == 6)
        assert node.members() == [c.member_id]
        await c.close()
        await c.close()  # twice is fine

    run(scenario())
    assert node.committed() == {("t", 0): 3, ("t", 1): 3}
    assert revoked == [[T0, T1]]
    assert node.members() == []
    leaves = [(m, p) for m, p, _ in node.requests if m == "DELETE"]
    assert len(leaves) == 1
    assert leaves[0][1] == "/v1/groups/g/members/member-1"


def test_close_without_having_joined_sends_nothing():
    node = FakeGroupNode({"t": 1})

    async def scenario():
        async with member(node):
            pass

    run(scenario())
    assert [r for r in node.requests if "/groups" in r[1]] == []


def test_the_blocking_consumer_joins_commits_and_leaves():
    node = filled({"t": 1}, 3)
    with SyncConsumer(
        "n1:1", transport=node, group="g", topics=["t"], auto_commit=False, auto_offset_reset="earliest"
    ) as c:
        assert c.join() == [T0]
        assert c.member_id == node.members()[0]
        assert c.subscription() == ["t"]
        records = []
        for _ in range(100):
            records += c.poll(50)
            if len(records) == 3:
                break
        assert c.commit() == {T0: 3}
        assert c.committed(("t", 0)) == 3
    assert node.members() == []


# -- without a group: as before --------------------------------------------------------------------------


def test_a_consumer_without_a_group_works_as_before_and_cannot_commit():
    node = filled({"t": 1}, 3)

    async def scenario():
        async with Consumer("n1:1", transport=node, auto_offset_reset="earliest", fetch_max_wait_ms=10) as c:  # type: ignore[arg-type]
            c.assign([("t", 0)])
            records = await poll_until(c, lambda rs: len(rs) == 3)
            assert c.member_id is None
            assert c.subscription() == []
            with pytest.raises(RaftkaError, match="not in a group"):
                await c.commit()
            with pytest.raises(RaftkaError, match="not in a group"):
                await c.join()
            return records

    assert [r.offset for r in run(scenario())] == [0, 1, 2]
    assert [r for r in node.requests if "/groups" in r[1]] == []


def test_group_options_are_checked():
    node = FakeGroupNode()
    with pytest.raises(ValueError, match="group="):
        Consumer("n1:1", transport=node, topics=["t"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="topics="):
        Consumer("n1:1", transport=node, group="g")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="auto_commit_interval_ms"):
        member(node, auto_commit_interval_ms=0)
    c = member(node, topics="t")
    assert c.subscription() == ["t"]
    with pytest.raises(ValueError, match="the group assigns"):
        c.assign([("t", 0)])


# -- Admin --------------------------------------------------------------------------------------------------


def test_admin_lists_describes_resets_and_deletes_groups():
    node = filled({"t": 2}, 4)
    node.offsets["old"] = {T0: 1}

    async def scenario():
        admin = Admin("n1:1", transport=node)  # type: ignore[arg-type]
        async with member(node, auto_commit=False) as c:
            await c.join()
            await c.commit({("t", 0): 3})
            listing = await admin.list_groups()
            description = await admin.describe_group("g")
            offsets = await admin.group_offsets("g")
            with pytest.raises(GroupNotEmptyError):
                await admin.delete_group("g")
            with pytest.raises(GroupNotEmptyError):
                await admin.reset_group_offsets("g", "t", to="earliest")
            member_id = c.member_id
        dry = await admin.reset_group_offsets("g", "t", to="latest", dry_run=True)
        unchanged = node.committed()
        exact = await admin.reset_group_offsets("g", "t", to="offset", offset=2, partitions=[1])
        by_time = await admin.reset_group_offsets("g", "t", to="timestamp", timestamp_ms=1003, partitions=[0])
        with pytest.raises(ValueError):
            await admin.reset_group_offsets("g", "t", to="offset")
        with pytest.raises(ValueError):
            await admin.reset_group_offsets("g", "t", to="middle")
        await admin.delete_group("g")
        with pytest.raises(UnknownGroupError):
            await admin.describe_group("g")
        with pytest.raises(UnknownGroupError):
            await admin.delete_group("g")
        return listing, description, offsets, member_id, dry, unchanged, exact, by_time

    listing, description, offsets, member_id, dry, unchanged, exact, by_time = run(scenario())
    assert [(g.group, g.state, g.members) for g in listing] == [("g", "stable", 1), ("old", "empty", 0)]
    assert description.state == "stable"
    assert description.assignor == "uniform"
    assert [m.member_id for m in description.members] == [member_id]
    assert description.members[0].assignment == (T0, T1)
    assert description.owner_of() == {T0: member_id, T1: member_id}
    assert [(o.partition, o.committed_offset, o.log_end_offset, o.lag) for o in description.offsets] == [
        (0, 3, 4, 1),
        (1, None, 4, None),
    ]
    assert description.total_lag == 1
    assert [(o.topic, o.partition, o.offset) for o in offsets] == [("t", 0, 3)]
    assert dry == {T0: 4, T1: 4}
    assert unchanged == {("t", 0): 3}
    assert exact == {T1: 2}
    assert by_time == {T0: 3}
    assert "g" not in node.offsets


# -- the CLI ------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_cli(monkeypatch, capsysbinary):
    """Runs raftka.cli.main against a FakeGroupNode: (node, call(*argv) -> (code, stdout, stderr))."""
    node = filled({"t": 2}, 3)
    monkeypatch.setattr(cli, "Admin", functools.partial(Admin, transport=node))
    monkeypatch.setattr(cli, "Consumer", functools.partial(Consumer, transport=node))

    def call(*argv: str) -> tuple[int, str, str]:
        capsysbinary.readouterr()
        try:
            code = cli.main(["-b", "n1:1", *argv])
        except SystemExit as exc:
            code = exc.code
        out = capsysbinary.readouterr()
        return code, out.out.decode(), out.err.decode()

    return node, call


def test_cli_consume_with_a_group_continues_where_the_group_committed(fake_cli):
    node, call = fake_cli
    code, out, _ = call("consume", "t", "--group", "g", "--from-beginning", "-n", "4")
    assert code == 0
    assert len(out.splitlines()) == 4
    first = node.committed()
    assert sum(first.values()) == 4  # committed on exit: exactly what was printed
    assert node.members() == []
    code, out, _ = call("consume", "t", "-g", "g", "-n", "2", "--format", "json")
    assert code == 0
    printed = [orjson.loads(line) for line in out.splitlines()]
    assert len(printed) == 2
    for record in printed:  # each continues at its partition's committed offset
        assert record["offset"] >= first.get(("t", record["partition"]), 0)
    assert sum(node.committed().values()) == 6


def test_cli_consume_with_a_group_refuses_partition_and_offset(fake_cli):
    node, call = fake_cli
    for extra in (["--offset", "1"], ["--partition", "0"]):
        code, _, err = call("consume", "t", "--group", "g", *extra)
        assert code == 1
        assert err.startswith("raftka: error: --offset and --partition do not go with --group")
        assert len(err.splitlines()) == 1
    code, _, err = call("consume", "missing", "--group", "g", "-n", "1")
    assert code == 1
    assert "unknown topic" in err and len(err.splitlines()) == 1
    assert node.groups == {}


def test_cli_group_list_describe_and_delete(fake_cli):
    _, call = fake_cli
    code, _, err = call("group", "list")
    assert (code, err) == (0, "no groups\n")
    assert call("consume", "t", "--group", "g", "--from-beginning", "-n", "6")[0] == 0
    code, out, _ = call("group", "list")
    assert code == 0
    assert out.splitlines() == ["GROUP  STATE  MEMBERS", "g      empty  0"]
    code, out, _ = call("group", "list", "--format", "json")
    assert orjson.loads(out) == {"groups": [{"group": "g", "state": "empty", "members": 0}]}
    code, out, _ = call("group", "describe", "g")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("Group: g  state: empty")
    assert lines[2].split() == ["TOPIC", "PARTITION", "COMMITTED_OFFSET", "LOG_END_OFFSET", "LAG", "MEMBER"]
    assert lines[3].split() == ["t", "0", "3", "3", "0", "-"]
    code, out, _ = call("group", "describe", "g", "--format", "json")
    assert orjson.loads(out)["offsets"][1] == {
        "topic": "t",
        "partition": 1,
        "committed_offset": 3,
        "log_end_offset": 3,
        "lag": 0,
    }
    code, out, _ = call("group", "delete", "g")
    assert (code, out) == (0, "deleted group g\n")
    code, out, err = call("group", "describe", "g")
    assert code == 1
    assert err == "raftka: error: group 'g' has no members and no committed offsets\n"


def test_cli_group_describe_shows_members_and_owners(fake_cli):
    node, call = fake_cli
    member_id = node.join_directly()
    code, out, _ = call("group", "describe", "g")
    assert code == 0
    assert (
        out.splitlines()[0]
        == "Group: g  state: stable  assignor: uniform  epoch: 1  members: 1  total lag: 0"
    )
    lines = [line.split() for line in out.splitlines()]
    assert ["t", "0", "-", "3", "-", member_id] in lines
    assert lines[-2] == ["MEMBER_ID", "INSTANCE_ID", "EPOCH", "TOPICS", "ASSIGNMENT", "TARGET"]
    assert lines[-1] == [member_id, "-", "1", "t", "t-0,t-1", "t-0,t-1"]


def test_cli_group_delete_and_reset_fail_while_the_group_has_members(fake_cli):
    node, call = fake_cli
    node.join_directly()
    code, _, err = call("group", "delete", "g")
    assert code == 1
    assert err.startswith("raftka: error: group 'g' has members")
    code, _, err = call("group", "reset-offsets", "g", "--topic", "t", "--to-earliest")
    assert code == 1
    assert err.startswith("raftka: error: group 'g' has members")


def test_cli_group_reset_offsets(fake_cli):
    node, call = fake_cli
    node.offsets["g"] = {T0: 1, T1: 1}
    code, out, err = call("group", "reset-offsets", "g", "--topic", "t", "--to-latest", "--dry-run")
    assert code == 0
    assert out.splitlines() == ["TOPIC  PARTITION  NEW_OFFSET", "t      0          3", "t      1          3"]
    assert "dry run" in err
    assert node.committed() == {("t", 0): 1, ("t", 1): 1}
    code, out, _ = call(
        "group", "reset-offsets", "g", "-t", "t", "--to-earliest", "-p", "1", "--format", "json"
    )
    assert orjson.loads(out) == {
        "group": "g",
        "dry_run": False,
        "offsets": [{"topic": "t", "partition": 1, "offset": 0}],
    }
    assert node.committed() == {("t", 0): 1, ("t", 1): 0}
    assert call("group", "reset-offsets", "g", "-t", "t", "--to-offset", "2")[0] == 0
    assert node.committed() == {("t", 0): 2, ("t", 1): 2}
    assert call("group", "reset-offsets", "g", "-t", "t", "--to-timestamp", "1001", "-p", "0")[0] == 0
    assert node.committed()[("t", 0)] == 1
    code, _, err = call("group", "reset-offsets", "g", "-t", "missing", "--to-latest")
    assert code == 1
    assert err.count("\n") == 1 and "unknown topic" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["group", "reset-offsets", "g", "--topic", "t"],  # no target
        ["group", "reset-offsets", "g", "--topic", "t", "--to-earliest", "--to-latest"],
        ["group", "reset-offsets", "g", "--to-earliest"],  # no topic
        ["group", "reset-offsets", "g", "--topic", "t", "--to-offset", "-1"],
        ["group", "describe"],
        ["group"],
    ],
)
def test_cli_group_usage_errors_exit_2(fake_cli, argv):
    _, call = fake_cli
    code, _, err = call(*argv)
    assert code == 2
    assert "usage:" in err
