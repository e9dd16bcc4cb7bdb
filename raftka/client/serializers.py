"""Serializers turn keys and values into bytes; deserializers turn bytes back.

Every serializer takes the topic along with the data, as Kafka's do, so that a schema-aware one can pick
its subject: `AvroSerializer` registers (or looks up) its schema in the registry the nodes embed under
`<topic>-key` / `<topic>-value` and writes Confluent's wire format (a zero byte, the schema id in 4
bytes, the Avro binary encoding); `AvroDeserializer` reads it back with the writer's schema from the
registry. `None` always maps to `None` both ways: a null key, or a null value that marks a tombstone.

Wherever the client takes a serializer it also takes a short name: "bytes", "str" (UTF-8) or "json"
(orjson), or any object with a `serialize`/`deserialize` method of the shape below.
"""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import fastavro
import orjson

from raftka.client.schema_registry import SchemaRegistryClient, schema_text


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


WIRE_HEADER = struct.Struct(">bI")  # Confluent's wire format: magic byte 0, schema id
SUBJECT_STRATEGIES = ("topic", "record", "topic_record")


def _registry(registry: SchemaRegistryClient | str | Sequence[str] | None) -> SchemaRegistryClient:
    return registry if isinstance(registry, SchemaRegistryClient) else SchemaRegistryClient(registry)


def _named_types(
    registry: SchemaRegistryClient, references: Sequence[dict], named: dict, depth: int = 0
) -> None:
    """Parse the schemas `references` name (and theirs) into fastavro's `named` types."""
    if depth > 32:
        raise ValueError("schema references nest deeper than 32")
    for ref in references:
        found = registry.version(ref["subject"], int(ref["version"]))
        _named_types(registry, found.references, named, depth + 1)
        fastavro.parse_schema(orjson.loads(found.schema), named_schemas=named)


def _parsed(
    registry: SchemaRegistryClient, schema: Any, references: Sequence[dict]
) -> tuple[Any, str | None]:
    """fastavro's parse of `schema` as the one field "v" of a record (which encodes to the same bytes:
    fastavro resolves named types only from the top-level schema it is given, so a top-level union of
    referenced types needs it), and the schema's record name if it is a record."""
    named: dict[str, Any] = {}
    _named_types(registry, references, named)
    inner = fastavro.parse_schema(schema, named_schemas=dict(named))
    record_name = inner.get("name") if isinstance(inner, dict) and inner.get("type") == "record" else None
    wrapper = {"type": "record", "name": "RaftkaTopLevelValue__", "fields": [{"name": "v", "type": schema}]}
    return fastavro.parse_schema(wrapper, named_schemas=named), record_name


class AvroSerializer:
    """Python values (dicts for records, as fastavro takes them) to Confluent's Avro wire format.

    The schema goes to the registry under the subject its strategy names ("topic": `<topic>-value`, or
    `<topic>-key` with `is_key`; "record": the record's full name; "topic_record": both, or a callable
    `(topic, is_key, record_name) -> subject`) the first time a subject is used: registered when
    `auto_register` (an idempotent call), looked up otherwise; `schema_id` skips the registry. That
    first call blocks (one HTTP request); its answer is kept. A value that does not fit the schema
    raises ValueError naming the topic.
    """

    def __init__(
        self,
        registry: SchemaRegistryClient | str | Sequence[str] | None,
        schema: str | dict | list,
        *,
        is_key: bool = False,
        subject_strategy: str | Callable[[str, bool, str | None], str] = "topic",
        auto_register: bool = True,
        normalize: bool = False,
        references: Sequence[dict] = (),
        schema_id: int | None = None,
    ):
        if isinstance(subject_strategy, str) and subject_strategy not in SUBJECT_STRATEGIES:
            raise ValueError(
                f"unknown subject strategy {subject_strategy!r} (known: {', '.join(SUBJECT_STRATEGIES)})"
            )
        self.registry = _registry(registry)
        self.text = schema_text(schema)
        self.is_key = is_key
        self.subject_strategy = subject_strategy
        self.auto_register = auto_register
        self.normalize = normalize
        self.references = list(references)
        self.parsed, self.record_name = _parsed(self.registry, orjson.loads(self.text), self.references)
        self.schema_id = schema_id
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()

    def subject(self, topic: str) -> str:
        strategy = self.subject_strategy
        if callable(strategy):
            return strategy(topic, self.is_key, self.record_name)
        if strategy == "topic":
            return f"{topic}-{'key' if self.is_key else 'value'}"
        if self.record_name is None:
            raise ValueError(f"the {strategy} subject strategy needs a record schema")
        return self.record_name if strategy == "record" else f"{topic}-{self.record_name}"

    def id_for(self, topic: str) -> int:
        if self.schema_id is not None:
            return self.schema_id
        subject = self.subject(topic)
        with self._lock:
            known = self._ids.get(subject)
        if known is not None:
            return known
        if self.auto_register:
            found = self.registry.register(subject, self.text, self.references, self.normalize)
        else:
            found = self.registry.lookup(subject, self.text, self.references).schema_id
        with self._lock:
            self._ids[subject] = found
        return found

    def serialize(self, topic: str, data: Any) -> bytes | None:
        if data is None:
            return None
        schema_id = self.id_for(topic)
        buffer = io.BytesIO()
        buffer.write(WIRE_HEADER.pack(0, schema_id))
        try:
            fastavro.schemaless_writer(
                buffer, self.parsed, {"v": data}, strict=True, strict_allow_default=True
            )
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise ValueError(f"{topic}: the value does not fit Avro schema {schema_id}: {exc}") from None
        return buffer.getvalue()


class AvroDeserializer:
    """Confluent's Avro wire format back to Python values, with the writer's schema from the registry
    (fetched once per schema id, then kept) and, when given, resolved to `reader_schema` (Avro's schema
    resolution: defaults for fields the writer did not have, promotions, ...). Bytes not in the wire
    format raise ValueError."""

    def __init__(
        self,
        registry: SchemaRegistryClient | str | Sequence[str] | None,
        reader_schema: str | dict | list | None = None,
    ):
        self.registry = _registry(registry)
        self.reader = None
        if reader_schema is not None:
            self.reader = _parsed(self.registry, orjson.loads(schema_text(reader_schema)), ())[0]
        self._writers: dict[int, Any] = {}
        self._lock = threading.Lock()

    def writer_schema(self, schema_id: int) -> Any:
        with self._lock:
            parsed = self._writers.get(schema_id)
        if parsed is None:
            found = self.registry.schema_by_id(schema_id)
            parsed = _parsed(self.registry, orjson.loads(found["schema"]), found.get("references", ()))[0]
            with self._lock:
                self._writers[schema_id] = parsed
        return parsed

    def deserialize(self, topic: str, data: bytes | None) -> Any:
        if data is None:
            return None
        if len(data) < WIRE_HEADER.size or data[0] != 0:
            raise ValueError(f"{topic}: not Avro in the schema registry's wire format (no magic byte 0)")
        _, schema_id = WIRE_HEADER.unpack_from(data)
        stream = io.BytesIO(data)
        stream.seek(WIRE_HEADER.size)
        try:
            return fastavro.schemaless_reader(stream, self.writer_schema(schema_id), self.reader)["v"]
        except (EOFError, ValueError, IndexError, TypeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{topic}: not a value of Avro schema {schema_id}: {exc}") from None


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
