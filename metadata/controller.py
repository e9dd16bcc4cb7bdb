"""The controller's decisions as pure functions: broker sessions, fencing, elections, shutdowns.

Theory of operation
-------------------
The active controller is the Raft leader whose `ActivateController` command was applied with its
term as the controller epoch. It learns broker liveness from heartbeats (over HTTP, never through
Raft) and turns what it sees into commands, each computed here from the committed image and the
heartbeat table alone, with the time passed in:

- a broker whose session lapsed (no heartbeat of its current epoch for `session_timeout_ms`) is
  fenced: it leaves every ISR it is in (an ISR is never emptied: its last member stays, leaderless),
  and each partition it led gets the first active in-sync replica in assignment order as leader, or
  no leader (-1) when none is left; `unclean.leader.election.enable` lets such a partition take any
  active replica instead, accepting the loss of what only the old ISR held;
- a fenced broker that heartbeats its current epoch and has applied the metadata up to its own
  registration is unfenced, and takes the leadership of leaderless partitions whose ISR holds it;
- a controlled shutdown moves the broker's leaderships to other in-sync replicas and takes it out of
  the ISRs where another member remains (a partition with no other in-sync replica keeps it);
- preferred leader election gives each partition back to its first replica when that replica is
  active and in sync.

Each change bumps partition_epoch; a change of leader also bumps leader_epoch. A new controller does
not know when brokers last heartbeated, so it gives each of them a full session from its activation
(Kafka's controller does the same), and fences nobody before that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metadata.commands import (
    ChangePartitions,
    ControlledShutdown,
    FenceBroker,
    MetadataError,
    PartitionChange,
    UnfenceBroker,
    holds_places,
)
from metadata.image import NO_LEADER, MetadataImage, PartitionInfo, TopicInfo
from metadata.topic_config import unclean_leader_election


def _change(topic: TopicInfo, index: int, current: PartitionInfo, leader: int, isr: tuple) -> PartitionChange:
    leader_epoch = current.leader_epoch + (1 if leader != current.leader else 0)
    return PartitionChange(topic.topic_id, index, leader, leader_epoch, isr, current.partition_epoch + 1)


def _first_active(image: MetadataImage, candidates: tuple, excluded: int | None) -> int:
    for replica in candidates:
        broker = image.brokers.get(replica)
        if replica != excluded and broker is not None and broker.active:
            return replica
    return NO_LEADER


def changes_without(image: MetadataImage, node_id: int, *, keep_alone_leader: bool = False) -> tuple:
    """Take `node_id` out of every ISR and leadership (see the module notes)."""
    out = []
    for topic in image.topics.values():
        unclean = unclean_leader_election(dict(topic.configs))
        for index, p in enumerate(topic.partitions):
            if node_id not in p.isr and p.leader != node_id:
                continue
            isr = tuple(r for r in p.isr if r != node_id) or p.isr
            leader = p.leader
            if leader == node_id or leader not in isr:
                in_sync = tuple(r for r in p.replicas if r in isr)
                leader = _first_active(image, in_sync, node_id)
                if leader == NO_LEADER and keep_alone_leader and p.leader == node_id:
                    continue  # nobody can take over: the leaving broker keeps leading until it is gone
                if leader == NO_LEADER and unclean:
                    leader = _first_active(image, p.replicas, node_id)
                    if leader != NO_LEADER:
                        isr = (leader,)
            if leader == p.leader and isr == p.isr:
                continue
            out.append(_change(topic, index, p, leader, isr))
    return tuple(out)


def changes_for_returning(image: MetadataImage, node_id: int) -> tuple:
    """Leaderless partitions that `node_id` may lead now: it is in their ISR (or, for topics with
    unclean election on, it is a replica)."""
    out = []
    for topic in image.topics.values():
        unclean = unclean_leader_election(dict(topic.configs))
        for index, p in enumerate(topic.partitions):
            if p.leader != NO_LEADER or node_id not in p.replicas:
                continue
            if node_id in p.isr:
                out.append(_change(topic, index, p, node_id, p.isr))
            elif unclean:
                out.append(_change(topic, index, p, node_id, (node_id,)))
    return tuple(out)


def preferred_leader_changes(image: MetadataImage) -> tuple:
    """Move each partition's leadership back to its first replica where that replica can lead."""
    out = []
    for topic in image.topics.values():
        for index, p in enumerate(topic.partitions):
            preferred = p.replicas[0]
            broker = image.brokers.get(preferred)
            if p.leader != preferred and preferred in p.isr and broker is not None and broker.active:
                out.append(_change(topic, index, p, preferred, p.isr))
    return tuple(out)


@dataclass
class Session:
    broker_epoch: int
    last_seen_ms: int
    metadata_version: int = 0


@dataclass
class BrokerSessions:
    """What the active controller heard from brokers (in memory; a new controller starts afresh)."""

    session_timeout_ms: int
    activated_ms: int
    sessions: dict[int, Session] = field(default_factory=dict)

    def heartbeat(self, node_id: int, broker_epoch: int, metadata_version: int, now_ms: int) -> None:
        self.sessions[node_id] = Session(broker_epoch, now_ms, metadata_version)

    def forget(self, node_id: int) -> None:
        self.sessions.pop(node_id, None)

    def alive(self, node_id: int, broker_epoch: int, now_ms: int) -> bool:
        session = self.sessions.get(node_id)
        if session is None or session.broker_epoch != broker_epoch:
            return now_ms - self.activated_ms < self.session_timeout_ms
        return now_ms - session.last_seen_ms < self.session_timeout_ms

    def caught_up(self, node_id: int, broker_epoch: int, now_ms: int) -> bool:
        session = self.sessions.get(node_id)
        return (
            session is not None
            and session.broker_epoch == broker_epoch
            and now_ms - session.last_seen_ms < self.session_timeout_ms
            and session.metadata_version >= broker_epoch
        )


