"""The schema registry's rules, as pure functions over the registry state (no IO, no clock).

Theory of operation
-------------------
The state lives in the metadata image (metadata/schemas.py); this module decides. Reads are queries
that return Confluent-shaped answers or raise `MetadataError` with Confluent's error code; writes are
`plan_*` functions that the active controller runs against its committed image and that return the
command to propose with every choice made:

- Canonical text. A schema is stored as its JSON made compact (whitespace dropped, keys and order as
  given); with `normalize=true` it is first put in a normal form (the keys of each schema object
  sorted, `{"type": "int"}` written `"int"`). The text must be an Avro schema that both avro (its
  compatibility checker) and fastavro (the encoder) accept, defaults included.
- One schema, however it is written. Texts with the same normal form (and type and references) are
  one schema, as parsed schemas are to Confluent's registry: the first text registered is the one
  kept, and a later registration written another way is answered with it (its id, its version).
- Ids are global: a schema already bound to an id keeps it, under any subject; a new schema takes
  the next id (`next_schema_id`). Ids are never reused.
- Versions: registering a schema that is a live version of the subject answers that version and
  changes nothing (idempotent); otherwise the subject gets the next version, one above the highest it
  ever held (soft-deleted versions count; permanently deleted ones do not, as in Confluent's).
- Compatibility (Avro's schema resolution, through avro's `ReaderWriterCompatibilityChecker`): the
  subject's level, else the global one (default BACKWARD), decides which live versions the new
  schema is checked against and in which direction: BACKWARD, the new schema reads data written with
  the latest version; FORWARD, the latest version reads data written with the new schema; FULL, both;
  the _TRANSITIVE forms check every live version instead of the latest; NONE checks nothing.
  Soft-deleted versions are not checked (deleting a version is how Confluent's users undo one).
- Deletes are Confluent's two steps: a soft delete hides versions; a permanent delete removes
  versions that were soft-deleted first. A version that another schema references cannot go. A soft
  delete of a whole subject also drops the subject's own level and mode, as Confluent's does.
- Modes: READONLY and READONLY_OVERRIDE refuse registrations and deletes; IMPORT allows a
  registration to name its id and version (and skips compatibility), for copying a registry.

Parsed schemas are cached by content (text and resolved reference ids, which never change meaning),
so checking against old versions does not parse them again. Thread-safety: event loop only.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import avro.errors
import avro.name
import avro.schema
import fastavro
import orjson
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from metadata.commands import MetadataError
from metadata.schemas import (
    COMPATIBILITY_LEVELS,
    MODES,
    SCHEMA_ID_MAX,
    VERSION_MAX,
    DeleteSchemaVersions,
    RegisterSchema,
    RegistryState,
    SchemaReference,
    SetRegistryConfig,
    SetRegistryMode,
    StoredSchema,
    SubjectInfo,
    SubjectVersion,
)

# Confluent's error codes (its io.confluent.kafka.schemaregistry.rest.exceptions.Errors).
SUBJECT_NOT_FOUND = 40401
VERSION_NOT_FOUND = 40402
SCHEMA_NOT_FOUND = 40403
SUBJECT_SOFT_DELETED = 40404
SUBJECT_NOT_SOFT_DELETED = 40405
VERSION_SOFT_DELETED = 40406
VERSION_NOT_SOFT_DELETED = 40407
SUBJECT_COMPATIBILITY_NOT_CONFIGURED = 40408
SUBJECT_MODE_NOT_CONFIGURED = 40409
INCOMPATIBLE_SCHEMA = 40901
INVALID_SCHEMA = 42201
INVALID_VERSION = 42202
INVALID_COMPATIBILITY_LEVEL = 42203
INVALID_MODE = 42204
OPERATION_NOT_PERMITTED = 42205
REFERENCE_EXISTS = 42206
ID_DOES_NOT_MATCH = 42207
INVALID_SUBJECT = 42208
SCHEMA_TOO_LARGE = 42209

# Limits: the registry lives in the Raft metadata, which is snapshotted whole, so it stays small.
SCHEMA_BYTES_MAX = 256 * 1024  # one schema's text (Confluent's limit is the 1 MB record of its topic)
REGISTRY_BYTES_MAX = 16 * 1024 * 1024  # all schema texts together
SUBJECTS_MAX = 10_000
VERSIONS_PER_SUBJECT_MAX = 1_000
SUBJECT_NAME_MAX = 1_000
REFERENCES_MAX = 256  # per schema
REFERENCE_DEPTH_MAX = 32  # references of references
PARSED_CACHE_MAX = 1_000  # parsed schemas kept
EQUIVALENCE_CACHE_MAX = 100_000  # normal forms kept (a few per schema the registry can hold)

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
UNSUPPORTED_TYPES = ("JSON", "PROTOBUF")


def error(code: int, message: str) -> MetadataError:
    return MetadataError(code, message)


# -- parsing ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedSchema:
    """A schema checked and resolved: its canonical text, its references, and the parsed forms."""

    schema_type: str
    text: str  # canonical
    references: tuple[SchemaReference, ...]
    avro_schema: avro.schema.Schema  # for compatibility checks
    json: Any  # the schema's JSON
    # (canonical text, JSON) of every schema it references, directly or not, dependencies first
    dependencies: tuple[tuple[str, Any], ...]

    def same_content(self, stored: StoredSchema) -> bool:
        return stored.same_content(self.schema_type, self.text, self.references)


_parsed_cache: OrderedDict[tuple, ParsedSchema] = OrderedDict()


def normalized(schema: Any) -> Any:
    """The normal form of a schema's JSON: the keys of each schema object sorted, a primitive type
    with no other attribute written as its name. Defaults and custom properties are left as they are."""
    if isinstance(schema, list):
        return [normalized(branch) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    kind = schema.get("type")
    out: dict[str, Any] = {}
    for key in sorted(schema):
        value = schema[key]
        if (
            (key == "type" and not isinstance(value, str))
            or (key == "items" and kind == "array")
            or (key == "values" and kind == "map")
        ):
            value = normalized(value)
        elif key == "fields" and kind in ("record", "error") and isinstance(value, list):
            value = [
                {k: normalized(f[k]) if k == "type" else f[k] for k in sorted(f)}
                if isinstance(f, dict)
                else f
                for f in value
            ]
        out[key] = value
    if list(out) == ["type"] and isinstance(out["type"], str) and out["type"] in PRIMITIVES:
        return out["type"]
    return out


@functools.lru_cache(maxsize=EQUIVALENCE_CACHE_MAX)
def _normal_text(text: str) -> bytes:
    return orjson.dumps(normalized(orjson.loads(text)))


def equivalence_key(schema_type: str, text: str, references: tuple) -> tuple:
    """What two texts of one schema share however they are written (key order, `{"type": "int"}` for
    `"int"`, whitespace): Confluent's registry compares parsed schemas, so such texts are one schema
    to it, with one id and one version."""
    return (schema_type, tuple(references), _normal_text(text))


def equivalent_stored(state: RegistryState, parsed: ParsedSchema) -> StoredSchema | None:
    """The registry's schema that is `parsed` (the same text, else the same schema written another
    way: the lowest such id), or None."""
    exact = state.id_for(parsed.schema_type, parsed.text, parsed.references)
    if exact is not None:
        return state.schemas[exact]
    wanted = equivalence_key(parsed.schema_type, parsed.text, parsed.references)
    found = [
        stored
        for stored in state.schemas.values()
        if equivalence_key(stored.schema_type, stored.schema, stored.references) == wanted
    ]
    return min(found, key=lambda stored: stored.schema_id) if found else None


def schema_type_of(raw: object) -> str:
    """The request's `schemaType` (absent or null: AVRO); 42201 for what this registry does not hold."""
    if raw is None:
        return "AVRO"
    if not isinstance(raw, str):
        raise error(INVALID_SCHEMA, f"schemaType must be a string, got {type(raw).__name__}")
    kind = raw.upper()
    if kind == "AVRO":
        return kind
    if kind in UNSUPPORTED_TYPES:
        raise error(
            INVALID_SCHEMA,
            f"schemaType {raw} is not supported: this registry holds Avro schemas only (GET /schemas/types)",
        )
    raise error(INVALID_SCHEMA, f"unknown schemaType {raw!r}: this registry holds AVRO schemas")


