"""A small client of the schema registry every Raftka node embeds (Confluent's Schema Registry API).

    registry = SchemaRegistryClient("127.0.0.1:9092")          # any node, or several
    schema_id = registry.register("orders-value", ORDER_SCHEMA)  # idempotent: the same id every time

The Avro serializers in raftka/client/serializers.py use it. Its calls are blocking (urllib), one
request each, tried on each address in turn while a node cannot be reached or is not ready; the
answers that never change (a schema by id) are cached for good. Any other refusal raises
`SchemaRegistryError` with the registry's error code (40401 subject not found, 40901 incompatible,
42201 invalid schema, ...). Thread-safe: its caches are guarded by a lock.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from raftka.client._http import parse_bootstrap
from raftka.client.errors import RaftkaError

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
DEFAULT_TIMEOUT_S = 10.0
RETRIED_STATUSES = (502, 503, 504)  # a node not ready or without a controller: another may answer


class SchemaRegistryError(RaftkaError):
    """A refusal of the registry: `error_code` (Confluent's codes), `message`, `http_status`."""

    def __init__(self, http_status: int, error_code: int | None, message: str):
        super().__init__(error_code, message, retriable=http_status in RETRIED_STATUSES)
        self.http_status = http_status


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    subject: str
    version: int
    schema_id: int
    schema: str
    references: tuple[dict, ...] = ()


def schema_text(schema: str | dict | list) -> str:
    """A schema given as its JSON text or as the parsed JSON, as text."""
    return schema if isinstance(schema, str) else orjson.dumps(schema).decode()


class SchemaRegistryClient:
    def __init__(self, bootstrap: str | Sequence[str] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
        """`bootstrap`: nodes as "host:port[,host:port]" or a list (an "http://" prefix is fine);
        None reads RAFTKA_BOOTSTRAP, then 127.0.0.1:9092."""
        self.addresses = parse_bootstrap(bootstrap)
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._by_id: dict[int, dict] = {}
        self._versions: dict[tuple[str, int], RegisteredSchema] = {}

    # -- the HTTP carrier ------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, query: dict | None = None) -> Any:
        """One call to the first node that answers; its decoded JSON answer."""
        if query:
            path += "?" + urlencode(
                {k: str(v).lower() if isinstance(v, bool) else v for k, v in query.items()}
            )
        data = None if body is None else orjson.dumps(body)
        headers = {"Accept": CONTENT_TYPE, **({"Content-Type": CONTENT_TYPE} if data is not None else {})}
        last: SchemaRegistryError | None = None
        for address in self.addresses:
            request = urllib.request.Request(
                f"http://{address}{path}", data=data, method=method, headers=headers
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return orjson.loads(response.read())
            except urllib.error.HTTPError as exc:
                error = _error(exc.code, exc.read())
                if exc.code not in RETRIED_STATUSES:
                    raise error from None
                last = error
            except (OSError, TimeoutError) as exc:  # refused, unreachable, timed out: the next node
                last = SchemaRegistryError(503, None, f"cannot reach the schema registry at {address}: {exc}")
        assert last is not None
        raise last

    # -- registering and looking up ----------------------------------------------------------------

    def register(
        self,
        subject: str,
        schema: str | dict | list,
        references: Sequence[dict] = (),
        normalize: bool = False,
    ) -> int:
        """The id of `schema` under `subject`, registering it as a new version when it is not one yet
        (SchemaRegistryError 40901 when it breaks the subject's compatibility level)."""
        body: dict[str, Any] = {"schema": schema_text(schema), "schemaType": "AVRO"}
        if references:
            body["references"] = list(references)
        answer = self.request("POST", f"/subjects/{_path(subject)}/versions", body, {"normalize": normalize})
        return int(answer["id"])

    def lookup(
        self, subject: str, schema: str | dict | list, references: Sequence[dict] = ()
    ) -> RegisteredSchema:
        """The version of `subject` that holds `schema` (40401 no subject, 40403 not registered there)."""
        body: dict[str, Any] = {"schema": schema_text(schema), "schemaType": "AVRO"}
        if references:
            body["references"] = list(references)
        return _registered(self.request("POST", f"/subjects/{_path(subject)}", body))

    def schema_by_id(self, schema_id: int) -> dict:
        """{"schema": text, "references"?: [...]} of an id (cached: an id never changes meaning)."""
        with self._lock:
            cached = self._by_id.get(schema_id)
        if cached is None:
            cached = self.request("GET", f"/schemas/ids/{int(schema_id)}")
            with self._lock:
                self._by_id[schema_id] = cached
        return cached

    def version(self, subject: str, version: int | str = "latest") -> RegisteredSchema:
        """A version of `subject` ("latest": its newest live one; only numbered versions are cached)."""
        if version != "latest":
            with self._lock:
                cached = self._versions.get((subject, int(version)))
            if cached is not None:
                return cached
        found = _registered(self.request("GET", f"/subjects/{_path(subject)}/versions/{version}"))
        if version != "latest":
            with self._lock:
                self._versions[(subject, found.version)] = found
        return found

    def subjects(self, deleted: bool = False) -> list[str]:
        return self.request("GET", "/subjects", query={"deleted": deleted})

    def versions(self, subject: str, deleted: bool = False) -> list[int]:
        return self.request("GET", f"/subjects/{_path(subject)}/versions", query={"deleted": deleted})

    def delete_subject(self, subject: str, permanent: bool = False) -> list[int]:
        return self.request("DELETE", f"/subjects/{_path(subject)}", query={"permanent": permanent})

    def delete_version(self, subject: str, version: int | str, permanent: bool = False) -> int:
        return self.request(
            "DELETE", f"/subjects/{_path(subject)}/versions/{version}", query={"permanent": permanent}
        )

    def test_compatibility(
        self, subject: str, schema: str | dict | list, version: int | str = "latest"
    ) -> bool:
        body = {"schema": schema_text(schema), "schemaType": "AVRO"}
        path = f"/compatibility/subjects/{_path(subject)}/versions/{version}"
        return bool(self.request("POST", path, body)["is_compatible"])

    def compatibility(self, subject: str | None = None) -> str:
        """The subject's level (the global one when it has none of its own), or the global level."""
        if subject is None:
            return self.request("GET", "/config")["compatibilityLevel"]
        path = f"/config/{_path(subject)}"
        return self.request("GET", path, query={"defaultToGlobal": True})["compatibilityLevel"]

    def set_compatibility(self, level: str, subject: str | None = None) -> str:
        path = "/config" if subject is None else f"/config/{_path(subject)}"
        return self.request("PUT", path, {"compatibility": level.upper()})["compatibility"]


def _path(subject: str) -> str:
    return quote(subject, safe="")


def _registered(answer: dict) -> RegisteredSchema:
    return RegisteredSchema(
        answer["subject"],
        int(answer["version"]),
        int(answer["id"]),
        answer["schema"],
        tuple(answer.get("references", ())),
    )


def _error(status: int, body: bytes) -> SchemaRegistryError:
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and "message" in parsed:
        code = parsed.get("error_code")
        return SchemaRegistryError(status, code if isinstance(code, int) else None, str(parsed["message"]))
    return SchemaRegistryError(status, None, f"HTTP {status}: {body[:200].decode(errors='replace')}")
