"""The metadata image: what the cluster knows about topics, partitions and brokers.

Theory of operation
-------------------
The image is a plain, immutable value. It changes only by applying a command (metadata/commands.py),
a pure function from (image, command) to a new image, so every replica that applies the same commands
in the same order holds the same image, and a test can check the image without Raft. `to_dict` and
`from_dict` give the JSON form used by snapshots and by `GET` endpoints.

Thread-safety: immutable, so safe to share; holders swap the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    replicas: tuple[int, ...]
    leader: int
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


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    node_id: int
    address: str  # advertised HTTP host:port
    rack: str | None = None
    epoch: int = 0
    fenced: bool = False


def _frozen(mapping: dict | None = None) -> MappingProxyType:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True)
class MetadataImage:
    topics: MappingProxyType = field(default_factory=_frozen)  # name -> TopicInfo
    brokers: MappingProxyType = field(default_factory=_frozen)  # node id -> BrokerInfo
    version: int = 0  # commands applied so far

    def topic(self, name: str) -> TopicInfo | None:
        return self.topics.get(name)

    def with_topics(self, topics: dict) -> MetadataImage:
        return replace(self, topics=_frozen(topics))

    def with_brokers(self, brokers: dict) -> MetadataImage:
        return replace(self, brokers=_frozen(brokers))

    # -- JSON form ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "topics": [topic_to_dict(t) for t in self.topics.values()],
            "brokers": [
                {
                    "node_id": b.node_id,
                    "address": b.address,
                    "rack": b.rack,
                    "epoch": b.epoch,
                    "fenced": b.fenced,
                }
                for b in self.brokers.values()
            ],
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
                b["node_id"], b["address"], b.get("rack"), b.get("epoch", 0), b.get("fenced", False)
            )
            for b in data.get("brokers", [])
        }
        return cls(_frozen(topics), _frozen(brokers), int(data.get("version", 0)))


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
