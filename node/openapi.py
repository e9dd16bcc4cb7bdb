"""The OpenAPI 3.1 document of HTTP API v1, served at /openapi.json."""

from __future__ import annotations

from functools import cache
from typing import Any

from node.errors import __doc__ as ERROR_TABLE

BATCH = "application/vnd.raftka.batch"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(code): _json(_ref("Error"), "error (see the error code table in the API description)")
        for code in codes
    }


def _param(
    name: str, where: str, schema: dict[str, Any], description: str, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "schema": schema,
        "description": description,
    }


TOPIC = _param("topic", "path", {"type": "string"}, "topic name")
PARTITION = _param("partition", "path", {"type": "integer", "minimum": 0}, "partition index")
GROUP = _param("group", "path", {"type": "string"}, "consumer group name")
MEMBER = _param("member_id", "path", {"type": "string"}, "the member id the join answered")
TP = {
    "type": "object",
    "properties": {"topic": {"type": "string"}, "partition": {"type": "integer", "minimum": 0}},
    "required": ["topic", "partition"],
}
ACKS = _param(
    "acks",
    "query",
    {"type": "string", "enum": ["all", "1", "0"], "default": "all"},
    "all: wait until the in-sync replicas have the records; 1: the leader's append; 0: no offsets returned (-1)",
)


