"""The chaos history checker (raftka/chaos/checker.py): crafted histories, one anomaly each, and a property.

Every crafted history starts from one clean history and changes one thing; the test states the full
anomaly counts it expects, so an anomaly that fires where it should not fails the test as surely as one
that stays silent. The property test builds random valid histories (a log per partition, acks of some of
its values, consumers reading contiguous ranges, final reads equal to the logs), checks that they pass,
then corrupts one and checks that the matching anomaly is found.
"""

from __future__ import annotations

import copy
import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftka.chaos.checker import ANOMALIES, check, load_history, summarize


def invoke(t, process, value):
    return {"t": t, "type": "invoke", "f": "send", "process": process, "value": value}


def ok(t, process, value, partition, offset):
    return {
        "t": t,
        "type": "ok",
        "f": "send",
        "process": process,
        "value": value,
        "partition": partition,
        "offset": offset,
    }


def fail(t, process, value):
    return {"t": t, "type": "fail", "f": "send", "process": process, "value": value, "error": "refused"}


def info(t, process, value):
    return {"t": t, "type": "info", "f": "send", "process": process, "value": value, "error": "timeout"}


def assign(t, process, partitions):
    return {"t": t, "type": "ok", "f": "assign", "process": process, "partitions": partitions}


def poll(t, process, records):
    return {"t": t, "type": "ok", "f": "poll", "process": process, "records": records}


def final(t, partition, records, log_start=0, **extra):
    end = records[-1][0] + 1 if records else log_start
    return {
        "t": t,
        "type": "ok",
        "f": "final-read",
        "process": "final",
        "partition": partition,
        "records": records,
        "log_start_offset": log_start,
        "high_watermark": end,
        **extra,
    }


def nemesis(t, f, fault, targets):
    return {"t": t, "type": "nemesis", "f": f, "fault": fault, "targets": targets}


# The clean history. Partition 0 holds a0 a1 u a2, partition 1 holds b0 b1; u and b1 were sent with an
# unknown outcome (info) and are present, x (info) and f (fail) are absent. Consumer c1 owns both
# partitions and reads offsets 0 and 1 of each.
P0 = [[0, "a0"], [1, "a1"], [2, "u"], [3, "a2"]]
P1 = [[0, "b0"], [1, "b1"]]
POLLS = [poll(6.0, "c1", [[0, 0, "a0"], [1, 0, "b0"]]), poll(7.0, "c1", [[0, 1, "a1"], [1, 1, "b1"]])]


def history(*, p0=P0, p1=P1, p0_log_start=0, polls=POLLS, extra_finals=(), extra=()):
    events = [
        invoke(0.1, "p1", "a0"),
        invoke(0.2, "p2", "b0"),
        ok(0.4, "p1", "a0", 0, 0),
        invoke(0.5, "p1", "a1"),
        ok(0.6, "p2", "b0", 1, 0),
        invoke(0.7, "p2", "u"),
        ok(0.9, "p1", "a1", 0, 1),
        assign(1.0, "c1", [0, 1]),
        invoke(1.1, "p2", "b1"),
        invoke(1.2, "p2", "x"),
        invoke(1.3, "p1", "f"),
        info(2.0, "p2", "u"),
        invoke(2.1, "p1", "a2"),
        fail(2.2, "p1", "f"),
        ok(2.5, "p1", "a2", 0, 3),
        info(3.0, "p2", "b1"),
        info(3.1, "p2", "x"),
        *polls,
        *extra,
        final(10.0, 0, p0, log_start=p0_log_start),
        final(10.0, 1, p1),
        *extra_finals,
    ]
    return sorted(events, key=lambda e: e["t"])


def anomaly_counts(verdict):
    return {name: entry["count"] for name, entry in verdict["anomalies"].items()}


def expect_only(verdict, **expected):
    wanted = {name: 0 for name in ANOMALIES} | {name.replace("_", "-"): n for name, n in expected.items()}
    assert anomaly_counts(verdict) == wanted
    assert verdict["valid"] is (not expected)
    json.dumps(verdict)  # the verdict goes to verdict.json as it is


def test_clean_history_is_valid():
    verdict = check(history())
    expect_only(verdict)
    counts = verdict["counts"]
    assert counts["sends"] == {
        "invoked": 8,
        "ok": 4,
        "fail": 1,
        "info": 3,
        "unfinished": 0,
        "completions_without_invoke": 0,
    }
    assert counts["values"] == {"sent": 8, "acked": 4, "polled": 4, "final_read": 6}
    assert counts["poll_records"] == 4
    assert counts["final_records"] == {"0": 4, "1": 2}
    assert counts["unknown_outcomes"] == {"present": 2, "absent": 1}
    assert "valid: True" in summarize(verdict)


