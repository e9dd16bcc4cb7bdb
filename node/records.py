"""The JSON edge: records as people write them in JSON, to and from record batches.

Produce: a string `key` is its UTF-8 bytes, `key_b64` raw bytes; a JSON `value` is stored as its JSON
encoding (orjson), `value_b64` as raw bytes, `null` as a tombstone; header values are UTF-8 strings or
null. Fetch goes the other way: a key that is valid UTF-8 comes back as a string, otherwise as
`key_b64`; a value that is valid JSON comes back as JSON (so everything produced as JSON does),
otherwise as `value_b64`; `?encoding=base64` returns every key and value as base64 instead.

With a schema (`key_schema_id`/`key_subject`, `value_schema_id`/`value_subject` beside "records"), keys
or values are JSON checked against that registered Avro schema and stored in Confluent's wire format
(node/avro_json.py); `?decode=avro` on fetch turns such bytes back into JSON.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import orjson

from node.errors import ApiError, refuse_unknown_fields
from storage.record_batch import INT64_MAX, NewRecord, Record

RECORDS_PER_REQUEST_MAX = 100_000
_RECORD_FIELDS = frozenset({"key", "key_b64", "value", "value_b64", "headers", "partition", "timestamp_ms"})
_PRODUCER_FIELDS = ("producer_id", "producer_epoch", "base_sequence")
_SCHEMA_FIELDS = ("key_schema_id", "key_subject", "value_schema_id", "value_subject")
_BODY_FIELDS = frozenset({"records", *_PRODUCER_FIELDS, *_SCHEMA_FIELDS})
INT16_MAX = 2**15 - 1
INT32_MAX = 2**31 - 1


class ProducerFields(NamedTuple):
    """The idempotent producer's fields of one partition batch."""

    producer_id: int
    producer_epoch: int
    base_sequence: int


def check_producer_fields(producer_id: int, producer_epoch: int, base_sequence: int, next_id: int) -> None:
    """ApiError 42201 unless the fields are a plain batch (-1, any, -1) or an idempotent one whose id was
    handed out (below `next_id`, the metadata's next_producer_id)."""
    if producer_id == -1:
        if base_sequence != -1:
            raise ApiError(42201, f"base_sequence {base_sequence} needs a producer_id (POST /v1/producers)")
        return
    if producer_id < 0 or producer_id >= next_id:
        raise ApiError(
            42201,
            f"producer_id {producer_id} was never handed out by this cluster (get one: POST /v1/producers)",
        )
    if not 0 <= producer_epoch <= INT16_MAX:
        raise ApiError(42201, f"producer_epoch must be 0..{INT16_MAX}, got {producer_epoch}")
    if not 0 <= base_sequence <= INT32_MAX:
        raise ApiError(42201, f"base_sequence must be 0..{INT32_MAX} with a producer_id, got {base_sequence}")


class Encoder(Protocol):
    def encode(self, value: Any, where: str) -> bytes: ...


# (part "key" or "value", schema id given, subject given) -> the encoder; raises ApiError 42201.
SchemaLookup = Callable[[str, object, object], Encoder]
# bytes -> (JSON value, schema id), None when not for it; ValueError when it should be but is broken.
Decoder = Callable[[bytes], "tuple[Any, int] | None"]


class ProduceBody(NamedTuple):
    entries: list[tuple[int | None, NewRecord]]  # (partition or None, record)
    producer: ProducerFields | None


