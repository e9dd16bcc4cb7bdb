"""The history checker of partition-tolerance runs: Jepsen-style, pure (no IO except `load_history`).

Theory of operation
-------------------
A chaos run records a history, one event a line (history.jsonl), in time order: producers' sends
(`invoke`, then one `ok`/`fail`/`info` completion each, paired by (process, value)), consumers' `assign`
and `poll` events, the nemesis' fault windows (`start`/`stop`), and after healing one or more
`final-read` views of every partition (each view reads one partition from its log start to its end).

`check(history)` reads the history once into plain tables, then judges them:

- sends: each invoke paired with its completion; an invoke with no completion counts as `info`
  (outcome unknown). A value is *acknowledged* at (partition, offset) by every `ok` completion.
- places: every (partition, offset) -> every value some ack, poll or final view put there.
- final views per partition: offset -> value, with the view's log start offset.

and looks for the anomalies below. Each is counted once per thing named in its definition and keeps its
first `EXAMPLES_MAX` examples, with the values, partitions, offsets, processes and times involved.

- lost: an acknowledged (p, o, v) where some final view of p (o at or above that view's log start) does
  not hold v at o, and no final view holds v anywhere else (else it is `moved`). A partition with no
  final view at all cannot vouch for its acks: they count as lost. One count per value.
- moved: as `lost`, but v is somewhere else in the final views (another offset or partition).
- duplicated: one value at two or more distinct (p, o) places within the final views, or within the
  polls, or within the acks (idempotence broken). One count per value.
- inconsistent: one (p, o) holding two or more different values across acks, polls and final views
  (two final views disagreeing at one offset count here too). One count per (p, o).
- unexpected: a value read (poll or final view) that no send ever carried. One count per value.
- failed-but-present: a value read somewhere whose every send completed with `fail`. One per value.
- vanished-read: (beyond the brief's list) a (p, o) a consumer polled, so it was below the high
  watermark, where some final view of p (o at or above its log start) holds no record at all. A
  different record there is `inconsistent` instead. One count per polled (p, o).
- non-monotonic: a consumer's poll of partition p at an offset <= the previous one it read in p, with p
  assigned all along. Every `assign` event resets the expectation of every partition it lists (a
  consumer may restart from a committed offset, even re-read). One count per backward step.
- skipped: consecutive polled offsets o1 < o2 of one consumer in p (assigned all along) with o2 > o1 + 1
  where some final view holds a record strictly between them, at or above its log start. A gap over
  offsets no final view holds (below the log start, or compacted) is not a skip. One count per jump.
- divergent-final-reads: two final views of one partition that differ at an offset in their common
  range [max(log starts), min(ends)) (a different value, or a record in one and none in the other;
  a view's end is its last offset + 1). One count per pair of views.

Reads of a partition a consumer does not own (after it has seen an `assign`) are not checked for order;
they are counted. A consumer that never had an `assign` is checked on everything it reads.

Availability: the whole run, and for each nemesis window (a start to the next stop of the same fault; a
start of a fault already open merges its targets into that window; a window never stopped lasts to the
end) the span "during" it, [start, stop), and "after" it, [stop, next window start or end of run]. A
send belongs to the span its completion falls in (an unfinished send completes, as `info`, at the end of
the run, which is the last event's t). Latency = completion t - invoke t of `ok` sends, percentiles by
nearest rank (p50 of [1, 2, 3, 4] is 2).
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

EXAMPLES_MAX = 5  # examples kept per anomaly: enough to start debugging, small enough to read
SOURCES_MAX = 3  # who-saw-it entries kept per (place, value) in the inconsistent examples
GAP_OFFSETS_SHOWN_MAX = 10  # skipped offsets listed in one skipped example

ANOMALIES = (
    "lost",
    "moved",
    "duplicated",
    "inconsistent",
    "unexpected",
    "failed-but-present",
    "vanished-read",
    "non-monotonic",
    "skipped",
    "divergent-final-reads",
)

_ABSENT = object()
_VIEW_FIELDS = {
    "t",
    "type",
    "f",
    "process",
    "partition",
    "records",
    "log_start_offset",
    "high_watermark",
    "view",
}


@dataclass
class _Send:
    process: str
    value: Any
    invoke_t: float | None  # None: a completion with no invoke before it
    outcome: str = "info"  # "ok" | "fail" | "info"; stays "info" if it never completes
    complete_t: float | None = None  # None: never completed
    partition: int | None = None
    offset: int | None = None
    error: str | None = None


@dataclass
class _View:
    """One final read of one partition: offset -> value from its log start to its end."""

    index: int  # position among all final-read events, in history order
    label: Any  # the event's "view" field (e.g. "node-2-disk"), else `index`
    partition: int
    t: float
    process: str | None
    log_start: int
    high_watermark: int | None
    records: dict[int, Any]
    offsets: list[int]  # sorted
    extra: dict[str, Any]  # any other field of the event (e.g. which node served it)

    @property
    def end(self) -> int:
        return self.offsets[-1] + 1 if self.offsets else self.log_start

    def describe(self) -> dict[str, Any]:
        described = {
            "view": self.label,
            "t": self.t,
            "process": self.process,
            "log_start_offset": self.log_start,
            "high_watermark": self.high_watermark,
        }
        return described | self.extra

    def holds(self, offset: int) -> bool:
        return offset >= self.log_start and offset in self.records

    def held_between(self, low: int, high: int) -> list[int]:
        """Offsets strictly between low and high that this view holds at or above its log start."""
        i = bisect.bisect_right(self.offsets, max(low, self.log_start - 1))
        j = bisect.bisect_left(self.offsets, high)
        return self.offsets[i:j]


@dataclass
class _Anomalies:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ANOMALIES, 0))
    examples: dict[str, list[dict]] = field(default_factory=lambda: {name: [] for name in ANOMALIES})

    def add(self, name: str, example: dict) -> None:
        self.counts[name] += 1
        if len(self.examples[name]) < EXAMPLES_MAX:
            self.examples[name].append(example)

    def as_dict(self) -> dict[str, dict]:
        return {name: {"count": self.counts[name], "examples": self.examples[name]} for name in ANOMALIES}


def _value_key(value: Any) -> Any:
    """A hashable stand-in for a value: JSON lists and objects become their canonical JSON text."""
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True)
    return value


def _require(event: dict, index: int, *names: str) -> None:
    for name in names:
        if name not in event:
            raise ValueError(f"history event {index} has no {name!r}: {event!r}")


class _History:
    """The history read once into tables; no judgement yet."""

    def __init__(self, history: list[dict]):
        self.sends: list[_Send] = []
        self.sends_by_value: dict[Any, list[_Send]] = defaultdict(list)
        self.views: list[_View] = []
        self.views_by_partition: dict[int, list[_View]] = defaultdict(list)
        # value -> (p, o) -> who read it there
        self.poll_places: dict[Any, dict[tuple[int, int], list[dict]]] = defaultdict(dict)
        self.final_places: dict[Any, dict[tuple[int, int], list[Any]]] = defaultdict(dict)
        # (p, o) -> value -> first few sources
        self.places: dict[tuple[int, int], dict[Any, list[dict]]] = defaultdict(dict)
        self.consumer_events: list[tuple[int, dict]] = []  # assign and poll events, in order
        self.nemesis_events: list[dict] = []
        self.poll_records = 0
        self.ignored_events = 0
        self.completions_without_invoke = 0
        self.end_t = 0.0
        self._read(history)

    def _read(self, history: list[dict]) -> None:
        in_flight: dict[tuple[str, Any], deque[_Send]] = defaultdict(deque)
        for index, event in enumerate(history):
            _require(event, index, "t", "type")
            self.end_t = max(self.end_t, float(event["t"]))
            kind, f = event["type"], event.get("f")
            if kind == "nemesis":
                _require(event, index, "f", "fault")
                self.nemesis_events.append(event)
            elif f == "send":
                _require(event, index, "process", "value")
                self._read_send(index, event, in_flight)
            elif kind == "ok" and f in ("poll", "assign"):
                _require(event, index, "process", "records" if f == "poll" else "partitions")
                self.consumer_events.append((index, event))
                if f == "poll":
                    self._read_poll(event)
            elif kind == "ok" and f == "final-read":
                _require(event, index, "partition", "records")
                self._read_final(event)
            else:
                self.ignored_events += 1
        for queue in in_flight.values():
            for send in queue:
                send.outcome = "info"  # never completed: may or may not be written

    def _read_send(self, index: int, event: dict, in_flight: dict[tuple[str, Any], deque[_Send]]) -> None:
        value = _value_key(event["value"])
        key = (event["process"], value)
        kind = event["type"]
        if kind == "invoke":
            send = _Send(event["process"], value, float(event["t"]))
            self.sends.append(send)
            self.sends_by_value[value].append(send)
            in_flight[key].append(send)
            return
        if kind not in ("ok", "fail", "info"):
            self.ignored_events += 1
            return
        if in_flight[key]:
            send = in_flight[key].popleft()
        else:
            self.completions_without_invoke += 1
            send = _Send(event["process"], value, None)
            self.sends.append(send)
            self.sends_by_value[value].append(send)
        send.outcome = kind
        send.complete_t = float(event["t"])
        send.error = event.get("error")
        if kind == "ok":
            _require(event, index, "partition", "offset")
            send.partition, send.offset = int(event["partition"]), int(event["offset"])
            self._place(
                (send.partition, send.offset),
                value,
                {"source": "ack", "process": send.process, "t": send.complete_t},
            )

    def _read_poll(self, event: dict) -> None:
        process, t = event["process"], float(event["t"])
        for partition, offset, raw in event["records"]:
            value, place = _value_key(raw), (int(partition), int(offset))
            self.poll_records += 1
            self.poll_places[value].setdefault(place, []).append({"process": process, "t": t})
            self._place(place, value, {"source": "poll", "process": process, "t": t})

    def _read_final(self, event: dict) -> None:
        partition = int(event["partition"])
        records: dict[int, Any] = {}
        view_index = len(self.views)
        label = event.get("view", view_index)
        for offset, raw in event["records"]:
            value, offset = _value_key(raw), int(offset)
            records.setdefault(offset, value)
            self.final_places[value].setdefault((partition, offset), []).append(label)
            self._place(
                (partition, offset),
                value,
                {"source": "final-read", "view": label, "t": float(event["t"])},
            )
        view = _View(
            index=view_index,
            label=label,
            partition=partition,
            t=float(event["t"]),
            process=event.get("process"),
            log_start=int(event.get("log_start_offset", 0)),
            high_watermark=event.get("high_watermark"),
            records=records,
            offsets=sorted(records),
            extra={k: v for k, v in event.items() if k not in _VIEW_FIELDS},
        )
        self.views.append(view)
        self.views_by_partition[partition].append(view)

    def _place(self, place: tuple[int, int], value: Any, source: dict) -> None:
        sources = self.places[place].setdefault(value, [])
        if len(sources) < SOURCES_MAX:
            sources.append(source)

    def where_read(self, value: Any) -> dict[str, list]:
        return {
            "polled_at": [
                [p, o, seen[0]["process"], seen[0]["t"]]
                for (p, o), seen in self.poll_places.get(value, {}).items()
            ],
            "final_read_at": [[p, o, views] for (p, o), views in self.final_places.get(value, {}).items()],
        }


def _check_acks_and_polls_against_final(h: _History, found: _Anomalies, counts: dict) -> None:
    """lost, moved (acks) and vanished-read (polls): what was claimed must be in every final view."""
    reported: set[tuple[str, Any]] = set()
    for send in h.sends:
        if send.outcome != "ok":
            continue
        assert send.partition is not None and send.offset is not None, "an ok send has its place"
        place = (send.partition, send.offset)
        views = h.views_by_partition.get(send.partition, [])
        missing: list[dict] = []
        present: list[dict] = []
        for view in views:
            if send.offset < view.log_start:
                counts["acked_below_log_start"] += 1
                continue
            there = view.records.get(send.offset, _ABSENT)
            if there == send.value:
                present.append(view.describe())
            else:
                missing.append(view.describe() | {"found": None if there is _ABSENT else there})
        if not views:
            missing.append({"reason": f"no final read of partition {send.partition}"})
        if not missing:
            continue
        elsewhere = sorted(set(h.final_places.get(send.value, {})) - {place})
        name = "moved" if elsewhere else "lost"
        if (name, send.value) in reported:
            continue
        reported.add((name, send.value))
        example = {
            "value": send.value,
            "partition": send.partition,
            "offset": send.offset,
            "process": send.process,
            "invoke_t": send.invoke_t,
            "ack_t": send.complete_t,
            "missing_from_views": missing,
            "present_in_views": present,
        }
        if elsewhere:
            example["found_at"] = [[p, o, h.final_places[send.value][(p, o)]] for p, o in elsewhere]
        found.add(name, example)

    polled: dict[tuple[int, int], tuple[Any, dict]] = {}
    for value, places in h.poll_places.items():
        for place, seen in places.items():
            polled.setdefault(place, (value, seen[0]))
    for (partition, offset), (value, seen) in sorted(polled.items()):
        views = h.views_by_partition.get(partition, [])
        empty = [view.describe() for view in views if offset >= view.log_start and offset not in view.records]
        if not views:
            empty.append({"reason": f"no final read of partition {partition}"})
        if empty:
            found.add(
                "vanished-read",
                {
                    "partition": partition,
                    "offset": offset,
                    "value": value,
                    "process": seen["process"],
                    "t": seen["t"],
                    "empty_in_views": empty,
                },
            )


def _check_places(h: _History, found: _Anomalies) -> None:
    """duplicated (one value, many places) and inconsistent (one place, many values)."""
    ack_places: dict[Any, set[tuple[int, int]]] = defaultdict(set)
    for send in h.sends:
        if send.outcome == "ok":
            ack_places[send.value].add((send.partition, send.offset))
    values = dict.fromkeys([*h.final_places, *h.poll_places, *ack_places])
    for value in values:
        final = h.final_places.get(value, {})
        polls = h.poll_places.get(value, {})
        acks = ack_places.get(value, set())
        if len(final) > 1 or len(polls) > 1 or len(acks) > 1:
            found.add(
                "duplicated",
                {
                    "value": value,
                    "final_read_at": [[p, o, views] for (p, o), views in sorted(final.items())],
                    "polled_at": [
                        [p, o, seen[0]["process"], seen[0]["t"]] for (p, o), seen in sorted(polls.items())
                    ],
                    "acked_at": [[p, o] for p, o in sorted(acks)],
                },
            )
    for (partition, offset), by_value in sorted(h.places.items()):
        if len(by_value) > 1:
            found.add(
                "inconsistent",
                {
                    "partition": partition,
                    "offset": offset,
                    "values": [{"value": value, "seen_by": sources} for value, sources in by_value.items()],
                },
            )


def _check_values(h: _History, found: _Anomalies) -> None:
    """unexpected (read, never sent) and failed-but-present (read, every send failed)."""
    for value in [*h.poll_places, *(v for v in h.final_places if v not in h.poll_places)]:
        sends = h.sends_by_value.get(value)
        if not sends:
            found.add("unexpected", {"value": value, **h.where_read(value)})
        elif all(send.outcome == "fail" for send in sends):
            found.add(
                "failed-but-present",
                {
                    "value": value,
                    "sends": [
                        {
                            "process": s.process,
                            "invoke_t": s.invoke_t,
                            "fail_t": s.complete_t,
                            "error": s.error,
                        }
                        for s in sends
                    ],
                    **h.where_read(value),
                },
            )


def _check_consumers(h: _History, found: _Anomalies, counts: dict) -> None:
    """non-monotonic and skipped: each consumer's reads of each partition while it stays assigned."""
    assigned: dict[str, set[int] | None] = defaultdict(lambda: None)
    last: dict[str, dict[int, tuple[int, float, Any]]] = defaultdict(dict)
    for _index, event in h.consumer_events:
        process, t = event["process"], float(event["t"])
        if event["f"] == "assign":
            assigned[process] = {int(p) for p in event["partitions"]}
            last[process] = {}  # revoked partitions are forgotten, (re)assigned ones may start anywhere
            continue
        for partition, offset, raw in event["records"]:
            partition, offset, value = int(partition), int(offset), _value_key(raw)
            owned = assigned[process]
            if owned is not None and partition not in owned:
                counts["reads_outside_assignment"] += 1
                continue
            previous = last[process].get(partition)
            last[process][partition] = (offset, t, value)
            if previous is None:
                continue
            prev_offset, prev_t, prev_value = previous
            step = {
                "process": process,
                "partition": partition,
                "previous": {"offset": prev_offset, "value": prev_value, "t": prev_t},
                "next": {"offset": offset, "value": value, "t": t},
            }
            if offset <= prev_offset:
                found.add("non-monotonic", step)
            elif offset > prev_offset + 1:
                held: dict[int, Any] = {}
                for view in h.views_by_partition.get(partition, []):
                    for skipped in view.held_between(prev_offset, offset):
                        held.setdefault(skipped, view.records[skipped])
                if held:
                    shown = sorted(held)[:GAP_OFFSETS_SHOWN_MAX]
                    found.add(
                        "skipped",
                        step | {"skipped_count": len(held), "skipped": [[o, held[o]] for o in shown]},
                    )


