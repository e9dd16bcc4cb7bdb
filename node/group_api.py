"""The consumer-group routes of the HTTP API: thin adapters over node/groups.py (the decisions) and
node/coordinator.py (offsets and where a group lives).

Every group request goes to the group's coordinator, the leader of its `__consumer_offsets`
partition: any other node forwards it there, one hop. `GET /v1/groups` asks every broker for the
groups it coordinates and merges the answers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiohttp import web

from node.api import json_response, query_int, read_json_object
from node.coordinator import OFFSETS_TOPIC, GroupCoordinator, group_error
from node.errors import ApiError, refuse_unknown_fields
from node.forward import call
from node.groups import GroupError, TopicPartition

GROUP_NAME_MAX = 249  # as Kafka's group and topic names
METADATA_MAX = 4096  # bytes of metadata per committed offset (Kafka's offset.metadata.max.bytes)
RESET_TARGETS = ("earliest", "latest", "offset", "timestamp")


def now_ms() -> int:
    return int(time.monotonic() * 1000)


def group_name(request: web.Request) -> str:
    name = request.match_info["group"]
    if not name or len(name) > GROUP_NAME_MAX:
        raise ApiError(42201, f"a group name has 1 to {GROUP_NAME_MAX} characters")
    return name


def parse_partitions(value: Any, field: str) -> list[TopicPartition]:
    if not isinstance(value, list):
        raise ApiError(42201, f"{field} must be a list of {{topic, partition}}")
    out = []
    for i, item in enumerate(value):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("topic"), str)
            or isinstance(item.get("partition"), bool)
            or not isinstance(item.get("partition"), int)
            or item["partition"] < 0
        ):
            raise ApiError(42201, f'{field}[{i}] must be {{"topic": string, "partition": integer >= 0}}')
        out.append(TopicPartition(item["topic"], item["partition"]))
    return out


def integer(document: dict, name: str, minimum: int = 0) -> int:
    value = document.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ApiError(42201, f"{name} must be an integer >= {minimum}")
    return value


def answer_json(answer) -> dict:
    return {
        "member_id": answer.member_id,
        "member_epoch": answer.member_epoch,
        "assignment": [{"topic": tp.topic, "partition": tp.partition} for tp in answer.assignment],
        "heartbeat_interval_ms": answer.heartbeat_interval_ms,
        "session_timeout_ms": answer.session_timeout_ms,
        "reconciling": answer.reconciling,
    }


class GroupHandlers:
    def __init__(self, node, api):
        self.node = node
        self.api = api  # node/api.py Handlers: leader_or_forward, produce_timeout_s, json bodies
        self.coordinator: GroupCoordinator = node.coordinator

    async def _coordinator_partition(self, request: web.Request, group: str):
        """This node's offsets partition for the group (loaded), or ForwardTo its leader."""
        index = await self.coordinator.partition_of(group)
        partition = self.api.leader_or_forward(request, OFFSETS_TOPIC, index)
        partition.check_leader()
        self.coordinator.ensure_loaded(partition)
        return partition

    # -- members --------------------------------------------------------------------------------------

    async def join(self, request: web.Request) -> web.Response:
        document = await read_json_object(request)
        group_id = group_name(request)
        refuse_unknown_fields(document, {"topics", "instance_id", "assignor"})
        topics = document.get("topics")
        if not isinstance(topics, list) or not topics or not all(isinstance(t, str) and t for t in topics):
            raise ApiError(42201, "topics must be a non-empty list of topic names")
        missing = [t for t in topics if t not in self.node.store.image.topics]
        if missing:
            raise ApiError(40401, f"unknown topic(s): {', '.join(missing)}")
        instance_id = document.get("instance_id")
        if instance_id is not None and (not isinstance(instance_id, str) or not instance_id):
            raise ApiError(42201, "instance_id must be a non-empty string")
        assignor = document.get("assignor")
        if assignor is not None and not isinstance(assignor, str):
            raise ApiError(42201, "assignor must be a string")
        await self._coordinator_partition(request, group_id)
        group = self.coordinator.group(group_id, create=True)
        try:
            answer = group.join(
                now_ms(), uuid.uuid4().hex, topics, instance_id, assignor, self.coordinator.partitions_of
            )
        except GroupError as error:
            self.coordinator.forget_if_empty(group_id)  # a refused first join leaves no group behind
            raise group_error(error) from None
        return json_response(answer_json(answer))

    async def heartbeat(self, request: web.Request) -> web.Response:
        document = await read_json_object(request)
        group_id = group_name(request)
        member_epoch = integer(document, "member_epoch")
        owned = parse_partitions(document.get("owned", []), "owned")
        await self._coordinator_partition(request, group_id)
        try:
            group = self._known(group_id, request.match_info["member_id"])
            answer = group.heartbeat(
                now_ms(), request.match_info["member_id"], member_epoch, owned, self.coordinator.partitions_of
            )
        except GroupError as error:
            raise group_error(error) from None
        return json_response(answer_json(answer))

    async def leave(self, request: web.Request) -> web.Response:
        group_id = group_name(request)
        epoch = query_int(request, "member_epoch", -1, -1, 2**31 - 1)
        await self._coordinator_partition(request, group_id)
        try:
            group = self._known(group_id, request.match_info["member_id"])
            group.leave(now_ms(), request.match_info["member_id"], None if epoch < 0 else epoch)
        except GroupError as error:
            raise group_error(error) from None
        return json_response({})

    def _known(self, group_id: str, member_id: str):
        group = self.coordinator.group(group_id, create=False)
        if group is None:
            raise GroupError(
                40405, f"member {member_id} is not in group {group_id!r} (no members here): join again"
            )
        return group

    # -- offsets --------------------------------------------------------------------------------------

    async def commit(self, request: web.Request) -> web.Response:
        document = await read_json_object(request)
        group_id = group_name(request)
        refuse_unknown_fields(document, {"member_id", "member_epoch", "offsets"})
        entries = self._offset_entries(document.get("offsets"))
        timeout_s = self.api.produce_timeout_s(request)
        partition = await self._coordinator_partition(request, group_id)
        group = self.coordinator.group(group_id, create=False)
        member_id = document.get("member_id")
        try:
            if member_id is None:
                if group is not None and not group.is_empty:
                    raise GroupError(
                        40907, f"group {group_id!r} has members: commit as a member (member_id, member_epoch)"
                    )
            else:
                if not isinstance(member_id, str):
                    raise ApiError(42201, "member_id must be a string")
                if group is None:
                    raise GroupError(40405, f"member {member_id} is not in group {group_id!r}: join again")
                group.check_commit(member_id, integer(document, "member_epoch"), [tp for tp, _, _ in entries])
        except GroupError as error:
            raise group_error(error) from None
        await self.coordinator.commit(partition, group_id, entries, timeout_s)
        return json_response({"offsets": [self._offset_json(tp, o, m) for tp, o, m in entries]})

    def _offset_entries(self, value: Any) -> list[tuple[TopicPartition, int, str]]:
        if not isinstance(value, list) or not value:
            raise ApiError(42201, "offsets must be a non-empty list of {topic, partition, offset, metadata}")
        out = []
        seen = set()
        for i, item in enumerate(value):
            [tp] = parse_partitions([item], f"offsets[{i}]")
            offset = item.get("offset")
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise ApiError(42201, f"offsets[{i}].offset must be an integer >= 0")
            metadata = item.get("metadata", "")
            if not isinstance(metadata, str) or len(metadata.encode()) > METADATA_MAX:
                raise ApiError(
                    42201, f"offsets[{i}].metadata must be a string of at most {METADATA_MAX} bytes"
                )
            partitions = self.coordinator.partitions_of(tp.topic)
            if tp.partition >= partitions:
                raise ApiError(40402, f"offsets[{i}]: {tp.topic}-{tp.partition} does not exist")
            if tp in seen:
                raise ApiError(42201, f"offsets[{i}]: {tp.topic}-{tp.partition} is listed twice")
            seen.add(tp)
            out.append((tp, offset, metadata))
        return out

    @staticmethod
    def _offset_json(tp: TopicPartition, offset: int, metadata: str) -> dict:
        return {"topic": tp.topic, "partition": tp.partition, "offset": offset, "metadata": metadata}

    async def fetch_offsets(self, request: web.Request) -> web.Response:
        group_id = group_name(request)
        await self._coordinator_partition(request, group_id)
        offsets = self.coordinator.offsets.get(group_id, {})
        return json_response(
            {
                "group": group_id,
                "offsets": [
                    {
                        **self._offset_json(tp, c.offset, c.metadata),
                        "commit_timestamp_ms": c.commit_timestamp_ms,
                    }
                    for tp, c in sorted(offsets.items())
                ],
            }
        )

    async def reset_offsets(self, request: web.Request) -> web.Response:
        document = await read_json_object(request)
        group_id = group_name(request)
        refuse_unknown_fields(document, {"topic", "partitions", "to", "offset", "timestamp_ms", "dry_run"})
        topic = document.get("topic")
        if not isinstance(topic, str) or topic not in self.node.store.image.topics:
            raise ApiError(40401 if isinstance(topic, str) else 42201, f"topic {topic!r} is not a topic here")
        count = self.coordinator.partitions_of(topic)
        indexes = document.get("partitions", list(range(count)))
        if not isinstance(indexes, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count for i in indexes
        ):
            raise ApiError(
                42201, f"partitions must be a list of partition numbers of {topic} (0-{count - 1})"
            )
        to = document.get("to")
        if to not in RESET_TARGETS:
            raise ApiError(42201, f"to must be one of {', '.join(RESET_TARGETS)}")
        exact = integer(document, "offset") if to == "offset" else None
        timestamp = integer(document, "timestamp_ms") if to == "timestamp" else None
        dry_run = document.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise ApiError(42201, "dry_run must be true or false")
        timeout_s = self.api.produce_timeout_s(request)
        partition = await self._coordinator_partition(request, group_id)
        group = self.coordinator.group(group_id, create=False)
        if group is not None and not group.is_empty:
            raise ApiError(
                40907, f"group {group_id!r} has members; offsets can be reset only when it is empty"
            )
        entries = []
        for index in sorted(set(indexes)):
            bounds = await self._partition_offsets(topic, index)
            if to == "earliest":
                target = bounds["log_start_offset"]
            elif to == "latest":
                target = bounds["high_watermark"]
            elif to == "offset":
                target = max(bounds["log_start_offset"], min(exact, bounds["high_watermark"]))
            else:
                found = await self._offset_for_time(topic, index, timestamp)
                target = bounds["high_watermark"] if found is None else found
            entries.append((TopicPartition(topic, index), target, ""))
        if not dry_run:
            await self.coordinator.commit(partition, group_id, entries, timeout_s)
        return json_response(
            {"offsets": [self._offset_json(tp, o, m) for tp, o, m in entries], "dry_run": dry_run}
        )

    async def _partition_offsets(self, topic: str, index: int) -> dict:
        """The partition's log start, high watermark and log end, from its leader (maybe this node)."""
        return await self._ask_leader(topic, index, f"/v1/topics/{topic}/partitions/{index}/offsets")

    async def _offset_for_time(self, topic: str, index: int, timestamp_ms: int) -> int | None:
        path = f"/v1/topics/{topic}/partitions/{index}/offsets?timestamp_ms={timestamp_ms}"
        return (await self._ask_leader(topic, index, path))["offset"]

    async def _ask_leader(self, topic: str, index: int, path: str) -> dict:
        status, body, _ = await call(
            self.node, self.node.config.advertised, "GET", path, unreachable_code=50303
        )
        if status != 200:
            raise ApiError(int(body.get("error_code", status * 100 + 1)), str(body.get("message", body)))
        return body

    # -- groups ---------------------------------------------------------------------------------------

    async def list_local(self, request: web.Request) -> web.Response:
        """The groups this node coordinates (members or committed offsets)."""
        names = sorted(set(self.coordinator.groups) | set(self.coordinator.offsets))
        out = []
        for name in names:
            group = self.coordinator.groups.get(name)
            out.append(
                {
                    "group": name,
                    "state": "empty" if group is None else group.state,
                    "members": 0 if group is None else len(group.members),
                }
            )
        return json_response({"groups": out})

    async def list_groups(self, request: web.Request) -> web.Response:
        image = self.node.store.image
        addresses = sorted({b.address for b in image.brokers.values() if b.active and "broker" in b.roles})
        answers = await asyncio.gather(
            *(call(self.node, a, "GET", "/v1/internal/groups", unreachable_code=50303) for a in addresses),
            return_exceptions=True,
        )
        merged: dict[str, dict] = {}
        unreachable = []
        for address, answer in zip(addresses, answers, strict=True):
            if isinstance(answer, BaseException) or answer[0] != 200:
                unreachable.append(address)
                continue
            for entry in answer[1]["groups"]:
                merged[entry["group"]] = entry
        return json_response(
            {"groups": [merged[g] for g in sorted(merged)], "unreachable_nodes": unreachable}
        )

    async def describe(self, request: web.Request) -> web.Response:
        group_id = group_name(request)
        await self._coordinator_partition(request, group_id)
        group = self.coordinator.groups.get(group_id)
        offsets = self.coordinator.offsets.get(group_id, {})
        if group is None and not offsets:
            raise ApiError(40406, f"group {group_id!r} has no members and no committed offsets")
        members = []
        subscribed: set[TopicPartition] = set(offsets)
        if group is not None:
            for member in sorted(group.members.values(), key=lambda m: m.member_id):
                members.append(
                    {
                        "member_id": member.member_id,
                        "instance_id": member.instance_id,
                        "member_epoch": member.epoch,
                        "topics": list(member.topics),
                        "assignment": [{"topic": t, "partition": p} for t, p in sorted(member.answer)],
                        "target": [{"topic": t, "partition": p} for t, p in sorted(member.target)],
                    }
                )
                for topic in member.topics:
                    subscribed |= {
                        TopicPartition(topic, p) for p in range(self.coordinator.partitions_of(topic))
                    }
        rows = []
        total = 0
        for tp in sorted(subscribed):
            committed = offsets.get(tp)
            try:
                bounds = await self._partition_offsets(tp.topic, tp.partition)
                end = bounds["high_watermark"]
            except ApiError:
                end = None
            lag = None if end is None or committed is None else max(0, end - committed.offset)
            total += lag or 0
            rows.append(
                {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "committed_offset": None if committed is None else committed.offset,
                    "log_end_offset": end,
                    "lag": lag,
                }
            )
        return json_response(
            {
                "group": group_id,
                "state": "empty" if group is None else group.state,
                "assignor": None if group is None else group.assignor,
                "group_epoch": 0 if group is None else group.group_epoch,
                "members": members,
                "offsets": rows,
                "total_lag": total,
            }
        )

    async def delete(self, request: web.Request) -> web.Response:
        group_id = group_name(request)
        timeout_s = self.api.produce_timeout_s(request)
        partition = await self._coordinator_partition(request, group_id)
        group = self.coordinator.groups.get(group_id)
        if group is not None and not group.is_empty:
            raise ApiError(
                40907, f"group {group_id!r} has {len(group.members)} member(s); it can be deleted when empty"
            )
        if group is None and group_id not in self.coordinator.offsets:
            raise ApiError(40406, f"group {group_id!r} has no members and no committed offsets")
        await self.coordinator.delete_offsets(partition, group_id, timeout_s)
        return json_response({"deleted": group_id})


def add_group_routes(app: web.Application, node, api) -> None:
    h = GroupHandlers(node, api)
    app.router.add_get("/v1/groups", h.list_groups)
    app.router.add_get("/v1/internal/groups", h.list_local)
    app.router.add_get("/v1/groups/{group}", h.describe)
    app.router.add_delete("/v1/groups/{group}", h.delete)
    app.router.add_post("/v1/groups/{group}/members", h.join)
    app.router.add_post("/v1/groups/{group}/members/{member_id}/heartbeat", h.heartbeat)
    app.router.add_delete("/v1/groups/{group}/members/{member_id}", h.leave)
    app.router.add_post("/v1/groups/{group}/offsets", h.commit)
    app.router.add_get("/v1/groups/{group}/offsets", h.fetch_offsets)
    app.router.add_post("/v1/groups/{group}/offsets/reset", h.reset_offsets)
