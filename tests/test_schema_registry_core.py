"""The schema registry's rules without a node: the state and its commands (metadata/schemas.py), the
decisions (node/schema_registry.py: canonical text, ids, versions, deletes, modes, compatibility at
every level), the JSON <-> Avro conversion of the produce and fetch routes (node/avro_json.py), and
the produce body's schema fields (node/records.py)."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from unittest import mock

import fastavro
import orjson
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

import metadata.commands as commands_module
from metadata.commands import (
    ActivateController,
    MetadataError,
    apply,
    command_from_dict,
    command_to_dict,
)
from metadata.image import MetadataImage
from metadata.schemas import (
    REGISTRY_COMMANDS,
    DeleteSchemaVersions,
    RegisterSchema,
    RegistryState,
    SchemaReference,
    SetRegistryConfig,
    SetRegistryMode,
    apply_registry,
)
from node import schema_registry as sr
from node.avro_json import AvroCodec, avro_decoder, schema_lookup, split_wire_format
from node.errors import ApiError
from node.records import parse_produce_body, record_to_json
from storage.record_batch import Record

# -- helpers ----------------------------------------------------------------------------------------------


def record(name: str, *fields: dict, **extra) -> str:
    return json.dumps({"type": "record", "name": name, "fields": list(fields), **extra})


def field(name: str, kind, **extra) -> dict:
    return {"name": name, "type": kind, **extra}


USER_V1 = record("User", field("name", "string"))
USER_V2 = record("User", field("name", "string"), field("age", "int", default=0))  # adds a default field
USER_V3 = record("User", field("name", "string"), field("age", "int", default=0), field("email", "string"))


def register(
    state: RegistryState, subject: str, text: str, **kwargs
) -> tuple[RegistryState, sr.Registration]:
    parsed = sr.parse_schema(
        state, "AVRO", text, kwargs.pop("references", ()), kwargs.pop("normalize", False)
    )
    registration = sr.plan_register(state, subject, parsed, 0, **kwargs)
    if registration.command is not None:
        state = apply_registry(state, registration.command)
    return state, registration


def refused(code: int, call, *args, **kwargs) -> str:
    with pytest.raises(MetadataError) as caught:
        call(*args, **kwargs)
    assert caught.value.error_code == code, caught.value.message
    return caught.value.message


def with_level(state: RegistryState, level: str, subject: str | None = None) -> RegistryState:
    return apply_registry(state, SetRegistryConfig(subject, level))


# -- the state and its commands ---------------------------------------------------------------------------


def test_register_binds_ids_for_good_and_numbers_versions():
    state, first = register(RegistryState(), "a-value", USER_V1)
    assert (first.schema_id, first.version) == (1, 1)
    # The same schema again: nothing to commit, the same id and version (idempotent).
    again, repeat = register(state, "a-value", USER_V1)
    assert repeat.command is None and (repeat.schema_id, repeat.version) == (1, 1)
    assert again == state
    # Whitespace does not make another schema; the same schema under another subject keeps its id.
    spaced = json.dumps(json.loads(USER_V1), indent=4)
    state, other = register(state, "b-value", spaced)
    assert (other.schema_id, other.version) == (1, 1)
    state, second = register(state, "a-value", USER_V2)
    assert (second.schema_id, second.version) == (2, 2)
    assert state.next_schema_id == 3
    assert [v.version for v in state.subjects["a-value"].versions] == [1, 2]


def test_apply_is_idempotent_and_never_rebinds_an_id():
    state, reg = register(RegistryState(), "s", USER_V1)
    assert apply_registry(state, reg.command) == state  # a retried command changes nothing
    text2 = sr.parse_schema(state, "AVRO", USER_V2).text
    # Id 1 for another text: refused at apply time (an id names one text for good).
    assert apply_registry(state, RegisterSchema("t", 1, 1, "AVRO", text2)) == state
    # The text of id 1 under another id: refused too.
    assert apply_registry(state, RegisterSchema("t", 7, 1, "AVRO", reg.command.schema)) == state
    # A version number already taken: refused.
    assert apply_registry(state, RegisterSchema("s", 2, 1, "AVRO", text2)) == state
    # Unknown levels and modes are refused at apply time.
    assert apply_registry(state, SetRegistryConfig(None, "SIDEWAYS")) == state
    assert apply_registry(state, SetRegistryMode("s", "WRITEONLY")) == state


def test_registry_commands_are_fenced_and_round_trip_through_json():
    image = apply(MetadataImage(), ActivateController(1, 3))
    commands = [
        RegisterSchema("s", 1, 1, "AVRO", '"string"', (SchemaReference("N", "other", 2),), 3),
        DeleteSchemaVersions("s", (1, 2), True, 3),
        SetRegistryConfig("s", "FULL", 3),
        SetRegistryConfig(None, None, 3),
        SetRegistryMode(None, "READONLY", 3),
    ]
    assert {type(c).__name__ for c in commands} == set(REGISTRY_COMMANDS)
    for command in commands:
        back = command_from_dict(orjson.loads(orjson.dumps(command_to_dict(command))))
        assert back == command and type(back) is type(command)
    _, reg = register(RegistryState(), "s", USER_V1)
    stale = replace(reg.command, controller_epoch=2)
    after = apply(image, stale)
    assert after.schema_registry == image.schema_registry  # a deposed controller's command: fenced
    assert after.version == image.version + 1
    current = apply(image, replace(reg.command, controller_epoch=3))
    assert current.schema_registry.subjects["s"].versions[0].schema_id == 1


def test_snapshots_keep_the_registry_and_old_ones_load():
    state, _ = register(RegistryState(), "s", USER_V1)
    state, _ = register(state, "s", USER_V2)
    state = apply_registry(state, DeleteSchemaVersions("s", (1,)))
    state = with_level(state, "FULL", "s")
    state = apply_registry(state, SetRegistryMode(None, "READONLY"))
    image = replace(MetadataImage(), schema_registry=state)
    assert MetadataImage.from_dict(orjson.loads(orjson.dumps(image.to_dict()))) == image
    old = image.to_dict()
    del old["schema_registry"]  # a snapshot written before the registry existed
    assert MetadataImage.from_dict(old).schema_registry == RegistryState()


def test_deletes_are_two_steps_and_keep_ids():
    state, _ = register(RegistryState(), "s", USER_V1)
    state, _ = register(state, "s", USER_V2)
    refused(sr.VERSION_NOT_SOFT_DELETED, sr.plan_delete_version, state, "s", 1, True, 0)
    command, version = sr.plan_delete_version(state, "s", None, False, 0)  # latest
    assert version == 2
    state = apply_registry(state, command)
    assert sr.list_versions(state, "s") == [1]
    assert sr.list_versions(state, "s", deleted=True) == [1, 2]
    assert sr.list_versions(state, "s", deleted_only=True) == [2]
    refused(sr.VERSION_SOFT_DELETED, sr.plan_delete_version, state, "s", 2, False, 0)
    refused(sr.VERSION_NOT_FOUND, sr.get_version, state, "s", 2)
    assert sr.get_version(state, "s", 2, deleted=True)["id"] == 2
    refused(sr.SUBJECT_NOT_SOFT_DELETED, sr.plan_delete_subject, state, "s", True, 0)
    command, versions = sr.plan_delete_subject(state, "s", False, 0)
    assert versions == [1]
    state = apply_registry(state, command)
    assert sr.list_subjects(state) == [] and sr.list_subjects(state, deleted=True) == ["s"]
    assert sr.list_subjects(state, deleted_only=True) == ["s"]
    refused(sr.SUBJECT_NOT_FOUND, sr.list_versions, state, "s")
    refused(sr.SUBJECT_SOFT_DELETED, sr.plan_delete_subject, state, "s", False, 0)
    # A soft-deleted schema registered again: a new version with the same id, numbering goes on.
    _, reg = register(state, "s", USER_V1)
    assert (reg.schema_id, reg.version) == (1, 3)
    command, versions = sr.plan_delete_subject(state, "s", True, 0)
    assert versions == [1, 2]
    state = apply_registry(state, command)
    assert "s" not in state.subjects
    refused(sr.SUBJECT_NOT_FOUND, sr.plan_delete_subject, state, "s", False, 0)
    # Ids outlive their versions; a subject deleted for good starts again at version 1.
    assert sr.schema_by_id(state, 2).schema == sr.parse_schema(state, "AVRO", USER_V2).text
    state, reg = register(state, "s", USER_V2)
    assert (reg.schema_id, reg.version) == (2, 1)
    state, reg = register(
        state, "s", USER_V3.replace('"email", "type": "string"', '"email", "type": "string", "default": ""')
    )
    assert reg.schema_id == 3  # never an id of before


def test_compatibility_levels_of_confluent():
    # (level, history, candidate, compatible?) -- history is registered with NONE first.
    int_field = record("R", field("a", "int"))
    long_field = record("R", field("a", "long"))
    with_b = record("R", field("a", "int"), field("b", "string"))
    with_b_default = record("R", field("a", "int"), field("b", "string", default="x"))
    cases = [
        ("BACKWARD", [int_field], long_field, True),  # a long reader reads ints (promotion)
        ("BACKWARD", [long_field], int_field, False),
        ("BACKWARD", [int_field], with_b, False),  # a new field without a default
        ("BACKWARD", [int_field], with_b_default, True),
        ("FORWARD", [int_field], with_b, True),  # the old reader ignores the new field
        ("FORWARD", [int_field], long_field, False),  # the old int reader cannot read longs
        ("FORWARD", [with_b], int_field, False),  # the old reader needs b, which has no default
        ("FULL", [int_field], with_b_default, True),
        ("FULL", [int_field], with_b, False),
        ("FULL", [int_field], long_field, False),
        ("NONE", [int_field], record("Other", field("z", "bytes")), True),
        ("BACKWARD", [int_field], '"string"', False),
        # Non-transitive levels look at the latest version only; transitive ones at every one.
        ("BACKWARD", [with_b, int_field], with_b_default.replace('"x"', '"y"'), True),
        ("BACKWARD_TRANSITIVE", [int_field, long_field], record("R", field("a", "double")), True),
        ("BACKWARD", [long_field, with_b_default], record("R", field("a", "int")), True),
        ("BACKWARD_TRANSITIVE", [long_field, with_b_default], record("R", field("a", "int")), False),
        ("FORWARD", [long_field, int_field], int_field.replace('"R"', '"R", "doc": "d"'), True),
        ("FORWARD_TRANSITIVE", [with_b, int_field], int_field.replace('"R"', '"R", "doc": "d"'), False),
        ("FULL", [with_b, with_b_default], with_b_default.replace('"x"', '"z"'), True),
        ("FULL_TRANSITIVE", [long_field, with_b_default], with_b_default.replace('"x"', '"z"'), False),
    ]
    for level, history, candidate, expected in cases:
        state = with_level(RegistryState(), "NONE", "s")
        for text in history:
            state, _ = register(state, "s", text)
        state = with_level(state, level, "s")
        parsed = sr.parse_schema(state, "AVRO", candidate)
        messages = sr.test_compatibility(state, "s", None, parsed, all_versions=True)
        assert (not messages) is expected, (level, history, candidate, messages)
        if expected:
            state, reg = register(state, "s", candidate)
            assert reg.command is not None
        else:
            message = refused(sr.INCOMPATIBLE_SCHEMA, register, state, "s", candidate)
            assert level in message and "version" in message


def test_compatibility_ignores_soft_deleted_versions_and_reports_why():
    state, _ = register(RegistryState(), "s", record("R", field("a", "int")))
    message = refused(sr.INCOMPATIBLE_SCHEMA, register, state, "s", record("R", field("a", "string")))
    assert "TYPE_MISMATCH" in message and "/fields/0/type" in message
    state = apply_registry(state, DeleteSchemaVersions("s", (1,)))
    state, reg = register(state, "s", record("R", field("a", "string")))
    assert reg.version == 2
    # The test route against one version ignores transitivity; against all it follows the level.
    parsed = sr.parse_schema(state, "AVRO", record("R", field("a", "string"), field("b", "int")))
    assert sr.test_compatibility(state, "s", 2, parsed, all_versions=False)
    refused(sr.VERSION_NOT_FOUND, sr.test_compatibility, state, "s", 1, parsed, False)
    # "latest" of a subject with nothing registered: compatible (Confluent's answer); a number: 40401.
    assert sr.test_compatibility(state, "nope", None, parsed, all_versions=False) == []
    refused(sr.SUBJECT_NOT_FOUND, sr.test_compatibility, state, "nope", 1, parsed, False)
    assert sr.test_compatibility(state, "nope", None, parsed, all_versions=True) == []  # nothing to break


@pytest.mark.parametrize(
    ("text", "code", "words"),
    [
        ("{not json", sr.INVALID_SCHEMA, "not JSON"),
        ('{"type": "strin"}', sr.INVALID_SCHEMA, "strin"),
        (record("R", field("a", "int", default="x")), sr.INVALID_SCHEMA, "Default value"),
        (record("R", field("a", "Missing")), sr.INVALID_SCHEMA, "Missing"),
        ('{"type": "enum", "name": "E", "symbols": ["A", "A"]}', sr.INVALID_SCHEMA, "Invalid schema"),
        ('"' + "x" * (sr.SCHEMA_BYTES_MAX + 1) + '"', sr.SCHEMA_TOO_LARGE, "limit"),
    ],
)
def test_invalid_schemas_are_refused_with_the_reason(text, code, words):
    message = refused(code, sr.parse_schema, RegistryState(), "AVRO", text)
    assert words in message


def test_schema_types_subjects_versions_and_levels_are_checked():
    assert sr.schema_type_of(None) == "AVRO" and sr.schema_type_of("avro") == "AVRO"
    assert "Avro schemas only" in refused(sr.INVALID_SCHEMA, sr.schema_type_of, "PROTOBUF")
    refused(sr.INVALID_SCHEMA, sr.schema_type_of, "XML")
    refused(sr.INVALID_SUBJECT, sr.check_subject, "")
    refused(sr.INVALID_SUBJECT, sr.check_subject, "a\nb")
    assert (
        sr.parse_version("latest") is None and sr.parse_version("-1") is None and sr.parse_version("7") == 7
    )
    for bad in ("0", "x", "2147483648", "1.5"):
        refused(sr.INVALID_VERSION, sr.parse_version, bad)
    assert sr.parse_level("full_transitive") == "FULL_TRANSITIVE"
    refused(sr.INVALID_COMPATIBILITY_LEVEL, sr.parse_level, "SIDEWAYS")
    refused(sr.INVALID_MODE, sr.parse_mode, "WRITEONLY")
    refused(sr.INVALID_SCHEMA, sr.references_of, [{"name": "N", "subject": "s"}])


def test_normalize_and_lookup():
    state, reg = register(RegistryState(), "s", '{"type": {"type": "string"}}', normalize=True)
    assert sr.schema_by_id(state, reg.schema_id).schema == '"string"'
    state, reg2 = register(state, "s", '"string"')
    assert reg2.schema_id == reg.schema_id and reg2.command is None
    keys_reordered = json.dumps({"fields": [{"type": "int", "name": "a"}], "name": "R", "type": "record"})
    state, r = register(state, "t", record("R", field("a", "int")))
    parsed = sr.parse_schema(state, "AVRO", keys_reordered)
    assert sr.lookup(state, "t", parsed)["id"] == r.schema_id  # found by its normal form
    other = sr.parse_schema(state, "AVRO", record("R", field("a", "long")))
    refused(sr.SCHEMA_NOT_FOUND, sr.lookup, state, "t", other)
    refused(sr.SUBJECT_NOT_FOUND, sr.lookup, state, "nope", other)


def test_modes_import_and_read_only():
    state = apply_registry(RegistryState(), SetRegistryMode("s", "READONLY"))
    parsed = sr.parse_schema(state, "AVRO", USER_V1)
    refused(sr.OPERATION_NOT_PERMITTED, sr.plan_register, state, "s", parsed, 0)
    state, _ = register(state, "other", USER_V1)  # other subjects follow the global mode
    refused(
        sr.OPERATION_NOT_PERMITTED,
        sr.plan_register,
        state,
        "other",
        sr.parse_schema(state, "AVRO", USER_V2),
        0,
        9,
    )
    # IMPORT needs an empty registry (or force), then takes ids and versions as given.
    refused(sr.OPERATION_NOT_PERMITTED, sr.plan_set_mode, state, None, "IMPORT", False, 0)
    state = apply_registry(state, sr.plan_set_mode(state, "imp", "IMPORT", False, 0))
    state, reg = register(state, "imp", USER_V2, requested_id=40, requested_version=5)
    assert (reg.schema_id, reg.version) == (40, 5) and state.next_schema_id == 41
    refused(sr.ID_DOES_NOT_MATCH, register, state, "imp", USER_V3, requested_id=1)  # id 1 is another text
    refused(sr.ID_DOES_NOT_MATCH, register, state, "imp", USER_V1, requested_id=41)  # USER_V1 is id 1
    refused(sr.OPERATION_NOT_PERMITTED, register, state, "imp", USER_V3, requested_id=50, requested_version=5)
    assert sr.subject_mode(state, "imp", False) == "IMPORT"
    refused(sr.SUBJECT_MODE_NOT_CONFIGURED, sr.subject_mode, state, "other", False)
    assert sr.subject_mode(state, "other", True) == "READWRITE"
    command, old = sr.plan_clear_mode(state, "imp", 0)
    assert old == "IMPORT" and sr.subject_mode(apply_registry(state, command), "imp", True) == "READWRITE"


def test_config_per_subject_and_global():
    state = RegistryState()
    assert sr.subject_compatibility(state, None, False) == "BACKWARD"
    refused(sr.SUBJECT_COMPATIBILITY_NOT_CONFIGURED, sr.subject_compatibility, state, "s", False)
    assert sr.subject_compatibility(state, "s", True) == "BACKWARD"
    state = with_level(state, "FULL", "s")  # a subject may have a level before it has versions
    assert sr.subject_compatibility(state, "s", False) == "FULL"
    command, old = sr.plan_clear_compatibility(state, "s", 0)
    state = apply_registry(state, command)
    assert old == "FULL" and sr.subject_compatibility(state, "s", True) == "BACKWARD"
    state = with_level(state, "NONE")
    command, old = sr.plan_clear_compatibility(state, None, 0)
    assert old == "NONE" and apply_registry(state, command).global_compatibility == "BACKWARD"
    refused(sr.SUBJECT_NOT_FOUND, sr.plan_clear_compatibility, RegistryState(), "nope", 0)


ADDRESS = json.dumps(
    {
        "type": "record",
        "name": "Address",
        "namespace": "com.acme",
        "fields": [{"name": "zip", "type": "string"}],
    }
)
PHONE = json.dumps({"type": "enum", "name": "Kind", "namespace": "com.acme", "symbols": ["HOME", "WORK"]})


def test_references_resolve_guard_deletes_and_encode():
    state, _ = register(RegistryState(), "address", ADDRESS)
    state, _ = register(state, "kind", PHONE)
    refs = (SchemaReference("com.acme.Address", "address", 1), SchemaReference("com.acme.Kind", "kind", 1))
    person = record(
        "Person", field("home", "com.acme.Address"), field("kind", "com.acme.Kind"), namespace="com.acme"
    )
    refused(sr.INVALID_SCHEMA, register, state, "person", person)  # the names are unknown without references
    state, reg = register(state, "person", person, references=refs)
    assert sr.referenced_by(state, "address", 1) == [reg.schema_id]
    refused(sr.REFERENCE_EXISTS, sr.plan_delete_version, state, "address", 1, False, 0)
    refused(sr.REFERENCE_EXISTS, sr.plan_delete_subject, state, "kind", False, 0)
    bad = (SchemaReference("com.acme.Address", "address", 9),)
    assert "does not exist" in refused(sr.INVALID_SCHEMA, register, state, "p2", person, references=bad)
    # A top-level union of referenced types (one topic, several record types) encodes and decodes.
    state, union = register(state, "any", '["com.acme.Address", "com.acme.Kind"]', references=refs)
    decoder = avro_decoder(state)
    encoder = schema_lookup(state)("value", None, "any")
    data = encoder.encode({"com.acme.Kind": "WORK"}, "v")
    assert decoder(data) == ({"com.acme.Kind": "WORK"}, union.schema_id)
    data = encoder.encode({"zip": "1000"}, "v")  # a bare record: the first branch that holds it
    assert decoder(data) == ({"com.acme.Address": {"zip": "1000"}}, union.schema_id)
    person_codec = schema_lookup(state)("value", reg.schema_id, None)
    data = person_codec.encode({"home": {"zip": "9"}, "kind": "HOME"}, "v")
    assert decoder(data) == ({"home": {"zip": "9"}, "kind": "HOME"}, reg.schema_id)


# -- JSON <-> Avro ----------------------------------------------------------------------------------------

EVERYTHING = {
    "type": "record",
    "name": "Everything",
    "namespace": "t",
    "fields": [
        {"name": "n", "type": "null"},
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "s", "type": "string"},
        {"name": "raw", "type": "bytes"},
        {"name": "fx", "type": {"type": "fixed", "name": "Four", "size": 4}},
        {"name": "e", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}},
        {"name": "arr", "type": {"type": "array", "items": "int"}},
        {"name": "m", "type": {"type": "map", "values": "string"}},
        {"name": "u", "type": ["null", "string", "Four"]},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "dec", "type": {"type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 2}},
        {"name": "dflt", "type": "string", "default": "dv"},
        {
            "name": "nested",
            "type": ["null", {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "int"}]}],
            "default": None,
        },
    ],
}
AVRO_JSON = {
    "n": None,
    "b": True,
    "i": -5,
    "l": 2**40,
    "f": 1.5,
    "d": -2.25,
    "s": "h\u00e9llo",
    "raw": "\x00\x01\xff",
    "fx": "abcd",
    "e": "GREEN",
    "arr": [1, 2],
    "m": {"k": "v"},
    "u": {"t.Four": "wxyz"},
    "ts": 1700000000000,
    "dec": "\x04\xd2",
    "dflt": "given",
    "nested": {"t.Inner": {"x": 3}},
}
PYTHON_DATUM = {
    **AVRO_JSON,
    "raw": b"\x00\x01\xff",
    "fx": b"abcd",
    "u": ("t.Four", b"wxyz"),
    "dec": b"\x04\xd2",
    "nested": ("t.Inner", {"x": 3}),
}


def test_avro_json_round_trip_matches_fastavro_bytes():
    codec = AvroCodec(11, EVERYTHING)
    data = codec.encode(AVRO_JSON, "v")
    schema_id, payload = split_wire_format(data)
    assert schema_id == 11 and data[:5] == b"\x00\x00\x00\x00\x0b"
    plain = dict(EVERYTHING)
    plain["fields"] = [dict(f, type=f["type"]) for f in EVERYTHING["fields"]]
    for f in plain["fields"]:  # the same schema without logical types: the bytes fastavro writes
        if isinstance(f["type"], dict):
            f["type"] = {k: v for k, v in f["type"].items() if k != "logicalType"}
    expected = io.BytesIO()
    fastavro.schemaless_writer(expected, fastavro.parse_schema(plain), PYTHON_DATUM)
    assert payload == expected.getvalue()
    assert codec.decode(payload) == AVRO_JSON  # exactly the JSON given: fetched can be produced again
    # Conveniences on produce: bare union values, defaults for missing fields.
    bare = {**AVRO_JSON, "u": "text", "nested": {"x": 3}}
    del bare["dflt"]
    decoded = codec.decode(split_wire_format(codec.encode(bare, "v"))[1])
    assert decoded["u"] == {"string": "text"} and decoded["nested"] == {"t.Inner": {"x": 3}}
    assert decoded["dflt"] == "dv"


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        ({"i": "5"}, ".i", "expected an int"),
        ({"i": 2**31}, ".i", "out of range"),
        ({"b": 1}, ".b", "expected a boolean"),
        ({"f": True}, ".f", "expected a float"),
        ({"raw": "\u0100"}, ".raw", "code points 0-255"),
        ({"fx": "abc"}, ".fx", "takes 4 bytes"),
        ({"e": "BLUE"}, ".e", "enum t.Color"),
        ({"arr": [1, "x"]}, ".arr[1]", "expected an int"),
        ({"m": {"k": 1}}, ".m['k']", "expected a string"),
        ({"u": 7}, ".u", "fits no branch"),
        ({"u": {"string": 7}}, ".u.string", "expected a string"),
        ({"nested": {"t.Inner": {"y": 1}}}, ".nested.t.Inner.y", "no field 'y'"),
        ({"extra": 1}, ".extra", "no field 'extra'"),
        ({"s": None}, ".s", "expected a string"),
    ],
)
def test_a_value_that_does_not_fit_is_refused_naming_the_field(change, path, words):
    codec = AvroCodec(1, EVERYTHING)
    with pytest.raises(ApiError) as caught:
        codec.encode({**AVRO_JSON, **change}, "records[2].value")
    assert caught.value.error_code == 42201
    assert caught.value.message.startswith(f"records[2].value{path}:"), caught.value.message
    assert words in caught.value.message


def test_a_missing_field_without_default_is_named():
    codec = AvroCodec(1, EVERYTHING)
    value = dict(AVRO_JSON)
    del value["s"]
    with pytest.raises(ApiError, match=r"records\[0\]\.value\.s: missing"):
        codec.encode(value, "records[0].value")


def test_decode_refuses_bytes_that_are_not_a_value():
    codec = AvroCodec(1, json.loads(record("R", field("a", "string"))))
    with pytest.raises(ValueError, match="not a value of schema 1"):
        codec.decode(b"\x09")  # a string length past the end
    with pytest.raises(ValueError, match="left over"):
        codec.decode(b"\x02a\x00")


# -- the produce body and fetch answer --------------------------------------------------------------------


def test_produce_body_schema_fields():
    state, reg = register(RegistryState(), "t-value", record("R", field("a", "int")))
    state, key = register(state, "t-key", '"long"')
    lookup_ = schema_lookup(state)

    def parse(document):
        return parse_produce_body(orjson.dumps(document), allow_partition=True, schemas=lookup_)

    body = parse(
        {
            "value_subject": "t-value",
            "key_schema_id": key.schema_id,
            "records": [{"key": 7, "value": {"a": 1}}, {"value": None}],
        }
    )
    (_, first), (_, tombstone) = body.entries
    assert first.value == b"\x00" + reg.schema_id.to_bytes(4, "big") + b"\x02"
    assert first.key == b"\x00" + key.schema_id.to_bytes(4, "big") + b"\x0e"
    assert tombstone.value is None and tombstone.key is None  # null stays a tombstone
    for document, words in [
        ({"value_subject": "t-value", "value_schema_id": 1, "records": [{"value": {}}]}, "not both"),
        ({"value_schema_id": 99, "records": [{"value": {}}]}, "value_schema_id 99"),
        ({"value_schema_id": "1", "records": [{"value": {}}]}, "must be an integer"),
        ({"value_subject": "nope", "records": [{"value": {}}]}, "'nope' has no schema"),
        ({"value_subject": "t-value", "records": [{"value_b64": "AA=="}]}, "records[0].value_b64"),
        ({"value_subject": "t-value", "records": [{"value": {"a": "x"}}]}, "records[0].value.a"),
        ({"key_subject": "t-key", "records": [{"key": "k", "value": 1}]}, "records[0].key"),
    ]:
        with pytest.raises(ApiError) as caught:
            parse(document)
        assert caught.value.error_code == 42201 and words in caught.value.message, caught.value.message
    with pytest.raises(ApiError, match="not accepted on this route"):
        parse_produce_body(
            orjson.dumps({"value_schema_id": 1, "records": [{"value": 1}]}), allow_partition=True
        )


def test_fetch_decodes_what_it_knows():
    state, reg = register(RegistryState(), "t-value", record("R", field("a", "int")))
    decode = avro_decoder(state)
    framed = b"\x00" + reg.schema_id.to_bytes(4, "big") + b"\x02"
    out = record_to_json(Record(5, 0, b"plain", framed, ()), decode=decode)
    assert out["value"] == {"a": 1} and out["value_schema_id"] == reg.schema_id
    assert out["key"] == "plain" and "key_schema_id" not in out
    unknown_id = b"\x00\x00\x00\x00\x63\x02"
    assert "value_schema_id" not in record_to_json(Record(5, 0, None, unknown_id, ()), decode=decode)
    broken = record_to_json(Record(5, 0, None, framed[:-1] + b"\x80", ()), decode=decode)  # cut short
    assert "value_b64" in broken and "not a value of schema" in broken["value_decode_error"]


# -- property: apply never raises, replays the same, keeps ids bound --------------------------------------

SUBJECTS = ("a", "b", "c")
TEXTS = ('"string"', '"int"', USER_V1, USER_V2)


@st.composite
def registry_commands(draw):
    kind = draw(st.sampled_from(sorted(REGISTRY_COMMANDS)))
    subject = draw(st.sampled_from(SUBJECTS))
    if kind == "RegisterSchema":
        return RegisterSchema(
            subject,
            draw(st.integers(0, 6)),
            draw(st.integers(0, 6)),
            draw(st.sampled_from(("AVRO", "JSON"))),
            draw(st.sampled_from(TEXTS)),
        )
    if kind == "DeleteSchemaVersions":
        return DeleteSchemaVersions(
            subject, tuple(draw(st.lists(st.integers(0, 6), max_size=3))), draw(st.booleans())
        )
    if kind == "SetRegistryConfig":
        level = draw(st.sampled_from((None, "FULL", "NONE", "bogus")))
        return SetRegistryConfig(draw(st.sampled_from((None, subject))), level)
    return SetRegistryMode(
        draw(st.sampled_from((None, subject))), draw(st.sampled_from((None, "IMPORT", "x")))
    )


def _never_logged(message, *args, **kwargs):
    raise AssertionError("apply needed its exception fallback: " + message % args)


@settings(max_examples=200, deadline=None)
@given(st.lists(registry_commands(), max_size=30))
def test_apply_registry_never_raises_replays_and_keeps_invariants(commands):
    image = apply(MetadataImage(), ActivateController(1, 1))
    start = image
    bound: dict[int, str] = {}
    with mock.patch.object(commands_module.log, "exception", _never_logged):
        for command in commands:
            command = replace(command, controller_epoch=1)
            note(repr(command))
            image = apply(image, command)
            state = image.schema_registry
            for schema_id, stored in state.schemas.items():
                assert bound.setdefault(schema_id, stored.schema) == stored.schema, "an id was rebound"
                assert schema_id < state.next_schema_id
            texts = [s.schema for s in state.schemas.values()]
            assert len(texts) == len(set(texts)), "one text under two ids"
            for info in state.subjects.values():
                numbers = [v.version for v in info.versions]
                assert numbers == sorted(set(numbers)), "versions out of order or repeated"
                live_ids = [v.schema_id for v in info.live()]
                assert len(live_ids) == len(set(live_ids)), "one schema twice live in a subject"
                assert all(v.schema_id in state.schemas for v in info.versions)
    replay = start
    for command in commands:
        command = replace(command, controller_epoch=1)
        replay = apply(replay, command_from_dict(orjson.loads(orjson.dumps(command_to_dict(command)))))
    assert replay == image
    assert MetadataImage.from_dict(orjson.loads(orjson.dumps(image.to_dict()))) == image


# -- review regressions ------------------------------------------------------------------------------------


def test_the_same_schema_written_another_way_is_one_schema():
    # Confluent's registry compares parsed schemas: key order and {"type": "int"} for "int" do not make
    # another schema, so a client that writes the schema differently gets the same id and version.
    state, first = register(RegistryState(), "s", record("R", field("a", "int")))
    reordered = json.dumps({"fields": [{"type": "int", "name": "a"}], "name": "R", "type": "record"})
    spelled_out = record("R", field("a", {"type": "int"}))
    for text in (reordered, spelled_out):
        again, reg = register(state, "s", text)
        assert reg.command is None and (reg.schema_id, reg.version) == (first.schema_id, 1), text
        assert again == state
    # Under another subject: the schema's one id, with the text first registered.
    state, other = register(state, "t", reordered)
    assert (other.schema_id, other.version) == (first.schema_id, 1)
    assert other.command.schema == sr.schema_by_id(state, first.schema_id).schema
    assert state.next_schema_id == first.schema_id + 1 and len(state.schemas) == 1
    # Only soft-deleted in the subject: a new version with the same id (as for the same text).
    state = apply_registry(state, DeleteSchemaVersions("s", (1,)))
    state, reg = register(state, "s", spelled_out)
    assert (reg.schema_id, reg.version) == (first.schema_id, 2)
    # Really different schemas stay apart: another field name, a doc, another default.
    for text in (
        record("R", field("b", "int")),
        record("R", field("a", "int", doc="the a")),
        record("R", field("a", "int", default=1)),
    ):
        state, reg = register(state, f"x-{len(state.subjects)}", text)
        assert reg.schema_id != first.schema_id, text


def test_a_soft_deleted_subject_loses_its_own_level_and_mode():
    state, _ = register(RegistryState(), "s", USER_V1)
    state, _ = register(state, "s", USER_V2)
    state = with_level(state, "FULL", "s")
    state = apply_registry(state, SetRegistryMode("s", "READWRITE"))
    # Deleting one version keeps them.
    command, _ = sr.plan_delete_version(state, "s", 2, False, 0)
    state = apply_registry(state, command)
    assert sr.subject_compatibility(state, "s", False) == "FULL"
    # Deleting the subject (soft) drops them, as Confluent's DELETE /subjects/{s} does.
    command, versions = sr.plan_delete_subject(state, "s", False, 0)
    assert versions == [1] and command.clear_settings
    assert command_from_dict(command_to_dict(command)) == command
    state = apply_registry(state, command)
    refused(sr.SUBJECT_COMPATIBILITY_NOT_CONFIGURED, sr.subject_compatibility, state, "s", False)
    refused(sr.SUBJECT_MODE_NOT_CONFIGURED, sr.subject_mode, state, "s", False)
    assert sr.list_versions(state, "s", deleted=True) == [1, 2]  # the versions are only hidden
    # A permanent delete carries no clearing of its own (nothing is left of the subject anyway).
    command, _ = sr.plan_delete_subject(state, "s", True, 0)
    assert not command.clear_settings
    # A command from before the field existed reads as "keep them".
    old = {k: v for k, v in command_to_dict(command).items() if k != "clear_settings"}
    assert command_from_dict(old).clear_settings is False


def test_settings_of_subjects_without_versions_are_bounded_and_leave_nothing_behind(monkeypatch):
    state = with_level(RegistryState(), "FULL", "only-a-level")
    state = apply_registry(state, SetRegistryMode("only-a-level", "READONLY"))
    state = apply_registry(state, SetRegistryConfig("only-a-level", None))
    assert "only-a-level" in state.subjects  # still holds a mode
    state = apply_registry(state, SetRegistryMode("only-a-level", None))
    assert state.subjects == {}  # nothing of its own left: gone, not an empty entry for good
    monkeypatch.setattr(sr, "SUBJECTS_MAX", 1)
    state = with_level(state, "NONE", "first")
    refused(sr.OPERATION_NOT_PERMITTED, sr.plan_set_compatibility, state, "second", "FULL", 0)
    refused(sr.OPERATION_NOT_PERMITTED, sr.plan_set_mode, state, "second", "READONLY", False, 0)
    assert sr.plan_set_compatibility(state, "first", "FULL", 0).compatibility == "FULL"  # not new


def test_compatibility_with_latest_of_an_empty_subject_is_true():
    parsed = sr.parse_schema(RegistryState(), "AVRO", USER_V1)
    assert sr.test_compatibility(RegistryState(), "new", None, parsed, all_versions=False) == []
    state, _ = register(RegistryState(), "s", USER_V1)
    state = apply_registry(state, sr.plan_delete_subject(state, "s", False, 0)[0])
    assert sr.test_compatibility(state, "s", None, parsed, all_versions=False) == []
    refused(sr.SUBJECT_NOT_FOUND, sr.test_compatibility, state, "s", 1, parsed, False)  # a number: as GET


def test_decoded_unions_name_the_branch_the_bytes_hold():
    # int and long (float and double) decode to one Python type: the branch comes from the bytes.
    inner = {"type": "record", "name": "In", "fields": [{"name": "x", "type": ["long", "int"]}]}
    schema = {
        "type": "record",
        "name": "U",
        "namespace": "t",
        "fields": [
            {"name": "n", "type": ["null", "int", "long", "float", "double", inner], "default": None},
            {"name": "a", "type": {"type": "array", "items": ["int", "long"]}},
            {"name": "m", "type": {"type": "map", "values": ["float", "double"]}},
        ],
    }
    codec = AvroCodec(3, schema)
    for n in (None, {"int": 1}, {"long": 1}, {"float": 0.5}, {"double": 0.5}, {"t.In": {"x": {"int": 2}}}):
        value = {"n": n, "a": [{"long": 1}, {"int": 1}], "m": {"k": {"double": 1.0}, "j": {"float": 2.0}}}
        data = codec.encode(value, "v")
        decoded = codec.decode(split_wire_format(data)[1])
        assert decoded == value
        assert codec.encode(decoded, "v") == data  # fetched, produced again: the same bytes
    top = AvroCodec(4, ["null", "int", "long"])  # a union at the top
    assert top.decode(split_wire_format(top.encode({"long": 7}, "v"))[1]) == {"long": 7}