@cache
def openapi_document() -> dict[str, Any]:
    produce_body = {"required": True, "content": {"application/json": {"schema": _ref("ProduceRequest")}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Raftka HTTP API",
            "version": "1",
            "description": "Produce, fetch and manage topics. Errors are {error_code, message}; the HTTP status is "
            "the first three digits of the error code. The same port serves the embedded schema registry's "
            "Confluent Schema Registry API at its root (/subjects, /schemas, /config, /mode, /compatibility), "
            "with Confluent's error codes; it is described in docs/schema-registry.md, not here.\n\n"
            + (ERROR_TABLE or ""),
        },
        "paths": {
            "/v1/topics": {
                "get": {"summary": "List topics", "responses": {"200": _json(_ref("TopicList"))}},
                "post": {
                    "summary": "Create a topic",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("CreateTopic")}},
                    },
                    "responses": {
                        "201": _json(_ref("TopicDescription"), "created"),
                        **_errors(40001, 40901, 42201),
                    },
                },
            },
            "/v1/topics/{topic}": {
                "parameters": [TOPIC],
                "get": {
                    "summary": "Describe a topic",
                    "responses": {"200": _json(_ref("TopicDescription")), **_errors(40401)},
                },
                "patch": {
                    "summary": "Add partitions or change configs",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("AlterTopic")}},
                    },
                    "responses": {"200": _json(_ref("TopicDescription")), **_errors(40001, 40401, 42201)},
                },
                "delete": {
                    "summary": "Delete a topic and its logs",
                    "responses": {
                        "200": _json({"type": "object", "properties": {"deleted": {"type": "string"}}}),
                        **_errors(40401),
                    },
                },
            },
            "/v1/groups": {
                "get": {
                    "summary": "Every group of the cluster (asks each broker), with its state and member count",
                    "responses": {"200": _json({"type": "object"})},
                },
            },
            "/v1/groups/{group}": {
                "parameters": [GROUP],
                "get": {
                    "summary": "A group: state, members and assignments, committed offsets, lag",
                    "responses": {"200": _json({"type": "object"}), **_errors(40406)},
                },
                "delete": {
                    "summary": "Delete an empty group and its committed offsets",
                    "responses": {"200": _json({"type": "object"}), **_errors(40406, 40907)},
                },
            },
            "/v1/groups/{group}/members": {
                "parameters": [GROUP],
                "post": {
                    "summary": "Join: the coordinator assigns partitions (KIP-848 style)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("JoinGroup")}},
                    },
                    "responses": {"200": _json(_ref("GroupAssignment")), **_errors(40401, 42201)},
                },
            },
            "/v1/groups/{group}/members/{member_id}/heartbeat": {
                "parameters": [GROUP, MEMBER],
                "post": {
                    "summary": "Heartbeat with the partitions still owned; the answer says what to own now",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("Heartbeat")}},
                    },
                    "responses": {"200": _json(_ref("GroupAssignment")), **_errors(40405, 40906, 42201)},
                },
            },
            "/v1/groups/{group}/members/{member_id}": {
                "parameters": [GROUP, MEMBER],
                "delete": {
                    "summary": "Leave the group now (a static member's partitions wait for its session timeout)",
                    "responses": {"200": _json({"type": "object"}), **_errors(40405, 40906)},
                },
            },
            "/v1/groups/{group}/offsets": {
                "parameters": [GROUP],
                "get": {
                    "summary": "The group's committed offsets",
                    "responses": {"200": _json({"type": "object"})},
                },
                "post": {
                    "summary": "Commit offsets (the next offset to consume) as the partitions' owner; acks=all",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("Commit")}},
                    },
                    "responses": {
                        "200": _json({"type": "object"}),
                        **_errors(40402, 40405, 40906, 40907, 40908, 42201, 50301, 50304),
                    },
                },
            },
            "/v1/groups/{group}/offsets/reset": {
                "parameters": [GROUP],
                "post": {
                    "summary": "Reset an empty group's offsets: earliest, latest, an offset or a timestamp",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ResetOffsets")}},
                    },
                    "responses": {"200": _json({"type": "object"}), **_errors(40401, 40907, 42201)},
                },
            },
            "/v1/producers": {
                "post": {
                    "summary": "A new idempotent producer id (epoch 0); any node answers",
                    "responses": {"200": _json(_ref("NewProducer")), **_errors(50302, 50303)},
                },
            },
            "/v1/topics/{topic}/records": {
                "parameters": [TOPIC, ACKS],
                "post": {
                    "summary": "Produce JSON records; the partition comes from the record, its key, or a sticky choice",
                    "requestBody": produce_body,
                    "responses": {
                        "200": _json(_ref("ProduceResponse")),
                        **_errors(40001, 40401, 40402, 40403, 41301, 42201, 50301),
                    },
                },
            },
            "/v1/topics/{topic}/partitions/{partition}/records": {
                "parameters": [TOPIC, PARTITION],
                "post": {
                    "summary": "Produce to one partition: JSON records, or one binary record batch",
                    "parameters": [ACKS],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": _ref("ProduceRequest")},
                            BATCH: {
                                "schema": {"type": "string", "format": "binary"},
                                "description": "one record batch (docs/format.md)",
                            },
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "JSON body: ProduceResponse; binary body: BatchProduceResponse",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "oneOf": [_ref("ProduceResponse"), _ref("BatchProduceResponse")]
                                    }
                                }
                            },
                        },
                        **_errors(
                            40001, 40401, 40402, 40403, 40902, 41301, 41501, 42201, 42202, 42203, 42204, 50301
                        ),
                    },
                },
                "get": {
                    "summary": "Fetch records below the high watermark; long-polls up to max_wait_ms for min_bytes",
                    "parameters": [
                        _param(
                            "offset",
                            "query",
                            {"type": "integer", "minimum": 0},
                            "first offset wanted",
                            required=True,
                        ),
                        _param(
                            "max_bytes",
                            "query",
                            {"type": "integer", "default": 1048576},
                            "at most this many bytes (at least one batch)",
                        ),
                        _param(
                            "max_wait_ms",
                            "query",
                            {"type": "integer", "default": 500},
                            "longest wait for min_bytes",
                        ),
                        _param(
                            "min_bytes",
                            "query",
                            {"type": "integer", "default": 1},
                            "answer as soon as this many bytes are there",
                        ),
                        _param(
                            "encoding",
                            "query",
                            {"type": "string", "enum": ["auto", "base64"], "default": "auto"},
                            "auto: UTF-8 keys as strings, JSON values as JSON, other bytes as *_b64; base64: always *_b64",
                        ),
                        _param(
                            "decode",
                            "query",
                            {"type": "string", "enum": ["none", "avro"], "default": "none"},
                            "avro: keys and values in Confluent's wire format with a registered schema id come "
                            "back as Avro JSON, with key_schema_id / value_schema_id (docs/schema-registry.md)",
                        ),
                    ],
                    "responses": {
                        "200": {
                            "description": "records (JSON) or raw batches (Accept: application/vnd.raftka.batch, with "
                            "X-Raftka-Next-Offset, X-Raftka-High-Watermark, X-Raftka-Log-Start-Offset headers)",
                            "content": {
                                "application/json": {"schema": _ref("FetchResponse")},
                                BATCH: {"schema": {"type": "string", "format": "binary"}},
                            },
                        },
                        **_errors(40401, 40402, 40403, 40601, 41601, 42201),
                    },
                },
            },
            "/v1/topics/{topic}/partitions/{partition}/offsets": {
                "parameters": [TOPIC, PARTITION],
                "get": {
                    "summary": "Log start offset, high watermark and log end offset; or the first offset at or after timestamp_ms",
                    "parameters": [
                        _param("timestamp_ms", "query", {"type": "integer"}, "find the first record this new")
                    ],
                    "responses": {"200": _json(_ref("Offsets")), **_errors(40401, 40402, 42201)},
                },
            },
            "/v1/cluster": {
                "get": {
                    "summary": "Cluster id, controller, Raft state and brokers, as this node has applied them",
                    "responses": {"200": _json(_ref("Cluster")), **_errors(50302)},
                }
            },
            "/v1/cluster/elect-leaders": {
                "post": {
                    "summary": "Preferred leader election now (through the active controller)",
                    "responses": {
                        "200": _json({"type": "object", "properties": {"moved": {"type": "integer"}}}),
                        **_errors(50302, 50303),
                    },
                }
            },
            **_internal_paths(),
            "/livez": {
                "get": {"summary": "The process is alive", "responses": {"200": _json({"type": "object"})}}
            },
            "/readyz": {
                "get": {
                    "summary": "The node can serve (logs loaded, metadata caught up, broker admitted)",
                    "responses": {"200": _json({"type": "object"}), **_errors(50302)},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition format"}},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": _json({"type": "object"})}}
            },
        },
        "components": {"schemas": _schemas()},
    }


