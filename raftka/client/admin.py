"""`Admin`: topics (create, list, describe, alter, delete), offsets, consumer groups and the cluster,
over HTTP/JSON.

Admin requests go to any node (the node forwards what it does not lead), tried in the order of
the bootstrap list; a refused connection moves on to the next address.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raftka.client._http import HttpTransport, parse_bootstrap, topic_path
from raftka.client._metadata import ClusterMetadata
from raftka.client.accumulator import TopicPartition
from raftka.client.errors import RaftkaConnectionError, RaftkaError, RequestTimeoutError
from raftka.client.group_membership import group_path, partitions_from_json


@dataclass(frozen=True, slots=True)
class PartitionDescription:
    partition: int
    leader: int | None
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    leader_epoch: int | None
    log_start_offset: int | None
    high_watermark: int | None


@dataclass(frozen=True, slots=True)
class TopicDescription:
    name: str
    topic_id: str | None
    replication_factor: int | None
    partitions: tuple[PartitionDescription, ...]
    configs: dict[str, str]

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> TopicDescription:
        partitions = tuple(
            PartitionDescription(
                partition=int(p["partition"]),
                leader=p.get("leader"),
                replicas=tuple(p.get("replicas") or ()),
                isr=tuple(p.get("isr") or ()),
                leader_epoch=p.get("leader_epoch"),
                log_start_offset=p.get("log_start_offset"),
                high_watermark=p.get("high_watermark"),
            )
            for p in document.get("partitions") or ()
        )
        return cls(
            name=str(document["name"]),
            topic_id=document.get("topic_id"),
            replication_factor=document.get("replication_factor"),
            partitions=tuple(sorted(partitions, key=lambda p: p.partition)),
            configs={str(k): str(v) for k, v in (document.get("configs") or {}).items()},
        )


@dataclass(frozen=True, slots=True)
class TopicListing:
    name: str
    partitions: int
    replication_factor: int


@dataclass(frozen=True, slots=True)
class BrokerDescription:
    node_id: int
    address: str
    rack: str | None
    roles: tuple[str, ...] = ()
    status: str = "active"  # active | fenced | shutting_down


@dataclass(frozen=True, slots=True)
class ClusterDescription:
    cluster_id: str
    controller_id: int | None
    brokers: tuple[BrokerDescription, ...]
    controller_epoch: int | None = None
    metadata_offset: int | None = None


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    log_start_offset: int
    high_watermark: int
    log_end_offset: int | None


@dataclass(frozen=True, slots=True)
class GroupListing:
    group: str
    state: str  # empty | assigning | stable
    members: int


@dataclass(frozen=True, slots=True)
class MemberDescription:
    member_id: str
    instance_id: str | None
    member_epoch: int
    topics: tuple[str, ...]
    assignment: tuple[TopicPartition, ...]  # what the member owns now
    target: tuple[TopicPartition, ...]  # what the assignor wants it to own (differs while assigning)


@dataclass(frozen=True, slots=True)
class GroupPartitionLag:
    topic: str
    partition: int
    committed_offset: int | None  # the next offset the group consumes; None: nothing committed
    log_end_offset: int | None
    lag: int | None


@dataclass(frozen=True, slots=True)
class GroupDescription:
    group: str
    state: str  # empty | assigning | stable
    assignor: str | None
    group_epoch: int
    members: tuple[MemberDescription, ...]
    offsets: tuple[GroupPartitionLag, ...]
    total_lag: int

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> GroupDescription:
        return cls(
            group=str(document["group"]),
            state=str(document.get("state", "empty")),
            assignor=document.get("assignor"),
            group_epoch=int(document.get("group_epoch") or 0),
            members=tuple(
                MemberDescription(
                    member_id=str(m["member_id"]),
                    instance_id=m.get("instance_id"),
                    member_epoch=int(m.get("member_epoch") or 0),
                    topics=tuple(m.get("topics") or ()),
                    assignment=tuple(partitions_from_json(m.get("assignment"))),
                    target=tuple(partitions_from_json(m.get("target"))),
                )
                for m in document.get("members") or ()
            ),
            offsets=tuple(
                GroupPartitionLag(
                    str(o["topic"]),
                    int(o["partition"]),
                    o.get("committed_offset"),
                    o.get("log_end_offset"),
                    o.get("lag"),
                )
                for o in document.get("offsets") or ()
            ),
            total_lag=int(document.get("total_lag") or 0),
        )

    def owner_of(self) -> dict[TopicPartition, str]:
        """Partition -> the member id that owns it now."""
        return {tp: m.member_id for m in self.members for tp in m.assignment}


@dataclass(frozen=True, slots=True)
class CommittedOffset:
    topic: str
    partition: int
    offset: int  # the next offset the group consumes (Kafka's convention)
    metadata: str
    commit_timestamp_ms: int | None


RESET_TARGETS = ("earliest", "latest", "offset", "timestamp")


class Admin:
    """Asyncio admin client. Use `async with Admin(...) as admin:` or call `close()`."""

    def __init__(
        self,
        bootstrap: str | Sequence[str] | None = None,
        *,
        request_timeout_ms: int = 30_000,
        transport: HttpTransport | None = None,
    ):
        self._owns_transport = transport is None
        self._transport = transport or HttpTransport(request_timeout_ms=request_timeout_ms)
        self._metadata = ClusterMetadata(self._transport, parse_bootstrap(bootstrap))

    async def __aenter__(self) -> Admin:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_transport:
            await self._transport.close()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self._metadata.request_any(method, path, **kwargs)).json()

    # -- topics -------------------------------------------------------------------------------------

    async def create_topic(
        self,
        name: str,
        partitions: int | None = None,
        replication_factor: int | None = None,
        configs: Mapping[str, str | int | bool] | None = None,
    ) -> TopicDescription:
        """Create a topic; None leaves partitions and replication_factor to the node's defaults."""
        body: dict[str, Any] = {"name": name}
        if partitions is not None:
            body["partitions"] = partitions
        if replication_factor is not None:
            body["replication_factor"] = replication_factor
        if configs:
            body["configs"] = dict(configs)
        return TopicDescription.from_json(await self._call("POST", "/v1/topics", json=body))

    async def list_topics(self) -> list[TopicListing]:
        document = await self._call("GET", "/v1/topics")
        return [
            TopicListing(str(t["name"]), int(t["partitions"]), int(t["replication_factor"]))
            for t in document.get("topics") or ()
        ]

    async def describe_topic(self, name: str) -> TopicDescription:
        return TopicDescription.from_json(await self._call("GET", topic_path(name)))

    async def alter_topic(
        self,
        name: str,
        *,
        partitions: int | None = None,
        configs: Mapping[str, str | int | bool] | None = None,
        delete_configs: Sequence[str] | None = None,
    ) -> TopicDescription:
        """Grow the partition count, set configs, remove configs (back to their defaults)."""
        body: dict[str, Any] = {}
        if partitions is not None:
            body["partitions"] = partitions
        if configs:
            body["configs"] = dict(configs)
        if delete_configs:
            body["delete_configs"] = list(delete_configs)
        return TopicDescription.from_json(await self._call("PATCH", topic_path(name), json=body))

    async def delete_topic(self, name: str) -> None:
        await self._call("DELETE", topic_path(name))

    async def list_offsets(self, topic: str, partition: int) -> PartitionOffsets:
        """The partition's log start offset, high watermark and log end offset."""
        document = await self._call("GET", topic_path(topic, "partitions", partition, "offsets"))
        return PartitionOffsets(
            int(document["log_start_offset"]), int(document["high_watermark"]), document.get("log_end_offset")
        )

    async def offset_for_timestamp(self, topic: str, partition: int, timestamp_ms: int) -> int | None:
        """The first offset whose record's timestamp is >= timestamp_ms; None if no record is that new."""
        path = topic_path(topic, "partitions", partition, "offsets")
        return (await self._call("GET", path, params={"timestamp_ms": timestamp_ms})).get("offset")

    # -- consumer groups ----------------------------------------------------------------------------

    async def list_groups(self) -> list[GroupListing]:
        document = await self._call("GET", "/v1/groups")
        return [
            GroupListing(str(g["group"]), str(g.get("state", "empty")), int(g.get("members") or 0))
            for g in document.get("groups") or ()
        ]

    async def describe_group(self, group: str) -> GroupDescription:
        """Members, their assignments and the group's lag per partition; UnknownGroupError if none."""
        return GroupDescription.from_json(await self._call("GET", group_path(group)))

    async def group_offsets(self, group: str) -> list[CommittedOffset]:
        """The group's committed offsets (the next offset to consume in each partition)."""
        document = await self._call("GET", group_path(group, "offsets"))
        return [
            CommittedOffset(
                str(o["topic"]),
                int(o["partition"]),
                int(o["offset"]),
                str(o.get("metadata") or ""),
                o.get("commit_timestamp_ms"),
            )
            for o in document.get("offsets") or ()
        ]

    async def delete_group(self, group: str) -> None:
        """Delete an empty group's committed offsets; GroupNotEmptyError while it has members."""
        await self._call("DELETE", group_path(group))

    async def reset_group_offsets(
        self,
        group: str,
        topic: str,
        *,
        to: str,
        partitions: Sequence[int] | None = None,
        offset: int | None = None,
        timestamp_ms: int | None = None,
        dry_run: bool = False,
    ) -> dict[TopicPartition, int]:
        """Set the committed offsets of an empty group in `topic` (all partitions, or `partitions`):
        to="earliest" (log start), "latest" (high watermark), "offset" (`offset`, kept inside the log)
        or "timestamp" (the first record at or after `timestamp_ms`). Returns the new offsets; with
        dry_run they are only computed. GroupNotEmptyError while the group has members."""
        if to not in RESET_TARGETS:
            raise ValueError(f"to must be one of {', '.join(RESET_TARGETS)}, got {to!r}")
        body: dict[str, Any] = {"topic": topic, "to": to, "dry_run": dry_run}
        if partitions is not None:
            body["partitions"] = [int(p) for p in partitions]
        if to == "offset":
            if offset is None or offset < 0:
                raise ValueError('to="offset" needs offset >= 0')
            body["offset"] = offset
        if to == "timestamp":
            if timestamp_ms is None or timestamp_ms < 0:
                raise ValueError('to="timestamp" needs timestamp_ms >= 0')
            body["timestamp_ms"] = timestamp_ms
        document = await self._call("POST", group_path(group, "offsets", "reset"), json=body)
        return {
            TopicPartition(str(o["topic"]), int(o["partition"])): int(o["offset"])
            for o in document.get("offsets") or ()
        }

    # -- cluster ------------------------------------------------------------------------------------

    async def describe_cluster(self) -> ClusterDescription:
        document = await self._call("GET", "/v1/cluster")
        return ClusterDescription(
            cluster_id=str(document.get("cluster_id", "")),
            controller_id=document.get("controller_id"),
            brokers=tuple(
                BrokerDescription(
                    int(b["id"]),
                    str(b["address"]),
                    b.get("rack"),
                    tuple(b.get("roles") or ()),
                    str(b.get("status", "active")),
                )
                for b in document.get("brokers") or ()
            ),
            controller_epoch=document.get("controller_epoch"),
            metadata_offset=document.get("metadata_offset"),
        )

    async def node_ready(self, address: str) -> bool | None:
        """GET /readyz on one node: True ready, False not ready, None unreachable."""
        try:
            await self._transport.request("GET", address, "/readyz", timeout_ms=5_000)
        except (RaftkaConnectionError, RequestTimeoutError):
            return None
        except RaftkaError:
            return False
        return True
