"""Avro records as JSON at the node's edge: JSON values to the Confluent wire format and back.

Theory of operation
-------------------
A produce request may name a registered schema; its JSON values are then checked against the
schema, converted to the data fastavro writes, and framed in Confluent's wire format: the magic byte
0, the schema id as 4 bytes big-endian, the Avro binary encoding. A JSON fetch with `?decode=avro`
goes the other way for each key and value in that format whose id the registry knows.

The JSON form is Avro's own JSON encoding (the Avro specification's, as avro-tools and Confluent's
console consumer print it): a union value other than null is an object with one member named after
its branch (`{"string": "x"}`, `{"com.example.Address": {...}}`), bytes and fixed are strings whose
code points 0-255 are the bytes, an enum is its symbol, and a logical type is its underlying type
(a timestamp-millis is a long, a decimal is bytes). Fetch answers in exactly that form, union
branches named as the bytes name them, so what is fetched can be produced again unchanged. Produce also takes two conveniences: a union value without
the wrapping object goes to the first branch that can hold it, and a record field that is missing
takes the field's default.

A value that does not fit is refused with `ApiError` 42201 naming the path of the offending part
(`records[3].value.address.zip: expected an int, got "abc"`). Conversion and framing are pure;
fastavro does the binary encoding and decoding, with logical types switched off (the JSON carries the
underlying values). Codecs are cached by schema content. Thread-safety: event loop only.
"""

from __future__ import annotations

import io
import struct
from collections import OrderedDict
from typing import Any

import fastavro
import orjson

from metadata.commands import MetadataError
from metadata.schemas import RegistryState, StoredSchema
from node.errors import ApiError
from node.schema_registry import parse_stored

MAGIC_BYTE = 0
HEADER = struct.Struct(">bI")  # magic byte, schema id
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
CODEC_CACHE_MAX = 1_000
PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED = frozenset({"record", "error", "enum", "fixed"})
WRAPPER = "RaftkaTopLevelValue__"  # no namespace: the schema's own names keep theirs (see AvroCodec)


def split_wire_format(data: bytes | None) -> tuple[int, bytes] | None:
    """(schema id, Avro payload) of data in Confluent's wire format, else None."""
    if data is None or len(data) < HEADER.size or data[0] != MAGIC_BYTE:
        return None
    _, schema_id = HEADER.unpack_from(data)
    return schema_id, data[HEADER.size :]


