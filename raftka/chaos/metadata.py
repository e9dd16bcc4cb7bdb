"""The metadata workload of a partition-tolerance experiment, and its check: topic creates, config
changes and deletes against the controller while the nemesis kills and pauses nodes; afterwards every
acknowledged change must hold.

Workload: each process owns its own topic names (`m<n>-<i>`, never reused) and works on them one
operation at a time, through a random node (any node forwards to the active controller): create a
topic (1 partition, replication factor 1), set its `retention.ms` to a value never used before, or
delete it. Each operation is recorded as `invoke`, then `ok` (2xx), `fail` (a definite refusal, 4xx:
nothing changed) or `info` (no answer, a timeout, 5xx: it may or may not have been applied; 50303
says "it may still apply"). After healing, `metadata-final` records which of the names exist and
their `retention.ms`.

Check: the operations on one name come from one process, one at a time, so they are totally ordered.
Starting from "absent", each operation in order narrows or widens the set of states the name can be
in (a state is absent, or present with a retention value): an `ok` must have been legal in the state
it applied to and leaves its effect; a `fail` must have been refused there (a create of a name that
exists, a change or delete of one that does not) or the refusal was for another reason (kept as is);
an `info` may have applied at its place, at any later point, or not at all: its request may reach
the controller after requests sent later (a link that held it back delivers it once it heals, and
the next operation may go through another node), so it counts as concurrent with everything after
it, and takes effect at most once. The final state must be one of the possible states; otherwise an
acknowledged change was lost or something no one asked for happened, an anomaly reported with the
name's operations.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from typing import Any

from raftka.chaos.workload import EventLog
from storage.config import LogConfig

ABSENT = ("absent", None)
DEFAULT_RETENTION_MS = LogConfig().retention_ms  # what a topic created without configs shows
REQUEST_TIMEOUT_S = 10


def metadata_main(*args) -> None:
    """A metadata process's entry point; the arguments are `_run`'s."""
    _run(*args)


def _run(number: int, addresses: list[str], out: str, started_at: float, stop: str, seed: int) -> None:
    process = f"m{number}"
    events = EventLog(os.path.join(out, f"events-{process}.jsonl"), started_at)
    rng = random.Random(seed * 1000 + number)
    live: list[str] = []  # names this process believes may exist
    created = 0
    value = 0
    try:
        while not os.path.exists(stop):
            roll = rng.random()
            if not live or roll < 0.4:
                name = f"{process}-{created}"
                created += 1
                op = {"op": "create", "topic": name}
                live.append(name)
            elif roll < 0.8:
                value += 1
                op = {
                    "op": "alter",
                    "topic": rng.choice(live),
                    "value": 86_400_000 + number * 1_000_000 + value,
                }
            else:
                name = live.pop(rng.randrange(len(live)))
                op = {"op": "delete", "topic": name}
            events.write(type="invoke", f="metadata", process=process, **op)
            kind, detail = _apply(rng.choice(addresses), op)
            events.write(type=kind, f="metadata", process=process, **op, **detail)
            time.sleep(0.05)
    finally:
        events.close()


def _apply(address: str, op: dict) -> tuple[str, dict]:
    """(ok | fail | info, details) of one operation."""
    base = f"http://{address}/v1/topics"
    if op["op"] == "create":
        request = _request(base, "POST", {"name": op["topic"], "partitions": 1, "replication_factor": 1})
    elif op["op"] == "alter":
        request = _request(f"{base}/{op['topic']}", "PATCH", {"configs": {"retention.ms": str(op["value"])}})
    else:
        request = _request(f"{base}/{op['topic']}", "DELETE", None)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            response.read()
            return "ok", {}
    except urllib.error.HTTPError as exc:
        try:
            code = json.loads(exc.read()).get("error_code")
        except (ValueError, AttributeError):
            code = None
        if 400 <= exc.code < 500:
            return "fail", {"error_code": code}
        return "info", {"error_code": code}
    except (OSError, ValueError) as exc:
        return "info", {"error": type(exc).__name__}


def _request(url: str, method: str, body: dict | None) -> urllib.request.Request:
    data = None if body is None else json.dumps(body).encode()
    return urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})


def final_state(address: str, names: list[str]) -> dict[str, Any]:
    """name -> {"exists": bool, "retention_ms": int | None} for each name, read through `address`
    (`retention.ms` as the topic shows it: its own value, or the default)."""
    with urllib.request.urlopen(f"http://{address}/v1/topics", timeout=30) as response:
        listed = json.loads(response.read())
    present = {t["name"] for t in listed["topics"]}
    out: dict[str, Any] = {}
    for name in names:
        if name not in present:
            out[name] = {"exists": False, "retention_ms": None}
            continue
        with urllib.request.urlopen(f"http://{address}/v1/topics/{name}", timeout=30) as response:
            described = json.loads(response.read())
        out[name] = {"exists": True, "retention_ms": int(described["configs"]["retention.ms"])}
    return out


# -- the check (pure) ------------------------------------------------------------------------------------


def _step(state: tuple, op: dict) -> tuple | None:
    """The state after `op` applied to `state`, or None when the controller would refuse it there."""
    present = state[0] == "present"
    if op["op"] == "create":
        return None if present else ("present", DEFAULT_RETENTION_MS)
    if op["op"] == "alter":
        return ("present", op["value"]) if present else None
    return ABSENT if present else None


def possible_final_states(ops: list[dict]) -> set[tuple]:
    """The states a name can end in, given its completed operations in order (see the module notes).

    A world is (state, the `info` operations that may still take effect); before each operation and
    before the final read, any of those may take effect, each at most once."""
    worlds: set[tuple[tuple, frozenset[int]]] = {(ABSENT, frozenset())}
    for index, op in enumerate(ops):
        worlds = _with_late_effects(worlds, ops)
        if op["type"] == "ok":
            worlds = {(new, pending) for state, pending in worlds if (new := _step(state, op)) is not None}
        elif op["type"] == "fail":
            refused_here = {world for world in worlds if _step(world[0], op) is None}
            worlds = refused_here or worlds  # a refusal for another reason leaves the state as it was
        else:  # info: takes effect at its place, later, or never
            later = {(state, pending | {index}) for state, pending in worlds}
            now = {(new, pending) for state, pending in worlds if (new := _step(state, op)) is not None}
            worlds = later | now
        if not worlds:
            return set()
    return {state for state, _ in _with_late_effects(worlds, ops)}


def _with_late_effects(worlds: set, ops: list[dict]) -> set:
    """`worlds` and every world reached by pending `info` operations taking effect now, in any order
    (one the controller would refuse there changes nothing and is settled)."""
    seen = set(worlds)
    todo = list(worlds)
    while todo:
        state, pending = todo.pop()
        for index in pending:
            after = _step(state, ops[index])
            world = (state if after is None else after, pending - {index})
            if world not in seen:
                seen.add(world)
                todo.append(world)
    return seen


def check_metadata(history: list[dict]) -> dict[str, Any]:
    """{"valid", "anomalies": [...], "counts"} for the metadata operations of a history."""
    ops_by_name: dict[str, list[dict]] = {}
    counts = {"invoke": 0, "ok": 0, "fail": 0, "info": 0}
    final: dict[str, Any] | None = None
    for event in history:
        if event.get("f") == "metadata":
            counts[event["type"]] = counts.get(event["type"], 0) + 1
            if event["type"] != "invoke":
                ops_by_name.setdefault(event["topic"], []).append(event)
        elif event.get("f") == "metadata-final":
            final = event["topics"]
    anomalies = []
    if ops_by_name and final is None:
        anomalies.append({"topic": None, "problem": "no metadata-final event: the final state was not read"})
    for name, ops in sorted(ops_by_name.items()):
        if final is None:
            break
        seen = final.get(name)
        observed = ABSENT if not seen or not seen["exists"] else ("present", seen["retention_ms"])
        possible = possible_final_states(ops)
        if observed not in possible:
            anomalies.append(
                {
                    "topic": name,
                    "observed": list(observed),
                    "possible": sorted([list(s) for s in possible], key=str),
                    "ops": [[o["t"], o["type"], o["op"], o.get("value"), o.get("error_code")] for o in ops],
                }
            )
    return {
        "valid": not anomalies,
        "anomalies": anomalies[:20],
        "anomaly_count": len(anomalies),
        "counts": counts,
    }
