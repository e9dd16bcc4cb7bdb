"""Metadata commands and the controller's decisions that produce them.

Theory of operation
-------------------
A command is a small frozen dataclass holding explicit values: every choice (which broker gets which
replica, the topic id, the broker epoch) was made before the command was proposed, so applying it is
deterministic. `apply(image, command)` is a pure function that cannot raise: a command that no longer
fits the image (a topic created twice by a race) leaves the image as it was, apart from its version.

The `plan_*` functions are the controller's side: they validate a request against the current image
and either return the command to propose or raise `MetadataError` with the API error code and a message
that names the problem.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import Any

from metadata.image import NO_LEADER, BrokerInfo, MetadataImage, PartitionInfo, TopicInfo, _frozen
from metadata.schemas import (
    REGISTRY_COMMAND_TYPES,
    REGISTRY_COMMANDS,
    apply_registry,
    registry_command_from_dict,
)
from metadata.topic_config import CONFIGS, InvalidConfigError, validate_configs
from storage.manager import validate_topic_name

log = logging.getLogger(__name__)

# Kafka allows many more; a bound keeps one node's file handles and metadata small.
PARTITIONS_MAX = 10_000
REPLICATION_FACTOR_MAX = 16


class MetadataError(Exception):
    def __init__(self, error_code: int, message: str):
        super().__init__(message)
        self.error_code = error_code
        self.message = message


@dataclass(frozen=True, slots=True)
class PartitionChange:
    """The complete new state of one partition; applies only on top of partition_epoch - 1."""

    topic_id: str
    partition: int
    leader: int
    leader_epoch: int
    isr: tuple
    partition_epoch: int


@dataclass(frozen=True, slots=True)
class ActivateController:
    """The Raft leader of `controller_epoch` (its term) takes over; older epochs are fenced from now on."""

    node_id: int
    controller_epoch: int
    cluster_id: str = ""  # taken only by the first activation


@dataclass(frozen=True, slots=True)
class RegisterBroker:
    """A new incarnation of a broker: a new epoch, fenced until it has caught up with the metadata.
    `changes` move the leaderships and ISR places of its previous incarnation away."""

    node_id: int
    address: str
    rack: str | None = None
    roles: tuple = ("controller", "broker")
    controller_epoch: int = 0
    changes: tuple = ()


@dataclass(frozen=True, slots=True)
class FenceBroker:
    """The broker's session lapsed: it leads nothing and leaves every ISR (through `changes`)."""

    node_id: int
    broker_epoch: int
    controller_epoch: int = 0
    changes: tuple = ()


@dataclass(frozen=True, slots=True)
class UnfenceBroker:
    """The broker caught up and heartbeats: it may lead again (`changes` elect leaderless partitions)."""

    node_id: int
    broker_epoch: int
    controller_epoch: int = 0
    changes: tuple = ()


@dataclass(frozen=True, slots=True)
class ControlledShutdown:
    """The broker is leaving on purpose: `changes` move its leaderships and ISR places away first."""

    node_id: int
    broker_epoch: int
    controller_epoch: int = 0
    changes: tuple = ()


@dataclass(frozen=True, slots=True)
class ChangePartitions:
    """Leader elections and ISR changes (AlterPartition, preferred leader election)."""

    changes: tuple
    controller_epoch: int = 0


@dataclass(frozen=True, slots=True)
class AllocateProducerIds:
    """A block of `block_size` producer ids for one broker incarnation, from image.next_producer_id."""

    node_id: int
    broker_epoch: int
    block_size: int
    controller_epoch: int = 0


@dataclass(frozen=True, slots=True)
class CreateTopic:
    name: str
    topic_id: str
    configs: dict
    assignments: tuple  # one tuple of replica ids per partition; the first is the leader
    controller_epoch: int = 0


@dataclass(frozen=True, slots=True)
class DeleteTopic:
    name: str
    topic_id: str
    controller_epoch: int = 0


@dataclass(frozen=True, slots=True)
class CreatePartitions:
    name: str
    topic_id: str
    assignments: tuple  # replica ids of each new partition
    controller_epoch: int = 0


@dataclass(frozen=True, slots=True)
class AlterConfigs:
    name: str
    topic_id: str
    configs: dict  # the complete new set of user-set configs
    controller_epoch: int = 0