def _case(name, expected, example, **changes):
    return pytest.param(changes, expected, example, id=name)


CASES = [
    _case(
        "lost",
        {"lost": 1},
        {"value": "a2", "partition": 0, "offset": 3, "process": "p1", "ack_t": 2.5},
        p0=P0[:3],  # the acked a2 at offset 3 is gone (the log was cut)
    ),
    _case(
        "moved",
        {"moved": 1},
        {"value": "a2", "partition": 0, "offset": 3, "found_at": [[1, 2, [1]]]},
        p0=P0[:3],
        p1=[*P1, [2, "a2"]],
    ),
    _case(
        "duplicated",
        {"duplicated": 1},
        {"value": "a0", "final_read_at": [[0, 0, [0]], [1, 2, [1]]], "acked_at": [[0, 0]]},
        p1=[*P1, [2, "a0"]],
    ),
    _case(
        "inconsistent",
        {"inconsistent": 1},
        {"partition": 0, "offset": 1},
        polls=[POLLS[0], poll(7.0, "c1", [[0, 1, "x"], [1, 1, "b1"]])],  # x was never written there
    ),
    _case(
        "unexpected",
        {"unexpected": 1},
        {"value": "ghost", "final_read_at": [[1, 2, [1]]]},
        p1=[*P1, [2, "ghost"]],
    ),
    _case(
        "failed-but-present",
        {"failed_but_present": 1},
        {"value": "f", "final_read_at": [[1, 2, [1]]]},
        p1=[*P1, [2, "f"]],
    ),
    _case(
        "vanished-read",
        {"vanished_read": 1},
        {"partition": 1, "offset": 1, "value": "b1", "process": "c1", "t": 7.0},
        p1=P1[:1],  # c1 read b1 at offset 1, then it was gone
    ),
    _case(
        "non-monotonic",
        {"non_monotonic": 1},
        {"process": "c1", "partition": 0, "previous": {"offset": 1, "value": "a1", "t": 7.0}},
        extra=[poll(8.0, "c1", [[0, 0, "a0"]])],  # back to 0 with partition 0 assigned all along
    ),
    _case(
        "skipped",
        {"skipped": 1},
        {"process": "c1", "partition": 0, "skipped_count": 1, "skipped": [[1, "a1"]]},
        polls=[POLLS[0], poll(7.0, "c1", [[0, 2, "u"], [1, 1, "b1"]])],  # 0 then 2: a1 never read
    ),
    _case(
        "divergent-final-reads",
        {"divergent_final_reads": 1},
        {"partition": 0, "common_range": [0, 4], "differing": [{"offset": 2, "a": "u", "b": None}]},
        extra_finals=[final(10.5, 0, [P0[0], P0[1], P0[3]], view="node-2-disk")],  # a hole where u was
    ),
    _case(
        "divergent-final-reads-values",
        {"divergent_final_reads": 1, "inconsistent": 1},
        {"partition": 0, "differing_count": 1, "differing": [{"offset": 2, "a": "u", "b": "x"}]},
        extra_finals=[final(10.5, 0, [P0[0], P0[1], [2, "x"], P0[3]])],
    ),
]


@pytest.mark.parametrize(("changes", "expected", "example"), CASES)
def test_each_anomaly_alone(changes, expected, example):
    verdict = check(history(**changes))
    expect_only(verdict, **expected)
    name = next(iter(expected)).replace("_", "-")
    first = verdict["anomalies"][name]["examples"][0]
    assert first | example == first, first  # the example names what is wrong, and where
    summary = summarize(verdict)
    assert "valid: False" in summary
    assert f"{name}=1" in summary


def test_lost_names_the_view_that_lacks_it():
    # Two views of partition 0: the API's has a2, node 3's disk lacks it. Every view must have it.
    verdict = check(history(extra_finals=[final(10.5, 0, P0[:3], view="node-3-disk")]))
    expect_only(verdict, lost=1)
    example = verdict["anomalies"]["lost"]["examples"][0]
    assert [v["view"] for v in example["missing_from_views"]] == ["node-3-disk"]
    assert example["missing_from_views"][0]["found"] is None
    assert [v["view"] for v in example["present_in_views"]] == [0]


