"""The HTTP/JSON data plane (API v1): aiohttp routes as thin adapters over the node's cores.

Each handler parses and checks its input, calls the replica manager or the metadata planner, and
turns the answer into JSON. Every refusal is an `ApiError` rendered as
`{"error_code": ..., "message": ...}` by the error middleware, and is raised before anything is
written: a produce request is checked whole (topic, partitions, leadership, acks, sizes) before its
first batch is appended.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web

from metadata.commands import (
    MetadataError,
    plan_alter_configs,
    plan_create_partitions,
    plan_delete_topic,
)
from metadata.controller import plan_alter_partition
from metadata.image import NO_LEADER, TopicInfo
from metadata.topic_config import effective_configs
from node import replica_stream
from node.avro_json import avro_decoder, schema_lookup
from node.errors import ApiError, refuse_unknown_fields
from node.fetcher import ReplicaFetchRequest, encode_fetch_response, fetch_response_parts
from node.forward import FORWARDED_HEADER, METADATA_VERSION_HEADER, ForwardTo, call, forward, is_forwarded
from node.openapi import openapi_document
from node.records import ProducerFields, check_producer_fields, parse_produce_body, record_to_json
from node.replica import (
    FetchResult,
    Partition,
    ReplicaFetchResult,
    replica_log_end_offsets,
    wait_for_append,
)
from raftka.partitioner import partition_for_key
from storage.record_batch import (
    InvalidBatchError,
    NewRecord,
    check_producer_batch,
    decode_records,
    encode_batch,
    iter_batches,
)

log = logging.getLogger(__name__)

BATCH_CONTENT_TYPE = "application/vnd.raftka.batch"
JSON_CONTENT_TYPE = "application/json"
ACKS_VALUES = ("all", "1", "0")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type=JSON_CONTENT_TYPE, headers=headers
    )


def error_response(error: ApiError) -> web.Response:
    return json_response(error.body(), status=error.status)


# -- query parsing -----------------------------------------------------------------------------------


def query_int(request: web.Request, name: str, default: int | None, minimum: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise ApiError(42201, f"query parameter {name} is required")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(42201, f"query parameter {name} must be an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ApiError(42201, f"query parameter {name} must be between {minimum} and {maximum}, got {value}")
    return value


def path_partition(request: web.Request) -> int:
    raw = request.match_info["partition"]
    if not raw.isdigit() or len(raw) > 9:
        raise ApiError(42201, f"partition must be a non-negative integer, got {raw!r}")
    return int(raw)


def parse_acks(request: web.Request) -> str:
    acks = request.query.get("acks", "all")
    if acks == "-1":
        acks = "all"
    if acks not in ACKS_VALUES:
        raise ApiError(42201, f"acks must be all, 1 or 0, got {acks!r}")
    return acks


async def read_body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app["node"].config.max_request_bytes
        raise ApiError(41301, f"request body is larger than max_request_bytes = {limit}") from None


async def read_json_object(request: web.Request) -> dict[str, Any]:
    body = await read_body(request)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(40001, f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ApiError(42201, "request body must be a JSON object")
    return document


def content_type_of(request: web.Request) -> str:
    return request.headers.get("Content-Type", JSON_CONTENT_TYPE).split(";")[0].strip().lower()


def wants_binary(request: web.Request) -> bool:
    accept = request.headers.get("Accept", JSON_CONTENT_TYPE)
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if BATCH_CONTENT_TYPE in kinds:
        return True
    if any(k in (JSON_CONTENT_TYPE, "*/*", "application/*", "") for k in kinds):
        return False
    raise ApiError(40601, f"cannot answer with {accept!r}: use {JSON_CONTENT_TYPE} or {BATCH_CONTENT_TYPE}")


# -- handlers -------------------------------------------------------------------------------------------


class Handlers:
    def __init__(self, node):
        self.node = node
        self._sticky = itertools.count()
        self._streams: set[replica_stream.LeaderStream] = set()

    @property
    def replicas(self):
        return self.node.replicas

    # topics

    async def create_topic(self, request: web.Request) -> web.Response:
        document = await read_json_object(request)
        refuse_unknown_fields(document, {"name", "partitions", "replication_factor", "configs"})
        if "name" not in document:
            raise ApiError(42201, "name is required")
        config = self.node.config
        topic = await self.node.create_topic(
            document["name"],
            document.get("partitions", config.default_partitions),
            document.get("replication_factor", config.default_replication_factor),
            document.get("configs"),
        )
        return json_response(self.describe(topic), status=201, headers=self.version_header())

    def version_header(self) -> dict[str, str]:
        return {METADATA_VERSION_HEADER: str(self.node.store.image.version)}

    def controller_or_forward(self, request: web.Request) -> None:
        """Return when this node is the active controller; otherwise forward the request to it."""
        controller = self.node.controller
        if controller is not None and controller.active:
            return
        address = self.node.lifecycle.controller_address()
        if address is None or is_forwarded(request):
            image = self.node.store.image
            raise ApiError(
                50303,
                f"node {self.node.config.node_id} is not the active controller and cannot reach it "
                f"(controller: {image.controller_id}); retry",
            )
        raise ForwardTo(address, "the active controller", unreachable_code=50303)

    def leader_or_forward(self, request: web.Request, topic_name: str, index: int) -> Partition:
        """This node's replica when it leads the partition; otherwise forward the request to the leader."""
        topic = self.replicas.topic(topic_name)
        if not 0 <= index < len(topic.partitions):
            raise ApiError(
                40402, f"topic {topic_name!r} has no partition {index} (it has {len(topic.partitions)})"
            )
        info = topic.partitions[index]
        me = self.node.config.node_id
        if info.leader == me:
            partition = self.replicas.partitions.get((topic_name, index))
            if partition is not None:
                return partition
        if info.leader == NO_LEADER:
            raise ApiError(
                40403,
                f"partition {topic_name}-{index} has no leader: none of its in-sync replicas is available",
            )
        broker = self.node.store.image.brokers.get(info.leader)
        if broker is None or broker.fenced or is_forwarded(request):
            raise ApiError(
                40403,
                f"node {me} is not the leader of {topic_name}-{index} (leader: {info.leader}); refresh metadata",
            )
        raise ForwardTo(broker.address, f"the leader of {topic_name}-{index} (node {info.leader})")

    async def list_topics(self, request: web.Request) -> web.Response:
        topics = [
            {"name": t.name, "partitions": len(t.partitions), "replication_factor": t.replication_factor}
            for t in sorted(self.node.store.image.topics.values(), key=lambda t: t.name)
        ]
        return json_response({"topics": topics})

    async def get_topic(self, request: web.Request) -> web.Response:
        document = self.describe(self.replicas.topic(request.match_info["topic"]))
        if not is_forwarded(request):
            await self._fill_remote_offsets(document)
        return json_response(document)

    async def _fill_remote_offsets(self, document: dict[str, Any]) -> None:
        """Ask the leaders of the partitions led elsewhere for their offsets (1 s each, concurrently);
        a leader that does not answer leaves them null."""
        image = self.node.store.image
        missing = [p for p in document["partitions"] if p["high_watermark"] is None and p["leader"] >= 0]

        async def ask(entry: dict[str, Any]) -> None:
            broker = image.brokers.get(entry["leader"])
            if broker is None or broker.fenced:
                return
            path = f"/v1/topics/{quote(document['name'], safe='')}/partitions/{entry['partition']}/offsets"
            try:
                status, body, _ = await call(self.node, broker.address, "GET", path, timeout_s=1.0)
            except ApiError:
                return
            if status == 200:
                entry["log_start_offset"] = body.get("log_start_offset")
                entry["high_watermark"] = body.get("high_watermark")
                entry["replica_log_end_offsets"] = body.get("replica_log_end_offsets")

        await asyncio.gather(*(ask(entry) for entry in missing))

    def describe(self, topic: TopicInfo) -> dict[str, Any]:
        partitions = []
        for index, info in enumerate(topic.partitions):
            local = self.replicas.partitions.get((topic.name, index))
            if local is not None and local.leader is not None and not local.leader.high_watermark_known:
                local = None  # a new leader's provisional HW is not published (asked again, or null)
            partitions.append(
                {
                    "partition": index,
                    "leader": info.leader,
                    "replicas": list(info.replicas),
                    "isr": list(info.isr),
                    "leader_epoch": info.leader_epoch,
                    "log_start_offset": local.log.log_start_offset if local else None,
                    "high_watermark": local.high_watermark if local and local.is_leader else None,
                    "replica_log_end_offsets": replica_log_end_offsets(local) if local else None,
                }
            )
        return {
            "name": topic.name,
            "topic_id": topic.topic_id,
            "replication_factor": topic.replication_factor,
            "partitions": partitions,
            "configs": effective_configs(dict(topic.configs)),
        }

    async def alter_topic(self, request: web.Request) -> web.Response:
        name = request.match_info["topic"]
        document = await read_json_object(request)
        self.controller_or_forward(request)
        refuse_unknown_fields(document, {"partitions", "configs", "delete_configs"})
        image = self.node.store.image
        with metadata_errors():  # check the whole request before changing anything
            if "partitions" in document:
                plan_create_partitions(image, name, document["partitions"])
            if "configs" in document or "delete_configs" in document:
                plan_alter_configs(image, name, document.get("configs"), document.get("delete_configs"))
            plan_delete_topic(image, name)  # 40401 for an unknown topic, even with nothing to change
        controller = self.node.controller
        if "partitions" in document:

            def more_partitions(image):
                command = plan_create_partitions(image, name, document["partitions"])
                return command if command.assignments else None  # same count: nothing to add

            await controller.propose_planned(more_partitions)
        if "configs" in document or "delete_configs" in document:
            await controller.propose_planned(
                lambda image: plan_alter_configs(
                    image, name, document.get("configs"), document.get("delete_configs")
                )
            )
        return json_response(self.describe(self.replicas.topic(name)), headers=self.version_header())

    async def delete_topic(self, request: web.Request) -> web.Response:
        name = request.match_info["topic"]
        self.controller_or_forward(request)
        await self.node.controller.propose_planned(lambda image: plan_delete_topic(image, name))
        return json_response({"deleted": name}, headers=self.version_header())

    # produce

    async def produce(self, request: web.Request) -> web.Response:
        acks = parse_acks(request)
        entries = parse_produce_body(
            await read_body(request), allow_partition=True, schemas=self.schema_lookup()
        ).entries
        topic = await self.node.topic_for_produce(request.match_info["topic"])
        count = len(topic.partitions)
        sticky = next(self._sticky) % count
        by_partition: dict[int, list[tuple[int, NewRecord]]] = {}
        for position, (explicit, record) in enumerate(entries):
            if explicit is not None:
                if explicit >= count:
                    raise ApiError(
                        40402, f"records[{position}].partition {explicit}: topic {topic.name!r} has {count}"
                    )
                index = explicit
            elif record.key is not None:
                index = partition_for_key(record.key, count)
            else:
                index = sticky
            by_partition.setdefault(index, []).append((position, record))
        offsets, _ = await self._append_json_groups(request, topic.name, by_partition, acks)
        return json_response({"offsets": [{"partition": p, "offset": o} for p, o in offsets]})

    async def _append_json_groups(
        self,
        request: web.Request,
        topic: str,
        by_partition: dict[int, list[tuple[int, NewRecord]]],
        acks: str,
        producer: ProducerFields | None = None,
    ) -> tuple[list[tuple[int, int]], bool]:
        """Append each partition's records as one batch: here for the partitions this node leads,
        forwarded on the binary path to the leaders of the others. Everything is checked before the
        first append; the forwarded batches go first, so a refusal from another leader leaves this
        node's partitions unwritten (a failure between two leaders can leave the first written).

        Returns (partition, offset) per record and whether a local batch was an idempotent retry
        (`producer`: the idempotent fields, for a single partition led here)."""
        fields = {} if producer is None else producer._asdict()
        now = int(time.time() * 1000)
        timeout_s = self.produce_timeout_s(request)  # checked before anything is appended
        local: list[tuple[Partition, list[int], bytes]] = []
        remote: list[tuple[int, ForwardTo, list[int], bytes]] = []
        limit = self.node.replicas.max_message_bytes(topic)
        for index, items in sorted(by_partition.items()):
            batch = encode_batch([record for _, record in items], now_ms=now, **fields)
            if len(batch) > limit:
                raise ApiError(
                    41301,
                    f"the records for {topic}-{index} encode to {len(batch)} bytes, "
                    f"more than max.message.bytes = {limit}",
                )
            positions = [position for position, _ in items]
            try:
                partition = self.leader_or_forward(request, topic, index)
            except ForwardTo as target:
                remote.append((index, target, positions, batch))
                continue
            partition.check_leader()
            partition.validate_acks(acks)
            local.append((partition, positions, batch))
        results: list[tuple[int, int]] = [(0, 0)] * sum(len(items) for items in by_partition.values())
        for index, target, positions, batch in remote:
            first = await self._forward_batch(target, topic, index, batch, acks, timeout_s)
            for i, position in enumerate(positions):
                results[position] = (index, -1 if acks == "0" else first + i)
        commits = []
        duplicate = False
        for partition, positions, batch in local:
            info = partition.append(batch)
            duplicate = duplicate or info.duplicate
            if not info.duplicate:
                self.node.metrics.record_produce(partition.topic, len(positions), len(batch))
            for i, position in enumerate(positions):
                results[position] = (partition.index, -1 if acks == "0" else info.first_offset + i)
            if acks == "all":
                commits.append(partition.wait_committed(info.last_offset, timeout_s))
        await asyncio.gather(*commits)
        return results, duplicate

    def produce_timeout_s(self, request: web.Request) -> float:
        """How long acks=all waits for the in-sync replicas (`?timeout_ms=`, else the node's default)."""
        default = self.node.config.produce_timeout_ms
        return query_int(request, "timeout_ms", default, 1, 300_000) / 1000

    async def _forward_batch(
        self, target: ForwardTo, topic: str, index: int, batch: bytes, acks: str, timeout_s: float
    ) -> int:
        """Append one encoded batch on the partition's leader; its first offset."""
        url = f"http://{self.node.config.dial(target.address)}/v1/topics/{quote(topic, safe='')}/partitions/{index}/records?acks={acks}"
        if acks == "all":
            url += f"&timeout_ms={int(timeout_s * 1000)}"
        headers = {"Content-Type": BATCH_CONTENT_TYPE, FORWARDED_HEADER: str(self.node.config.node_id)}
        try:
            async with self.node.http.post(url, data=batch, headers=headers) as response:
                document = orjson.loads(await response.read())
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError) as exc:
            raise ApiError(40403, f"{target.what} at {target.address} cannot be reached: {exc}") from None
        if status != 200:
            raise ApiError(int(document.get("error_code", status * 100 + 1)), str(document.get("message")))
        return int(document["base_offset"])

    async def produce_to_partition(self, request: web.Request) -> web.Response:
        acks = parse_acks(request)
        index = path_partition(request)
        kind = content_type_of(request)
        if kind == BATCH_CONTENT_TYPE:
            body = await read_body(request)
            topic = await self.node.topic_for_produce(request.match_info["topic"])
            partition = self.leader_or_forward(request, topic.name, index)
            partition.check_leader()
            partition.validate_acks(acks)
            try:
                header = check_producer_batch(body)
            except InvalidBatchError as exc:
                code = 42202 if "checksum" in str(exc) else 42201
                raise ApiError(code, f"invalid record batch: {exc}") from None
            check_producer_fields(
                header.producer_id,
                header.producer_epoch,
                header.base_sequence,
                self.node.store.image.next_producer_id,
            )
            timeout_s = self.produce_timeout_s(request)
            info = partition.append(body, checked_header=header)  # checksum checked just above
            if not info.duplicate:
                self.node.metrics.record_produce(partition.topic, header.record_count, len(body))
            if acks == "all":
                await partition.wait_committed(info.last_offset, timeout_s)
            base, last = (-1, -1) if acks == "0" else (info.first_offset, info.last_offset)
            return json_response(
                {
                    "partition": index,
                    "base_offset": base,
                    "last_offset": last,
                    "log_start_offset": info.log_start_offset,
                    "duplicate": info.duplicate,
                }
            )
        if kind != JSON_CONTENT_TYPE:
            raise ApiError(
                41501,
                f"Content-Type {kind!r} is not accepted: use {JSON_CONTENT_TYPE} or {BATCH_CONTENT_TYPE}",
            )
        body = parse_produce_body(
            await read_body(request), allow_partition=False, schemas=self.schema_lookup()
        )
        topic = await self.node.topic_for_produce(request.match_info["topic"])
        if index >= len(topic.partitions):
            raise ApiError(
                40402, f"topic {topic.name!r} has no partition {index} (it has {len(topic.partitions)})"
            )
        if body.producer is not None:
            check_producer_fields(*body.producer, self.node.store.image.next_producer_id)
            self.leader_or_forward(request, topic.name, index)  # the leader answers whole (duplicate)
        offsets, duplicate = await self._append_json_groups(
            request,
            topic.name,
            {index: [(i, record) for i, (_, record) in enumerate(body.entries)]},
            acks,
            body.producer,
        )
        return json_response(
            {"offsets": [{"partition": p, "offset": o} for p, o in offsets], "duplicate": duplicate}
        )

    def schema_lookup(self):
        """Schemas for produce bodies that name one (node/avro_json.py)."""
        return schema_lookup(self.node.store.image.schema_registry)

    # fetch

    async def fetch(self, request: web.Request) -> web.Response:
        binary = wants_binary(request)
        config = self.node.config
        partition = self.leader_or_forward(request, request.match_info["topic"], path_partition(request))
        partition.check_leader(self.leader_epoch_param(request))
        offset = query_int(request, "offset", None, 0, 2**63 - 1)
        max_bytes = query_int(request, "max_bytes", 1024 * 1024, 1, config.fetch_bytes_max)
        max_wait_ms = query_int(request, "max_wait_ms", 500, 0, config.fetch_wait_max_ms)
        min_bytes = query_int(request, "min_bytes", 1, 0, config.fetch_bytes_max)
        encoding = request.query.get("encoding", "auto")
        decode = request.query.get("decode", "none")
        if decode not in ("none", "avro"):
            raise ApiError(42201, f"decode must be none or avro, got {decode!r}")
        if encoding not in ("auto", "base64"):
            raise ApiError(42201, f"encoding must be auto or base64, got {encoding!r}")
        result = await partition.fetch(offset, max_bytes, min_bytes, max_wait_ms)
        next_offset = offset
        for header, _ in iter_batches(result.data, verify=False):
            next_offset = header.next_offset
        self.node.metrics.record_fetch(partition.topic, result.data)
        if binary:
            return web.Response(
                body=result.data,
                content_type=BATCH_CONTENT_TYPE,
                headers=fetch_headers(result, next_offset),
            )
        records = []
        decoder = avro_decoder(self.node.store.image.schema_registry) if decode == "avro" else None
        for header, view in iter_batches(result.data, verify=False):
            for record in decode_records(view, header):
                if record.offset >= offset:
                    records.append(record_to_json(record, base64_only=encoding == "base64", decode=decoder))
        return json_response(
            {
                "records": records,
                "next_offset": next_offset,
                "high_watermark": result.high_watermark,
                "log_start_offset": result.log_start_offset,
            }
        )

    async def offsets(self, request: web.Request) -> web.Response:
        partition = self.leader_or_forward(request, request.match_info["topic"], path_partition(request))
        leader = partition.check_leader(self.leader_epoch_param(request))
        if not leader.high_watermark_known:  # provisional: below what the old leader published
            raise ApiError(
                40403,
                f"{partition.topic}-{partition.index}: the new leader is still learning its high watermark; retry",
            )
        if "timestamp_ms" in request.query:
            timestamp = query_int(request, "timestamp_ms", None, 0, 2**63 - 1)
            found = partition.log.offset_for_timestamp(timestamp)
            if found is None or found.offset >= partition.high_watermark:
                return json_response({"offset": None, "timestamp_ms": None})
            return json_response({"offset": found.offset, "timestamp_ms": found.timestamp_ms})
        return json_response(
            {
                "log_start_offset": partition.log.log_start_offset,
                "high_watermark": partition.high_watermark,
                "log_end_offset": partition.log.log_end_offset,
                "leader_epoch": leader.leader_epoch,
                "replica_log_end_offsets": replica_log_end_offsets(partition),
            }
        )

    @staticmethod
    def leader_epoch_param(request: web.Request) -> int | None:
        """`?leader_epoch=N`: the epoch the client knows; a stale one is fenced (KIP-320)."""
        if "leader_epoch" not in request.query:
            return None
        return query_int(request, "leader_epoch", None, 0, 2**31 - 1)

    # node

    async def livez(self, request: web.Request) -> web.Response:
        return json_response({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        if not self.node.ready:
            raise ApiError(
                50302, f"node {self.node.config.node_id} is not ready: {self.node.not_ready_reason()}"
            )
        return json_response({"status": "ready"})

    async def cluster(self, request: web.Request) -> web.Response:
        store = self.node.store
        if store is None:
            raise ApiError(
                50302, f"node {self.node.config.node_id} is not ready: {self.node.not_ready_reason()}"
            )
        image = store.image
        return json_response(
            {
                "cluster_id": image.cluster_id or self.node.cluster_id,
                "node_id": self.node.config.node_id,
                "controller_id": image.controller_id,
                "controller_epoch": image.controller_epoch,
                "metadata_offset": image.version,
                "under_replicated_partitions": sum(
                    1 for t in image.topics.values() for p in t.partitions if len(p.isr) < len(p.replicas)
                ),
                "offline_partitions": sum(
                    1 for t in image.topics.values() for p in t.partitions if p.leader < 0
                ),
                "raft": store.status(),
                "brokers": [
                    {
                        "id": b.node_id,
                        "address": b.address,
                        "rack": b.rack,
                        "roles": list(b.roles),
                        "status": b.status,
                        "epoch": b.epoch,
                    }
                    for b in sorted(image.brokers.values(), key=lambda b: b.node_id)
                ],
            }
        )

    async def elect_leaders(self, request: web.Request) -> web.Response:
        """Preferred leader election now (the controller also runs it periodically)."""
        self.controller_or_forward(request)
        moved = await self.node.controller.elect_preferred()
        return json_response({"moved": moved}, headers=self.version_header())

    # internal: brokers to the active controller

    def _broker_request(self, request: web.Request, document: dict, *fields: str) -> tuple[int, list]:
        raw = request.match_info["node_id"]
        if not raw.isdigit():
            raise ApiError(42201, f"node id must be a non-negative integer, got {raw!r}")
        values = []
        for name in fields:
            value = document.get(name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ApiError(42201, f"{name} must be an integer")
            values.append(value)
        return int(raw), values

    async def allocate_producer_ids(self, request: web.Request) -> web.Response:
        """A block of producer ids for one broker incarnation (node/producer_ids.py)."""
        document = await read_json_object(request)
        self.controller_or_forward(request)
        node_id, (epoch,) = self._broker_request(request, document, "broker_epoch")
        first, size = await self.node.controller.allocate_producer_ids(node_id, epoch)
        return json_response({"first": first, "size": size})

    async def new_producer(self, request: web.Request) -> web.Response:
        """An id for a new idempotent producer, epoch 0. The body, when there is one, must be `{}`."""
        body = await read_body(request)
        if body.strip() and body.strip() != b"{}":
            raise ApiError(42201, "POST /v1/producers takes no fields (send {} or nothing)")
        producer_id = await self.node.producer_ids.new_id()
        return json_response({"producer_id": producer_id, "producer_epoch": 0})

    async def register_broker(self, request: web.Request) -> web.Response:
        document = await read_json_object(request)
        self.controller_or_forward(request)
        node_id, _ = self._broker_request(request, document)
        address, rack, roles = document.get("address"), document.get("rack"), document.get("roles")
        if not isinstance(address, str) or not address:
            raise ApiError(42201, "address must be HOST:PORT")
        if rack is not None and not isinstance(rack, str):
            raise ApiError(42201, "rack must be a string or null")
        if not isinstance(roles, list) or not roles or not all(r in ("controller", "broker") for r in roles):
            raise ApiError(42201, "roles must be a list of controller and/or broker")
        epoch = await self.node.controller.register(node_id, address, rack, tuple(roles))
        return json_response({"broker_epoch": epoch}, headers=self.version_header())

    async def broker_heartbeat(self, request: web.Request) -> web.Response:
        document = await read_json_object(request)
        self.controller_or_forward(request)
        node_id, (epoch, version) = self._broker_request(
            request, document, "broker_epoch", "metadata_version"
        )
        return json_response(self.node.controller.heartbeat(node_id, epoch, version))

    async def broker_shutdown(self, request: web.Request) -> web.Response:
        document = await read_json_object(request)
        self.controller_or_forward(request)
        node_id, (epoch,) = self._broker_request(request, document, "broker_epoch")
        answer = await self.node.controller.controlled_shutdown(node_id, epoch)
        return json_response(answer, headers=self.version_header())

    def parse_replica_fetch(self, document: Any) -> ReplicaFetchRequest:
        """A follower's fetch document, checked whole (42201 naming the field)."""
        if not isinstance(document, dict):
            raise ApiError(42201, "a replica fetch must be a JSON object")
        config = self.node.config
        replica_id = document.get("replica_id")
        entries = document.get("partitions")
        if not isinstance(replica_id, int) or not isinstance(entries, list):
            raise ApiError(42201, "replica_id (integer) and partitions (list) are required")
        numbers = {}
        for name, default in (("replica_epoch", -1), ("max_wait_ms", 0), ("max_bytes", 1 << 20)):
            value = document.get(name, default)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ApiError(42201, f"{name} must be an integer")
            numbers[name] = value
        wanted = []
        for entry in entries:
            try:
                wanted.append(
                    (
                        str(entry["topic"]),
                        int(entry["partition"]),
                        int(entry["fetch_offset"]),
                        int(entry["last_fetched_epoch"]),
                        int(entry["leader_epoch"]),
                    )
                )
            except (KeyError, TypeError, ValueError):
                raise ApiError(42201, f"bad partition entry in a replica fetch: {entry!r}") from None
        return ReplicaFetchRequest(
            replica_id,
            numbers["replica_epoch"],
            max(0, min(numbers["max_wait_ms"], config.fetch_wait_max_ms)),
            max(1, min(numbers["max_bytes"], config.fetch_bytes_max)),
            wanted,
        )

    async def answer_replica_fetch(
        self, fetch: ReplicaFetchRequest
    ) -> list[tuple[str, int, ReplicaFetchResult]]:
        """Each partition's answer (node/fetcher.py encodes them), parked until a partition has data
        or max_wait_ms passes."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + fetch.max_wait_ms / 1000
        while True:
            answers = []
            waits = []
            for topic, index, fetch_offset, last_epoch, leader_epoch in fetch.partitions:
                partition = self.replicas.partitions.get((topic, index))
                if partition is None:
                    answers.append((topic, index, ReplicaFetchResult(b"", 0, 0, 0, error_code=40403)))
                    continue
                answers.append(
                    (
                        topic,
                        index,
                        partition.read_for_follower(
                            fetch.replica_id,
                            fetch_offset,
                            last_epoch,
                            leader_epoch,
                            fetch.max_bytes,
                            fetch.replica_epoch,
                        ),
                    )
                )
                waits.append(partition)
            remaining = deadline - loop.time()
            ready = any(r.data or r.error_code or r.diverging for _, _, r in answers)
            if ready or remaining <= 0 or not waits:
                break
            await wait_for_append(waits, remaining)
        self.node.metrics.replica_fetches.observe(loop.time() - started)
        return answers

    async def replica_fetch(self, request: web.Request) -> web.Response:
        """One follower fetch over plain HTTP (tools and tests; the followers use `replica_stream`)."""
        fetch = self.parse_replica_fetch(await read_json_object(request))
        body = encode_fetch_response(await self.answer_replica_fetch(fetch))
        return web.Response(body=body, content_type="application/octet-stream")

    async def replica_stream(self, request: web.Request) -> web.StreamResponse:
        """A follower's replication connection (node/replica_stream.py): after the upgrade, one fetch
        frame after another, each answered when it is ready, so the connection alternates strictly:
        fetch, answer, fetch, answer. A bad fetch gets a REFUSED frame with its error code and
        message, and the connection ends."""
        stream = await replica_stream.accept(request, self.node.config.max_request_bytes)
        self._streams.add(stream)
        try:
            while True:
                try:
                    document = await stream.next_fetch()
                    if document is None:
                        break  # the follower went away
                    fetch = self.parse_replica_fetch(orjson.loads(document))
                except orjson.JSONDecodeError as exc:
                    stream.refuse(ApiError(40001, f"a replica fetch is not valid JSON: {exc}"))
                    break
                except ApiError as error:
                    stream.refuse(error)
                    break
                await stream.send_answer(fetch_response_parts(await self.answer_replica_fetch(fetch)))
        finally:
            self._streams.discard(stream)
            stream.close()
        return stream.response

    async def close_streams(self, app: web.Application) -> None:
        """On shutdown: end every follower's replication connection (they reconnect elsewhere)."""
        for stream in list(self._streams):
            stream.close()

    async def alter_partition(self, request: web.Request) -> web.Response:
        """A leader asks the controller for a new ISR (Kafka's AlterPartition)."""
        document = await read_json_object(request)
        self.controller_or_forward(request)
        try:
            broker_id = int(document["broker_id"])
            broker_epoch = int(document["broker_epoch"])
            topic_id = str(document["topic_id"])
            index = int(document["partition"])
            leader_epoch = int(document["leader_epoch"])
            partition_epoch = int(document["partition_epoch"])
            isr = tuple(int(r) for r in document["isr"])
            joining = tuple((int(r), int(e)) for r, e in document.get("joining", ()))
        except (KeyError, TypeError, ValueError):
            raise ApiError(
                42201,
                "alter-partition needs broker_id, broker_epoch, topic_id, partition, "
                "leader_epoch, partition_epoch and isr",
            ) from None
        image = await self.node.controller.propose_planned(
            lambda image: plan_alter_partition(
                image, broker_id, broker_epoch, topic_id, index, leader_epoch, partition_epoch, isr, joining
            )
        )
        topic = next((t for t in image.topics.values() if t.topic_id == topic_id), None)
        info = topic.partitions[index] if topic is not None and index < len(topic.partitions) else None
        return json_response(
            {"isr": list(info.isr) if info else [], "partition_epoch": info.partition_epoch if info else -1},
            headers=self.version_header(),
        )

    async def metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.node.metrics.render(self.replicas, self.node)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def openapi(self, request: web.Request) -> web.Response:
        return json_response(openapi_document())


def fetch_headers(result: FetchResult, next_offset: int) -> dict[str, str]:
    return {
        "X-Raftka-Next-Offset": str(next_offset),
        "X-Raftka-High-Watermark": str(result.high_watermark),
        "X-Raftka-Log-Start-Offset": str(result.log_start_offset),
    }


class metadata_errors:
    """Turn a MetadataError from a planner into the matching ApiError."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if isinstance(error, MetadataError):
            raise ApiError(error.error_code, error.message) from None
        return False


def new_topic_id() -> str:
    return uuid.uuid4().hex


# -- the app ------------------------------------------------------------------------------------------


@web.middleware
async def error_middleware(request: web.Request, handler):
    node = request.app["node"]
    started = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    status = 500
    try:
        if not node.metadata_ready and request.path.startswith("/v1/"):
            raise ApiError(50302, f"node {node.config.node_id} is not ready: {node.not_ready_reason()}")
        try:
            response = await handler(request)
        except ForwardTo as target:
            response = await forward(node, request, target)
        status = response.status
        return response
    except ApiError as error:
        status = error.status
        return error_response(error)
    except web.HTTPNotFound:
        status = 404
        return error_response(ApiError(40404, f"no such path: {request.path} (see /openapi.json)"))
    except web.HTTPMethodNotAllowed as exc:
        status = 405
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error_response(
            ApiError(40501, f"{request.method} is not allowed on {request.path} (allowed: {allowed})")
        )
    except web.HTTPRequestEntityTooLarge:
        status = 413
        limit = node.config.max_request_bytes
        return error_response(ApiError(41301, f"request body is larger than max_request_bytes = {limit}"))
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(ApiError(50001, "internal error; see the node's log"))
    finally:
        node.metrics.record_request(request.method, route, status, time.perf_counter() - started)


def build_app(node) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=node.config.max_request_bytes)
    app["node"] = node
    h = Handlers(node)
    app.router.add_get("/livez", h.livez)
    app.router.add_get("/readyz", h.readyz)
    app.router.add_get("/metrics", h.metrics)
    app.router.add_get("/openapi.json", h.openapi)
    app.router.add_get("/v1/cluster", h.cluster)
    app.router.add_post("/v1/cluster/elect-leaders", h.elect_leaders)
    app.router.add_post("/v1/internal/brokers/{node_id}/register", h.register_broker)
    app.router.add_post("/v1/internal/brokers/{node_id}/heartbeat", h.broker_heartbeat)
    app.router.add_post("/v1/internal/brokers/{node_id}/shutdown", h.broker_shutdown)
    app.router.add_post("/v1/internal/brokers/{node_id}/producer-ids", h.allocate_producer_ids)
    app.router.add_post("/v1/producers", h.new_producer)
    from node.group_api import add_group_routes  # it builds on this module's helpers

    add_group_routes(app, node, h)
    from node.registry_api import add_registry_routes  # Confluent's Schema Registry API, at the root

    add_registry_routes(app, node, h)
    app.router.add_post("/v1/internal/replica/fetch", h.replica_fetch)
    app.router.add_get(replica_stream.STREAM_PATH, h.replica_stream)
    app.on_shutdown.append(h.close_streams)
    app.router.add_post("/v1/internal/alter-partition", h.alter_partition)
    app.router.add_post("/v1/topics", h.create_topic)
    app.router.add_get("/v1/topics", h.list_topics)
    app.router.add_get("/v1/topics/{topic}", h.get_topic)
    app.router.add_patch("/v1/topics/{topic}", h.alter_topic)
    app.router.add_delete("/v1/topics/{topic}", h.delete_topic)
    app.router.add_post("/v1/topics/{topic}/records", h.produce)
    app.router.add_post("/v1/topics/{topic}/partitions/{partition}/records", h.produce_to_partition)
    app.router.add_get("/v1/topics/{topic}/partitions/{partition}/records", h.fetch)
    app.router.add_get("/v1/topics/{topic}/partitions/{partition}/offsets", h.offsets)
    return app