COMMANDS = {
    cls.__name__: cls
    for cls in (
        ActivateController,
        RegisterBroker,
        FenceBroker,
        UnfenceBroker,
        ControlledShutdown,
        ChangePartitions,
        AllocateProducerIds,
        CreateTopic,
        DeleteTopic,
        CreatePartitions,
        AlterConfigs,
    )
}


def command_to_dict(command: Any) -> dict[str, Any]:
    return {"type": type(command).__name__, **asdict(command)}


def command_from_dict(data: dict[str, Any]) -> Any:
    """The command of `command_to_dict`'s form (raises KeyError/TypeError for anything else)."""
    fields = dict(data)
    kind = fields.pop("type")
    if kind in REGISTRY_COMMANDS:  # the schema registry's own (metadata/schemas.py)
        return registry_command_from_dict(kind, fields)
    cls = COMMANDS[kind]
    if "assignments" in fields:
        fields["assignments"] = tuple(tuple(a) for a in fields["assignments"])
    if "changes" in fields:
        fields["changes"] = tuple(PartitionChange(**{**c, "isr": tuple(c["isr"])}) for c in fields["changes"])
    if "roles" in fields:
        fields["roles"] = tuple(fields["roles"])
    return cls(**fields)


# -- apply: pure, deterministic, never raises -----------------------------------------------------------


def apply(image: MetadataImage, command: Any) -> MetadataImage:
    """The image after `command`; a command that does not fit leaves it unchanged (version still moves)."""
    try:
        changed = _apply(image, command)
    except Exception:  # an apply function must never stop a replica
        log.exception("metadata command %r could not be applied; ignored", command)
        changed = image
    return replace(changed, version=image.version + 1)


def _apply(image: MetadataImage, command: Any) -> MetadataImage:
    if isinstance(command, ActivateController):
        if command.controller_epoch <= image.controller_epoch:
            return image
        return replace(
            image,
            controller_id=command.node_id,
            controller_epoch=command.controller_epoch,
            cluster_id=image.cluster_id or command.cluster_id,
        )
    if command.controller_epoch != image.controller_epoch:
        return image  # from a deposed controller (or one not yet activated): fenced
    if isinstance(command, RegisterBroker):
        image = _apply_changes(image, command.changes)
        brokers = dict(image.brokers)
        brokers[command.node_id] = BrokerInfo(
            command.node_id,
            command.address,
            command.rack,
            epoch=image.version + 1,
            fenced=True,
            roles=tuple(command.roles),
        )
        return image.with_brokers(brokers)
    if isinstance(command, FenceBroker | UnfenceBroker | ControlledShutdown | AllocateProducerIds):
        broker = image.brokers.get(command.node_id)
        if broker is None or broker.epoch != command.broker_epoch:
            return image  # about an older incarnation
        if isinstance(command, AllocateProducerIds):
            return replace(image, next_producer_id=image.next_producer_id + command.block_size)
        if isinstance(command, FenceBroker):
            broker = replace(broker, fenced=True)
        elif isinstance(command, UnfenceBroker):
            broker = replace(broker, fenced=False)
        else:
            broker = replace(broker, shutting_down=True)
        changed = _apply_changes(image, command.changes)
        if isinstance(command, FenceBroker) and holds_places(changed, command.node_id):
            return image  # decided on an older image (a change of it no longer fits): decided again
        return changed.with_brokers({**changed.brokers, command.node_id: broker})
    if isinstance(command, ChangePartitions):
        return _apply_changes(image, command.changes)
    if isinstance(command, REGISTRY_COMMAND_TYPES):
        return replace(image, schema_registry=apply_registry(image.schema_registry, command))
    topic = image.topics.get(getattr(command, "name", None))
    if isinstance(command, CreateTopic):
        if topic is not None:
            return image
        partitions = tuple(PartitionInfo(tuple(a), a[0], 0, tuple(a), 0) for a in command.assignments)
        return image.with_topics(
            {
                **image.topics,
                command.name: TopicInfo(command.name, command.topic_id, _frozen(command.configs), partitions),
            }
        )
    if topic is None or topic.topic_id != command.topic_id:
        return image
    if isinstance(command, DeleteTopic):
        return image.with_topics({n: t for n, t in image.topics.items() if n != command.name})
    if isinstance(command, CreatePartitions):
        added = tuple(PartitionInfo(tuple(a), a[0], 0, tuple(a), 0) for a in command.assignments)
        return image.with_topics(
            {**image.topics, command.name: replace(topic, partitions=topic.partitions + added)}
        )
    if isinstance(command, AlterConfigs):
        return image.with_topics(
            {**image.topics, command.name: replace(topic, configs=_frozen(command.configs))}
        )
    return image