def test_acked_offset_holding_another_value_is_lost_and_inconsistent():
    verdict = check(history(p0=[*P0[:3], [3, "x"]]))
    expect_only(verdict, lost=1, inconsistent=1)
    assert verdict["anomalies"]["lost"]["examples"][0]["missing_from_views"][0]["found"] == "x"


def test_duplicated_by_polls():
    # c1 reads a0 at (0, 0) and again at (1, 2), where the final read has nothing: a duplicate read and
    # a read that vanished.
    verdict = check(history(extra=[poll(8.0, "c1", [[1, 2, "a0"]])]))
    expect_only(verdict, duplicated=1, vanished_read=1)
    assert verdict["anomalies"]["duplicated"]["examples"][0]["polled_at"] == [
        [0, 0, "c1", 6.0],
        [1, 2, "c1", 8.0],
    ]


def test_no_final_read_of_a_partition_cannot_vouch_for_its_acks():
    events = [e for e in history() if not (e["f"] == "final-read" and e["partition"] == 1)]
    verdict = check(events)
    expect_only(verdict, lost=1, vanished_read=2)
    assert verdict["anomalies"]["lost"]["examples"][0]["missing_from_views"] == [
        {"reason": "no final read of partition 1"}
    ]


def test_unknown_outcomes_are_not_anomalies_present_or_absent():
    # u and b1 (info) are present, x (info) is absent; y is invoked and never completes (info) and is
    # present, z likewise and absent.
    events = history(p1=[*P1, [2, "y"]], extra=[invoke(4.0, "p3", "y"), invoke(4.1, "p3", "z")])
    verdict = check(events)
    expect_only(verdict)
    assert verdict["counts"]["unknown_outcomes"] == {"present": 3, "absent": 2}
    assert verdict["counts"]["sends"]["unfinished"] == 2
    assert verdict["counts"]["sends"]["info"] == 5


def test_a_send_that_failed_once_and_was_retried_may_be_present():
    events = history(p1=[*P1, [2, "f"]], extra=[invoke(4.0, "p1", "f"), ok(4.5, "p1", "f", 1, 2)])
    expect_only(check(events))


def test_rereading_after_a_reassignment_is_not_non_monotonic():
    rereads = [
        assign(7.5, "c1", [1]),  # partition 0 revoked ...
        assign(7.6, "c1", [0, 1]),  # ... and back: it may start again at the committed offset
        poll(8.0, "c1", [[0, 0, "a0"], [0, 1, "a1"], [0, 2, "u"]]),
        assign(9.0, "c1", [0, 1]),  # a restart: the same set again
        poll(9.5, "c1", [[0, 1, "a1"], [1, 0, "b0"]]),
    ]
    expect_only(check(history(extra=rereads)))


def test_a_reread_after_a_restart_then_a_backward_step_is_non_monotonic():
    rereads = [assign(9.0, "c1", [0, 1]), poll(9.5, "c1", [[0, 1, "a1"], [0, 0, "a0"]])]
    expect_only(check(history(extra=rereads)), non_monotonic=1)


def test_reads_of_a_partition_not_owned_are_counted_not_checked():
    # batches fetched before the revocation, delivered after it (out of order, even)
    extra = [assign(7.5, "c1", [1]), poll(8.0, "c1", [[0, 1, "a1"], [0, 0, "a0"]])]
    verdict = check(history(extra=extra))
    expect_only(verdict)
    assert verdict["counts"]["reads_outside_assignment"] == 2


def test_reads_below_the_log_start_are_not_skips():
    # Retention moved partition 0's log start to 2: c1 read offset 0, then went on at 2.
    polls = [POLLS[0], poll(7.0, "c1", [[0, 2, "u"], [1, 1, "b1"]])]
    verdict = check(history(p0=P0[2:], p0_log_start=2, polls=polls))
    expect_only(verdict)
    assert verdict["counts"]["acked_below_log_start"] == 2  # a0 and a1: deleted, not lost


def test_gap_over_offsets_no_view_holds_is_not_a_skip():
    # Offset 1 of partition 0 holds nothing in the final read (compacted): reading 0 then 2 is fine.
    # a1 is acked at 1, so the hole is also a lost write; the point here is that it is not a skip.
    polls = [POLLS[0], poll(7.0, "c1", [[0, 2, "u"], [1, 1, "b1"]])]
    verdict = check(history(p0=[P0[0], P0[2], P0[3]], polls=polls))
    expect_only(verdict, lost=1)


