"""The embedded schema registry's REST API: Confluent Schema Registry's routes at the root of the
HTTP port, as thin adapters over node/schema_registry.py (the rules) and the metadata image (the state).

Any node answers reads from the metadata it has applied. A write (register, delete, config, mode)
goes to the active controller (forwarded, one hop, as topic changes are; what does not depend on the
registry's state, the body's shape and a schema without references, is checked first where it
arrived), which plans it against its committed image and commits the command; the answer
carries the metadata version, and the forwarding node waits until it has applied that version, so a
client reads its own writes from the node it asked.

What Confluent's clients expect, and get: answers in `application/vnd.schemaregistry.v1+json` (or
`application/vnd.schemaregistry+json` / `application/json` when the `Accept` header prefers them),
bodies in any of those and `application/octet-stream`, errors as `{"error_code", "message"}` with
Confluent's codes (40401 subject not found, 40901 incompatible, ...) and, for failures below the
registry's own (unknown path, unsupported media type, malformed JSON, unknown field), the HTTP status
as a three-digit `error_code`, as Confluent's REST layer answers them. Boolean query parameters take
`true`/`false` in any case (clients send both `true` and `True`); query parameters the registry does
not use are ignored, as Confluent's are. Unknown body fields are refused unless the request carries
`Confluent-Accept-Unknown-Properties: true`, which Confluent's clients send. `/associations/...`
answers 404: newer clients then fall back to the topic name strategy.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from aiohttp import web

from metadata.commands import MetadataError
from metadata.schemas import RegistryState
from node.api import read_body
from node.errors import ApiError
from node.forward import METADATA_VERSION_HEADER, ForwardTo, is_forwarded
from node.schema_registry import (
    INVALID_SCHEMA,
    SCHEMA_NOT_FOUND,
    check_subject,
    get_version,
    id_usage,
    list_subjects,
    list_versions,
    lookup,
    parse_level,
    parse_mode,
    parse_schema,
    parse_version,
    plan_clear_compatibility,
    plan_clear_mode,
    plan_delete_subject,
    plan_delete_version,
    plan_register,
    plan_set_compatibility,
    plan_set_mode,
    referenced_by,
    references_of,
    schema_by_id,
    schema_fields,
    schema_type_of,
    subject_compatibility,
    subject_mode,
    test_compatibility,
    version_answer,
)

V1 = "application/vnd.schemaregistry.v1+json"
ANSWER_TYPES = (V1, "application/vnd.schemaregistry+json", "application/json")
BODY_TYPES = frozenset({*ANSWER_TYPES, "application/octet-stream", ""})
ACCEPT_UNKNOWN_HEADER = "Confluent-Accept-Unknown-Properties"
PREFIXES = ("subjects", "schemas", "config", "mode", "compatibility", "contexts")
# Confluent's config fields that this registry does not keep: refused when given a value.
UNSUPPORTED_CONFIG_FIELDS = (
    "normalize",
    "validateFields",
    "validateRules",
    "alias",
    "compatibilityGroup",
    "defaultMetadata",
    "overrideMetadata",
    "defaultRuleSet",
    "overrideRuleSet",
)


class RegistryHttpError(Exception):
    """An error below the registry's own: the HTTP status doubles as its error code (Confluent's REST layer)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def answer_type(request: web.Request) -> str:
    for part in request.headers.get("Accept", "").split(","):
        kind = part.split(";")[0].strip().lower()
        if kind in ANSWER_TYPES:
            return kind
    return V1


def answer(request: web.Request, body: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type=answer_type(request), headers=headers
    )


def error_answer(request: web.Request, status: int, code: int, message: str) -> web.Response:
    return answer(request, {"error_code": code, "message": message}, status=status)


