"""Consumer groups: the coordinator's decisions, as a pure core (no IO, no clock, no event loop).

Theory of operation
-------------------
Server-side assignment in the style of Kafka's KIP-848. A member joins with the topics it subscribes
to and then only heartbeats; the coordinator decides who consumes what.

- `target[m]`: what the group's assignor wants member m to own. It is computed again whenever the
  group changes (a member joins, leaves or expires, a subscription changes, a subscribed topic gains
  partitions): the *group epoch* goes up by one each time.
- `assigned[m]`: what m may own now. The assigned sets of the members never overlap: this is the
  one-owner rule (DESIGN invariant 10). A partition leaves `assigned[m]` only when m reports, in a
  heartbeat, that it no longer owns it (after committing its offset), or when m is removed; it enters
  `assigned[n]` of its new owner only then (revoke before assign).
- Each heartbeat reconciles the member: partitions it gave up leave `assigned[m]`, partitions of its
  target that nobody holds join it, and the answer lists `assigned[m] ∩ target[m]`: what m should own.
  Anything m owns outside that list it must give up (commit, stop fetching, leave it out of `owned`).
- The member epoch goes up each time the member's answer changes. A heartbeat or commit with the
  current epoch or the one before it (its answer may have been lost) is taken; older ones are fenced
  (40906). A commit is taken only for partitions in `assigned[m]`: the one owner.
- Sessions: a member that does not heartbeat for `session_timeout_ms` is removed and its partitions
  are free at once. A member that keeps a partition it was told to give up for longer than
  `rebalance_timeout_ms` is removed too, so a stuck member cannot hold a rebalance forever.
- Static members (`instance_id`): a join with the instance id of a member (present, or gone with
  `leave`) takes over its member's assignment and epoch under a new member id, without a rebalance;
  the old member id is fenced. A static member's `leave` keeps its partitions for its session timeout.

Assignors: `range` (per topic, contiguous ranges over the subscribed members in order) and `uniform`
(all subscribed partitions spread evenly, sticky: a member keeps what it has while it is under its
share). The group uses the assignor most of its members ask for (ties: uniform, Kafka's default).

Thread-safety: none; the coordinator's shell calls it from the event loop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

ASSIGNORS = ("uniform", "range")
DEFAULT_ASSIGNOR = "uniform"  # Kafka's default server-side assignor (KIP-848)
MEMBERS_MAX = 1000  # per group (Kafka's group.max.size is unlimited; a bound keeps one group's state small)


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class GroupError(Exception):
    """A refused group request: `error_code` (the node's table) and a message naming the problem."""

    def __init__(self, error_code: int, message: str):
        super().__init__(message)
        self.error_code = error_code
        self.message = message


@dataclass
class Member:
    member_id: str
    instance_id: str | None
    topics: tuple[str, ...]
    assignor: str
    epoch: int = 0
    previous_epoch: int = -1
    assigned: set[TopicPartition] = field(default_factory=set)
    target: set[TopicPartition] = field(default_factory=set)
    answer: frozenset[TopicPartition] = frozenset()
    session_deadline_ms: int = 0
    revoking_since_ms: int | None = None  # when it was first told to give something up, still held
    left: bool = False  # a static member that left: its partitions wait for it until its deadline


class Answer(NamedTuple):
    """What a join or heartbeat returns to the member."""

    member_id: str
    member_epoch: int
    assignment: tuple[TopicPartition, ...]  # sorted: what the member should own now
    heartbeat_interval_ms: int
    session_timeout_ms: int
    # The member's target is not reached yet (it must give something up, or waits for a partition
    # another member still holds): it should heartbeat again soon, not after a whole interval.
    reconciling: bool


class Group:
    def __init__(
        self,
        group_id: str,
        *,
        session_timeout_ms: int,
        heartbeat_interval_ms: int,
        rebalance_timeout_ms: int,
        members_max: int = MEMBERS_MAX,
    ):
        self.group_id = group_id
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.rebalance_timeout_ms = rebalance_timeout_ms
        self.members_max = members_max
        self.members: dict[str, Member] = {}
        self.group_epoch = 0
        self._layout: dict[str, int] = {}  # subscribed topic -> partitions, as last assigned

    # -- events ---------------------------------------------------------------------------------------

    def join(
        self,
        now_ms: int,
        member_id: str,
        topics: Iterable[str],
        instance_id: str | None,
        assignor: str | None,
        partitions_of: Callable[[str], int],
    ) -> Answer:
        """A new member (`member_id` is fresh, made by the caller). Raises GroupError for bad input."""
        topics = tuple(sorted(set(topics)))
        if not topics:
            raise GroupError(42201, "topics must name at least one topic")
        assignor = assignor or DEFAULT_ASSIGNOR
        if assignor not in ASSIGNORS:
            raise GroupError(42201, f"assignor must be one of {', '.join(ASSIGNORS)}, got {assignor!r}")
        if member_id in self.members:
            raise GroupError(42201, f"member id {member_id!r} is taken")
        previous = self._static(instance_id)
        if previous is None and len(self.members) >= self.members_max:
            raise GroupError(42201, f"group {self.group_id!r} already has {self.members_max} members")
        member = Member(member_id, instance_id, topics, assignor)
        member.session_deadline_ms = now_ms + self.session_timeout_ms
        if previous is not None:  # a static member back: it takes over, without a rebalance
            del self.members[previous.member_id]
            member.epoch, member.previous_epoch = previous.epoch, -1
            member.assigned, member.target = previous.assigned, previous.target
            member.answer, member.revoking_since_ms = previous.answer, previous.revoking_since_ms
            self.members[member_id] = member
            if previous.topics != topics or previous.assignor != assignor:
                self._rebalance(self._subscribed_layout(partitions_of))
        else:
            self.members[member_id] = member
            self._rebalance(self._subscribed_layout(partitions_of))
        return self._reconcile(now_ms, member, owned=())  # a joining process owns nothing yet

    def heartbeat(
        self,
        now_ms: int,
        member_id: str,
        member_epoch: int,
        owned: Iterable[TopicPartition],
        partitions_of: Callable[[str], int],
    ) -> Answer:
        member = self._member(member_id, member_epoch)
        member.session_deadline_ms = now_ms + self.session_timeout_ms
        member.left = False
        self.maybe_rebalance_for_metadata(partitions_of)
        return self._reconcile(now_ms, member, owned)

    def leave(self, now_ms: int, member_id: str, member_epoch: int | None = None) -> None:
        """The member leaves now; a static member's partitions wait for it for its session timeout."""
        member = self._member(member_id, member_epoch)
        if member.instance_id is not None:
            member.left = True
            member.session_deadline_ms = now_ms + self.session_timeout_ms
            return
        self._remove(member_id)

    def expire(self, now_ms: int) -> list[str]:
        """Remove members whose session lapsed or that held a revoked partition too long."""
        gone = [
            m.member_id
            for m in self.members.values()
            if now_ms >= m.session_deadline_ms
            or (m.revoking_since_ms is not None and now_ms - m.revoking_since_ms >= self.rebalance_timeout_ms)
        ]
        for member_id in gone:
            self._remove(member_id)
        return gone

    def maybe_rebalance_for_metadata(self, partitions_of: Callable[[str], int]) -> bool:
        """Compute the targets again when a subscribed topic's partition count changed."""
        layout = self._subscribed_layout(partitions_of)
        if layout == self._layout:
            return False
        self._layout = layout
        self._rebalance(layout)
        return True

    def check_commit(self, member_id: str, member_epoch: int, partitions: Iterable[TopicPartition]) -> None:
        """Raise GroupError unless the member (current or previous epoch) owns every partition."""
        member = self._member(member_id, member_epoch)
        foreign = sorted(set(partitions) - member.assigned)
        if foreign:
            shown = ", ".join(f"{tp.topic}-{tp.partition}" for tp in foreign[:5])
            raise GroupError(40908, f"member {member_id} does not own {shown} in group {self.group_id!r}")

    # -- what others see ----------------------------------------------------------------------------

    @property
    def is_empty(self) -> bool:
        return not self.members

    @property
    def state(self) -> str:
        if not self.members:
            return "empty"
        if any(m.assigned != m.target for m in self.members.values()):
            return "assigning"
        return "stable"

    @property
    def assignor(self) -> str:
        votes = Counter(m.assignor for m in self.members.values())
        if not votes:
            return DEFAULT_ASSIGNOR
        best = max(votes.values())
        return (
            DEFAULT_ASSIGNOR if votes[DEFAULT_ASSIGNOR] == best else min(a for a in votes if votes[a] == best)
        )

    def owner_of(self) -> dict[TopicPartition, str]:
        """Partition -> the member allowed to own it now (the one-owner map)."""
        out: dict[TopicPartition, str] = {}
        for member in self.members.values():
            for tp in member.assigned:
                assert tp not in out, f"{tp} is assigned to {out[tp]} and {member.member_id}"
                out[tp] = member.member_id
        return out

    # -- inside -----------------------------------------------------------------------------------------

    def _member(self, member_id: str, member_epoch: int | None) -> Member:
        member = self.members.get(member_id)
        if member is None:
            raise GroupError(
                40405,
                f"member {member_id} is not in group {self.group_id!r} (removed or never joined): join again",
            )
        if member_epoch is not None and member_epoch not in (member.epoch, member.previous_epoch):
            raise GroupError(
                40906,
                f"member {member_id} epoch {member_epoch} is stale (current {member.epoch}) in group "
                f"{self.group_id!r}",
            )
        return member

    def _static(self, instance_id: str | None) -> Member | None:
        if instance_id is None:
            return None
        return next((m for m in self.members.values() if m.instance_id == instance_id), None)

    def _remove(self, member_id: str) -> None:
        del self.members[member_id]
        subscribed = {t for m in self.members.values() for t in m.topics}
        self._rebalance({t: n for t, n in self._layout.items() if t in subscribed})

    def _subscribed_layout(self, partitions_of: Callable[[str], int]) -> dict[str, int]:
        topics = sorted({t for m in self.members.values() for t in m.topics})
        return {t: partitions_of(t) for t in topics}

    def _rebalance(self, layout: dict[str, int] | None = None) -> None:
        """A new group epoch: the assignor's targets for every member."""
        self.group_epoch += 1
        if layout is not None:
            self._layout = layout
        members = sorted(self.members.values(), key=lambda m: (m.instance_id or "", m.member_id))
        targets = assign(self.assignor, members, self._layout)
        for member in members:
            member.target = targets.get(member.member_id, set())
            if member.assigned <= member.target:
                member.revoking_since_ms = None  # nothing to give up now: a revocation called off

    def _reconcile(self, now_ms: int, member: Member, owned: Iterable[TopicPartition]) -> Answer:
        owned = {TopicPartition(*tp) for tp in owned} & member.assigned
        revoked = member.assigned - member.target
        member.assigned -= revoked - owned  # given up: free for their new owners
        held = {tp for other in self.members.values() if other is not member for tp in other.assigned}
        member.assigned |= {tp for tp in member.target - member.assigned if tp not in held}
        still_revoking = bool(member.assigned - member.target)
        if not still_revoking:
            member.revoking_since_ms = None
        elif member.revoking_since_ms is None:
            member.revoking_since_ms = now_ms
        answer = frozenset(member.assigned & member.target)
        if answer != member.answer or member.epoch == 0:
            member.previous_epoch, member.epoch = member.epoch, member.epoch + 1
            member.answer = answer
        return Answer(
            member.member_id,
            member.epoch,
            tuple(sorted(answer)),
            self.heartbeat_interval_ms,
            self.session_timeout_ms,
            member.assigned != member.target,
        )


# -- assignors ---------------------------------------------------------------------------------------------


def assign(assignor: str, members: list[Member], layout: dict[str, int]) -> dict[str, set[TopicPartition]]:
    """member id -> target partitions; `members` in a stable order."""
    if assignor == "range":
        return _range(members, layout)
    return _uniform(members, layout)


def _range(members: list[Member], layout: dict[str, int]) -> dict[str, set[TopicPartition]]:
    out: dict[str, set[TopicPartition]] = {m.member_id: set() for m in members}
    for topic, count in sorted(layout.items()):
        subscribers = [m for m in members if topic in m.topics]
        if not subscribers or count <= 0:
            continue
        share, extra = divmod(count, len(subscribers))
        start = 0
        for i, member in enumerate(subscribers):
            size = share + (1 if i < extra else 0)
            out[member.member_id].update(TopicPartition(topic, p) for p in range(start, start + size))
            start += size
    return out


def _uniform(members: list[Member], layout: dict[str, int]) -> dict[str, set[TopicPartition]]:
    """Even counts over all subscribed partitions; each member keeps its current target while under
    its share (sticky), the rest go to the least loaded eligible member."""
    out: dict[str, set[TopicPartition]] = {m.member_id: set() for m in members}
    partitions = [TopicPartition(t, p) for t, count in sorted(layout.items()) for p in range(max(count, 0))]
    if not members or not partitions:
        return out
    rank = {m.member_id: i for i, m in enumerate(members)}
    subscribers = {t: [m for m in members if t in m.topics] for t in layout}
    eligible = {tp: subscribers[tp.topic] for tp in partitions}
    share = -(-len(partitions) // len(members))  # ceil: nobody keeps more than this
    taken: set[TopicPartition] = set()
    for member in members:
        for tp in sorted(member.target):
            if (
                tp in eligible
                and tp.topic in member.topics
                and len(out[member.member_id]) < share
                and tp not in taken
            ):
                out[member.member_id].add(tp)
                taken.add(tp)
    for tp in partitions:
        if tp in taken or not eligible[tp]:
            continue
        chosen = min(eligible[tp], key=lambda m: (len(out[m.member_id]), rank[m.member_id]))
        out[chosen.member_id].add(tp)
    # Even out what stickiness left uneven: move from the fullest to the emptiest eligible member.
    while True:
        fullest = max(members, key=lambda m: len(out[m.member_id]))
        moved = False
        for tp in sorted(out[fullest.member_id]):
            candidates = [m for m in eligible[tp] if len(out[m.member_id]) + 1 < len(out[fullest.member_id])]
            if candidates:
                target = min(candidates, key=lambda m: (len(out[m.member_id]), rank[m.member_id]))
                out[fullest.member_id].discard(tp)
                out[target.member_id].add(tp)
                moved = True
                break
        if not moved:
            return out
