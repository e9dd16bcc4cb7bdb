"""The JSON edge: records as people write them in JSON, to and from record batches.

Produce: a string `key` is its UTF-8 bytes, `key_b64` raw bytes; a JSON `value` is stored as its JSON
encoding (orjson), `value_b64` as raw bytes, `null` as a tombstone; header values are UTF-8 strings or
null. Fetch goes the other way: a key that is valid UTF-8 comes back as a string, otherwise as
`key_b64`; a value that is valid JSON comes back as JSON (so everything produced as JSON does),
otherwise as `value_b64`; `?encoding=base64` returns every key and value as base64 instead.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from node.errors import ApiError
from storage.record_batch import INT64_MAX, NewRecord, Record

RECORDS_PER_REQUEST_MAX = 100_000
_RECORD_FIELDS = frozenset({"key", "key_b64", "value", "value_b64", "headers", "partition", "timestamp_ms"})


def parse_produce_body(body: bytes, *, allow_partition: bool) -> list[tuple[int | None, NewRecord]]:
    """(partition or None, record) for each record of a JSON produce body; ApiError 42201 names the field."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(40001, f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or "records" not in document:
        raise ApiError(42201, 'request body must be an object with a "records" list')
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
        unknown = set(item) - _RECORD_FIELDS
        if unknown:
            raise ApiError(42201, f"{where} has unknown field(s): {', '.join(sorted(unknown))}")
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
        key = _bytes_field(item, "key", where, json_value=False)
        value = _bytes_field(item, "value", where, json_value=True)
        headers = _headers(item.get("headers"), where)
        out.append((partition, NewRecord(key, value, timestamp, headers)))
    return out


def _bytes_field(item: dict, name: str, where: str, *, json_value: bool) -> bytes | None:
    b64_name = f"{name}_b64"
    if name in item and b64_name in item:
        raise ApiError(42201, f"{where} has both {name} and {b64_name}; give one")
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


def record_to_json(record: Record, *, base64_only: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"offset": record.offset, "timestamp_ms": record.timestamp_ms}
    _put(out, "key", record.key, base64_only, as_json=False)
    _put(out, "value", record.value, base64_only, as_json=True)
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


def _put(out: dict[str, Any], name: str, data: bytes | None, base64_only: bool, *, as_json: bool) -> None:
    if data is None:
        out[name] = None
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
