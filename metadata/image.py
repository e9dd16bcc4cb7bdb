"""The metadata image: what the cluster knows about topics, partitions, brokers and its controller.

Theory of operation
-------------------
The image is a plain, immutable value. It changes only by applying a command (metadata/commands.py),
a pure function from (image, command) to a new image, so every replica that applies the same commands
in the same order holds the same image, and a test can check the image without Raft. `to_dict` and
`from_dict` give the JSON form used by snapshots and by `GET` endpoints.

`version` counts the commands applied (the metadata offset a node reports); `controller_id` and
`controller_epoch` name the controller whose activation was applied last: its epoch is the Raft term
it was elected in, and commands from any other epoch are ignored when applied (fencing).
`schema_registry` is the embedded schema registry's state (metadata/schemas.py).

Thread-safety: immutable, so safe to share; holders swap the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from metadata.schemas import RegistryState

NO_LEADER = -1


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    replicas: tuple[int, ...]
    leader: int  # NO_LEADER when no in-sync replica is alive
    leader_epoch: int
    isr: tuple[int, ...]
    partition_epoch: int


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    topic_id: str
    configs: MappingProxyType  # name -> string value, only what the user set
    partitions: tuple[PartitionInfo, ...]

    @property
    def replication_factor(self) -> int:
        return len(self.partitions[0].replicas) if self.partitions else 0


BROKER_ROLES = ("controller", "broker")


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    node_id: int
    address: str  # advertised HTTP host:port
    rack: str | None = None
    epoch: int = 0  # the metadata version that registered this incarnation
    fenced: bool = False
    shutting_down: bool = False
    roles: tuple[str, ...] = BROKER_ROLES

    @property
    def status(self) -> str:
        if self.fenced:
            return "fenced"
        return "shutting_down" if self.shutting_down else "active"

    @property
    def active(self) -> bool:
        """May lead and be in an ISR: registered, caught up, alive and not leaving."""
        return not self.fenced and not self.shutting_down


def _frozen(mapping: dict | None = None) -> MappingProxyType:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True)
class MetadataImage:
    topics: MappingProxyType = field(default_factory=_frozen)  # name -> TopicInfo
    brokers: MappingProxyType = field(default_factory=_frozen)  # node id -> BrokerInfo
    version: int = 0  # commands applied so far
    controller_id: int = -1
    controller_epoch: int = 0
    next_producer_id: int = 0  # the first id of the next producer-id block
    cluster_id: str = ""  # chosen by the first controller, never changed
    schema_registry: RegistryState = field(default_factory=RegistryState)  # metadata/schemas.py

    def topic(self, name: str) -> TopicInfo | None:
        return self.topics.get(name)

    def with_topics(self, topics: dict) -> MetadataImage:
        return replace(self, topics=_frozen(topics))

    def with_brokers(self, brokers: dict) -> MetadataImage:
        return replace(self, brokers=_frozen(brokers))

    def active_brokers(self) -> list[int]:
        return sorted(b.node_id for b in self.brokers.values() if b.active)

    # -- JSON form ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "controller_id": self.controller_id,
            "controller_epoch": self.controller_epoch,
            "next_producer_id": self.next_producer_id,
            "cluster_id": self.cluster_id,
            "topics": [topic_to_dict(t) for t in self.topics.values()],
            "brokers": [
                {
                    "node_id": b.node_id,
                    "address": b.address,
                    "rack": b.rack,
                    "epoch": b.epoch,
                    "fenced": b.fenced,
                    "shutting_down": b.shutting_down,
                    "roles": list(b.roles),
                }
                for b in self.brokers.values()
            ],
            "schema_registry": self.schema_registry.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetadataImage:
        topics = {}
        for t in data.get("topics", []):
            partitions = tuple(
                PartitionInfo(
                    tuple(p["replicas"]),
                    p["leader"],
                    p["leader_epoch"],
                    tuple(p["isr"]),
                    p["partition_epoch"],
                )
                for p in t["partitions"]
            )
            topics[t["name"]] = TopicInfo(t["name"], t["topic_id"], _frozen(t["configs"]), partitions)
        brokers = {
            b["node_id"]: BrokerInfo(
                b["node_id"],
                b["address"],
                b.get("rack"),
                b.get("epoch", 0),
                b.get("fenced", False),
                b.get("shutting_down", False),
                tuple(b.get("roles", BROKER_ROLES)),
            )
            for b in data.get("brokers", [])
        }
        return cls(
            _frozen(topics),
            _frozen(brokers),
            int(data.get("version", 0)),
            int(data.get("controller_id", -1)),
            int(data.get("controller_epoch", 0)),
            int(data.get("next_producer_id", 0)),
            str(data.get("cluster_id", "")),
            RegistryState.from_dict(data.get("schema_registry")),  # absent in snapshots from before it
        )


def topic_to_dict(topic: TopicInfo) -> dict[str, Any]:
    return {
        "name": topic.name,
        "topic_id": topic.topic_id,
        "configs": dict(topic.configs),
        "partitions": [
            {
                "replicas": list(p.replicas),
                "leader": p.leader,
                "leader_epoch": p.leader_epoch,
                "isr": list(p.isr),
                "partition_epoch": p.partition_epoch,
            }
            for p in topic.partitions
        ],
    }