def holds_places(image: MetadataImage, node_id: int) -> bool:
    """`node_id` leads a partition or shares an ISR with others (what a fenced broker must not do)."""
    return any(
        p.leader == node_id or (node_id in p.isr and len(p.isr) > 1)
        for topic in image.topics.values()
        for p in topic.partitions
    )


def _apply_changes(image: MetadataImage, changes: tuple) -> MetadataImage:
    """Apply each change that still fits (its topic exists, it builds on the current partition epoch)."""
    if not changes:
        return image
    by_id = {t.topic_id: t for t in image.topics.values()}
    topics = dict(image.topics)
    for change in changes:
        topic = by_id.get(change.topic_id)
        if topic is None or not 0 <= change.partition < len(topic.partitions):
            continue
        current = topic.partitions[change.partition]
        if (
            change.partition_epoch != current.partition_epoch + 1
            or change.leader_epoch < current.leader_epoch
        ):
            continue  # stale: decided on an older state of the partition
        isr = tuple(change.isr)
        if not isr or not set(isr) <= set(current.replicas):
            continue  # an ISR is never empty and never outside the replicas
        if change.leader != NO_LEADER and change.leader not in isr:
            continue
        new = PartitionInfo(current.replicas, change.leader, change.leader_epoch, isr, change.partition_epoch)
        partitions = list(topic.partitions)
        partitions[change.partition] = new
        topic = replace(topic, partitions=tuple(partitions))
        by_id[topic.topic_id] = topic
        topics[topic.name] = topic
    return image.with_topics(topics)


# -- plan: the controller's validation and choices ------------------------------------------------------


def rack_alternated(brokers: list[BrokerInfo]) -> list[int]:
    """Broker ids ordered so that neighbours sit on different racks where racks allow it (rack by
    rack, round robin; brokers without a rack form one group of their own)."""
    racks: dict[str, list[int]] = {}
    for broker in sorted(brokers, key=lambda b: b.node_id):
        racks.setdefault(broker.rack or "", []).append(broker.node_id)
    groups = [racks[name] for name in sorted(racks)]
    if len(groups) == 1:
        return groups[0]
    order = []
    for i in range(max(len(g) for g in groups)):
        order.extend(g[i] for g in groups if i < len(g))
    return order


