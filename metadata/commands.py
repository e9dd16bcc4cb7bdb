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

from metadata.image import BrokerInfo, MetadataImage, PartitionInfo, TopicInfo, _frozen
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
class RegisterBroker:
    node_id: int
    address: str
    rack: str | None = None


@dataclass(frozen=True, slots=True)
class CreateTopic:
    name: str
    topic_id: str
    configs: dict
    assignments: tuple  # one tuple of replica ids per partition; the first is the leader


@dataclass(frozen=True, slots=True)
class DeleteTopic:
    name: str
    topic_id: str


@dataclass(frozen=True, slots=True)
class CreatePartitions:
    name: str
    topic_id: str
    assignments: tuple  # replica ids of each new partition


@dataclass(frozen=True, slots=True)
class AlterConfigs:
    name: str
    topic_id: str
    configs: dict  # the complete new set of user-set configs


COMMANDS = {
    cls.__name__: cls for cls in (RegisterBroker, CreateTopic, DeleteTopic, CreatePartitions, AlterConfigs)
}


def command_to_dict(command: Any) -> dict[str, Any]:
    return {"type": type(command).__name__, **asdict(command)}


def command_from_dict(data: dict[str, Any]) -> Any:
    fields = dict(data)
    cls = COMMANDS[fields.pop("type")]
    if "assignments" in fields:
        fields["assignments"] = tuple(tuple(a) for a in fields["assignments"])
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
    if isinstance(command, RegisterBroker):
        brokers = dict(image.brokers)
        brokers[command.node_id] = BrokerInfo(
            command.node_id, command.address, command.rack, image.version + 1
        )
        return image.with_brokers(brokers)
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


# -- plan: the controller's validation and choices ------------------------------------------------------


def assign_replicas(broker_ids: list[int], count: int, replication_factor: int, first: int) -> tuple:
    """Round-robin placement: partition i leads on broker (first + i) and its followers are the next brokers."""
    ids = sorted(broker_ids)
    return tuple(
        tuple(ids[(first + i + r) % len(ids)] for r in range(replication_factor)) for i in range(count)
    )


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
    live = [b.node_id for b in image.brokers.values() if not b.fenced]
    factor = _check_int(replication_factor, "replication_factor", 1, REPLICATION_FACTOR_MAX)
    if factor > len(live):
        raise MetadataError(
            42201, f"replication_factor {factor} is larger than the {len(live)} available broker(s)"
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
    first = sum(map(ord, name)) % len(live)  # deterministic spread of leaders across topics
    return CreateTopic(name, topic_id, checked, assign_replicas(live, count, factor, first))


def plan_create_partitions(image: MetadataImage, name: str, total: object) -> CreatePartitions:
    topic = _existing(image, name)
    count = _check_int(total, "partitions", 1, PARTITIONS_MAX)
    if count < len(topic.partitions):
        raise MetadataError(
            42201, f"partitions can only grow: topic {name!r} has {len(topic.partitions)}, asked for {count}"
        )
    live = [b.node_id for b in image.brokers.values() if not b.fenced]
    if topic.replication_factor > len(live):
        raise MetadataError(
            50301, f"only {len(live)} broker(s) available for replication factor {topic.replication_factor}"
        )
    added = assign_replicas(
        live, count - len(topic.partitions), topic.replication_factor, len(topic.partitions)
    )
    return CreatePartitions(name, topic.topic_id, added)


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
    return AlterConfigs(name, topic.topic_id, merged)


def plan_delete_topic(image: MetadataImage, name: str) -> DeleteTopic:
    topic = _existing(image, name)
    return DeleteTopic(name, topic.topic_id)


def _existing(image: MetadataImage, name: str) -> TopicInfo:
    topic = image.topics.get(name)
    if topic is None:
        raise MetadataError(40401, f"topic {name!r} does not exist")
    return topic