def references_of(raw: object) -> tuple[SchemaReference, ...]:
    """The request's `references` list, checked for shape (42201 naming the entry)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise error(INVALID_SCHEMA, "references must be a list of {name, subject, version}")
    if len(raw) > REFERENCES_MAX:
        raise error(INVALID_SCHEMA, f"a schema has at most {REFERENCES_MAX} references, got {len(raw)}")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise error(INVALID_SCHEMA, f"references[{i}] must be an object {{name, subject, version}}")
        name, subject, version = item.get("name"), item.get("subject"), item.get("version")
        if not isinstance(name, str) or not name or not isinstance(subject, str) or not subject:
            raise error(INVALID_SCHEMA, f"references[{i}] needs a name and a subject (strings)")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= VERSION_MAX:
            raise error(INVALID_SCHEMA, f"references[{i}].version must be a version number, got {version!r}")
        out.append(SchemaReference(name, subject, version))
    return tuple(out)


def parse_schema(
    state: RegistryState,
    schema_type: str,
    text: object,
    references: tuple[SchemaReference, ...] = (),
    normalize: bool = False,
) -> ParsedSchema:
    """Check a schema sent by a client and give its canonical form; MetadataError 42201 (or 42209)
    with the parser's reason when it is not a valid Avro schema."""
    if not isinstance(text, str):
        raise error(INVALID_SCHEMA, "schema must be a string holding the schema's JSON")
    size = len(text.encode())
    if size > SCHEMA_BYTES_MAX:
        raise error(SCHEMA_TOO_LARGE, f"the schema is {size} bytes; the limit is {SCHEMA_BYTES_MAX}")
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise error(INVALID_SCHEMA, f"Invalid schema: not JSON: {exc}") from None
    if normalize:
        document = normalized(document)
    canonical = orjson.dumps(document).decode()
    return _parse(state, schema_type, canonical, document, references, depth=0)