def assign_replicas(brokers: list[BrokerInfo], count: int, replication_factor: int, first: int) -> tuple:
    """Placement of `count` partitions over `brokers` (Kafka's scheme): partition i leads on the
    broker at position first + i of the rack-alternated order, its followers are the next brokers
    after a shift that grows every time the leaders wrap around, so followers spread too."""
    order = rack_alternated(brokers)
    rack_of = {b.node_id: b.rack or "" for b in brokers}
    racks_total = len(set(rack_of.values()))
    n = len(order)
    out = []
    for i in range(count):
        position = first + i
        shift = (i // n) % (n - replication_factor + 1) if n > replication_factor else 0
        replicas = [order[position % n]]
        racks = {rack_of[replicas[0]]}
        # Every other broker once, from the shifted start; skip a rack already used while another is
        # left (Kafka's rack-aware rule), then take what remains in the same order.
        others = [order[(position + 1 + (shift + k) % (n - 1)) % n] for k in range(n - 1)]
        for broker in others + others:
            if len(replicas) == replication_factor:
                break
            if broker in replicas or (rack_of[broker] in racks and len(racks) < racks_total):
                continue
            replicas.append(broker)
            racks.add(rack_of[broker])
        out.append(tuple(replicas))
    return tuple(out)


def leader_counts(image: MetadataImage) -> dict[int, int]:
    counts: dict[int, int] = {}
    for topic in image.topics.values():
        for p in topic.partitions:
            counts[p.replicas[0]] = counts.get(p.replicas[0], 0) + 1
    return counts


def _first_position(image: MetadataImage, order: list[int]) -> int:
    """Start the next topic's leaders at the broker that prefers to lead the fewest partitions."""
    counts = leader_counts(image)
    return min(range(len(order)), key=lambda i: (counts.get(order[i], 0), i))


def _check_int(value: object, field: str, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MetadataError(42201, f"{field} must be an integer, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise MetadataError(42201, f"{field} must be between {minimum} and {maximum}, got {value}")
    return value


def plan_create_topic(
    image: MetadataImage,
    name: object,
    partitions: object,
    replication_factor: object,
    configs: object,
    topic_id: str,
) -> CreateTopic:
    if not isinstance(name, str):
        raise MetadataError(42201, "name must be a string")
    try:
        validate_topic_name(name)
    except ValueError as exc:
        raise MetadataError(42201, f"invalid topic name: {exc}") from None
    if name in image.topics:
        raise MetadataError(40901, f"topic {name!r} already exists")
    count = _check_int(partitions, "partitions", 1, PARTITIONS_MAX)
    live = [b for b in image.brokers.values() if b.active and "broker" in b.roles]
    factor = _check_int(replication_factor, "replication_factor", 1, REPLICATION_FACTOR_MAX)
    if factor > len(live):
        raise MetadataError(
            42201,
            f"replication_factor {factor} is larger than the {len(live)} available broker(s) "
            f"({', '.join(str(b.node_id) for b in sorted(live, key=lambda b: b.node_id)) or 'none'})",
        )
    try:
        checked = validate_configs({} if configs is None else configs)
    except InvalidConfigError as exc:
        raise MetadataError(42201, str(exc)) from None
    if int(checked.get("min.insync.replicas", "1")) > factor:
        raise MetadataError(
            42201,
            f"min.insync.replicas {checked['min.insync.replicas']} is larger than replication_factor {factor}",
        )
    first = _first_position(image, rack_alternated(live))
    return CreateTopic(
        name, topic_id, checked, assign_replicas(live, count, factor, first), image.controller_epoch
    )


def plan_create_partitions(image: MetadataImage, name: str, total: object) -> CreatePartitions:
    topic = _existing(image, name)
    count = _check_int(total, "partitions", 1, PARTITIONS_MAX)
    if count < len(topic.partitions):
        raise MetadataError(
            42201, f"partitions can only grow: topic {name!r} has {len(topic.partitions)}, asked for {count}"
        )
    live = [b for b in image.brokers.values() if b.active and "broker" in b.roles]
    if topic.replication_factor > len(live):
        raise MetadataError(
            50301, f"only {len(live)} broker(s) available for replication factor {topic.replication_factor}"
        )
    added = assign_replicas(
        live,
        count - len(topic.partitions),
        topic.replication_factor,
        _first_position(image, rack_alternated(live)),
    )
    return CreatePartitions(name, topic.topic_id, added, image.controller_epoch)


def plan_alter_configs(image: MetadataImage, name: str, set_configs: object, delete: object) -> AlterConfigs:
    topic = _existing(image, name)
    if delete is not None and (not isinstance(delete, list) or not all(isinstance(d, str) for d in delete)):
        raise MetadataError(42201, "delete must be a list of config names")
    for dead in delete or []:
        if dead not in CONFIGS:
            raise MetadataError(42201, f"unknown topic config {dead!r} in delete")
    try:
        checked = validate_configs({} if set_configs is None else set_configs)
    except InvalidConfigError as exc:
        raise MetadataError(42201, str(exc)) from None
    merged = {k: v for k, v in topic.configs.items() if k not in (delete or [])}
    merged.update(checked)
    if int(merged.get("min.insync.replicas", "1")) > topic.replication_factor:
        raise MetadataError(
            42201,
            f"min.insync.replicas {merged['min.insync.replicas']} is larger than replication_factor {topic.replication_factor}",
        )
    return AlterConfigs(name, topic.topic_id, merged, image.controller_epoch)


def plan_delete_topic(image: MetadataImage, name: str) -> DeleteTopic:
    topic = _existing(image, name)
    return DeleteTopic(name, topic.topic_id, image.controller_epoch)


def _existing(image: MetadataImage, name: str) -> TopicInfo:
    topic = image.topics.get(name)
    if topic is None:
        raise MetadataError(40401, f"topic {name!r} does not exist")
    return topic
