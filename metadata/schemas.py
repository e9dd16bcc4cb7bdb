"""The schema registry's state in the metadata image, and the commands that change it.

Theory of operation
-------------------
The registry (Confluent's Schema Registry model) keeps three things, all in the Raft metadata so
that every node serves reads from its own image and a controller failover loses nothing:

- schemas by global id: type, text and references. An id names one schema text for good: it is
  never given to another text and never reused, also after every version using it was deleted
  (records written with it stay decodable);
- subjects: each an ordered list of versions (version number, schema id, soft-deleted or not),
  with an optional compatibility level and mode of its own;
- the global compatibility level and mode, and the next id to hand out.

Like every metadata command, the ones here carry explicit values: the controller decided the id,
the version and the canonical text before proposing (node/schema_registry.py), so applying them is
deterministic. `apply_registry` cannot raise and checks again what a retried or raced command could
break: registering a schema that the subject already holds as a live version changes nothing (the
same schema twice gives the same id and version), an id is never bound to a second text, and a
version number is never taken twice.

Nothing here parses Avro or knows the REST API: this module is only the state and its transitions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import Any

DEFAULT_COMPATIBILITY = "BACKWARD"  # Confluent's default schema.compatibility.level
DEFAULT_MODE = "READWRITE"
COMPATIBILITY_LEVELS = (
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)
MODES = ("READWRITE", "READONLY", "READONLY_OVERRIDE", "IMPORT")
SCHEMA_TYPES = ("AVRO",)
FIRST_SCHEMA_ID = 1  # Confluent's ids start at 1
SCHEMA_ID_MAX = 2**31 - 1  # the wire format has 4 bytes for it; Confluent's ids are Java ints
VERSION_MAX = 2**31 - 1


def _frozen(mapping: dict | None = None) -> MappingProxyType:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True)
class SchemaReference:
    """A named type that a schema takes from a version of another subject."""

    name: str
    subject: str
    version: int


@dataclass(frozen=True, slots=True)
class StoredSchema:
    schema_id: int
    schema_type: str
    schema: str  # the canonical text (see node/schema_registry.py)
    references: tuple[SchemaReference, ...] = ()

    def same_content(self, schema_type: str, schema: str, references: tuple) -> bool:
        return (self.schema_type, self.schema, self.references) == (schema_type, schema, tuple(references))


@dataclass(frozen=True, slots=True)
class SubjectVersion:
    version: int
    schema_id: int
    deleted: bool = False  # soft-deleted: hidden unless asked for, still counted for numbering


@dataclass(frozen=True, slots=True)
class SubjectInfo:
    name: str
    versions: tuple[SubjectVersion, ...] = ()  # ascending by version
    compatibility: str | None = None  # None: the global level
    mode: str | None = None  # None: the global mode

    def live(self) -> tuple[SubjectVersion, ...]:
        return tuple(v for v in self.versions if not v.deleted)

    def version(self, number: int) -> SubjectVersion | None:
        return next((v for v in self.versions if v.version == number), None)


@dataclass(frozen=True, slots=True)
class RegistryState:
    schemas: MappingProxyType = field(default_factory=_frozen)  # id -> StoredSchema
    subjects: MappingProxyType = field(default_factory=_frozen)  # name -> SubjectInfo
    compatibility: str | None = None  # None: DEFAULT_COMPATIBILITY
    mode: str | None = None  # None: DEFAULT_MODE
    next_schema_id: int = FIRST_SCHEMA_ID

    @property
    def global_compatibility(self) -> str:
        return self.compatibility or DEFAULT_COMPATIBILITY

    @property
    def global_mode(self) -> str:
        return self.mode or DEFAULT_MODE

    def subject_compatibility(self, subject: str) -> str:
        info = self.subjects.get(subject)
        return (info.compatibility if info else None) or self.global_compatibility

    def subject_mode(self, subject: str) -> str:
        info = self.subjects.get(subject)
        return (info.mode if info else None) or self.global_mode

    def id_for(self, schema_type: str, schema: str, references: tuple) -> int | None:
        """The id already bound to this content, if any."""
        for stored in self.schemas.values():
            if stored.same_content(schema_type, schema, references):
                return stored.schema_id
        return None

    def references_to(self, subject: str, version: int) -> list[int]:
        """Ids of the schemas, held by a version of some subject, that reference `subject` `version`."""
        held = {v.schema_id for info in self.subjects.values() for v in info.versions}
        return sorted(
            stored.schema_id
            for stored in self.schemas.values()
            if stored.schema_id in held
            and any(r.subject == subject and r.version == version for r in stored.references)
        )

    @property
    def text_bytes(self) -> int:
        return sum(len(s.schema) for s in self.schemas.values())

    # -- JSON form (snapshots) ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "compatibility": self.compatibility,
            "mode": self.mode,
            "next_schema_id": self.next_schema_id,
            "schemas": [
                {
                    "id": s.schema_id,
                    "type": s.schema_type,
                    "schema": s.schema,
                    "references": [asdict(r) for r in s.references],
                }
                for s in self.schemas.values()
            ],
            "subjects": [
                {
                    "name": info.name,
                    "compatibility": info.compatibility,
                    "mode": info.mode,
                    "versions": [[v.version, v.schema_id, v.deleted] for v in info.versions],
                }
                for info in self.subjects.values()
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RegistryState:
        """The state of `to_dict`'s form; None (a snapshot from before the registry) is the empty state."""
        if not data:
            return cls()
        schemas = {
            int(s["id"]): StoredSchema(
                int(s["id"]),
                str(s["type"]),
                str(s["schema"]),
                tuple(
                    SchemaReference(str(r["name"]), str(r["subject"]), int(r["version"]))
                    for r in s["references"]
                ),
            )
            for s in data.get("schemas", [])
        }
        subjects = {
            str(info["name"]): SubjectInfo(
                str(info["name"]),
                tuple(SubjectVersion(int(v), int(i), bool(d)) for v, i, d in info["versions"]),
                info.get("compatibility"),
                info.get("mode"),
            )
            for info in data.get("subjects", [])
        }
        return cls(
            _frozen(schemas),
            _frozen(subjects),
            data.get("compatibility"),
            data.get("mode"),
            int(data.get("next_schema_id", FIRST_SCHEMA_ID)),
        )