def registry_route(handler):
    """Readiness, and every refusal rendered as the registry's error body."""

    @functools.wraps(handler)
    async def wrapped(self: RegistryHandlers, request: web.Request) -> web.StreamResponse:
        try:
            if not self.node.metadata_ready:
                raise ApiError(
                    50302, f"node {self.node.config.node_id} is not ready: {self.node.not_ready_reason()}"
                )
            return await handler(self, request)
        except ForwardTo:
            raise  # the error middleware forwards the request to the controller
        except RegistryHttpError as exc:
            return error_answer(request, exc.status, exc.status, exc.message)
        except (ApiError, MetadataError) as exc:
            return error_answer(request, exc.error_code // 100, exc.error_code, exc.message)

    return wrapped


def flag(request: web.Request, *names: str) -> bool:
    """A boolean query parameter (the first of `names` given): true/false in any case."""
    for name in names:
        raw = request.query.get(name)
        if raw is None:
            continue
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise RegistryHttpError(400, f"query parameter {name} must be true or false, got {raw!r}")
    return False


def number(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise RegistryHttpError(400, f"query parameter {name} must be an integer, got {raw!r}") from None


def page(request: web.Request, items: list) -> list:
    """Confluent's paging: `offset` items skipped, at most `limit` (none when negative or 0)."""
    offset = max(0, number(request, "offset", 0))
    limit = number(request, "limit", -1)
    return items[offset : offset + limit] if limit > 0 else items[offset:]


def subject_of(request: web.Request) -> str:
    return check_subject(request.match_info["subject"])


def version_of(request: web.Request) -> int | None:
    return parse_version(request.match_info["version"])


def schema_id_of(request: web.Request) -> int:
    raw = request.match_info["schema_id"]
    if not raw.isdigit() or len(raw) > 10:
        raise ApiError(SCHEMA_NOT_FOUND, f"Schema {raw} not found")
    return int(raw)


class RegistryHandlers:
    def __init__(self, node, api):
        self.node = node
        self.api = api  # node/api.py Handlers: controller_or_forward

    @property
    def state(self) -> RegistryState:
        return self.node.store.image.schema_registry

    async def body(self, request: web.Request, allowed: set[str]) -> dict[str, Any]:
        kind = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind not in BODY_TYPES:
            raise RegistryHttpError(415, f"HTTP 415 Unsupported Media Type: {kind} (send {V1})")
        raw = await read_body(request)
        try:
            document = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise RegistryHttpError(400, f"the request body is not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise RegistryHttpError(400, "the request body must be a JSON object")
        unknown = sorted(set(document) - allowed)
        accepts_unknown = request.headers.get(ACCEPT_UNKNOWN_HEADER, "").lower() == "true"
        if unknown and not accepts_unknown and not is_forwarded(request):  # checked where it arrived
            raise RegistryHttpError(422, f"Unrecognized field(s): {', '.join(unknown)}")
        return document

    async def propose(self, request: web.Request, plan) -> tuple[Any, Any]:
        """Forward to the active controller, or plan there and commit: (the plan's result, new image).
        `plan(image)` returns (command or None, result)."""
        self.api.controller_or_forward(request)
        outcome: dict[str, Any] = {}

        def command_of(image):
            command, outcome["result"] = plan(image)
            return command

        image = await self.node.controller.propose_planned(command_of)
        return outcome["result"], image

    def committed(self, request: web.Request, body: Any, image) -> web.Response:
        return answer(request, body, headers={METADATA_VERSION_HEADER: str(image.version)})

    # -- subjects ------------------------------------------------------------------------------------

    @registry_route
    async def root(self, request: web.Request) -> web.Response:
        return answer(request, {})

    @registry_route
    async def subjects(self, request: web.Request) -> web.Response:
        names = list_subjects(
            self.state,
            request.query.get("subjectPrefix", ""),
            flag(request, "deleted"),
            flag(request, "deletedOnly", "deleted_only"),
        )
        return answer(request, page(request, names))

    @registry_route
    async def versions(self, request: web.Request) -> web.Response:
        subject = subject_of(request)
        found = list_versions(
            self.state, subject, flag(request, "deleted"), flag(request, "deletedOnly", "deleted_only")
        )
        return answer(request, page(request, found))

    @registry_route
    async def version(self, request: web.Request) -> web.Response:
        return answer(
            request,
            get_version(self.state, subject_of(request), version_of(request), flag(request, "deleted")),
        )

    @registry_route
    async def version_schema(self, request: web.Request) -> web.Response:
        found = get_version(self.state, subject_of(request), version_of(request), flag(request, "deleted"))
        return web.Response(text=found["schema"], content_type=answer_type(request))

    @registry_route
    async def referencedby(self, request: web.Request) -> web.Response:
        return answer(
            request, page(request, referenced_by(self.state, subject_of(request), version_of(request)))
        )

    def _parsed(self, request: web.Request, document: dict, state: RegistryState):
        if "schema" not in document:
            raise ApiError(INVALID_SCHEMA, "Invalid schema: the request has no schema field")
        for name in ("metadata", "ruleSet"):  # Confluent's data contracts: not kept here
            if document.get(name):
                raise ApiError(INVALID_SCHEMA, f"{name} is not supported by this registry (send none)")
        return parse_schema(
            state,
            schema_type_of(document.get("schemaType")),
            document["schema"],
            references_of(document.get("references")),
            flag(request, "normalize"),
        )

    @registry_route
    async def register(self, request: web.Request) -> web.Response:
        subject = subject_of(request)
        document = await self.body(
            request, {"schema", "schemaType", "references", "metadata", "ruleSet", "id", "version"}
        )
        requested = {}
        for name in ("id", "version"):
            value = document.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ApiError(INVALID_SCHEMA, f"{name} must be an integer, got {value!r}")
            requested[name] = value if isinstance(value, int) and value > 0 else None  # 0, -1: not given
        if not document.get("references"):  # a schema alone is checked here (references: by the controller,
            self._parsed(request, document, self.state)  # whose image may be ahead of this node's)

        def plan(image):
            state = image.schema_registry
            registration = plan_register(
                state,
                subject,
                self._parsed(request, document, state),
                image.controller_epoch,
                requested["id"],
                requested["version"],
            )
            return registration.command, registration

        registration, image = await self.propose(request, plan)
        info = image.schema_registry.subjects.get(subject)
        entry = info.version(registration.version) if info else None
        if entry is None or entry.schema_id != registration.schema_id or entry.deleted:
            raise ApiError(50303, "the registration was not applied (the controller changed); retry")
        return self.committed(request, {"id": registration.schema_id, "version": registration.version}, image)

    @registry_route
    async def lookup(self, request: web.Request) -> web.Response:
        subject = subject_of(request)
        document = await self.body(request, {"schema", "schemaType", "references", "metadata", "ruleSet"})
        state = self.state
        deleted = flag(request, "deleted", "lookupDeletedSchema")
        return answer(request, lookup(state, subject, self._parsed(request, document, state), deleted))

    @registry_route
    async def delete_version(self, request: web.Request) -> web.Response:
        subject, version = subject_of(request), version_of(request)
        permanent = flag(request, "permanent")
        deleted, image = await self.propose(
            request,
            lambda image: plan_delete_version(
                image.schema_registry, subject, version, permanent, image.controller_epoch
            ),
        )
        return self.committed(request, deleted, image)

    @registry_route
    async def delete_subject(self, request: web.Request) -> web.Response:
        subject = subject_of(request)
        permanent = flag(request, "permanent")
        deleted, image = await self.propose(
            request,
            lambda image: plan_delete_subject(
                image.schema_registry, subject, permanent, image.controller_epoch
            ),
        )
        return self.committed(request, deleted, image)

    # -- schemas by id -------------------------------------------------------------------------------

    @registry_route
    async def schemas(self, request: web.Request) -> web.Response:
        state = self.state
        prefix = request.query.get("subjectPrefix", "")
        deleted, latest_only = flag(request, "deleted"), flag(request, "latestOnly")
        out = []
        for name in sorted(state.subjects):
            if not name.startswith(prefix):
                continue
            entries = [v for v in state.subjects[name].versions if deleted or not v.deleted]
            for entry in entries[-1:] if latest_only else entries:
                out.append(version_answer(state, name, entry))
        return answer(request, page(request, out))

    @registry_route
    async def schema_types(self, request: web.Request) -> web.Response:
        return answer(request, ["AVRO"])

    @registry_route
    async def schema(self, request: web.Request) -> web.Response:
        state = self.state
        body = schema_fields(schema_by_id(state, schema_id_of(request)))
        if flag(request, "fetchMaxId"):
            body["maxId"] = state.next_schema_id - 1
        return answer(request, body)

    @registry_route
    async def schema_text(self, request: web.Request) -> web.Response:
        stored = schema_by_id(self.state, schema_id_of(request))
        return web.Response(text=stored.schema, content_type=answer_type(request))

    @registry_route
    async def schema_subjects(self, request: web.Request) -> web.Response:
        pairs = id_usage(self.state, schema_id_of(request), flag(request, "deleted"))
        return answer(request, page(request, sorted({subject for subject, _ in pairs})))

    @registry_route
    async def schema_versions(self, request: web.Request) -> web.Response:
        pairs = id_usage(self.state, schema_id_of(request), flag(request, "deleted"))
        return answer(request, page(request, [{"subject": s, "version": v} for s, v in pairs]))

    # -- compatibility -------------------------------------------------------------------------------

    async def _compatibility(self, request: web.Request, all_versions: bool) -> web.Response:
        subject = subject_of(request)
        version = None if all_versions else version_of(request)
        document = await self.body(request, {"schema", "schemaType", "references", "metadata", "ruleSet"})
        state = self.state
        messages = test_compatibility(
            state, subject, version, self._parsed(request, document, state), all_versions
        )
        body: dict[str, Any] = {"is_compatible": not messages}
        if flag(request, "verbose"):
            body["messages"] = messages
        return answer(request, body)

    @registry_route
    async def compatibility(self, request: web.Request) -> web.Response:
        return await self._compatibility(request, all_versions=False)

    @registry_route
    async def compatibility_all(self, request: web.Request) -> web.Response:
        return await self._compatibility(request, all_versions=True)

    # -- config and mode -----------------------------------------------------------------------------

    def _optional_subject(self, request: web.Request) -> str | None:
        return subject_of(request) if "subject" in request.match_info else None

    @registry_route
    async def get_config(self, request: web.Request) -> web.Response:
        subject = self._optional_subject(request)
        level = subject_compatibility(self.state, subject, flag(request, "defaultToGlobal"))
        return answer(request, {"compatibilityLevel": level})

    @registry_route
    async def put_config(self, request: web.Request) -> web.Response:
        subject = self._optional_subject(request)
        document = await self.body(
            request, {"compatibility", "compatibilityLevel", *UNSUPPORTED_CONFIG_FIELDS}
        )
        for name in UNSUPPORTED_CONFIG_FIELDS:
            if document.get(name) is not None:
                raise RegistryHttpError(422, f"config field {name} is not supported by this registry")
        raw = document.get("compatibility", document.get("compatibilityLevel"))
        level = parse_level(raw)
        _, image = await self.propose(
            request,
            lambda image: (
                plan_set_compatibility(image.schema_registry, subject, level, image.controller_epoch),
                None,
            ),
        )
        return self.committed(request, {"compatibility": level}, image)

    @registry_route
    async def delete_config(self, request: web.Request) -> web.Response:
        subject = self._optional_subject(request)
        old, image = await self.propose(
            request,
            lambda image: plan_clear_compatibility(image.schema_registry, subject, image.controller_epoch),
        )
        return self.committed(request, {"compatibilityLevel": old}, image)

    @registry_route
    async def get_mode(self, request: web.Request) -> web.Response:
        subject = self._optional_subject(request)
        return answer(request, {"mode": subject_mode(self.state, subject, flag(request, "defaultToGlobal"))})

    @registry_route
    async def put_mode(self, request: web.Request) -> web.Response:
        subject = self._optional_subject(request)
        document = await self.body(request, {"mode"})
        mode = parse_mode(document.get("mode"))
        force = flag(request, "force")
        _, image = await self.propose(
            request,
            lambda image: (
                plan_set_mode(image.schema_registry, subject, mode, force, image.controller_epoch),
                None,
            ),
        )
        return self.committed(request, {"mode": mode}, image)

    @registry_route
    async def delete_mode(self, request: web.Request) -> web.Response:
        subject = self._optional_subject(request)
        old, image = await self.propose(
            request, lambda image: plan_clear_mode(image.schema_registry, subject, image.controller_epoch)
        )
        return self.committed(request, {"mode": old}, image)

    # -- the rest ------------------------------------------------------------------------------------

    @registry_route
    async def contexts(self, request: web.Request) -> web.Response:
        return answer(request, ["."])  # the default context only

    @registry_route
    async def associations(self, request: web.Request) -> web.Response:
        raise RegistryHttpError(
            404,
            "HTTP 404 Not Found: this registry keeps no associations (clients fall back to the topic "
            "name strategy)",
        )

    @registry_route
    async def not_found(self, request: web.Request) -> web.Response:
        raise RegistryHttpError(
            404, f"HTTP 404 Not Found: the schema registry has no {request.method} {request.path}"
        )


def add_registry_routes(app: web.Application, node, api) -> None:
    h = RegistryHandlers(node, api)
    add = app.router.add_route
    add("GET", "/", h.root)
    add("GET", "/subjects", h.subjects)
    add("GET", "/subjects/{subject}/versions", h.versions)
    add("POST", "/subjects/{subject}/versions", h.register)
    add("GET", "/subjects/{subject}/versions/{version}", h.version)
    add("DELETE", "/subjects/{subject}/versions/{version}", h.delete_version)
    add("GET", "/subjects/{subject}/versions/{version}/schema", h.version_schema)
    add("GET", "/subjects/{subject}/versions/{version}/referencedby", h.referencedby)
    add("POST", "/subjects/{subject}", h.lookup)
    add("DELETE", "/subjects/{subject}", h.delete_subject)
    add("GET", "/schemas", h.schemas)
    add("GET", "/schemas/types", h.schema_types)
    add("GET", "/schemas/ids/{schema_id}", h.schema)
    add("GET", "/schemas/ids/{schema_id}/schema", h.schema_text)
    add("GET", "/schemas/ids/{schema_id}/subjects", h.schema_subjects)
    add("GET", "/schemas/ids/{schema_id}/versions", h.schema_versions)
    for path in ("/config", "/config/{subject}"):
        add("GET", path, h.get_config)
        add("PUT", path, h.put_config)
        add("DELETE", path, h.delete_config)
    for path in ("/mode", "/mode/{subject}"):
        add("GET", path, h.get_mode)
        add("PUT", path, h.put_mode)
        add("DELETE", path, h.delete_mode)
    add("POST", "/compatibility/subjects/{subject}/versions/{version}", h.compatibility)
    add("POST", "/compatibility/subjects/{subject}/versions", h.compatibility_all)
    add("GET", "/contexts", h.contexts)
    add("*", "/associations{tail:.*}", h.associations)
    for prefix in PREFIXES:  # anything else under the registry's paths: Confluent's generic 404
        add("*", f"/{prefix}/{{tail:.*}}", h.not_found)