def _internal_paths() -> dict[str, Any]:
    """Broker to controller calls (any node forwards them to the active controller)."""
    node = _param("node_id", "path", {"type": "integer", "minimum": 0}, "the broker's node id")
    integer = {"type": "integer"}

    def call(summary: str, request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "tags": ["internal"],
                "parameters": [node],
                "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
                "responses": {"200": _json(response), **_errors(40904, 42201, 50302, 50303)},
            }
        }

    return {
        "/v1/internal/brokers/{node_id}/register": call(
            "Register a new incarnation of a broker (it starts fenced)",
            {
                "type": "object",
                "required": ["address", "roles"],
                "properties": {
                    "address": {"type": "string"},
                    "rack": {"type": ["string", "null"]},
                    "roles": {"type": "array", "items": {"type": "string"}},
                },
            },
            {"type": "object", "properties": {"broker_epoch": integer}},
        ),
        "/v1/internal/brokers/{node_id}/heartbeat": call(
            "A broker's heartbeat with the metadata version it has applied",
            {
                "type": "object",
                "required": ["broker_epoch", "metadata_version"],
                "properties": {"broker_epoch": integer, "metadata_version": integer},
            },
            {"type": "object", "properties": {"status": {"type": "string"}, "controller_epoch": integer}},
        ),
        "/v1/internal/brokers/{node_id}/shutdown": call(
            "Controlled shutdown: move the broker's leaderships away",
            {"type": "object", "required": ["broker_epoch"], "properties": {"broker_epoch": integer}},
            {"type": "object", "properties": {"remaining_leaderships": integer}},
        ),
    }


