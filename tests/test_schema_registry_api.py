"""The embedded schema registry against one real `raftka node` process: its Confluent-compatible
routes, content types, query parameters and error codes (each refusal changing nothing); Confluent's
own Python client (`SchemaRegistryClient`, `AvroSerializer`, `AvroDeserializer`) pointed at the node;
produce and fetch with Avro over the JSON API; and the Raftka client's Avro serializers."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request
from urllib.parse import quote

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

import raftka
from tests.nodeproc import NodeProcess

V1 = "application/vnd.schemaregistry.v1+json"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    proc = NodeProcess(str(tmp_path_factory.mktemp("registry") / "data")).start()
    yield proc
    assert proc.stop() == 0


def call(node, method: str, path: str, body=None, headers: dict | None = None, raw: bytes | None = None):
    """(status, decoded JSON or text, headers) of one request, with Confluent's content type."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    all_headers = {"Content-Type": V1, **(headers or {})} if data is not None else dict(headers or {})
    request = urllib.request.Request(node.url + path, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, payload, answer_headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        status, payload, answer_headers = exc.code, exc.read(), exc.headers
    try:
        return status, json.loads(payload), answer_headers
    except ValueError:
        return status, payload.decode(), answer_headers


def ok(node, method, path, body=None, headers=None):
    status, answer, _ = call(node, method, path, body, headers)
    assert status == 200, (method, path, status, answer)
    return answer


def record(name: str, *fields: tuple, **extra) -> str:
    return json.dumps(
        {
            "type": "record",
            "name": name,
            "fields": [{"name": n, "type": t, **({"default": d[0]} if d else {})} for n, t, *d in fields],
            **extra,
        }
    )


def register(node, subject: str, schema: str, **extra) -> dict:
    return ok(node, "POST", f"/subjects/{quote(subject, safe='')}/versions", {"schema": schema, **extra})


def create_topic(node, name: str, partitions: int = 1) -> None:
    status, body, _ = node.request("POST", "/v1/topics", {"name": name, "partitions": partitions})
    assert status == 201, body


def produce(node, topic: str, body: dict, partition: int | None = None):
    path = (
        f"/v1/topics/{topic}/records"
        if partition is None
        else f"/v1/topics/{topic}/partitions/{partition}/records"
    )
    status, answer, _ = node.request("POST", path, body)
    return status, answer


def fetch(node, topic: str, query: str = "") -> list[dict]:
    status, body, _ = node.request(
        "GET", f"/v1/topics/{topic}/partitions/0/records?offset=0&max_wait_ms=0{query}"
    )
    assert status == 200, body
    return body["records"]


# -- routes --------------------------------------------------------------------------------------------


def test_routes_answers_and_content_types(node):
    schema = record("Route", ("a", "int"))
    status, answer, headers = call(node, "POST", "/subjects/routes-value/versions", {"schema": schema})
    assert status == 200 and headers["Content-Type"].startswith(V1)
    schema_id = answer["id"]
    assert answer == {"id": schema_id, "version": 1}
    assert ok(node, "GET", "/") == {}
    assert ok(node, "GET", "/schemas/types") == ["AVRO"]
    assert ok(node, "GET", "/contexts") == ["."]
    assert "routes-value" in ok(node, "GET", "/subjects")
    assert ok(node, "GET", "/subjects/routes-value/versions") == [1]
    canonical = json.dumps(json.loads(schema), separators=(",", ":"))
    expected = {"subject": "routes-value", "version": 1, "id": schema_id, "schema": canonical}
    assert ok(node, "GET", "/subjects/routes-value/versions/1") == expected
    assert ok(node, "GET", "/subjects/routes-value/versions/latest") == expected
    assert ok(node, "GET", "/subjects/routes-value/versions/-1") == expected
    assert ok(node, "GET", f"/schemas/ids/{schema_id}") == {"schema": canonical}
    assert ok(node, "GET", f"/schemas/ids/{schema_id}?fetchMaxId=true")["maxId"] >= schema_id
    # The raw schema routes answer the schema's JSON itself.
    assert ok(node, "GET", "/subjects/routes-value/versions/1/schema") == json.loads(schema)
    assert ok(node, "GET", f"/schemas/ids/{schema_id}/schema") == json.loads(schema)
    assert ok(node, "GET", f"/schemas/ids/{schema_id}/subjects") == ["routes-value"]
    assert ok(node, "GET", f"/schemas/ids/{schema_id}/versions") == [
        {"subject": "routes-value", "version": 1}
    ]
    assert ok(node, "GET", "/schemas?subjectPrefix=routes-") == [expected]
    assert ok(node, "POST", "/subjects/routes-value", {"schema": schema}) == expected  # lookup
    # Accept decides the answer's type among the registry's three.
    for accept, wanted in [
        ("application/json", "application/json"),
        ("application/vnd.schemaregistry+json", "application/vnd.schemaregistry+json"),
        ("*/*", V1),
        (None, V1),
    ]:
        _, _, headers = call(node, "GET", "/subjects", headers={"Accept": accept} if accept else None)
        assert headers["Content-Type"].startswith(wanted), accept
    # Bodies in any of the registry's types, or octet-stream, or without a type.
    for content_type in (
        "application/json",
        "application/vnd.schemaregistry+json",
        "application/octet-stream",
    ):
        status, answer, _ = call(
            node, "POST", "/subjects/routes-value", {"schema": schema}, {"Content-Type": content_type}
        )
        assert status == 200 and answer["id"] == schema_id, content_type
    # Subject names with characters that need escaping.
    for subject in ("a/b", "with space", "ünï-cödé", "dots.and:colons"):
        registered = register(node, subject, '"string"')
        assert ok(node, "GET", f"/subjects/{quote(subject, safe='')}/versions/latest")["subject"] == subject
        assert registered["version"] == 1
    # Paging, booleans as clients send them, and query parameters nobody here reads.
    subjects = ok(node, "GET", "/subjects")
    assert ok(node, "GET", "/subjects?offset=1&limit=2") == subjects[1:3]
    assert ok(node, "GET", "/subjects?deleted=False&deletedOnly=FALSE&format=x&someday=1") == subjects
    referenced = ok(node, "GET", "/subjects/routes-value/versions/1/referencedby")
    assert referenced == []


def snapshot(node) -> list:
    return ok(node, "GET", "/schemas?deleted=true")


def test_error_codes_and_refusals_change_nothing(node):
    register(node, "err-base", record("E", ("a", "int")))
    register(node, "err-ref-target", record("Target", ("t", "string"), namespace="com.err"))
    register(
        node,
        "err-referrer",
        record("Referrer", ("t", "com.err.Target"), namespace="com.err"),
        references=[{"name": "com.err.Target", "subject": "err-ref-target", "version": 1}],
    )
    register(node, "err-soft", '"int"')
    ok(node, "DELETE", "/subjects/err-soft")
    ok(node, "PUT", "/mode/err-frozen", {"mode": "READONLY"})
    incompatible = record("E", ("a", "string"))
    big = '"' + "x" * 300_000 + '"'
    cases = [
        ("GET", "/subjects/nope/versions", None, {}, 404, 40401),
        ("GET", "/subjects/err-base/versions/9", None, {}, 404, 40402),
        ("GET", "/schemas/ids/999999", None, {}, 404, 40403),
        ("POST", "/subjects/err-base", {"schema": '"long"'}, {}, 404, 40403),
        ("POST", "/subjects/nope", {"schema": '"long"'}, {}, 404, 40401),
        ("DELETE", "/subjects/err-soft", None, {}, 404, 40404),
        ("DELETE", "/subjects/err-base?permanent=true", None, {}, 404, 40405),
        ("DELETE", "/subjects/err-base/versions/1?permanent=true", None, {}, 404, 40407),
        ("GET", "/config/err-base", None, {}, 404, 40408),
        ("GET", "/mode/err-base", None, {}, 404, 40409),
        ("POST", "/subjects/err-base/versions", {"schema": incompatible}, {}, 409, 40901),
        ("POST", "/subjects/err-base/versions", {"schema": "{nope"}, {}, 422, 42201),
        (
            "POST",
            "/subjects/err-base/versions",
            {"schema": '"int"', "schemaType": "PROTOBUF"},
            {},
            422,
            42201,
        ),
        ("POST", "/subjects/err-base/versions", {"schemaType": "AVRO"}, {}, 422, 42201),
        ("GET", "/subjects/err-base/versions/zero", None, {}, 422, 42202),
        ("PUT", "/config", {"compatibility": "SIDEWAYS"}, {}, 422, 42203),
        ("PUT", "/mode", {"mode": "WRITEONLY"}, {}, 422, 42204),
        ("POST", "/subjects/err-frozen/versions", {"schema": '"int"'}, {}, 422, 42205),
        ("PUT", "/mode", {"mode": "IMPORT"}, {}, 422, 42205),
        ("POST", "/subjects/err-base/versions", {"schema": '"int"', "id": 5}, {}, 422, 42205),
        ("DELETE", "/subjects/err-ref-target/versions/1", None, {}, 422, 42206),
        ("POST", "/subjects/bad%01subject/versions", {"schema": '"int"'}, {}, 422, 42208),
        ("POST", "/subjects/err-base/versions", {"schema": big}, {}, 422, 42209),
        ("POST", "/subjects/err-base/versions", {"schema": '"int"', "nonsense": 1}, {}, 422, 422),
        (
            "POST",
            "/subjects/err-base/versions",
            {"schema": '"int"'},
            {"Content-Type": "text/plain"},
            415,
            415,
        ),
        ("DELETE", "/subjects/err-base?permanent=maybe", None, {}, 400, 400),
        ("GET", "/associations/resources/-/topic?resourceType=topic", None, {}, 404, 404),
        ("GET", "/subjects/err-base/metadata", None, {}, 404, 404),
        ("PUT", "/config", {"compatibility": "FULL", "normalize": True}, {}, 422, 422),
    ]
    before = snapshot(node)
    levels = (ok(node, "GET", "/config"), ok(node, "GET", "/mode"))
    for method, path, body, headers, status, code in cases:
        got_status, answer, _ = call(node, method, path, body, headers)
        assert (got_status, answer.get("error_code")) == (status, code), (method, path, answer)
        assert answer["message"], (method, path)
    status, answer, _ = call(node, "POST", "/subjects/err-base/versions", raw=b"{not json")
    assert (status, answer["error_code"]) == (400, 400)
    assert snapshot(node) == before
    assert (ok(node, "GET", "/config"), ok(node, "GET", "/mode")) == levels
    # Confluent's clients send this header: unknown fields are then ignored, as by Confluent's registry.
    accepted = call(
        node,
        "POST",
        "/subjects/err-base/versions",
        {"schema": record("E", ("a", "int")), "nonsense": 1},
        {"Confluent-Accept-Unknown-Properties": "true"},
    )
    assert accepted[0] == 200 and accepted[1]["version"] == 1


def test_confluent_schema_registry_client(node):
    client = SchemaRegistryClient({"url": node.url})
    v1 = Schema(record("Customer", ("name", "string")), "AVRO")
    v2 = Schema(record("Customer", ("name", "string"), ("tier", "int", 0)), "AVRO")
    broken = Schema(record("Customer", ("name", "string"), ("email", "string")), "AVRO")
    subject = "customers-value"
    first = client.register_schema(subject, v1)
    assert client.register_schema(subject, v1) == first  # idempotent
    fresh = SchemaRegistryClient({"url": node.url})  # no cache: the registry answers
    assert fresh.register_schema(subject, v1) == first
    found = fresh.lookup_schema(subject, v1)
    assert (found.schema_id, found.version, found.subject) == (first, 1, subject)
    second = fresh.register_schema(subject, v2)
    assert second != first
    assert fresh.get_versions(subject) == [1, 2]
    assert fresh.get_latest_version(subject).schema_id == second
    assert json.loads(fresh.get_schema(first).schema_str) == json.loads(v1.schema_str)
    assert fresh.test_compatibility(subject, broken) is False
    assert fresh.test_compatibility(subject, v2) is True
    with pytest.raises(SchemaRegistryError) as caught:
        fresh.register_schema(subject, broken)
    assert (caught.value.http_status_code, caught.value.error_code) == (409, 40901)
    assert "BACKWARD" in caught.value.error_message
    assert fresh.get_versions(subject) == [1, 2]  # refused: nothing added
    # The level decides: with NONE the same schema is accepted.
    assert fresh.set_compatibility(subject, "NONE") == {"compatibility": "NONE"}
    assert fresh.get_compatibility(subject) == "NONE"
    assert fresh.get_config(subject).compatibility_level.value == "NONE"
    third = fresh.register_schema(subject, broken)
    assert fresh.get_subjects_by_schema_id(third) == [subject]
    assert [(v.subject, v.version) for v in fresh.get_schema_versions(third)] == [(subject, 3)]
    assert fresh.get_compatibility() == "BACKWARD"
    assert fresh.get_global_mode() == "READWRITE"
    assert fresh.update_mode(subject, "READONLY") == "READONLY"
    assert fresh.get_mode(subject) == "READONLY"
    with pytest.raises(SchemaRegistryError) as caught:
        fresh.delete_version(subject, 3)
    assert caught.value.error_code == 42205
    assert fresh.delete_mode(subject) == "READONLY"
    assert fresh.delete_version(subject, 3) == 3
    assert fresh.get_versions(subject, deleted=True) == [1, 2, 3]
    assert fresh.delete_version(subject, 3, permanent=True) == 3
    assert fresh.delete_subject(subject) == [1, 2]
    assert subject not in fresh.get_subjects()
    assert subject in fresh.get_subjects(deleted=True)
    assert fresh.delete_subject(subject, permanent=True) == [1, 2]
    assert subject not in fresh.get_subjects(deleted=True)
    assert json.loads(fresh.get_schema(first).schema_str) == json.loads(v1.schema_str)  # ids outlive versions
    assert fresh.get_schema_types() == ["AVRO"]


def test_confluent_avro_serializer_and_deserializer(node):
    client = SchemaRegistryClient({"url": node.url})
    v1 = record("Order", ("id", "long"), ("total", "double"))
    v2 = record("Order", ("id", "long"), ("total", "double"), ("currency", "string", "EUR"))
    ctx = SerializationContext("orders-sr", MessageField.VALUE)
    serializer = AvroSerializer(client, v1)  # auto-registers under orders-sr-value
    data = serializer({"id": 7, "total": 9.5}, ctx)
    schema_id = int.from_bytes(data[1:5], "big")
    assert data[0] == 0 and client.get_latest_version("orders-sr-value").schema_id == schema_id
    assert AvroDeserializer(client)(data, ctx) == {"id": 7, "total": 9.5}
    # Evolve: a v2 serializer registers v2; a v2 reader reads v1 data with the default.
    data2 = AvroSerializer(client, v2)({"id": 8, "total": 1.0, "currency": "USD"}, ctx)
    assert int.from_bytes(data2[1:5], "big") != schema_id
    reader = AvroDeserializer(client, v2)
    assert reader(data, ctx) == {"id": 7, "total": 9.5, "currency": "EUR"}
    assert reader(data2, ctx)["currency"] == "USD"
    # An incompatible schema is refused when the serializer registers it.
    broken = AvroSerializer(client, record("Order", ("id", "string")))
    with pytest.raises(SchemaRegistryError) as caught:
        broken({"id": "x"}, ctx)
    assert caught.value.error_code == 40901
    # Without auto-registration the serializer looks its schema up (and finds it).
    lookup_only = AvroSerializer(client, v1, conf={"auto.register.schemas": False})
    assert lookup_only({"id": 1, "total": 2.0}, ctx)[1:5] == data[1:5]
    uncached = SchemaRegistryClient({"url": node.url})  # the first client cached the latest version as v1
    latest = AvroSerializer(uncached, None, conf={"auto.register.schemas": False, "use.latest.version": True})
    assert int.from_bytes(
        latest({"id": 1, "total": 2.0, "currency": "GBP"}, ctx)[1:5], "big"
    ) == int.from_bytes(data2[1:5], "big")
    # What Confluent's serializer wrote, produced as raw bytes, comes back decoded from the JSON API.
    create_topic(node, "orders-sr")
    status, answer = produce(
        node, "orders-sr", {"records": [{"value_b64": base64.b64encode(d).decode()} for d in (data, data2)]}
    )
    assert status == 200, answer
    decoded = fetch(node, "orders-sr", "&decode=avro")
    assert [r["value"] for r in decoded] == [
        {"id": 7, "total": 9.5},
        {"id": 8, "total": 1.0, "currency": "USD"},
    ]
    assert decoded[0]["value_schema_id"] == schema_id


def test_produce_and_fetch_with_avro(node):
    value_schema = record(
        "Click",
        ("user", "string"),
        ("count", "int", 1),
        ("page", ["null", "string"], None),
        namespace="web",
    )
    value_id = register(node, "clicks-value", value_schema)["id"]
    key_id = register(node, "clicks-key", '"long"')["id"]
    create_topic(node, "clicks")
    status, answer = produce(
        node,
        "clicks",
        {
            "value_subject": "clicks-value",
            "key_schema_id": key_id,
            "records": [
                {"key": 1, "value": {"user": "ann", "page": {"string": "/home"}}},
                {"key": 2, "value": {"user": "bo", "count": 3, "page": "/cart"}},  # a bare union value
                {"key": 3, "value": None},  # a tombstone
            ],
        },
        partition=0,
    )
    assert status == 200, answer
    records = fetch(node, "clicks", "&decode=avro")
    assert [r["value"] for r in records] == [
        {"user": "ann", "count": 1, "page": {"string": "/home"}},
        {"user": "bo", "count": 3, "page": {"string": "/cart"}},
        None,
    ]
    assert [r["key"] for r in records] == [1, 2, 3]
    assert records[0]["value_schema_id"] == value_id and records[0]["key_schema_id"] == key_id
    # Without decode=avro the bytes are Confluent's wire format; Confluent's deserializer reads them.
    raw = base64.b64decode(fetch(node, "clicks")[0]["value_b64"])
    assert raw[0] == 0 and int.from_bytes(raw[1:5], "big") == value_id
    confluent = AvroDeserializer(SchemaRegistryClient({"url": node.url}))
    assert confluent(raw, SerializationContext("clicks", MessageField.VALUE)) == {
        "user": "ann",
        "count": 1,
        "page": "/home",
    }
    # Fetched values can be produced again as they are (the topic route, by id).
    status, answer = produce(
        node, "clicks", {"value_schema_id": value_id, "records": [{"value": records[1]["value"]}]}
    )
    assert status == 200, answer
    # A record that does not match is refused with 42201 naming the field; nothing is written.
    end = len(fetch(node, "clicks"))
    for body, words in [
        (
            {"value_subject": "clicks-value", "records": [{"value": {"user": "ok"}}, {"value": {"user": 5}}]},
            "records[1].value.user",
        ),
        (
            {"value_subject": "clicks-value", "records": [{"value": {"user": "x", "cnt": 1}}]},
            "records[0].value.cnt",
        ),
        (
            {"value_subject": "clicks-value", "records": [{"value": {"count": 2}}]},
            "records[0].value.user: missing",
        ),
        ({"value_schema_id": 987654, "records": [{"value": {}}]}, "value_schema_id 987654"),
        ({"value_subject": "nope-value", "records": [{"value": {}}]}, "nope-value"),
    ]:
        status, answer = produce(node, "clicks", body)
        assert (status, answer["error_code"]) == (422, 42201), answer
        assert words in answer["message"], answer
    status, answer, _ = node.request("GET", "/v1/topics/clicks/partitions/0/records?offset=0&decode=json")
    assert (status, answer["error_code"]) == (422, 42201)
    assert len(fetch(node, "clicks")) == end


def test_raftka_client_avro_serializers(node):
    registry = raftka.SchemaRegistryClient(node.address)
    v1 = {
        "type": "record",
        "name": "Reading",
        "fields": [{"name": "sensor", "type": "string"}, {"name": "c", "type": "float"}],
    }
    v2 = {**v1, "fields": [*v1["fields"], {"name": "unit", "type": "string", "default": "C"}]}
    create_topic(node, "readings")

    async def main():
        async with raftka.Producer(
            node.address,
            key_serializer="str",
            value_serializer=raftka.AvroSerializer(registry, v1),
        ) as producer:
            await producer.send_and_wait("readings", {"sensor": "s1", "c": 21.5}, key="s1")
            with pytest.raises(ValueError, match="does not fit Avro schema"):
                await producer.send("readings", {"sensor": "s2"}, key="s2")  # c is missing
        async with raftka.Producer(
            node.address, value_serializer=raftka.AvroSerializer(node.address, v2)
        ) as producer:
            await producer.send_and_wait("readings", {"sensor": "s2", "c": 3.0, "unit": "F"})
        async with raftka.Consumer(
            node.address, value_deserializer=raftka.AvroDeserializer(node.address, reader_schema=v2)
        ) as consumer:
            consumer.assign([("readings", 0)])
            consumer.seek_to_beginning()
            got = []
            for _ in range(50):
                got += [r.value for r in await consumer.poll(timeout_ms=200)]
                if len(got) >= 2:
                    break
            return got

    assert asyncio.run(main()) == [
        {"sensor": "s1", "c": 21.5, "unit": "C"},  # written with v1, read as v2: the default
        {"sensor": "s2", "c": 3.0, "unit": "F"},
    ]
    assert registry.versions("readings-value") == [1, 2]
    assert registry.register("readings-value", v1) == registry.version("readings-value", 1).schema_id
    assert registry.compatibility("readings-value") == "BACKWARD"
    assert (
        registry.test_compatibility("readings-value", {**v1, "fields": [{"name": "x", "type": "int"}]})
        is False
    )
    with pytest.raises(raftka.SchemaRegistryError) as caught:
        registry.register("readings-value", {**v1, "fields": [{"name": "x", "type": "int"}]})
    assert (caught.value.http_status, caught.value.error_code) == (409, 40901)
    with pytest.raises(raftka.SchemaRegistryError) as caught:
        registry.lookup("nothing-here", v1)
    assert caught.value.error_code == 40401


# -- review regressions ------------------------------------------------------------------------------------


def test_the_same_schema_written_another_way_keeps_its_id_and_version(node):
    # A Java client sends Avro's rendering of a schema, a Python one the text it was given: to
    # Confluent's registry these are one schema, so neither may add a version nor take another id.
    client = SchemaRegistryClient({"url": node.url})
    text = record("Shape", ("sides", "int"), ("name", "string", "square"))
    first = client.register_schema_full_response("shapes-value", Schema(text, "AVRO"))
    pretty = json.dumps(
        {
            "fields": [
                {"type": {"type": "int"}, "name": "sides"},
                {"default": "square", "name": "name", "type": "string"},
            ],
            "name": "Shape",
            "type": "record",
        },
        indent=2,
    )
    fresh = SchemaRegistryClient({"url": node.url})
    again = fresh.register_schema_full_response("shapes-value", Schema(pretty, "AVRO"))
    assert (again.schema_id, again.version) == (first.schema_id, 1)
    assert fresh.get_versions("shapes-value") == [1]
    assert fresh.register_schema("shapes-key", Schema(pretty, "AVRO")) == first.schema_id
    assert fresh.lookup_schema("shapes-value", Schema(pretty, "AVRO")).version == 1


def test_soft_deleting_a_subject_drops_its_level_and_mode(node):
    client = SchemaRegistryClient({"url": node.url})
    subject = "soft-settings-value"
    client.register_schema(subject, Schema(record("Soft", ("a", "int")), "AVRO"))
    client.set_compatibility(subject, "NONE")
    client.update_mode(subject, "READWRITE")
    assert client.delete_subject(subject) == [1]
    status, answer, _ = call(node, "GET", f"/config/{subject}")
    assert (status, answer["error_code"]) == (404, 40408), answer
    status, answer, _ = call(node, "GET", f"/mode/{subject}")
    assert (status, answer["error_code"]) == (404, 40409), answer
    # Registered again, the subject follows the global level once more.
    assert register(node, subject, record("Soft", ("a", "int")))["version"] == 2
    assert ok(node, "GET", f"/config/{subject}?defaultToGlobal=true") == ok(node, "GET", "/config")
    # Deleting one version keeps the subject's own level.
    client.set_compatibility(subject, "FULL")
    assert register(node, subject, record("Soft", ("a", "int"), ("b", "int", 0)))["version"] == 3
    assert client.delete_version(subject, 3) == 3
    assert client.get_compatibility(subject) == "FULL"


def test_compatibility_with_latest_of_a_new_subject(node):
    client = SchemaRegistryClient({"url": node.url})
    schema = Schema(record("Fresh", ("a", "int")), "AVRO")
    assert client.test_compatibility("never-registered-value", schema) is True
    status, answer, _ = call(
        node,
        "POST",
        "/compatibility/subjects/never-registered-value/versions/latest?verbose=true",
        {"schema": schema.schema_str},
    )
    assert (status, answer) == (200, {"is_compatible": True, "messages": []})
    status, answer, _ = call(
        node,
        "POST",
        "/compatibility/subjects/never-registered-value/versions/1",
        {"schema": schema.schema_str},
    )
    assert (status, answer["error_code"]) == (404, 40401)
    assert "never-registered-value" not in client.get_subjects(deleted=True)  # a check registers nothing


def test_fetch_names_int_and_long_union_branches_as_written(node):
    schema = json.dumps(
        {
            "type": "record",
            "name": "Num",
            "fields": [{"name": "n", "type": ["null", "int", "long", "double"]}],
        }
    )
    schema_id = register(node, "nums-value", schema)["id"]
    create_topic(node, "nums")
    values = [{"n": {"long": 5}}, {"n": {"int": 5}}, {"n": {"double": 1.0}}, {"n": None}]
    status, answer = produce(
        node, "nums", {"value_schema_id": schema_id, "records": [{"value": v} for v in values]}
    )
    assert status == 200, answer
    fetched = fetch(node, "nums", "&decode=avro")
    assert [r["value"] for r in fetched] == values
    raw = [base64.b64decode(r["value_b64"]) for r in fetch(node, "nums", "&encoding=base64")]
    assert raw[0] != raw[1]  # the long branch and the int branch are different bytes