def parse_stored(state: RegistryState, stored: StoredSchema) -> ParsedSchema:
    """A schema of the registry, parsed (cached); MetadataError 42201 if its references are gone."""
    return _parse(state, stored.schema_type, stored.schema, None, stored.references, depth=0)


def _parse(
    state: RegistryState,
    schema_type: str,
    canonical: str,
    document: Any,
    references: tuple[SchemaReference, ...],
    depth: int,
) -> ParsedSchema:
    if depth > REFERENCE_DEPTH_MAX:
        raise error(INVALID_SCHEMA, f"references nest deeper than {REFERENCE_DEPTH_MAX}")
    resolved = []
    for ref in references:
        stored = _referenced(state, ref)
        resolved.append((ref, stored))
    key = (schema_type, canonical, tuple((ref.name, stored.schema_id) for ref, stored in resolved))
    cached = _parsed_cache.get(key)
    if cached is not None:
        _parsed_cache.move_to_end(key)
        return cached
    if document is None:
        document = orjson.loads(canonical)
    # Every referenced schema, and its own references, dependencies first, each once.
    dependencies: dict[str, Any] = {}
    for _, stored in resolved:
        inner = _parse(state, stored.schema_type, stored.schema, None, stored.references, depth + 1)
        for text, item in (*inner.dependencies, (inner.text, inner.json)):
            dependencies.setdefault(text, item)
    names = avro.name.Names(validate_names=True)
    named: dict[str, Any] = {}
    try:
        for item in dependencies.values():
            avro.schema.make_avsc_object(item, names)
            fastavro.parse_schema(item, named_schemas=named)
        parsed_avro = avro.schema.make_avsc_object(document, names)
        fastavro.parse_schema(document, named_schemas=named)
    except (avro.errors.AvroException, fastavro.schema.SchemaParseException, ValueError, TypeError) as exc:
        raise error(INVALID_SCHEMA, f"Invalid schema: {exc}") from None
    except (KeyError, AttributeError, RecursionError) as exc:  # a parser tripped on an odd shape
        raise error(INVALID_SCHEMA, f"Invalid schema: {type(exc).__name__}: {exc}") from None
    parsed = ParsedSchema(
        schema_type, canonical, tuple(references), parsed_avro, document, tuple(dependencies.items())
    )
    _parsed_cache[key] = parsed
    if len(_parsed_cache) > PARSED_CACHE_MAX:
        _parsed_cache.popitem(last=False)
    return parsed