def _schemas() -> dict[str, Any]:
    nullable_string = {"type": ["string", "null"]}
    return {
        "Error": {
            "type": "object",
            "required": ["error_code", "message"],
            "properties": {"error_code": {"type": "integer"}, "message": {"type": "string"}},
        },
        "ProduceRecord": {
            "type": "object",
            "properties": {
                "key": {"description": "UTF-8 key (a string); null = no key; any JSON with a key schema"},
                "key_b64": {"type": "string", "description": "raw key bytes, base64 (instead of key)"},
                "value": {
                    "description": "any JSON, stored as its JSON encoding (or, with a value schema, as Avro in "
                    "Confluent's wire format); null = tombstone"
                },
                "value_b64": {"type": "string", "description": "raw value bytes, base64 (instead of value)"},
                "headers": {"type": "object", "additionalProperties": nullable_string},
                "partition": {"type": "integer", "minimum": 0},
                "timestamp_ms": {"type": "integer", "minimum": 0},
            },
            "additionalProperties": False,
        },
        "ProduceRequest": {
            "type": "object",
            "required": ["records"],
            "properties": {
                "records": {"type": "array", "minItems": 1, "items": _ref("ProduceRecord")},
                "producer_id": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "idempotent produce (partition route only): from POST /v1/producers",
                },
                "producer_epoch": {"type": "integer", "minimum": 0, "maximum": 32767},
                "base_sequence": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "the first record's sequence; the records take the next ones",
                },
                **{
                    f"{part}_{how}": {
                        "type": kind,
                        "description": f"encode each {part} with this registered Avro schema "
                        + ("(an id)" if how == "schema_id" else "(the subject's latest version)"),
                    }
                    for part in ("key", "value")
                    for how, kind in (("schema_id", "integer"), ("subject", "string"))
                },
            },
            "additionalProperties": False,
        },
        "JoinGroup": {
            "type": "object",
            "required": ["topics"],
            "properties": {
                "topics": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                "instance_id": {"type": "string", "description": "static membership"},
                "assignor": {"type": "string", "enum": ["uniform", "range"]},
            },
            "additionalProperties": False,
        },
        "Heartbeat": {
            "type": "object",
            "required": ["member_epoch"],
            "properties": {"member_epoch": {"type": "integer"}, "owned": {"type": "array", "items": TP}},
        },
        "GroupAssignment": {
            "type": "object",
            "properties": {
                "member_id": {"type": "string"},
                "member_epoch": {"type": "integer"},
                "assignment": {"type": "array", "items": TP},
                "heartbeat_interval_ms": {"type": "integer"},
                "session_timeout_ms": {"type": "integer"},
                "reconciling": {"type": "boolean"},
            },
        },
        "Commit": {
            "type": "object",
            "required": ["offsets"],
            "properties": {
                "member_id": {"type": "string"},
                "member_epoch": {"type": "integer"},
                "offsets": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["topic", "partition", "offset"],
                        "properties": {
                            "topic": {"type": "string"},
                            "partition": {"type": "integer"},
                            "offset": {"type": "integer", "minimum": 0},
                            "metadata": {"type": "string"},
                        },
                    },
                },
            },
            "additionalProperties": False,
        },
        "ResetOffsets": {
            "type": "object",
            "required": ["topic", "to"],
            "properties": {
                "topic": {"type": "string"},
                "partitions": {"type": "array", "items": {"type": "integer"}},
                "to": {"type": "string", "enum": ["earliest", "latest", "offset", "timestamp"]},
                "offset": {"type": "integer"},
                "timestamp_ms": {"type": "integer"},
                "dry_run": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
        "NewProducer": {
            "type": "object",
            "properties": {
                "producer_id": {"type": "integer"},
                "producer_epoch": {"type": "integer"},
            },
        },
        "ProduceResponse": {
            "type": "object",
            "properties": {
                "offsets": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"partition": {"type": "integer"}, "offset": {"type": "integer"}},
                    },
                },
                "duplicate": {
                    "type": "boolean",
                    "description": "present on the partition route: the batch was a retry already in the log",
                },
            },
        },
        "BatchProduceResponse": {
            "type": "object",
            "properties": {
                "partition": {"type": "integer"},
                "base_offset": {"type": "integer"},
                "last_offset": {"type": "integer"},
                "log_start_offset": {"type": "integer"},
                "duplicate": {
                    "type": "boolean",
                    "description": "a retry of an idempotent batch already in the log: its original offsets",
                },
            },
        },
        "FetchedRecord": {
            "type": "object",
            "properties": {
                "offset": {"type": "integer"},
                "timestamp_ms": {"type": "integer"},
                "key": nullable_string,
                "key_b64": {"type": "string"},
                "value": {},
                "value_b64": {"type": "string"},
                "key_schema_id": {"type": "integer", "description": "decode=avro: the key's schema id"},
                "value_schema_id": {"type": "integer", "description": "decode=avro: the value's schema id"},
                "key_decode_error": {"type": "string"},
                "value_decode_error": {"type": "string"},
                "headers": {"type": "object"},
                "headers_b64": {"type": "object"},
            },
        },
        "FetchResponse": {
            "type": "object",
            "properties": {
                "records": {"type": "array", "items": _ref("FetchedRecord")},
                "next_offset": {"type": "integer"},
                "high_watermark": {"type": "integer"},
                "log_start_offset": {"type": "integer"},
            },
        },
        "Offsets": {
            "type": "object",
            "properties": {
                "log_start_offset": {"type": "integer"},
                "high_watermark": {"type": "integer"},
                "log_end_offset": {"type": "integer"},
                "offset": {"type": ["integer", "null"]},
                "timestamp_ms": {"type": ["integer", "null"]},
            },
        },
        "CreateTopic": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-zA-Z0-9._-]{1,249}$"},
                "partitions": {"type": "integer", "minimum": 1, "default": 1},
                "replication_factor": {"type": "integer", "minimum": 1, "default": 1},
                "configs": {
                    "type": "object",
                    "additionalProperties": {"type": ["string", "integer", "number", "boolean"]},
                },
            },
        },
        "AlterTopic": {
            "type": "object",
            "properties": {
                "partitions": {"type": "integer", "minimum": 1, "description": "new total; only grows"},
                "configs": {"type": "object"},
                "delete_configs": {"type": "array", "items": {"type": "string"}},
            },
        },
        "TopicList": {
            "type": "object",
            "properties": {
                "topics": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "partitions": {"type": "integer"},
                            "replication_factor": {"type": "integer"},
                        },
                    },
                }
            },
        },
        "TopicDescription": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "topic_id": {"type": "string"},
                "replication_factor": {"type": "integer"},
                "configs": {"type": "object", "additionalProperties": {"type": "string"}},
                "partitions": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "partition": {"type": "integer"},
                            "leader": {"type": "integer"},
                            "replicas": {"type": "array", "items": {"type": "integer"}},
                            "isr": {"type": "array", "items": {"type": "integer"}},
                            "leader_epoch": {"type": "integer"},
                            "log_start_offset": {"type": ["integer", "null"]},
                            "high_watermark": {"type": ["integer", "null"]},
                        },
                    },
                },
            },
        },
        "Cluster": {
            "type": "object",
            "properties": {
                "cluster_id": {"type": "string"},
                "node_id": {"type": "integer", "description": "the node that answered"},
                "controller_id": {"type": "integer", "description": "-1 before the first controller"},
                "controller_epoch": {"type": "integer"},
                "metadata_offset": {"type": "integer", "description": "metadata commands applied here"},
                "raft": {
                    "type": "object",
                    "properties": {
                        "state": {"type": "string", "enum": ["follower", "candidate", "leader"]},
                        "term": {"type": "integer"},
                        "leader": nullable_string,
                        "commit_index": {"type": "integer"},
                        "last_applied": {"type": "integer"},
                        "voter": {"type": "boolean"},
                    },
                },
                "brokers": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "integer"},
                            "address": {"type": "string"},
                            "rack": nullable_string,
                            "roles": {
                                "type": "array",
                                "items": {"type": "string", "enum": ["broker", "controller"]},
                            },
                            "status": {"type": "string", "enum": ["active", "fenced", "shutting_down"]},
                            "epoch": {"type": "integer"},
                        },
                    },
                },
            },
        },
    }