def _check_final_views(h: _History, found: _Anomalies) -> None:
    """divergent-final-reads: every pair of views of one partition must agree on their common range."""
    for partition, views in sorted(h.views_by_partition.items()):
        for i, a in enumerate(views):
            for b in views[i + 1 :]:
                low, high = max(a.log_start, b.log_start), min(a.end, b.end)
                offsets = sorted({o for o in (*a.offsets, *b.offsets) if low <= o < high})
                differing = [o for o in offsets if a.records.get(o, _ABSENT) != b.records.get(o, _ABSENT)]
                if differing:
                    found.add(
                        "divergent-final-reads",
                        {
                            "partition": partition,
                            "views": [a.describe(), b.describe()],
                            "common_range": [low, high],
                            "differing_count": len(differing),
                            "differing": [
                                {"offset": o, "a": a.records.get(o), "b": b.records.get(o)}
                                for o in differing[:EXAMPLES_MAX]
                            ],
                        },
                    )


def _percentile(sorted_values: list[float], percent: int) -> float | None:
    """Nearest rank: the smallest value with at least `percent`% of the values at or below it."""
    if not sorted_values:
        return None
    rank = max(1, (percent * len(sorted_values) + 99) // 100)
    return sorted_values[rank - 1]


def _span(h: _History, low: float, high: float, *, closed: bool) -> dict[str, Any]:
    """Availability of the sends completed in [low, high) (or [low, high] when `closed`)."""
    attempts = ok = fail = info = 0
    latencies: list[float] = []
    for send in h.sends:
        done_t = h.end_t if send.complete_t is None else send.complete_t
        if done_t < low or done_t > high or (done_t == high and not closed):
            continue
        attempts += 1
        if send.outcome == "ok":
            ok += 1
            if send.invoke_t is not None:
                latencies.append(round(done_t - send.invoke_t, 6))
        elif send.outcome == "fail":
            fail += 1
        else:
            info += 1
    latencies.sort()
    return {
        "from": low,
        "to": high,
        "attempts": attempts,
        "ok": ok,
        "fail": fail,
        "info": info,
        "errors": fail + info,
        "error_rate": (fail + info) / attempts if attempts else None,
        "latency_s": {
            "p50": _percentile(latencies, 50),
            "p99": _percentile(latencies, 99),
            "max": latencies[-1] if latencies else None,
        },
    }


def _windows(h: _History) -> list[dict[str, Any]]:
    """Fault windows from the nemesis events: a start to the next stop of the same fault."""
    windows: list[dict[str, Any]] = []
    open_by_fault: dict[str, dict[str, Any]] = {}
    for event in h.nemesis_events:
        fault, targets = event["fault"], event.get("targets", [])
        if event["f"] == "start":
            if fault in open_by_fault:  # already open: one window, more targets
                window_targets = open_by_fault[fault]["targets"]
                window_targets.extend(x for x in targets if x not in window_targets)
                continue
            window = {"fault": fault, "targets": list(targets), "start": float(event["t"]), "stop": None}
            open_by_fault[fault] = window
            windows.append(window)
        elif event["f"] == "stop" and fault in open_by_fault:
            open_by_fault.pop(fault)["stop"] = float(event["t"])
    return windows


def _availability(h: _History) -> dict[str, Any]:
    result: dict[str, Any] = {"run": _span(h, 0.0, h.end_t, closed=True), "windows": []}
    windows = _windows(h)
    for window in windows:
        stop = window["stop"]
        entry = dict(window)
        if stop is None:
            entry["during"] = _span(h, window["start"], h.end_t, closed=True)
            entry["after"] = None
        else:
            entry["during"] = _span(h, window["start"], stop, closed=False)
            later = [w["start"] for w in windows if w["start"] >= stop]
            if later:
                entry["after"] = _span(h, stop, min(later), closed=False)
            else:
                entry["after"] = _span(h, stop, max(stop, h.end_t), closed=True)
        result["windows"].append(entry)
    return result


def _counts(h: _History) -> dict[str, Any]:
    outcomes = {"ok": 0, "fail": 0, "info": 0}
    for send in h.sends:
        outcomes[send.outcome] += 1
    unknown_present = unknown_absent = 0
    for value, sends in h.sends_by_value.items():
        if any(s.outcome == "info" for s in sends) and not any(s.outcome == "ok" for s in sends):
            if value in h.final_places:
                unknown_present += 1
            else:
                unknown_absent += 1
    return {
        "sends": {
            "invoked": sum(1 for s in h.sends if s.invoke_t is not None),
            **outcomes,
            "unfinished": sum(1 for s in h.sends if s.complete_t is None),
            "completions_without_invoke": h.completions_without_invoke,
        },
        "values": {
            "sent": len(h.sends_by_value),
            "acked": sum(1 for sends in h.sends_by_value.values() if any(s.outcome == "ok" for s in sends)),
            "polled": len(h.poll_places),
            "final_read": len(h.final_places),
        },
        "poll_records": h.poll_records,
        "final_records": {
            str(p): max(len(v.records) for v in views) for p, views in sorted(h.views_by_partition.items())
        },
        "final_views": {str(p): len(views) for p, views in sorted(h.views_by_partition.items())},
        "unknown_outcomes": {"present": unknown_present, "absent": unknown_absent},
        "acked_below_log_start": 0,
        "reads_outside_assignment": 0,
        "ignored_events": h.ignored_events,
    }


def check(history: list[dict]) -> dict[str, Any]:
    """Judge a chaos run's history: {"valid", "anomalies", "counts", "availability"} (JSON-serializable).

    Raises ValueError on an event missing a field the checker needs (bad input, not an anomaly).
    """
    h = _History(history)
    found = _Anomalies()
    counts = _counts(h)
    _check_acks_and_polls_against_final(h, found, counts)
    _check_places(h, found)
    _check_values(h, found)
    _check_consumers(h, found, counts)
    _check_final_views(h, found)
    return {
        "valid": not any(found.counts.values()),
        "anomalies": found.as_dict(),
        "counts": counts,
        "availability": _availability(h),
    }


def load_history(path: str) -> list[dict]:
    """The events of a history.jsonl file, one JSON object a line (blank lines skipped)."""
    events = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not JSON: {e}") from e
            if not isinstance(event, dict):
                raise ValueError(f"{path}:{number}: not a JSON object")
            events.append(event)
    return events


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _span_row(label: str, span: dict[str, Any] | None) -> str:
    if span is None:
        return f"  {label:<28} (none)"
    lat = span["latency_s"]
    rate = "-" if span["error_rate"] is None else f"{span['error_rate']:.1%}"
    return (
        f"  {label:<28} {_fmt(span['from'], 1):>7}-{_fmt(span['to'], 1):<7} {span['attempts']:>7} {span['ok']:>7}"
        f" {span['errors']:>7} {rate:>7} {_fmt(lat['p50']):>8} {_fmt(lat['p99']):>8} {_fmt(lat['max']):>8}"
    )


def summarize(verdict: dict[str, Any]) -> str:
    """A short readable account of a verdict: validity, anomalies with examples, counts, availability."""
    lines = [f"valid: {verdict['valid']}"]
    anomalies = verdict["anomalies"]
    present = [name for name in anomalies if anomalies[name]["count"]]
    lines.append("anomalies: " + (", ".join(f"{n}={anomalies[n]['count']}" for n in present) or "none"))
    for name in present:
        lines.append(f"  {name}: {anomalies[name]['count']}")
        for example in anomalies[name]["examples"][:2]:
            lines.append(f"    e.g. {json.dumps(example, default=str)[:300]}")
    c = verdict["counts"]
    s = c["sends"]
    lines.append(
        f"sends: {s['invoked']} invoked, {s['ok']} ok, {s['fail']} fail, {s['info']} info"
        f" ({s['unfinished']} unfinished)"
    )
    v = c["values"]
    lines.append(
        f"values: {v['sent']} sent, {v['acked']} acked, {v['polled']} polled ({c['poll_records']} poll records),"
        f" {v['final_read']} in final reads"
    )
    lines.append(
        "final records per partition: "
        + (
            ", ".join(f"p{p}={n} ({c['final_views'][p]} views)" for p, n in c["final_records"].items())
            or "none"
        )
    )
    u = c["unknown_outcomes"]
    lines.append(f"unknown outcomes: {u['present']} present, {u['absent']} absent in the final reads")
    lines.append("availability:")
    lines.append(
        f"  {'span':<28} {'from-to (s)':^15} {'sends':>7} {'ok':>7} {'errors':>7} {'err%':>7}"
        f" {'p50 s':>8} {'p99 s':>8} {'max s':>8}"
    )
    a = verdict["availability"]
    lines.append(_span_row("whole run", a["run"]))
    for i, w in enumerate(a["windows"]):
        label = f"#{i} {w['fault']} {w['targets']}"
        lines.append(_span_row(f"{label} during"[:28], w["during"]))
        lines.append(_span_row(f"{label} after"[:28], w["after"]))
    return "\n".join(lines)
