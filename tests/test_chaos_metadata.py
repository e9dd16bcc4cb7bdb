"""The metadata workload's check (raftka/chaos/metadata.py): every acknowledged topic change holds."""

from __future__ import annotations

import pytest

from raftka.chaos.metadata import DEFAULT_RETENTION_MS, check_metadata, possible_final_states

T = "m0-0"


def op(kind: str, name: str, t: float, value: int | None = None, code: int | None = None) -> dict:
    event = {"t": t, "type": kind, "f": "metadata", "process": "m0", "op": name, "topic": T}
    if value is not None:
        event["value"] = value
    if code is not None:
        event["error_code"] = code
    return event


def final(exists: bool, retention_ms: int | None = None) -> dict:
    return {
        "t": 99.0,
        "type": "ok",
        "f": "metadata-final",
        "topics": {T: {"exists": exists, "retention_ms": retention_ms}},
    }


CASES = [
    ("acked create holds", [op("ok", "create", 1)], final(True, DEFAULT_RETENTION_MS), True),
    ("acked create lost", [op("ok", "create", 1)], final(False), False),
    ("unknown create applied", [op("info", "create", 1)], final(True, DEFAULT_RETENTION_MS), True),
    ("unknown create not applied", [op("info", "create", 1)], final(False), True),
    ("acked alter holds", [op("ok", "create", 1), op("ok", "alter", 2, 5)], final(True, 5), True),
    (
        "acked alter lost",
        [op("ok", "create", 1), op("ok", "alter", 2, 5)],
        final(True, DEFAULT_RETENTION_MS),
        False,
    ),
    (
        "unknown alter either way",
        [op("ok", "create", 1), op("info", "alter", 2, 5)],
        final(True, DEFAULT_RETENTION_MS),
        True,
    ),
    ("a value nobody set", [op("ok", "create", 1), op("info", "alter", 2, 5)], final(True, 6), False),
    (
        "later acked alter wins",
        [op("ok", "create", 1), op("ok", "alter", 2, 5), op("ok", "alter", 3, 6)],
        final(True, 6),
        True,
    ),
    (
        "an older value comes back",
        [op("ok", "create", 1), op("ok", "alter", 2, 5), op("ok", "alter", 3, 6)],
        final(True, 5),
        False,
    ),
    ("acked delete holds", [op("ok", "create", 1), op("ok", "delete", 2)], final(False), True),
    (
        "acked delete undone",
        [op("ok", "create", 1), op("ok", "delete", 2)],
        final(True, DEFAULT_RETENTION_MS),
        False,
    ),
    ("refused create of an absent name", [op("fail", "create", 1, code=50303)], final(False), True),
    (
        "refused create, yet present",
        [op("fail", "create", 1, code=42201)],
        final(True, DEFAULT_RETENTION_MS),
        False,
    ),
    ("acked alter of an absent topic", [op("ok", "alter", 1, 5)], final(True, 5), False),
    # A link held the create back past its 50303; the next operation, through another node, found no
    # topic; then the create reached the controller (a CI run's history, seed 11, link-half-open).
    (
        "unknown create lands after a refused alter",
        [op("info", "create", 18.29, code=50303), op("fail", "alter", 18.35, 86400039, code=40401)],
        final(True, DEFAULT_RETENTION_MS),
        True,
    ),
    (
        "unknown alter lands after a later acked one",
        [op("ok", "create", 1), op("info", "alter", 2, 5), op("ok", "alter", 3, 6)],
        final(True, 5),
        True,
    ),
    (
        "an unknown create takes effect once",
        [op("info", "create", 1), op("ok", "delete", 2)],
        final(True, DEFAULT_RETENTION_MS),
        False,
    ),
    (
        "an unknown alter cannot bring back a deleted topic",
        [op("ok", "create", 1), op("info", "alter", 2, 5), op("ok", "delete", 3)],
        final(True, 5),
        False,
    ),
]


@pytest.mark.parametrize(("case", "ops", "end", "valid"), CASES, ids=[c[0] for c in CASES])
def test_metadata_check(case, ops, end, valid):
    verdict = check_metadata([*ops, end])
    assert verdict["valid"] is valid, verdict
    assert verdict["anomaly_count"] == (0 if valid else 1)
    if not valid:
        assert verdict["anomalies"][0]["topic"] == T and verdict["anomalies"][0]["ops"], verdict


def test_possible_states_follow_the_operations_in_order():
    ops = [op("ok", "create", 1), op("info", "alter", 2, 5), op("info", "delete", 3)]
    assert possible_final_states(ops) == {
        ("present", DEFAULT_RETENTION_MS),
        ("present", 5),
        ("absent", None),
    }


def test_a_missing_final_read_is_an_anomaly():
    verdict = check_metadata([op("ok", "create", 1)])
    assert not verdict["valid"] and "metadata-final" in verdict["anomalies"][0]["problem"]