def _referenced(state: RegistryState, ref: SchemaReference) -> StoredSchema:
    info = state.subjects.get(ref.subject)
    entry = info.version(ref.version) if info else None
    if entry is None:
        raise error(
            INVALID_SCHEMA,
            f"Invalid schema: reference {ref.name!r} names subject {ref.subject!r} version {ref.version}, "
            "which does not exist",
        )
    return state.schemas[entry.schema_id]


# -- compatibility ----------------------------------------------------------------------------------------

_checker = ReaderWriterCompatibilityChecker()


def _incompatibilities(reader: avro.schema.Schema, writer: avro.schema.Schema) -> str | None:
    """Why `reader` cannot read what `writer` wrote, or None when it can."""
    result = _checker.get_compatibility(reader, writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return None
    kinds = ", ".join(sorted({i.name.upper() for i in result.incompatibilities}))
    where = ", ".join(sorted(result.locations))
    details = "; ".join(sorted(str(m) for m in result.messages))
    return f"{kinds} at {where}" + (f" ({details})" if details else "")


def compatibility_messages(
    level: str, new: ParsedSchema, previous: list[tuple[int, ParsedSchema]]
) -> list[str]:
    """Why `new` breaks `level` against the (version, schema) pairs given, newest last; [] when it
    does not. Which pairs to give (the latest live version, or all) is the caller's choice by level."""
    if level == "NONE":
        return []
    messages = []
    for version, old in previous:
        if level.startswith(("BACKWARD", "FULL")):
            problem = _incompatibilities(new.avro_schema, old.avro_schema)
            if problem:
                messages.append(f"the new schema cannot read data written with version {version}: {problem}")
        if level.startswith(("FORWARD", "FULL")):
            problem = _incompatibilities(old.avro_schema, new.avro_schema)
            if problem:
                messages.append(f"version {version} cannot read data written with the new schema: {problem}")
    return messages


def versions_to_check(state: RegistryState, subject: str, level: str) -> list[tuple[int, ParsedSchema]]:
    """The live versions a new schema of `subject` must be compatible with at `level`."""
    info = state.subjects.get(subject)
    live = list(info.live()) if info else []
    if not level.endswith("_TRANSITIVE"):
        live = live[-1:]
    return [(v.version, parse_stored(state, state.schemas[v.schema_id])) for v in live]


# -- input checks -----------------------------------------------------------------------------------------


def check_subject(subject: str) -> str:
    if not subject or len(subject) > SUBJECT_NAME_MAX or any(ord(c) < 0x20 or c == "\x7f" for c in subject):
        raise error(
            INVALID_SUBJECT,
            f"invalid subject {subject[:80]!r}: 1 to {SUBJECT_NAME_MAX} characters, no control characters",
        )
    return subject


def parse_version(raw: str) -> int | None:
    """A version from a path: a number 1..2^31-1, or None for "latest" (and -1, its synonym)."""
    if raw == "latest" or raw == "-1":
        return None
    if raw.isdigit() and len(raw) <= 10 and 1 <= int(raw) <= VERSION_MAX:
        return int(raw)
    raise error(
        INVALID_VERSION,
        f"The specified version '{raw}' is not a valid version id. Allowed values are between "
        f'[1, {VERSION_MAX}] and the string "latest"',
    )


def parse_level(raw: object) -> str:
    if isinstance(raw, str) and raw.upper() in COMPATIBILITY_LEVELS:
        return raw.upper()
    raise error(
        INVALID_COMPATIBILITY_LEVEL,
        f"Invalid compatibility level {raw!r}. Valid values are {', '.join(COMPATIBILITY_LEVELS)}",
    )


def parse_mode(raw: object) -> str:
    if isinstance(raw, str) and raw.upper() in MODES:
        return raw.upper()
    raise error(INVALID_MODE, f"Invalid mode {raw!r}. Valid values are {', '.join(MODES)}")


# -- reads ------------------------------------------------------------------------------------------------


def _subject(state: RegistryState, subject: str, deleted: bool) -> SubjectInfo:
    """The subject when it has a live version (or any version, with `deleted`); else 40401."""
    info = state.subjects.get(subject)
    if info is None or not (info.versions if deleted else info.live()):
        raise error(SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")
    return info


def _version(state: RegistryState, subject: str, version: int | None, deleted: bool) -> SubjectVersion:
    info = _subject(state, subject, deleted)
    candidates = info.versions if deleted else info.live()
    if version is None:
        return candidates[-1]
    entry = next((v for v in candidates if v.version == version), None)
    if entry is None:
        raise error(VERSION_NOT_FOUND, f"Version {version} not found.")
    return entry


def schema_fields(stored: StoredSchema) -> dict[str, Any]:
    """What every answer about a schema carries (Confluent leaves out AVRO and empty references)."""
    out: dict[str, Any] = {}
    if stored.schema_type != "AVRO":
        out["schemaType"] = stored.schema_type
    if stored.references:
        out["references"] = [
            {"name": r.name, "subject": r.subject, "version": r.version} for r in stored.references
        ]
    out["schema"] = stored.schema
    return out


def version_answer(state: RegistryState, subject: str, entry: SubjectVersion) -> dict[str, Any]:
    stored = state.schemas[entry.schema_id]
    return {"subject": subject, "version": entry.version, "id": entry.schema_id, **schema_fields(stored)}


def list_subjects(
    state: RegistryState, prefix: str = "", deleted: bool = False, deleted_only: bool = False
) -> list[str]:
    """Subjects with a live version; `deleted` adds those with only soft-deleted ones, which
    `deleted_only` lists alone."""
    out = []
    for name in sorted(state.subjects):
        if not name.startswith(prefix):
            continue
        info = state.subjects[name]
        has_live = bool(info.live())
        has_deleted = any(v.deleted for v in info.versions)
        if (deleted_only and has_deleted and not has_live) or (
            not deleted_only and (has_live or (deleted and has_deleted))
        ):
            out.append(name)
    return out


def list_versions(
    state: RegistryState, subject: str, deleted: bool = False, deleted_only: bool = False
) -> list[int]:
    info = state.subjects.get(subject)
    versions = info.versions if info else ()
    if deleted_only:
        chosen = [v.version for v in versions if v.deleted]
    else:
        chosen = [v.version for v in versions if deleted or not v.deleted]
    if not chosen:
        raise error(SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")
    return chosen


def get_version(state: RegistryState, subject: str, version: int | None, deleted: bool = False) -> dict:
    return version_answer(state, subject, _version(state, subject, version, deleted))


def schema_by_id(state: RegistryState, schema_id: int) -> StoredSchema:
    stored = state.schemas.get(schema_id)
    if stored is None:
        raise error(SCHEMA_NOT_FOUND, f"Schema {schema_id} not found")
    return stored


def id_usage(state: RegistryState, schema_id: int, deleted: bool = False) -> list[tuple[str, int]]:
    """(subject, version) pairs that hold `schema_id` (live ones; soft-deleted too with `deleted`)."""
    schema_by_id(state, schema_id)
    return [
        (name, v.version)
        for name in sorted(state.subjects)
        for v in state.subjects[name].versions
        if v.schema_id == schema_id and (deleted or not v.deleted)
    ]


def lookup(state: RegistryState, subject: str, parsed: ParsedSchema, deleted: bool = False) -> dict:
    """The version of `subject` holding this schema: the same canonical text, or failing that the same
    schema written another way (40401 without the subject, 40403 without the schema)."""
    info = _subject(state, subject, deleted)
    candidates = [v for v in reversed(info.versions) if deleted or not v.deleted]
    for entry in candidates:
        if parsed.same_content(state.schemas[entry.schema_id]):
            return version_answer(state, subject, entry)
    wanted = equivalence_key(parsed.schema_type, parsed.text, parsed.references)
    for entry in candidates:
        stored = state.schemas[entry.schema_id]
        if equivalence_key(stored.schema_type, stored.schema, stored.references) == wanted:
            return version_answer(state, subject, entry)
    raise error(SCHEMA_NOT_FOUND, "Schema not found")


def referenced_by(state: RegistryState, subject: str, version: int | None) -> list[int]:
    entry = _version(state, subject, version, deleted=True)
    return state.references_to(subject, entry.version)


def test_compatibility(
    state: RegistryState, subject: str, version: int | None, parsed: ParsedSchema, all_versions: bool
) -> list[str]:
    """Messages why `parsed` is not compatible (empty: compatible) with one version of `subject`
    (`version`, None for the latest), or with the versions its level names (`all_versions`)."""
    level = state.subject_compatibility(subject)
    if all_versions:
        return compatibility_messages(level, parsed, versions_to_check(state, subject, level))
    info = state.subjects.get(subject)
    if version is None and not (info and info.live()):
        return []  # nothing registered yet: anything is compatible (Confluent's answer for "latest")
    entry = _version(state, subject, version, deleted=False)
    old = parse_stored(state, state.schemas[entry.schema_id])
    return compatibility_messages(level.removesuffix("_TRANSITIVE"), parsed, [(entry.version, old)])


def subject_compatibility(state: RegistryState, subject: str | None, default_to_global: bool) -> str:
    if subject is None:
        return state.global_compatibility
    info = state.subjects.get(subject)
    if info is not None and info.compatibility is not None:
        return info.compatibility
    if default_to_global:
        return state.global_compatibility
    raise error(
        SUBJECT_COMPATIBILITY_NOT_CONFIGURED,
        f"Subject '{subject}' does not have subject-level compatibility configured",
    )


def subject_mode(state: RegistryState, subject: str | None, default_to_global: bool) -> str:
    if subject is None:
        return state.global_mode
    info = state.subjects.get(subject)
    if info is not None and info.mode is not None:
        return info.mode
    if default_to_global:
        return state.global_mode
    raise error(
        SUBJECT_MODE_NOT_CONFIGURED, f"Subject '{subject}' does not have subject-level mode configured"
    )


# -- writes: the controller's plans -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Registration:
    command: RegisterSchema | None  # None: already registered, nothing to change
    schema_id: int
    version: int


def _check_room_for(state: RegistryState, subject: str) -> None:
    """A new subject (a version or a setting of its own) fits within SUBJECTS_MAX."""
    if subject not in state.subjects and len(state.subjects) >= SUBJECTS_MAX:
        raise error(OPERATION_NOT_PERMITTED, f"the registry holds {SUBJECTS_MAX} subjects, its limit")


def _check_writable(state: RegistryState, subject: str) -> str:
    mode = state.subject_mode(subject)
    if mode in ("READONLY", "READONLY_OVERRIDE"):
        raise error(OPERATION_NOT_PERMITTED, f"Subject {subject} is in read-only mode")
    return mode


def plan_register(
    state: RegistryState,
    subject: str,
    parsed: ParsedSchema,
    controller_epoch: int,
    requested_id: int | None = None,
    requested_version: int | None = None,
) -> Registration:
    """Register `parsed` under `subject` (see the module notes); MetadataError 40901 when it breaks
    the subject's compatibility level, 42205 in a read-only mode or with an id outside IMPORT mode."""
    check_subject(subject)
    mode = _check_writable(state, subject)
    info = state.subjects.get(subject) or SubjectInfo(subject)
    existing = equivalent_stored(state, parsed)
    if existing is not None and not parsed.same_content(existing):
        parsed = parse_stored(state, existing)  # the same schema written another way: the stored text
    existing_id = existing.schema_id if existing is not None else None
    for entry in info.live():
        if entry.schema_id == existing_id:
            if requested_id is not None and requested_id != existing_id:
                raise error(
                    ID_DOES_NOT_MATCH,
                    f"Schema already registered with id {existing_id} instead of input id {requested_id}",
                )
            return Registration(None, entry.schema_id, entry.version)
    # Outside IMPORT mode an id may be named only when it is the schema's own already.
    if mode != "IMPORT" and (requested_version is not None or requested_id not in (None, existing_id)):
        raise error(
            OPERATION_NOT_PERMITTED,
            f"Subject {subject} is not in IMPORT mode: a registration may name its id and version "
            "only in IMPORT mode",
        )
    if requested_id is not None:
        if not 1 <= requested_id <= SCHEMA_ID_MAX:
            raise error(INVALID_SCHEMA, f"id must be 1..{SCHEMA_ID_MAX}, got {requested_id}")
        if existing_id is not None and existing_id != requested_id:
            raise error(
                ID_DOES_NOT_MATCH,
                f"Schema already registered with id {existing_id} instead of input id {requested_id}",
            )
        holder = state.schemas.get(requested_id)
        if holder is not None and not parsed.same_content(holder):
            raise error(
                ID_DOES_NOT_MATCH,
                f"id {requested_id} is already the id of another schema; ids are never rebound",
            )
        schema_id = requested_id
    else:
        schema_id = existing_id if existing_id is not None else state.next_schema_id
    if schema_id > SCHEMA_ID_MAX:
        raise error(OPERATION_NOT_PERMITTED, "the registry has handed out every schema id")
    if requested_version is not None:
        if not 1 <= requested_version <= VERSION_MAX:
            raise error(INVALID_VERSION, f"version must be 1..{VERSION_MAX}, got {requested_version}")
        if info.version(requested_version) is not None:
            raise error(
                OPERATION_NOT_PERMITTED, f"Subject {subject} already has a version {requested_version}"
            )
        version = requested_version
    else:
        version = max((v.version for v in info.versions), default=0) + 1
    if mode != "IMPORT":
        level = state.subject_compatibility(subject)
        messages = compatibility_messages(level, parsed, versions_to_check(state, subject, level))
        if messages:
            raise error(
                INCOMPATIBLE_SCHEMA,
                f"Schema being registered is incompatible with an earlier schema for subject "
                f'"{subject}" (compatibility {level}): ' + "; ".join(messages),
            )
    _check_room_for(state, subject)
    if len(info.versions) >= VERSIONS_PER_SUBJECT_MAX:
        raise error(
            OPERATION_NOT_PERMITTED,
            f"subject {subject} holds {VERSIONS_PER_SUBJECT_MAX} versions, the limit (delete some permanently)",
        )
    if existing_id is None and state.text_bytes + len(parsed.text) > REGISTRY_BYTES_MAX:
        raise error(
            SCHEMA_TOO_LARGE, f"the registry's schemas would pass {REGISTRY_BYTES_MAX} bytes, its limit"
        )
    command = RegisterSchema(
        subject, schema_id, version, parsed.schema_type, parsed.text, parsed.references, controller_epoch
    )
    return Registration(command, schema_id, version)


def _check_unreferenced(state: RegistryState, subject: str, versions: list[int]) -> None:
    for version in versions:
        users = state.references_to(subject, version)
        if users:
            raise error(
                REFERENCE_EXISTS,
                f"One or more references exist to the schema {{subject={subject}, version={version}}}: "
                f"schema id(s) {', '.join(map(str, users))}",
            )


def plan_delete_version(
    state: RegistryState, subject: str, version: int | None, permanent: bool, controller_epoch: int
) -> tuple[DeleteSchemaVersions, int]:
    """Soft-delete a live version, or permanently delete a soft-deleted one ("latest": the newest
    live one, or for a permanent delete the newest of all)."""
    _check_writable(state, subject)
    info = state.subjects.get(subject)
    if info is None or not info.versions:
        raise error(SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")
    if version is None:
        candidates = info.versions if permanent else info.live()
        if not candidates:
            raise error(SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")
        entry = candidates[-1]
    else:
        found = info.version(version)
        if found is None:
            raise error(VERSION_NOT_FOUND, f"Version {version} not found.")
        entry = found
    if permanent and not entry.deleted:
        raise error(
            VERSION_NOT_SOFT_DELETED,
            f"Subject '{subject}' Version {entry.version} was not deleted first before being permanently deleted",
        )
    if not permanent and entry.deleted:
        raise error(
            VERSION_SOFT_DELETED,
            f"Subject '{subject}' Version {entry.version} was soft deleted. Set permanent=true to delete permanently",
        )
    _check_unreferenced(state, subject, [entry.version])
    return DeleteSchemaVersions(subject, (entry.version,), permanent, controller_epoch), entry.version


def plan_delete_subject(
    state: RegistryState, subject: str, permanent: bool, controller_epoch: int
) -> tuple[DeleteSchemaVersions, list[int]]:
    """Soft-delete every live version, or permanently delete a subject whose versions all were."""
    _check_writable(state, subject)
    info = state.subjects.get(subject)
    if info is None or not info.versions:
        raise error(SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")
    live = [v.version for v in info.live()]
    if permanent:
        if live:
            raise error(
                SUBJECT_NOT_SOFT_DELETED,
                f"Subject '{subject}' was not deleted first before being permanently deleted",
            )
        versions = [v.version for v in info.versions]
    else:
        if not live:
            raise error(
                SUBJECT_SOFT_DELETED,
                f"Subject '{subject}' was soft deleted. Set permanent=true to delete permanently",
            )
        versions = live
    _check_unreferenced(state, subject, versions)
    # A soft delete of the subject takes its own level and mode with it, as Confluent's does.
    command = DeleteSchemaVersions(subject, tuple(versions), permanent, controller_epoch, not permanent)
    return command, versions


def plan_set_compatibility(
    state: RegistryState, subject: str | None, level: str | None, controller_epoch: int
) -> SetRegistryConfig:
    if subject is not None:
        check_subject(subject)
        _check_room_for(state, subject)
    return SetRegistryConfig(subject, level, controller_epoch)


def plan_clear_compatibility(
    state: RegistryState, subject: str | None, controller_epoch: int
) -> tuple[SetRegistryConfig, str]:
    """Back to the global level (or, for the global level, to the default); answers the old level."""
    if subject is None:
        return SetRegistryConfig(None, None, controller_epoch), state.global_compatibility
    info = state.subjects.get(subject)
    if info is None:
        raise error(SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")
    old = subject_compatibility(state, subject, default_to_global=False)
    return SetRegistryConfig(subject, None, controller_epoch), old


def plan_set_mode(
    state: RegistryState, subject: str | None, mode: str, force: bool, controller_epoch: int
) -> SetRegistryMode:
    """A new mode; IMPORT only where no schema is registered yet, unless forced (as Confluent's)."""
    if subject is not None:
        check_subject(subject)
        _check_room_for(state, subject)
    if mode == "IMPORT" and not force:
        holding = [
            name
            for name, info in state.subjects.items()
            if info.versions and (subject is None or name == subject)
        ]
        if holding:
            raise error(
                OPERATION_NOT_PERMITTED,
                f"Cannot import since found existing subjects ({', '.join(sorted(holding)[:5])}); "
                "set force=true to switch to IMPORT anyway",
            )
    return SetRegistryMode(subject, mode, controller_epoch)


def plan_clear_mode(
    state: RegistryState, subject: str | None, controller_epoch: int
) -> tuple[SetRegistryMode, str]:
    if subject is None:
        return SetRegistryMode(None, None, controller_epoch), state.global_mode
    info = state.subjects.get(subject)
    if info is None:
        raise error(SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")
    old = subject_mode(state, subject, default_to_global=False)
    return SetRegistryMode(subject, None, controller_epoch), old
