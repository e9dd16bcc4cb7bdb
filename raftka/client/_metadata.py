"""The client's view of the cluster: broker addresses and, per topic, partitions and their leaders.

Filled from `GET /v1/cluster` and `GET /v1/topics/{t}`, asked of any reachable node (the bootstrap
addresses first, then brokers learned from the cluster). A topic's entry lives `metadata_max_age_ms`
(Kafka's metadata.max.age.ms, 5 minutes) or until an error says it is stale (40403, a refused
connection), whichever comes first. Concurrent refreshes of one topic share one request.

Not thread-safe: belongs to one client on one event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from raftka.client._http import HttpResponse, HttpTransport, topic_path
from raftka.client.errors import (
    BrokerNotAvailableError,
    NotLeaderError,
    RaftkaConnectionError,
    RaftkaError,
    UnknownPartitionError,
)

# Kafka's metadata.max.age.ms.
DEFAULT_METADATA_MAX_AGE_MS = 300_000


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class PartitionMetadata:
    partition: int
    leader: int | None
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    leader_epoch: int | None


@dataclass(frozen=True, slots=True)
class TopicMetadata:
    name: str
    partitions: tuple[PartitionMetadata, ...]

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> TopicMetadata:
        partitions = tuple(
            sorted(
                (
                    PartitionMetadata(
                        int(p["partition"]),
                        p.get("leader") if isinstance(p.get("leader"), int) else None,
                        tuple(p.get("replicas") or ()),
                        tuple(p.get("isr") or ()),
                        p.get("leader_epoch"),
                    )
                    for p in document.get("partitions") or ()
                ),
                key=lambda p: p.partition,
            )
        )
        return cls(str(document["name"]), partitions)


class ClusterMetadata:
    def __init__(
        self,
        transport: HttpTransport,
        bootstrap: Sequence[str],
        *,
        metadata_max_age_ms: int = DEFAULT_METADATA_MAX_AGE_MS,
        clock_ms: Callable[[], int] = monotonic_ms,
    ):
        self._transport = transport
        self._bootstrap = list(bootstrap)
        self._max_age_ms = metadata_max_age_ms
        self._clock_ms = clock_ms
        self._brokers: dict[int, str] = {}
        self._topics: dict[str, tuple[TopicMetadata, int]] = {}
        self._refreshing: dict[str, asyncio.Future[TopicMetadata]] = {}
        self._preferred: str | None = None

    # -- any node -----------------------------------------------------------------------------------

    def addresses(self) -> list[str]:
        """Where to send a request any node answers: the last good one, the bootstrap list, the brokers."""
        ordered = [self._preferred] if self._preferred else []
        ordered += self._bootstrap + sorted(self._brokers.values())
        return list(dict.fromkeys(a for a in ordered if a))

    async def request_any(self, method: str, path: str, **kwargs: Any) -> HttpResponse:
        """Send to the first node that answers; a refused connection moves on to the next address."""
        last: RaftkaConnectionError | None = None
        for address in self.addresses():
            try:
                response = await self._transport.request(method, address, path, **kwargs)
            except RaftkaConnectionError as exc:
                last = exc
                if self._preferred == address:
                    self._preferred = None
                continue
            self._preferred = address
            return response
        assert last is not None, "addresses() is never empty"
        raise last

    # -- brokers ------------------------------------------------------------------------------------

    async def refresh_brokers(self) -> dict[str, Any]:
        document = (await self.request_any("GET", "/v1/cluster")).json()
        brokers = {}
        for broker in document.get("brokers") or ():
            if isinstance(broker.get("id"), int) and broker.get("address"):
                brokers[broker["id"]] = str(broker["address"])
        self._brokers = brokers
        return document

    async def broker_address(self, node_id: int) -> str:
        address = self._brokers.get(node_id)
        if address is None:
            await self.refresh_brokers()
            address = self._brokers.get(node_id)
        if address is None:
            raise BrokerNotAvailableError(None, f"the cluster metadata has no address for broker {node_id}")
        return address

    # -- topics -------------------------------------------------------------------------------------

    def cached(self, topic: str, now_ms: int | None = None) -> TopicMetadata | None:
        """The topic's metadata if it is known and fresh, else None (without asking anyone)."""
        entry = self._topics.get(topic)
        if entry is None or (self._clock_ms() if now_ms is None else now_ms) - entry[1] > self._max_age_ms:
            return None
        return entry[0]

    async def topic(self, topic: str, *, refresh: bool = False) -> TopicMetadata:
        if not refresh:
            cached = self.cached(topic)
            if cached is not None:
                return cached
        pending = self._refreshing.get(topic)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch_topic(topic))
            self._refreshing[topic] = pending
            pending.add_done_callback(lambda _f: self._refreshing.pop(topic, None))
        return await asyncio.shield(pending)

    async def _fetch_topic(self, topic: str) -> TopicMetadata:
        metadata = TopicMetadata.from_json((await self.request_any("GET", topic_path(topic))).json())
        self._topics[topic] = (metadata, self._clock_ms())
        return metadata

    def invalidate(self, topic: str | None = None) -> None:
        if topic is None:
            self._topics.clear()
            self._brokers.clear()
        else:
            self._topics.pop(topic, None)

    async def partition_count(self, topic: str) -> int:
        return len((await self.topic(topic)).partitions)

    async def leader_address(self, topic: str, partition: int) -> str:
        """The address of the partition's leader; raises a retriable error while it has none."""
        return (await self.leader(topic, partition))[0]

    async def leader(self, topic: str, partition: int) -> tuple[str, int | None]:
        """(address, leader epoch) of the partition's leader; a retriable error while it has none."""
        metadata = await self.topic(topic)
        if partition >= len(metadata.partitions):
            metadata = await self.topic(topic, refresh=True)  # it may have grown
        if not 0 <= partition < len(metadata.partitions):
            raise UnknownPartitionError(
                40402, f"topic {topic!r} has no partition {partition} (it has {len(metadata.partitions)})"
            )
        leader = metadata.partitions[partition].leader
        if leader is None or leader < 0:
            self.invalidate(topic)
            raise NotLeaderError(40403, f"{topic}-{partition} has no leader now")
        try:
            return await self.broker_address(leader), metadata.partitions[partition].leader_epoch
        except RaftkaError:
            self.invalidate(topic)
            raise