def test_availability_by_hand():
    # One kill window [2, 5). Latencies of ok sends: s1 0.5, s2 0.2, s5 0.8 (during), s9 0.5 (completes
    # at the stop: after), s6 0.5, s7 0.1. s3 info and s4 fail during; s8 never completes (info at the
    # end of the run, t = 7).
    events = [
        invoke(0.0, "p1", "s1"),
        ok(0.5, "p1", "s1", 0, 0),
        invoke(1.0, "p1", "s2"),
        ok(1.2, "p1", "s2", 0, 1),
        nemesis(2.0, "start", "kill", [2]),
        invoke(2.5, "p1", "s3"),
        invoke(3.0, "p2", "s4"),
        fail(3.1, "p2", "s4"),
        invoke(3.2, "p2", "s5"),
        info(3.5, "p1", "s3"),
        ok(4.0, "p2", "s5", 0, 2),
        invoke(4.5, "p1", "s9"),
        nemesis(5.0, "stop", "kill", [2]),
        ok(5.0, "p1", "s9", 0, 3),
        invoke(5.5, "p1", "s6"),
        invoke(6.0, "p2", "s7"),
        ok(6.0, "p1", "s6", 0, 4),
        ok(6.1, "p2", "s7", 0, 5),
        invoke(6.5, "p2", "s8"),
        final(7.0, 0, [[0, "s1"], [1, "s2"], [2, "s5"], [3, "s9"], [4, "s6"], [5, "s7"]]),
    ]
    verdict = check(events)
    expect_only(verdict)
    availability = verdict["availability"]

    def figures(span):
        lat = span["latency_s"]
        return (
            span["from"],
            span["to"],
            span["attempts"],
            span["ok"],
            span["fail"],
            span["info"],
            span["errors"],
            span["error_rate"],
            lat["p50"],
            lat["p99"],
            lat["max"],
        )

    assert figures(availability["run"]) == pytest.approx((0.0, 7.0, 9, 6, 1, 2, 3, 3 / 9, 0.5, 0.8, 0.8))
    [window] = availability["windows"]
    assert (window["fault"], window["targets"], window["start"], window["stop"]) == ("kill", [2], 2.0, 5.0)
    assert figures(window["during"]) == pytest.approx((2.0, 5.0, 3, 1, 1, 1, 2, 2 / 3, 0.8, 0.8, 0.8))
    assert figures(window["after"]) == pytest.approx((5.0, 7.0, 4, 3, 0, 1, 1, 1 / 4, 0.5, 0.5, 0.5))
    summary = summarize(verdict)
    assert "kill [2] during" in summary
    assert "33.3%" in summary


def test_windows_after_ends_at_the_next_start_and_an_unstopped_window_lasts_to_the_end():
    events = [
        nemesis(1.0, "start", "kill", [1]),
        nemesis(2.0, "stop", "kill", [1]),
        nemesis(3.0, "start", "pause", [2]),
        nemesis(3.5, "start", "pause", [3]),  # already open: same window, one more target
        invoke(3.6, "p1", "v"),
        ok(3.8, "p1", "v", 0, 0),
        final(9.0, 0, [[0, "v"]]),
    ]
    first, second = check(events)["availability"]["windows"]
    assert (first["after"]["from"], first["after"]["to"], first["after"]["attempts"]) == (2.0, 3.0, 0)
    assert first["after"]["error_rate"] is None
    assert first["after"]["latency_s"] == {"p50": None, "p99": None, "max": None}
    assert (second["targets"], second["stop"], second["after"]) == ([2, 3], None, None)
    assert (second["during"]["from"], second["during"]["to"], second["during"]["ok"]) == (3.0, 9.0, 1)