def next_command(image: MetadataImage, sessions: BrokerSessions, now_ms: int) -> Any | None:
    """The next command the controller should propose on its own, or None when all is in order.

    Called again after every applied command, so each decision sees the effect of the one before.
    """
    epoch = image.controller_epoch
    for broker in sorted(image.brokers.values(), key=lambda b: b.node_id):
        if not broker.fenced and not sessions.alive(broker.node_id, broker.epoch, now_ms):
            return FenceBroker(broker.node_id, broker.epoch, epoch, changes_without(image, broker.node_id))
    for broker in sorted(image.brokers.values(), key=lambda b: b.node_id):
        if broker.fenced and holds_places(image, broker.node_id):
            # Its fence (or registration) applied on top of a change decided meanwhile, which gave
            # it a leadership or ISR place back: take them away again.
            changes = changes_without(image, broker.node_id)
            if changes:
                return ChangePartitions(changes, epoch)
    for broker in sorted(image.brokers.values(), key=lambda b: b.node_id):
        if broker.fenced and sessions.caught_up(broker.node_id, broker.epoch, now_ms):
            # Unfence first, then elect in the same command: the broker is active when the changes apply.
            return UnfenceBroker(
                broker.node_id, broker.epoch, epoch, changes_for_returning(image, broker.node_id)
            )
    # A leaderless partition whose in-sync replica is active again (unfenced while the partition
    # still had another leader that has since gone): elect it.
    changes = []
    for broker in image.brokers.values():
        if broker.active:
            changes.extend(changes_for_returning(image, broker.node_id))
    if changes:
        unique = {(c.topic_id, c.partition): c for c in changes}
        return ChangePartitions(tuple(unique.values()), epoch)
    return None


def controlled_shutdown(image: MetadataImage, node_id: int, broker_epoch: int) -> ControlledShutdown:
    return ControlledShutdown(
        node_id, broker_epoch, image.controller_epoch, changes_without(image, node_id, keep_alone_leader=True)
    )


def preferred_election(image: MetadataImage) -> ChangePartitions | None:
    changes = preferred_leader_changes(image)
    return ChangePartitions(changes, image.controller_epoch) if changes else None


def leaderships_of(image: MetadataImage, node_id: int) -> int:
    return sum(1 for t in image.topics.values() for p in t.partitions if p.leader == node_id)


def movable_leaderships(image: MetadataImage, node_id: int) -> int:
    """Partitions `node_id` leads that another active in-sync replica could take over."""
    count = 0
    for topic in image.topics.values():
        for p in topic.partitions:
            if p.leader == node_id and _first_active(image, p.isr, node_id) != NO_LEADER:
                count += 1
    return count


def plan_alter_partition(
    image: MetadataImage,
    broker_id: int,
    broker_epoch: int,
    topic_id: str,
    partition: int,
    leader_epoch: int,
    partition_epoch: int,
    isr: tuple[int, ...],
    joining: tuple[tuple[int, int], ...] = (),
) -> ChangePartitions:
    """A leader's request to change its partition's ISR (Kafka's AlterPartition), checked against the
    committed image: only the current leader of the current epochs may ask, the new ISR holds the
    leader and only replicas, and a replica joins only when it is active (not fenced or leaving).
    Raises MetadataError (40403 not the leader, 40905 stale epochs, 42201 a bad ISR)."""
    broker = image.brokers.get(broker_id)
    if broker is None or broker.epoch != broker_epoch or broker.fenced:
        raise MetadataError(
            40904, f"broker {broker_id} epoch {broker_epoch} is not a current, unfenced registration"
        )
    topic = next((t for t in image.topics.values() if t.topic_id == topic_id), None)
    if topic is None or not 0 <= partition < len(topic.partitions):
        raise MetadataError(40402, f"no partition {partition} of topic id {topic_id}")
    current = topic.partitions[partition]
    if current.leader != broker_id:
        raise MetadataError(
            40403, f"broker {broker_id} does not lead {topic.name}-{partition} (leader: {current.leader})"
        )
    if leader_epoch != current.leader_epoch or partition_epoch != current.partition_epoch:
        raise MetadataError(
            40905,
            f"{topic.name}-{partition}: epochs {leader_epoch}/{partition_epoch} are stale "
            f"(leader epoch {current.leader_epoch}, partition epoch {current.partition_epoch})",
        )
    new = tuple(isr)
    if broker_id not in new or not set(new) <= set(current.replicas) or len(set(new)) != len(new):
        raise MetadataError(
            42201, f"ISR {list(new)} must hold the leader and only replicas of {topic.name}-{partition}"
        )
    caught_up_as = dict(joining)
    for replica in sorted(set(new) - set(current.isr)):
        broker = image.brokers.get(replica)
        if broker is None or not broker.active:
            raise MetadataError(
                42201, f"replica {replica} cannot join the ISR of {topic.name}-{partition}: it is not active"
            )
        if caught_up_as.get(replica) != broker.epoch:
            raise MetadataError(
                40904,
                f"replica {replica} caught up as broker epoch {caught_up_as.get(replica)}, but broker epoch "
                f"{broker.epoch} is registered now: it must catch up again (KIP-903)",
            )
    ordered = tuple(r for r in current.replicas if r in new)
    change = PartitionChange(
        topic_id, partition, current.leader, current.leader_epoch, ordered, current.partition_epoch + 1
    )
    return ChangePartitions((change,), image.controller_epoch)