class Invalid(Exception):
    """A value that does not fit its schema: `path` is where, relative to the value."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
        self.message = message


def _without_logical_types(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_without_logical_types(s) for s in schema]
    if isinstance(schema, dict):
        return {k: _without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    return schema


def _show(value: Any) -> str:
    """A JSON value for an error message, shortened."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class AvroCodec:
    """One registered schema: JSON value <-> Confluent wire format (see the module notes)."""

    def __init__(self, schema_id: int, schema: Any, dependencies: tuple[Any, ...] = ()):
        """`schema`: the schema's JSON; `dependencies`: the JSON of the schemas it references,
        dependencies first."""
        self.schema_id = schema_id
        self.named: dict[str, Any] = {}
        for item in dependencies:
            fastavro.parse_schema(_without_logical_types(item), named_schemas=self.named)
        # fastavro resolves named types from its own parse of the top-level schema, so a top-level
        # union of referenced types cannot be written directly. A record's encoding is its fields'
        # encodings in order, so a record with the schema as its only field encodes the same bytes.
        wrapper = {"type": "record", "name": WRAPPER, "fields": [{"name": "v", "type": schema}]}
        self.wrapper = fastavro.parse_schema(_without_logical_types(wrapper), named_schemas=self.named)
        self.root = self.wrapper["fields"][0]["type"]
        self.header = HEADER.pack(MAGIC_BYTE, schema_id)
        # The decoding schema: the same bytes, each union branch that is not a named type wrapped in a
        # one-field record of its own name, so that fastavro names the branch it read (an int and a
        # long, or a float and a double, decode to one Python type; the branch is in the bytes).
        counter = iter(range(2**31))
        decode_named: dict[str, Any] = {}
        for item in dependencies:
            fastavro.parse_schema(
                _tag_branches(_without_logical_types(item), counter), named_schemas=decode_named
            )
        self.decode_wrapper = fastavro.parse_schema(
            _tag_branches(_without_logical_types(wrapper), counter), named_schemas=decode_named
        )

    # -- JSON -> wire format ---------------------------------------------------------------------------

    def encode(self, value: Any, where: str) -> bytes:
        """The wire-format bytes of a JSON value; ApiError 42201 naming `where` + the path inside."""
        try:
            datum = self.from_json(self.root, value, "")
        except Invalid as exc:
            raise ApiError(42201, f"{where}{exc.path}: {exc.message}") from None
        buffer = io.BytesIO()
        buffer.write(self.header)
        try:
            fastavro.schemaless_writer(buffer, self.wrapper, {"v": datum})
        except (ValueError, TypeError, OverflowError) as exc:  # the conversion above should rule these out
            raise ApiError(42201, f"{where}: does not fit schema {self.schema_id}: {exc}") from None
        return buffer.getvalue()

    def _resolve(self, schema: Any) -> Any:
        if isinstance(schema, str) and schema not in PRIMITIVES:
            return self.named[schema]
        return schema

    def from_json(self, schema: Any, value: Any, path: str) -> Any:
        """The datum fastavro writes for `value` (unions as (branch, datum) tuples)."""
        schema = self._resolve(schema)
        if isinstance(schema, list):
            return self._union_from_json(schema, value, path)
        kind = schema if isinstance(schema, str) else schema["type"]
        if kind == "null":
            if value is not None:
                raise Invalid(path, f"expected null, got {_show(value)}")
            return None
        if kind == "boolean":
            if not isinstance(value, bool):
                raise Invalid(path, f"expected a boolean, got {_show(value)}")
            return value
        if kind in ("int", "long"):
            low, high = (INT_MIN, INT_MAX) if kind == "int" else (LONG_MIN, LONG_MAX)
            if isinstance(value, bool) or not isinstance(value, int):
                raise Invalid(path, f"expected {'an int' if kind == 'int' else 'a long'}, got {_show(value)}")
            if not low <= value <= high:
                raise Invalid(path, f"{value} is out of range for {kind} ({low}..{high})")
            return value
        if kind in ("float", "double"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise Invalid(path, f"expected a {kind} (a number), got {_show(value)}")
            return float(value)
        if kind == "string":
            if not isinstance(value, str):
                raise Invalid(path, f"expected a string, got {_show(value)}")
            return value
        if kind in ("bytes", "fixed"):
            if not isinstance(value, str):
                raise Invalid(path, f"expected {kind} as a string of code points 0-255, got {_show(value)}")
            try:
                data = value.encode("latin-1")
            except UnicodeEncodeError:
                raise Invalid(path, f"{kind} must be a string of code points 0-255 (one per byte)") from None
            if kind == "fixed" and len(data) != schema["size"]:
                raise Invalid(path, f"fixed {schema['name']} takes {schema['size']} bytes, got {len(data)}")
            return data
        if kind == "enum":
            if not isinstance(value, str) or value not in schema["symbols"]:
                symbols = ", ".join(schema["symbols"][:10])
                raise Invalid(
                    path, f"expected a symbol of enum {schema['name']} ({symbols}), got {_show(value)}"
                )
            return value
        if kind == "array":
            if not isinstance(value, list):
                raise Invalid(path, f"expected an array, got {_show(value)}")
            return [self.from_json(schema["items"], item, f"{path}[{i}]") for i, item in enumerate(value)]
        if kind == "map":
            if not isinstance(value, dict):
                raise Invalid(path, f"expected a map (a JSON object), got {_show(value)}")
            return {k: self.from_json(schema["values"], v, f"{path}[{k!r}]") for k, v in value.items()}
        if kind in ("record", "error"):
            return self._record_from_json(schema, value, path)
        raise Invalid(path, f"unsupported schema type {kind!r}")  # parse_schema lets nothing else through

    def _record_from_json(self, schema: dict, value: Any, path: str) -> dict:
        if not isinstance(value, dict):
            raise Invalid(path, f"expected a record {schema['name']} (a JSON object), got {_show(value)}")
        names = {f["name"] for f in schema["fields"]}
        unknown = sorted(set(value) - names)
        if unknown:
            raise Invalid(f"{path}.{unknown[0]}", f"record {schema['name']} has no field {unknown[0]!r}")
        out = {}
        for f in schema["fields"]:
            name = f["name"]
            if name in value:
                out[name] = self.from_json(f["type"], value[name], f"{path}.{name}")
            elif "default" in f:
                out[name] = self._default(f["type"], f["default"], f"{path}.{name}")
            else:
                raise Invalid(f"{path}.{name}", f"missing (record {schema['name']} has no default for it)")
        return out

    def _default(self, schema: Any, default: Any, path: str) -> Any:
        """A field's default (JSON as in the schema: a union's default is bare, for its first branch)."""
        resolved = self._resolve(schema)
        if isinstance(resolved, list):
            return self._bare_union(resolved, default, path)
        return self.from_json(resolved, default, path)

    def _branch_name(self, branch: Any) -> str:
        resolved = self._resolve(branch)
        if isinstance(resolved, str):
            return resolved
        if resolved["type"] in NAMED:
            return resolved["name"]
        return resolved["type"]

    def _union_from_json(self, branches: list, value: Any, path: str) -> Any:
        if value is None:
            if any(self._branch_name(b) == "null" for b in branches):
                return None
            raise Invalid(path, "null is not a branch of the union")
        if isinstance(value, dict) and len(value) == 1:
            ((name, inner),) = value.items()
            for branch in branches:
                branch_name = self._branch_name(branch)
                if name == branch_name or ("." in branch_name and name == branch_name.rpartition(".")[2]):
                    return (branch_name, self.from_json(branch, inner, f"{path}.{name}"))
        return self._bare_union(branches, value, path)

    def _bare_union(self, branches: list, value: Any, path: str) -> Any:
        """The first branch that can hold the value."""
        reasons = []
        for branch in branches:
            try:
                datum = self.from_json(branch, value, path)
            except Invalid as exc:
                reasons.append(f"as {self._branch_name(branch)}: {exc.path or '.'}: {exc.message}")
                continue
            return datum if datum is None else (self._branch_name(branch), datum)
        names = ", ".join(self._branch_name(b) for b in branches)
        raise Invalid(
            path,
            f'fits no branch of the union [{names}] (give one as {{"<branch>": value}}; '
            + "; ".join(reasons[:3])
            + ")",
        )

    # -- wire format -> JSON ---------------------------------------------------------------------------

    def decode(self, payload: bytes) -> Any:
        """The Avro JSON encoding of a payload (the bytes after the 5-byte header); ValueError when
        the payload is not a value of this schema."""
        stream = io.BytesIO(payload)
        try:
            datum = fastavro.schemaless_reader(stream, self.decode_wrapper, None, return_named_type=True)["v"]
        except (EOFError, ValueError, IndexError, TypeError, UnicodeDecodeError, OverflowError) as exc:
            raise ValueError(f"not a value of schema {self.schema_id}: {type(exc).__name__} {exc}") from None
        if stream.tell() != len(payload):
            raise ValueError(
                f"not a value of schema {self.schema_id}: {len(payload) - stream.tell()} bytes left over"
            )
        return self.to_json(self.root, datum)

    def to_json(self, schema: Any, datum: Any) -> Any:
        schema = self._resolve(schema)
        if isinstance(schema, list):
            return self._union_to_json(schema, datum)
        kind = schema if isinstance(schema, str) else schema["type"]
        if kind in ("bytes", "fixed"):
            return datum.decode("latin-1")
        if kind == "array":
            return [self.to_json(schema["items"], item) for item in datum]
        if kind == "map":
            return {k: self.to_json(schema["values"], v) for k, v in datum.items()}
        if kind in ("record", "error"):
            return {f["name"]: self.to_json(f["type"], datum[f["name"]]) for f in schema["fields"]}
        return datum  # null, boolean, numbers, string, enum

    def _union_to_json(self, branches: list, datum: Any) -> Any:
        if datum is None:
            return None
        name, inner = datum  # fastavro names the branch it read (see decode_wrapper)
        index = _tagged_branch(name)
        if index is not None:
            branch, inner = branches[index], inner["v"]
        else:  # a named type
            branch = next(b for b in branches if self._branch_name(b) == name)
        return {self._branch_name(branch): self.to_json(branch, inner)}


BRANCH_TAG = "RaftkaBranch"  # + "<n>_<branch index>__": the records of _tag_branches


def _is_named(schema: Any) -> bool:
    if isinstance(schema, str):
        return schema not in PRIMITIVES
    return isinstance(schema, dict) and schema.get("type") in NAMED


def _tag_branches(schema: Any, counter) -> Any:
    """`schema` with each union branch other than null and the named types wrapped in a record with
    one field "v" of that branch's type, named after the branch's index. A record's encoding is its
    fields' encodings in order, so the bytes are the same and the reader names the branch."""
    if isinstance(schema, list):
        out = []
        for index, branch in enumerate(schema):
            tagged = _tag_branches(branch, counter)
            if branch == "null" or _is_named(branch):
                out.append(tagged)
            else:
                name = f"{BRANCH_TAG}{next(counter)}_{index}__"
                out.append({"type": "record", "name": name, "fields": [{"name": "v", "type": tagged}]})
        return out
    if not isinstance(schema, dict):
        return schema
    kind = schema.get("type")
    if kind in ("record", "error"):
        fields = [  # defaults dropped: a reader with the writer's own schema never uses them
            {**{k: v for k, v in f.items() if k != "default"}, "type": _tag_branches(f["type"], counter)}
            for f in schema.get("fields", [])
        ]
        return {**schema, "fields": fields}
    if kind == "array":
        return {**schema, "items": _tag_branches(schema["items"], counter)}
    if kind == "map":
        return {**schema, "values": _tag_branches(schema["values"], counter)}
    if isinstance(kind, (dict, list)):
        return {**schema, "type": _tag_branches(kind, counter)}
    return schema


def _tagged_branch(name: str) -> int | None:
    """The branch index a record name of _tag_branches carries (its namespace dropped), else None."""
    short = name.rpartition(".")[2]
    if not (short.startswith(BRANCH_TAG) and short.endswith("__")):
        return None
    return int(short[len(BRANCH_TAG) : -2].partition("_")[2])


_codecs: OrderedDict[tuple, AvroCodec] = OrderedDict()


def codec_for(schema_id: int, text: str, schema: Any, dependencies: tuple[tuple[str, Any], ...]) -> AvroCodec:
    """The codec of a registered schema (cached by id and content: an id never changes meaning)."""
    key = (schema_id, text, tuple(t for t, _ in dependencies))
    codec = _codecs.get(key)
    if codec is None:
        codec = AvroCodec(schema_id, schema, tuple(item for _, item in dependencies))
        _codecs[key] = codec
        if len(_codecs) > CODEC_CACHE_MAX:
            _codecs.popitem(last=False)
    else:
        _codecs.move_to_end(key)
    return codec


# -- the registry's schemas, for the produce and fetch routes ----------------------------------------


def codec_of(state: RegistryState, stored: StoredSchema) -> AvroCodec:
    """The codec of a stored schema, its references resolved; ApiError 42201 when they are gone."""
    try:
        parsed = parse_stored(state, stored)
    except MetadataError as exc:
        raise ApiError(42201, f"schema {stored.schema_id} cannot be used: {exc.message}") from None
    return codec_for(stored.schema_id, parsed.text, parsed.json, parsed.dependencies)


def schema_lookup(state: RegistryState):
    """The produce body's schema fields to an encoder (node/records.py SchemaLookup): an id, or a
    subject's latest live version. ApiError 42201 for anything the registry does not hold."""

    def find(part: str, schema_id: object, subject: object) -> AvroCodec:
        if schema_id is not None and subject is not None:
            raise ApiError(42201, f"give {part}_schema_id or {part}_subject, not both")
        if schema_id is not None:
            if isinstance(schema_id, bool) or not isinstance(schema_id, int):
                raise ApiError(42201, f"{part}_schema_id must be an integer, got {_show(schema_id)}")
            stored = state.schemas.get(schema_id)
            if stored is None:
                raise ApiError(42201, f"{part}_schema_id {schema_id} is not a schema of the registry")
            return codec_of(state, stored)
        if not isinstance(subject, str):
            raise ApiError(42201, f"{part}_subject must be a string, got {_show(subject)}")
        info = state.subjects.get(subject)
        live = info.live() if info else ()
        if not live:
            raise ApiError(
                42201,
                f"{part}_subject {subject!r} has no schema in the registry "
                f"(register one: POST /subjects/{subject}/versions)",
            )
        return codec_of(state, state.schemas[live[-1].schema_id])

    return find


def avro_decoder(state: RegistryState):
    """Bytes to (Avro JSON, schema id) for data in the wire format with an id the registry knows
    (node/records.py Decoder); ValueError when such data does not decode."""

    def decode(data: bytes) -> tuple[Any, int] | None:
        framed = split_wire_format(data)
        if framed is None:
            return None
        schema_id, payload = framed
        stored = state.schemas.get(schema_id)
        if stored is None:
            return None
        try:
            codec = codec_of(state, stored)
        except ApiError as exc:
            raise ValueError(exc.message) from None
        return codec.decode(payload), schema_id

    return decode