def parse_produce_body(
    body: bytes, *, allow_partition: bool, schemas: SchemaLookup | None = None
) -> ProduceBody:
    """The records of a JSON produce body, each with its partition or None, and the idempotent
    producer's fields when given (the partition route only: `allow_partition` False); ApiError 42201
    names the field. `schemas` finds the encoders of keys or values given with a schema."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(40001, f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or "records" not in document:
        raise ApiError(42201, 'request body must be an object with a "records" list')
    refuse_unknown_fields(document, _BODY_FIELDS, "request body")
    producer = None
    given = [name for name in _PRODUCER_FIELDS if name in document]
    if given:
        if allow_partition:
            raise ApiError(
                42201,
                f"{', '.join(given)}: sequences are per partition; produce idempotently to "
                "/v1/topics/{topic}/partitions/{partition}/records",
            )
        if len(given) != len(_PRODUCER_FIELDS):
            raise ApiError(42201, "an idempotent produce needs producer_id, producer_epoch and base_sequence")
        for name in _PRODUCER_FIELDS:
            if isinstance(document[name], bool) or not isinstance(document[name], int):
                raise ApiError(42201, f"{name} must be an integer")
        producer = ProducerFields(*(document[name] for name in _PRODUCER_FIELDS))
    encoders = {part: _encoder(document, part, schemas) for part in ("key", "value")}
    records = document["records"]
    if not isinstance(records, list) or not records:
        raise ApiError(42201, '"records" must be a non-empty list')
    if len(records) > RECORDS_PER_REQUEST_MAX:
        raise ApiError(
            42201, f'"records" holds {len(records)} records; the limit is {RECORDS_PER_REQUEST_MAX}'
        )
    out = []
    for index, item in enumerate(records):
        where = f"records[{index}]"
        if not isinstance(item, dict):
            raise ApiError(42201, f"{where} must be an object")
        refuse_unknown_fields(item, _RECORD_FIELDS, where)
        partition = item.get("partition")
        if partition is not None:
            if not allow_partition:
                raise ApiError(42201, f"{where}.partition is not allowed here: the partition is in the path")
            if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
                raise ApiError(42201, f"{where}.partition must be a non-negative integer")
        timestamp = item.get("timestamp_ms")
        if timestamp is not None and (
            isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp <= INT64_MAX
        ):
            raise ApiError(42201, f"{where}.timestamp_ms must be a non-negative integer (ms since the epoch)")
        key = _bytes_field(item, "key", where, json_value=False, encoder=encoders["key"])
        value = _bytes_field(item, "value", where, json_value=True, encoder=encoders["value"])
        headers = _headers(item.get("headers"), where)
        out.append((partition, NewRecord(key, value, timestamp, headers)))
    return ProduceBody(out, producer)


def _encoder(document: dict, part: str, schemas: SchemaLookup | None) -> Encoder | None:
    schema_id, subject = document.get(f"{part}_schema_id"), document.get(f"{part}_subject")
    if schema_id is None and subject is None:
        return None
    if schemas is None:
        raise ApiError(42201, f"{part}_schema_id and {part}_subject are not accepted on this route")
    return schemas(part, schema_id, subject)


def _bytes_field(
    item: dict, name: str, where: str, *, json_value: bool, encoder: Encoder | None = None
) -> bytes | None:
    b64_name = f"{name}_b64"
    if name in item and b64_name in item:
        raise ApiError(42201, f"{where} has both {name} and {b64_name}; give one")
    if encoder is not None:
        if b64_name in item:
            raise ApiError(
                42201,
                f"{where}.{b64_name}: with a {name} schema, give {name} as JSON (the schema encodes it)",
            )
        raw = item.get(name)
        return None if raw is None else encoder.encode(raw, f"{where}.{name}")
    if b64_name in item:
        raw = item[b64_name]
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise ApiError(42201, f"{where}.{b64_name} must be a base64 string")
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(42201, f"{where}.{b64_name} is not valid base64") from None
    raw = item.get(name)
    if raw is None:
        return None
    if json_value:
        return orjson.dumps(raw)
    if not isinstance(raw, str):
        raise ApiError(42201, f"{where}.key must be a string or null (use key_b64 for raw bytes)")
    return raw.encode()


def _headers(raw: object, where: str) -> tuple[tuple[str, bytes | None], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ApiError(42201, f"{where}.headers must be an object of name -> string")
    out = []
    for name, value in raw.items():
        if value is not None and not isinstance(value, str):
            raise ApiError(42201, f"{where}.headers[{name!r}] must be a string or null")
        out.append((name, None if value is None else value.encode()))
    return tuple(out)


def record_to_json(
    record: Record, *, base64_only: bool = False, decode: Decoder | None = None
) -> dict[str, Any]:
    """`decode`: keys and values it recognises come back decoded, with `key_schema_id`/`value_schema_id`."""
    out: dict[str, Any] = {"offset": record.offset, "timestamp_ms": record.timestamp_ms}
    _put(out, "key", record.key, base64_only, as_json=False, decode=decode)
    _put(out, "value", record.value, base64_only, as_json=True, decode=decode)
    if record.headers:
        headers: dict[str, Any] = {}
        headers_b64: dict[str, str] = {}
        for name, value in record.headers:
            if value is None:
                headers[name] = None
                continue
            try:
                headers[name] = value.decode()
            except UnicodeDecodeError:
                headers_b64[name] = base64.b64encode(value).decode()
        out["headers"] = headers
        if headers_b64:
            out["headers_b64"] = headers_b64
    else:
        out["headers"] = {}
    return out


def _put(
    out: dict[str, Any],
    name: str,
    data: bytes | None,
    base64_only: bool,
    *,
    as_json: bool,
    decode: Decoder | None = None,
) -> None:
    if data is None:
        out[name] = None
        return
    if decode is not None:
        try:
            decoded = decode(data)
        except ValueError as exc:  # framed for a known schema but not a value of it: shown as it is
            out[f"{name}_decode_error"] = str(exc)
        else:
            if decoded is not None:
                out[name], out[f"{name}_schema_id"] = decoded
                return
    if not base64_only:
        if as_json:
            try:
                out[name] = orjson.loads(data)
                return
            except orjson.JSONDecodeError:
                pass
        else:
            try:
                out[name] = data.decode()
                return
            except UnicodeDecodeError:
                pass
    out[f"{name}_b64"] = base64.b64encode(data).decode()