# -- commands ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterSchema:
    """Bind `schema_id` to the content (unless it is bound already) and add `version` to `subject`."""

    subject: str
    schema_id: int
    version: int
    schema_type: str
    schema: str
    references: tuple[SchemaReference, ...] = ()
    controller_epoch: int = 0


@dataclass(frozen=True, slots=True)
class DeleteSchemaVersions:
    """Soft-delete the given live versions of `subject`, or (permanent) remove soft-deleted ones.
    `clear_settings`: the subject's own level and mode go too (a soft delete of the whole subject)."""

    subject: str
    versions: tuple[int, ...]
    permanent: bool = False
    controller_epoch: int = 0
    clear_settings: bool = False


@dataclass(frozen=True, slots=True)
class SetRegistryConfig:
    """The compatibility level of `subject` (None: the global one); a level of None clears it."""

    subject: str | None
    compatibility: str | None
    controller_epoch: int = 0


@dataclass(frozen=True, slots=True)
class SetRegistryMode:
    """The mode of `subject` (None: the global one); a mode of None clears it."""

    subject: str | None
    mode: str | None
    controller_epoch: int = 0


REGISTRY_COMMANDS = {
    cls.__name__: cls for cls in (RegisterSchema, DeleteSchemaVersions, SetRegistryConfig, SetRegistryMode)
}
REGISTRY_COMMAND_TYPES = tuple(REGISTRY_COMMANDS.values())


def registry_command_from_dict(kind: str, fields: dict[str, Any]) -> Any:
    """The command of `asdict`'s form (raises KeyError/TypeError for anything else)."""
    fields = dict(fields)
    if kind == "RegisterSchema":
        fields["references"] = tuple(SchemaReference(**r) for r in fields.get("references", ()))
    if kind == "DeleteSchemaVersions":
        fields["versions"] = tuple(fields["versions"])
    return REGISTRY_COMMANDS[kind](**fields)