def test_load_history(tmp_path):
    path = tmp_path / "history.jsonl"
    events = history()
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n\n")
    assert load_history(str(path)) == events
    path.write_text(json.dumps(events[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"history.jsonl:2"):
        load_history(str(path))


def test_an_event_without_a_needed_field_is_refused():
    with pytest.raises(ValueError, match="'partition'"):
        check([invoke(0.0, "p1", "v"), {"t": 1.0, "type": "ok", "f": "send", "process": "p1", "value": "v"}])


# ---- property: random valid histories pass; one corruption is caught -------------------------------


@st.composite
def valid_histories(draw):
    """(events, logs, acked places) of a random valid run."""
    numbers = itertools.count()
    partitions = draw(st.integers(1, 3))
    logs = {p: [] for p in range(partitions)}
    sends = []  # (process, value, outcome, place)
    for p in range(partitions):
        for offset in range(draw(st.integers(0, 6))):
            process = draw(st.sampled_from(["p0", "p1"]))
            value = f"{process}-{next(numbers)}"
            logs[p].append(value)
            outcome = draw(st.sampled_from(["ok", "ok", "info", "unfinished"]))
            sends.append((process, value, outcome, (p, offset)))
    for _ in range(draw(st.integers(0, 3))):  # sends that never made it
        process = draw(st.sampled_from(["p0", "p1"]))
        sends.append((process, f"{process}-{next(numbers)}", draw(st.sampled_from(["fail", "info"])), None))
    order = draw(st.permutations(range(len(sends))))
    events = []
    for i, k in enumerate(order):
        process, value, outcome, place = sends[k]
        t = 0.1 * i
        events.append(invoke(t, process, value))
        done = t + draw(st.floats(0.01, 2.0))
        if outcome == "ok":
            events.append(ok(done, process, value, *place))
        elif outcome == "fail":
            events.append(fail(done, process, value))
        elif outcome == "info":
            events.append(info(done, process, value))
    owners = {p: draw(st.sampled_from(["c0", "c1"])) for p in range(partitions)}
    for consumer in ("c0", "c1"):
        events.append(assign(0.0, consumer, sorted(p for p, c in owners.items() if c == consumer)))
    t = 100.0
    for p, log in logs.items():
        low = draw(st.integers(0, len(log)))
        high = draw(st.integers(low, len(log)))
        reread_from = draw(st.none() | st.integers(0, high))
        ranges = [(low, high)] if reread_from is None else [(low, high), (reread_from, high)]
        for k, (a, b) in enumerate(ranges):
            if k:  # a restart: the same assignment again, then reading on from a committed offset
                events.append(assign(t, owners[p], sorted(q for q, c in owners.items() if c == owners[p])))
            offsets = list(range(a, b))
            while offsets:
                size = draw(st.integers(1, 3))
                events.append(poll(t, owners[p], [[p, o, log[o]] for o in offsets[:size]]))
                offsets, t = offsets[size:], t + 1
    for p, log in logs.items():
        for view in range(draw(st.integers(1, 2))):
            events.append(final(200.0, p, [[o, v] for o, v in enumerate(log)], view=f"v{view}"))
    acked = [place for _, _, outcome, place in sends if outcome == "ok"]
    return sorted(events, key=lambda e: e["t"]), logs, acked


def _finals(events, partition=None):
    return [e for e in events if e["f"] == "final-read" and partition in (None, e["partition"])]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_histories(), st.data())
def test_random_valid_histories_pass_and_one_corruption_is_caught(run, data):
    events, logs, acked = run
    verdict = check(events)
    assert verdict["valid"], summarize(verdict)
    assert all(n == 0 for n in anomaly_counts(verdict).values())

    places = [(p, o) for p, log in logs.items() for o in range(len(log))]
    feasible = ["unknown"]
    if acked:
        feasible.append("drop-acked")
    if places:
        feasible.append("duplicate")
    if acked and len(places) >= 2:
        feasible.append("swap")
    corruption = data.draw(st.sampled_from(feasible))
    events = copy.deepcopy(events)
    if corruption == "drop-acked":
        p, o = data.draw(st.sampled_from(acked))
        for view in _finals(events, p):
            view["records"] = [r for r in view["records"] if r[0] != o]
        expected = "lost"
    elif corruption == "duplicate":
        p, o = data.draw(st.sampled_from(places))
        q = data.draw(st.sampled_from(sorted(logs)))
        for view in _finals(events, q):
            view["records"].append([len(logs[q]), logs[p][o]])
        expected = "duplicated"
    elif corruption == "swap":
        a = data.draw(st.sampled_from(acked))
        b = data.draw(st.sampled_from([place for place in places if place != a]))
        value_a, value_b = logs[a[0]][a[1]], logs[b[0]][b[1]]
        for view in _finals(events):
            for record in view["records"]:
                if (view["partition"], record[0]) == a:
                    record[1] = value_b
                elif (view["partition"], record[0]) == b:
                    record[1] = value_a
        expected = "moved"
    else:
        p = data.draw(st.sampled_from(sorted(logs)))
        if data.draw(st.booleans()):
            for view in _finals(events, p):
                view["records"].append([len(logs[p]), "ghost"])
        else:
            events.append(poll(150.0, "c9", [[p, data.draw(st.integers(0, 10)), "ghost"]]))
        expected = "unexpected"
    verdict = check(events)
    assert not verdict["valid"]
    assert verdict["anomalies"][expected]["count"] >= 1, (corruption, anomaly_counts(verdict))
