"""Serializers turn keys and values into bytes; deserializers turn bytes back.

Every serializer takes the topic along with the data, as Kafka's do, so that a schema-aware one (Avro
with a schema registry, a later issue) can pick the subject `<topic>-key` / `<topic>-value`. `None`
always maps to `None` both ways: a null key, or a null value that marks a tombstone for compaction.

Wherever the client takes a serializer it also takes a short name: "bytes", "str" (UTF-8) or "json"
(orjson), or any object with a `serialize`/`deserialize` method of the shape below.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import orjson


@runtime_checkable
class Serializer(Protocol):
    def serialize(self, topic: str, data: Any) -> bytes | None: ...


@runtime_checkable
class Deserializer(Protocol):
    def deserialize(self, topic: str, data: bytes | None) -> Any: ...


class BytesSerializer:
    """bytes-like in, bytes out: the identity (the default)."""

    def serialize(self, topic: str, data: Any) -> bytes | None:
        if data is None or isinstance(data, bytes):
            return data
        if isinstance(data, bytearray | memoryview):
            return bytes(data)
        raise TypeError(f"the bytes serializer takes bytes or None, got {type(data).__name__}")


class BytesDeserializer:
    def deserialize(self, topic: str, data: bytes | None) -> bytes | None:
        return data


class StringSerializer:
    """str in, its encoding (UTF-8 by default) out."""

    def __init__(self, encoding: str = "utf-8"):
        self.encoding = encoding

    def serialize(self, topic: str, data: Any) -> bytes | None:
        if data is None:
            return None
        if not isinstance(data, str):
            raise TypeError(f"the str serializer takes str or None, got {type(data).__name__}")
        return data.encode(self.encoding)


class StringDeserializer:
    def __init__(self, encoding: str = "utf-8", errors: str = "strict"):
        self.encoding = encoding
        self.errors = errors

    def deserialize(self, topic: str, data: bytes | None) -> str | None:
        return None if data is None else data.decode(self.encoding, self.errors)


class JsonSerializer:
    """Any value orjson can encode (dicts, lists, numbers, dataclasses, datetimes...) to JSON bytes.

    `None` is a tombstone (a null value), not the JSON text `null`.
    """

    def __init__(self, option: int | None = None):
        self.option = option

    def serialize(self, topic: str, data: Any) -> bytes | None:
        if data is None:
            return None
        return orjson.dumps(data, option=self.option)


class JsonDeserializer:
    def deserialize(self, topic: str, data: bytes | None) -> Any:
        return None if data is None else orjson.loads(data)


_SERIALIZERS = {"bytes": BytesSerializer, "str": StringSerializer, "json": JsonSerializer}
_DESERIALIZERS = {"bytes": BytesDeserializer, "str": StringDeserializer, "json": JsonDeserializer}


def resolve_serializer(spec: str | Serializer | None) -> Serializer:
    """A serializer from a name ("bytes", "str", "json"), an instance, or None (bytes)."""
    if spec is None:
        return BytesSerializer()
    if isinstance(spec, str):
        try:
            return _SERIALIZERS[spec]()
        except KeyError:
            raise ValueError(f"unknown serializer {spec!r} (known: {', '.join(_SERIALIZERS)})") from None
    if not isinstance(spec, Serializer):
        raise TypeError(f"a serializer needs a serialize(topic, data) method, got {type(spec).__name__}")
    return spec


def resolve_deserializer(spec: str | Deserializer | None) -> Deserializer:
    """A deserializer from a name ("bytes", "str", "json"), an instance, or None (bytes)."""
    if spec is None:
        return BytesDeserializer()
    if isinstance(spec, str):
        try:
            return _DESERIALIZERS[spec]()
        except KeyError:
            raise ValueError(f"unknown deserializer {spec!r} (known: {', '.join(_DESERIALIZERS)})") from None
    if not isinstance(spec, Deserializer):
        raise TypeError(f"a deserializer needs a deserialize(topic, data) method, got {type(spec).__name__}")
    return spec