# -- apply: pure, deterministic (commands.apply catches anything unforeseen) -------------------------------


def apply_registry(state: RegistryState, command: Any) -> RegistryState:
    """The state after `command`; a command that does not fit any more leaves it unchanged."""
    if isinstance(command, RegisterSchema):
        return _register(state, command)
    if isinstance(command, DeleteSchemaVersions):
        return _delete(state, command)
    if isinstance(command, SetRegistryConfig):
        if command.compatibility is not None and command.compatibility not in COMPATIBILITY_LEVELS:
            return state
        if command.subject is None:
            return replace(state, compatibility=command.compatibility)
        info = state.subjects.get(command.subject) or SubjectInfo(command.subject)
        return _with_subject(state, replace(info, compatibility=command.compatibility))
    if isinstance(command, SetRegistryMode):
        if command.mode is not None and command.mode not in MODES:
            return state
        if command.subject is None:
            return replace(state, mode=command.mode)
        info = state.subjects.get(command.subject) or SubjectInfo(command.subject)
        return _with_subject(state, replace(info, mode=command.mode))
    return state


def _register(state: RegistryState, command: RegisterSchema) -> RegistryState:
    if command.schema_type not in SCHEMA_TYPES or not FIRST_SCHEMA_ID <= command.schema_id <= SCHEMA_ID_MAX:
        return state
    if not 1 <= command.version <= VERSION_MAX:
        return state
    references = tuple(command.references)
    stored = state.schemas.get(command.schema_id)
    if stored is not None and not stored.same_content(command.schema_type, command.schema, references):
        return state  # the id is bound to another text: never rebound
    bound = state.id_for(command.schema_type, command.schema, references)
    if bound is not None and bound != command.schema_id:
        return state  # the text already has another id
    info = state.subjects.get(command.subject) or SubjectInfo(command.subject)
    if any(v.schema_id == command.schema_id for v in info.live()):
        return state  # already a live version of the subject: a retry, or the same schema again
    if info.version(command.version) is not None:
        return state  # the version number is taken
    schemas = state.schemas
    if stored is None:
        schemas = _frozen(
            {
                **state.schemas,
                command.schema_id: StoredSchema(
                    command.schema_id, command.schema_type, command.schema, references
                ),
            }
        )
    versions = tuple(
        sorted((*info.versions, SubjectVersion(command.version, command.schema_id)), key=lambda v: v.version)
    )
    changed = replace(state, schemas=schemas, next_schema_id=max(state.next_schema_id, command.schema_id + 1))
    return _with_subject(changed, replace(info, versions=versions))


def _delete(state: RegistryState, command: DeleteSchemaVersions) -> RegistryState:
    info = state.subjects.get(command.subject)
    if info is None:
        return state
    targets = set(command.versions)
    if command.permanent:
        # Only soft-deleted versions go for good (Confluent's two-step delete).
        versions = tuple(v for v in info.versions if not (v.version in targets and v.deleted))
        if not versions and info.versions:  # the whole subject is gone: its own settings go with it
            return _with_subject(state, SubjectInfo(info.name))
        return _with_subject(state, replace(info, versions=versions))
    versions = tuple(replace(v, deleted=True) if v.version in targets else v for v in info.versions)
    changed = replace(info, versions=versions)
    if command.clear_settings:
        changed = replace(changed, compatibility=None, mode=None)
    return _with_subject(state, changed)


def _with_subject(state: RegistryState, info: SubjectInfo) -> RegistryState:
    """The state with `info` for its subject; a subject left with no version and no setting of its
    own is dropped (clearing a level set on a subject never registered leaves nothing behind)."""
    if not info.versions and info.compatibility is None and info.mode is None:
        return replace(state, subjects=_frozen({n: s for n, s in state.subjects.items() if n != info.name}))
    return replace(state, subjects=_frozen({**state.subjects, info.name: info}))
