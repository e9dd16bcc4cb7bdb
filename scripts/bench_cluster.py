#!/usr/bin/env python3
"""Metadata propagation and failover times of a real cluster: prints figures, never a timed test.

The benchmark starts a `LocalCluster` of 3 controllers and 1 broker-only node on 127.0.0.1 (free
ports, a fresh data directory under data/bench-cluster, removed at the end unless --keep; every
process is killed at the end) with the node's default heartbeat and session settings, and measures
through the HTTP API, from this one client process:

1. metadata propagation: a topic is created (POST /v1/topics) on each node in turn while every node
   is polled (GET /v1/topics/{name}, about every 2 ms, all nodes at once); per topic, the time from
   the start of the create request until the last node answers 200, and the create request itself;
2. controller failover: kill -9 of the active controller, then the time until a survivor reports a
   new controller with a higher controller epoch, and until a topic can be created through a
   survivor again;
3. partition leader failover: kill -9 of a broker that is not the active controller (the broker-only
   node and a standby controller, in turns) that leads partitions of a fresh topic (8 partitions,
   replication factor 3), then the time until every partition it led has another leader, as every
   survivor's GET /v1/topics/{name} shows it.

Between rounds the killed node is restarted, and the next round waits until every node is ready,
every broker active, every Raft connection up (pysyncobj's own status, over its admin command with
the cluster's password) and the controller and its epoch unchanged for 2 s; each restart prints how
long that took and whether the controller changed meanwhile. The first-seen times are when the
answer arrived, so they include one poll (about 1-2 ms here) on top of the moment the change became
visible.

    .venv/bin/python scripts/bench_cluster.py [--topics 100] [--rounds 5]
        [--heartbeat-interval-ms 1000] [--session-timeout-ms 6000] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time

import aiohttp
import orjson
from pysyncobj.utility import TcpUtility, UtilityException

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from node.config import NodeConfig  # noqa: E402
from raftka.local_cluster import LocalCluster, LocalNode  # noqa: E402
from tests.nodeproc import free_port  # noqa: E402

CONTROLLERS = 3
BROKERS = 1  # broker-only nodes
POLL_INTERVAL_S = 0.002  # between one answer and the next request of a poller
REQUEST_TIMEOUT_S = 15.0  # above the node's 10 s propose timeout, so its own error comes back
VISIBLE_TIMEOUT_S = 10.0  # a topic not seen everywhere by then counts as a failure
FAILOVER_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 90.0  # a restarted node: replay, catch up, register, be unfenced
STABLE_S = 2.0  # settled means unchanged this long: above the 1.4 s Raft election timeout
PROPAGATION_GOAL_MS = 100.0
CONTROLLER_FAILOVER_GOAL_S = 2.0
LEADER_FAILOVER_MARGIN_S = 1.0  # the leader failover goal is the session timeout plus this
LEADER_PARTITIONS = 8
LEADER_REPLICATION = 3


class Unreachable(Exception):
    pass


async def call(
    session: aiohttp.ClientSession,
    node: LocalNode,
    method: str,
    path: str,
    body: dict | None = None,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> tuple[int, dict]:
    """(status, decoded body); Unreachable when the node does not answer (killed, timeout)."""
    data = None if body is None else orjson.dumps(body)
    try:
        async with session.request(
            method,
            f"{node.url}{path}",
            data=data,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            raw = await response.read()
            return response.status, orjson.loads(raw) if raw else {}
    except (TimeoutError, aiohttp.ClientError, OSError, orjson.JSONDecodeError) as exc:
        raise Unreachable(f"node {node.node_id}: {type(exc).__name__}: {exc}") from None


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def spread(values: list[float], unit: str, scale: float = 1.0, decimals: int = 1) -> str:
    if not values:
        return "-"
    v = [x * scale for x in values]
    return (
        f"p50 {statistics.median(v):.{decimals}f} {unit}, p99 {percentile(v, 0.99):.{decimals}f} {unit}, "
        f"max {max(v):.{decimals}f} {unit}"
    )


def raft_fully_connected(cluster: LocalCluster, password: str) -> bool:
    """Every voter connected to every other voter and to every broker-only node, by pysyncobj's own
    status (its admin command on the Raft port). A node can be ready while a connection is still
    missing: only the peer with the higher address dials, and it retries every 5 s."""
    voters = [n for n in cluster.nodes if n.is_controller]
    readonly = len(cluster.nodes) - len(voters)
    for node in voters:
        try:
            status = TcpUtility(password, timeout=2.0).executeCommand(
                f"127.0.0.1:{node.raft_port}", ["status"]
            )
        except UtilityException:
            return False
        if not isinstance(status, dict):
            return False
        peers = [v for k, v in status.items() if k.startswith("partner_node_status_server_")]
        followers = [v for k, v in status.items() if k.startswith("readonly_node_status_server_")]
        if len(peers) != len(voters) - 1 or len(followers) != readonly:
            return False
        if any(v != 2 for v in peers + followers):
            return False
    return True


async def settled_view(session: aiohttp.ClientSession, cluster: LocalCluster, password: str) -> dict | None:
    """The cluster view when every node agrees on one controller, every broker is active and the
    Raft connections are complete; else None."""
    try:
        views = [(await call(session, n, "GET", "/v1/cluster", timeout_s=2.0))[1] for n in cluster.nodes]
    except Unreachable:
        return None
    controllers = {(v.get("controller_id"), v.get("controller_epoch")) for v in views}
    statuses = {b["id"]: b["status"] for b in views[0].get("brokers", [])}
    if (
        len(controllers) != 1
        or views[0]["controller_id"] < 0
        or len(statuses) != len(cluster.nodes)
        or set(statuses.values()) != {"active"}
    ):
        return None
    if not await asyncio.to_thread(raft_fully_connected, cluster, password):
        return None
    return views[0]


async def wait_settled(session: aiohttp.ClientSession, cluster: LocalCluster, password: str) -> dict:
    """Wait until every node is ready, `settled_view` holds and the controller and its epoch have
    not changed for STABLE_S; the view, with `settled_at`: the perf_counter when that began."""
    started = time.perf_counter()
    await asyncio.to_thread(cluster.wait_ready, SETTLE_TIMEOUT_S)
    stable: tuple | None = None
    stable_since = 0.0
    while time.perf_counter() - started < SETTLE_TIMEOUT_S:
        view = await settled_view(session, cluster, password)
        key = None if view is None else (view["controller_id"], view["controller_epoch"])
        if key is None or key != stable:
            stable, stable_since = key, time.perf_counter()
        elif time.perf_counter() - stable_since >= STABLE_S:
            return {**view, "settled_at": stable_since}
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the cluster did not settle in {SETTLE_TIMEOUT_S:.0f} s (last: {stable!r})")


async def restart(
    session: aiohttp.ClientSession, cluster: LocalCluster, password: str, node: LocalNode, before: dict
) -> dict:
    """Start the killed `node` again and wait until the cluster settles; print what it took, and
    whether the controller changed meanwhile (`before` is the view after the failover)."""
    started = time.perf_counter()
    node.start()
    await asyncio.to_thread(cluster.wait_ready, SETTLE_TIMEOUT_S, [node])
    ready_s = time.perf_counter() - started
    view = await wait_settled(session, cluster, password)
    changed = (view["controller_id"], view["controller_epoch"]) != (
        before["controller_id"],
        before["controller_epoch"],
    )
    note = (
        f"; meanwhile controller {before['controller_id']} (epoch {before['controller_epoch']}) -> "
        f"{view['controller_id']} (epoch {view['controller_epoch']})"
        if changed
        else ""
    )
    print(
        f"      node {node.node_id} restarted: ready after {ready_s:.1f} s, cluster settled (all active, "
        f"Raft fully connected) after {view['settled_at'] - started:.1f} s{note}"
    )
    return view


# -- 1. metadata propagation -----------------------------------------------------------------------


async def first_seen(
    session: aiohttp.ClientSession, node: LocalNode, path: str, started: float
) -> float | None:
    """Seconds from `started` until `node` answers `path` with 200; None after VISIBLE_TIMEOUT_S."""
    while time.perf_counter() - started < VISIBLE_TIMEOUT_S:
        try:
            status, _ = await call(session, node, "GET", path, timeout_s=VISIBLE_TIMEOUT_S)
        except Unreachable:
            status = None
        if status == 200:
            return time.perf_counter() - started
        await asyncio.sleep(POLL_INTERVAL_S)
    return None


async def timed_create(
    session: aiohttp.ClientSession, node: LocalNode, name: str, started: float
) -> tuple[int, dict, float]:
    """POST /v1/topics: (status, body, seconds from `started` to the answer)."""
    status, body = await call(session, node, "POST", "/v1/topics", {"name": name})
    return status, body, time.perf_counter() - started


async def measure_propagation(session: aiohttp.ClientSession, cluster: LocalCluster, topics: int) -> dict:
    creates: list[float] = []
    everywhere: list[float] = []
    per_node: dict[int, list[float]] = {n.node_id: [] for n in cluster.nodes}
    created_on: dict[int, list[float]] = {n.node_id: [] for n in cluster.nodes}
    last_node: dict[int, int] = {n.node_id: 0 for n in cluster.nodes}
    failures: list[str] = []
    for i in range(topics):
        creator = cluster.nodes[i % len(cluster.nodes)]
        name = f"bench-visible-{i:04d}"
        path = f"/v1/topics/{name}"
        started = time.perf_counter()
        results = await asyncio.gather(
            timed_create(session, creator, name, started),
            *(first_seen(session, n, path, started) for n in cluster.nodes),
        )
        (status, body, create_s), seen = results[0], results[1:]
        if status != 201:
            failures.append(f"{name} on node {creator.node_id}: {status} {body}")
            continue
        missing = [n.node_id for n, s in zip(cluster.nodes, seen, strict=True) if s is None]
        if missing:
            failures.append(f"{name}: not visible on node(s) {missing} after {VISIBLE_TIMEOUT_S:.0f} s")
            continue
        creates.append(create_s)
        created_on[creator.node_id].append(create_s)
        everywhere.append(max(seen))
        for node, s in zip(cluster.nodes, seen, strict=True):
            per_node[node.node_id].append(s)
        last_node[cluster.nodes[seen.index(max(seen))].node_id] += 1
    return {
        "creates": creates,
        "everywhere": everywhere,
        "per_node": per_node,
        "created_on": created_on,
        "last_node": last_node,
        "failures": failures,
    }


def print_propagation(cluster: LocalCluster, result: dict, controller_id: int) -> None:
    print(f"  create request (201):       {spread(result['creates'], 'ms', 1000)}")
    print(f"  visible on every node:      {spread(result['everywhere'], 'ms', 1000)}")
    for node in cluster.nodes:
        kind = "broker-only" if not node.is_controller else "controller"
        kind += ", active" if node.node_id == controller_id else ""
        created = result["created_on"][node.node_id]
        median = f"{statistics.median(created) * 1000:.1f} ms" if created else "-"
        seen = spread(result["per_node"][node.node_id], "ms", 1000)
        print(
            f"    node {node.node_id} ({kind}): creates sent to it p50 {median}; first 200 {seen}; "
            f"last of the four for {result['last_node'][node.node_id]} topic(s)"
        )
    for failure in result["failures"]:
        print(f"  FAILED: {failure}")


# -- 2. controller failover ------------------------------------------------------------------------


async def wait_new_controller(
    session: aiohttp.ClientSession, survivors: list[LocalNode], old_id: int, old_epoch: int, started: float
) -> tuple[float, dict]:
    """Poll every survivor; the first view with another controller and a higher epoch."""
    found: asyncio.Future = asyncio.get_running_loop().create_future()

    async def poll(node: LocalNode) -> None:
        while not found.done():
            try:
                status, view = await call(session, node, "GET", "/v1/cluster", timeout_s=2.0)
            except Unreachable:
                status, view = None, {}
            if (
                status == 200
                and view["controller_id"] not in (old_id, -1)
                and view["controller_epoch"] > old_epoch
                and not found.done()
            ):
                found.set_result((time.perf_counter() - started, view))
            await asyncio.sleep(POLL_INTERVAL_S)

    pollers = [asyncio.create_task(poll(n)) for n in survivors]
    try:
        return await asyncio.wait_for(found, FAILOVER_TIMEOUT_S)
    finally:
        for task in pollers:
            task.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)


async def create_until_ok(
    session: aiohttp.ClientSession, node: LocalNode, name: str, started: float
) -> tuple[float, list[str]]:
    """Retry POST /v1/topics on `node` until 201 (or 409 from an earlier try that did commit)."""
    errors: list[str] = []
    while time.perf_counter() - started < FAILOVER_TIMEOUT_S:
        try:
            status, body = await call(session, node, "POST", "/v1/topics", {"name": name})
        except Unreachable as exc:
            status, body = None, {"message": str(exc)}
        if status == 201 or (status == 409 and errors):
            return time.perf_counter() - started, errors
        errors.append(f"{status} {body.get('error_code', '')} {body.get('message', body)}".strip())
        await asyncio.sleep(0.01)
    raise RuntimeError(f"no topic could be created through node {node.node_id}: {errors[-3:]}")


async def measure_controller_failover(
    session: aiohttp.ClientSession, cluster: LocalCluster, password: str, rounds: int
) -> list[dict]:
    results = []
    view = await wait_settled(session, cluster, password)
    for r in range(rounds):
        old_id, old_epoch = view["controller_id"], view["controller_epoch"]
        victim = cluster.node(old_id)
        survivors = [n for n in cluster.nodes if n is not victim]
        entry = survivors[r % len(survivors)]
        started = time.perf_counter()
        victim.kill()
        elected_s, new_view = await wait_new_controller(session, survivors, old_id, old_epoch, started)
        created_s, errors = await create_until_ok(session, entry, f"bench-failover-{r}", started)
        result = {
            "victim": old_id,
            "old_epoch": old_epoch,
            "new_id": new_view["controller_id"],
            "new_epoch": new_view["controller_epoch"],
            "elected_s": elected_s,
            "created_s": created_s,
            "entry": entry.node_id,
            "errors": errors,
        }
        results.append(result)
        distinct = sorted(set(errors), key=errors.index)
        print(
            f"  round {r + 1}: killed controller {old_id} (epoch {old_epoch}); "
            f"controller {result['new_id']} (epoch {result['new_epoch']}) seen at {elected_s:.2f} s; "
            f"topic created through node {entry.node_id} at {created_s:.2f} s "
            f"after {len(errors)} refused attempt(s)"
        )
        for error in distinct[:3]:
            print(f"      refused: {error[:160]}")
        view = await restart(session, cluster, password, victim, new_view)
    return results


# -- 3. partition leader failover ------------------------------------------------------------------


async def wait_leaders_moved(
    session: aiohttp.ClientSession,
    survivors: list[LocalNode],
    controller: LocalNode,
    topic: str,
    victim: int,
    led: list[int],
    started: float,
) -> dict:
    """Per survivor, when every partition in `led` shows a leader other than `victim` and -1; also
    when the controller's view shows the victim fenced."""
    seen: dict[int, float] = {}
    fenced: list[float] = []

    async def poll_topic(node: LocalNode) -> None:
        while time.perf_counter() - started < FAILOVER_TIMEOUT_S:
            try:
                status, body = await call(session, node, "GET", f"/v1/topics/{topic}", timeout_s=2.0)
            except Unreachable:
                status, body = None, {}
            if status == 200:
                leaders = [body["partitions"][i]["leader"] for i in led]
                if all(leader not in (victim, -1) for leader in leaders):
                    seen[node.node_id] = time.perf_counter() - started
                    return
            await asyncio.sleep(POLL_INTERVAL_S)

    async def poll_fenced() -> None:
        while time.perf_counter() - started < FAILOVER_TIMEOUT_S:
            try:
                status, view = await call(session, controller, "GET", "/v1/cluster", timeout_s=2.0)
            except Unreachable:
                status, view = None, {}
            if status == 200 and any(b["id"] == victim and b["status"] == "fenced" for b in view["brokers"]):
                fenced.append(time.perf_counter() - started)
                return
            await asyncio.sleep(POLL_INTERVAL_S)

    await asyncio.gather(poll_fenced(), *(poll_topic(n) for n in survivors))
    missing = [n.node_id for n in survivors if n.node_id not in seen]
    if missing:
        raise RuntimeError(
            f"partitions {led} of {topic} still led by {victim} or leaderless on node(s) {missing} "
            f"after {FAILOVER_TIMEOUT_S:.0f} s"
        )
    return {
        "first_s": min(seen.values()),
        "all_s": max(seen.values()),
        "fenced_s": fenced[0] if fenced else None,
    }


async def measure_leader_failover(
    session: aiohttp.ClientSession, cluster: LocalCluster, password: str, rounds: int
) -> list[dict]:
    results = []
    broker_only = [n for n in cluster.nodes if not n.is_controller]
    view = await wait_settled(session, cluster, password)
    for r in range(rounds):
        controller = cluster.node(view["controller_id"])
        standby = [n for n in cluster.nodes if n.is_controller and n is not controller]
        victim = broker_only[(r // 2) % len(broker_only)] if r % 2 == 0 else standby[(r // 2) % len(standby)]
        survivors = [n for n in cluster.nodes if n is not victim]
        topic = f"bench-leaders-{r}"
        document = {"name": topic, "partitions": LEADER_PARTITIONS, "replication_factor": LEADER_REPLICATION}
        status, body = await call(session, survivors[r % len(survivors)], "POST", "/v1/topics", document)
        if status != 201:
            raise RuntimeError(f"cannot create {topic}: {status} {body}")
        before = await wait_topic_everywhere(session, cluster.nodes, topic)
        led = [i for i, p in enumerate(before["partitions"]) if p["leader"] == victim.node_id]
        if not led:
            raise RuntimeError(f"node {victim.node_id} leads no partition of {topic}: {before['partitions']}")
        started = time.perf_counter()
        victim.kill()
        moved = await wait_leaders_moved(session, survivors, controller, topic, victim.node_id, led, started)
        _, after = await call(session, controller, "GET", f"/v1/topics/{topic}")
        new_leaders = sorted({after["partitions"][i]["leader"] for i in led})
        kind = "broker-only node" if not victim.is_controller else "standby controller"
        moved.update(victim=victim.node_id, kind=kind, led=len(led))
        results.append(moved)
        fenced = "not seen" if moved["fenced_s"] is None else f"{moved['fenced_s']:.2f} s"
        print(
            f"  round {r + 1}: killed {kind} {victim.node_id} (led {len(led)} of {LEADER_PARTITIONS}); "
            f"fenced at {fenced}; new leaders {new_leaders} on the first survivor at "
            f"{moved['first_s']:.2f} s, on all survivors at {moved['all_s']:.2f} s"
        )
        view = await restart(session, cluster, password, victim, view)
    return results


async def wait_topic_everywhere(session: aiohttp.ClientSession, nodes: list[LocalNode], topic: str) -> dict:
    """The topic as the first node describes it, once every node lists it with every partition led
    and every ISR full."""
    deadline = time.monotonic() + VISIBLE_TIMEOUT_S
    last: object = None
    while time.monotonic() < deadline:
        bodies = []
        for node in nodes:
            status, body = await call(session, node, "GET", f"/v1/topics/{topic}")
            bodies.append(body if status == 200 else None)
        last = bodies
        if all(
            b is not None
            and all(p["leader"] >= 0 and len(p["isr"]) == len(p["replicas"]) for p in b["partitions"])
            for b in bodies
        ):
            return bodies[0]
        await asyncio.sleep(0.02)
    raise RuntimeError(f"{topic} not led everywhere with full ISRs after {VISIBLE_TIMEOUT_S:.0f} s: {last}")


# -- the run ---------------------------------------------------------------------------------------


def verdict(met: bool) -> str:
    return "goal met" if met else "goal NOT met"


async def run(cluster: LocalCluster, args: argparse.Namespace) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        with open(cluster.password_file, encoding="utf-8") as handle:
            password = handle.read().strip()
        view = await wait_settled(session, cluster, password)
        print(
            f"cluster settled: controller {view['controller_id']} (epoch {view['controller_epoch']}), "
            f"Raft fully connected"
        )

        print(
            f"\n1. topic create -> visible on all {len(cluster.nodes)} nodes "
            f"({args.topics} topics, creates rotate over the nodes)"
        )
        phase_started = time.perf_counter()
        propagation = await measure_propagation(session, cluster, args.topics)
        print_propagation(cluster, propagation, view["controller_id"])
        print(f"  ({time.perf_counter() - phase_started:.1f} s)")

        print(f"\n2. controller failover after kill -9 of the active controller ({args.rounds} rounds)")
        phase_started = time.perf_counter()
        controller = await measure_controller_failover(session, cluster, password, args.rounds)
        elected = [r["elected_s"] for r in controller]
        created = [r["created_s"] for r in controller]
        print(f"  new controller seen:  p50 {statistics.median(elected):.2f} s, max {max(elected):.2f} s")
        print(f"  topic create works:   p50 {statistics.median(created):.2f} s, max {max(created):.2f} s")
        print(f"  ({time.perf_counter() - phase_started:.1f} s)")

        print(
            f"\n3. partition leader failover after kill -9 of a broker that is not the controller "
            f"({args.rounds} rounds, {LEADER_PARTITIONS} partitions x {LEADER_REPLICATION} replicas)"
        )
        phase_started = time.perf_counter()
        leaders = await measure_leader_failover(session, cluster, password, args.rounds)
        moved = [r["all_s"] for r in leaders]
        print(
            f"  leaders moved (all survivors): p50 {statistics.median(moved):.2f} s, max {max(moved):.2f} s"
        )
        print(f"  ({time.perf_counter() - phase_started:.1f} s)")

    leader_goal_s = args.session_timeout_ms / 1000 + LEADER_FAILOVER_MARGIN_S
    everywhere = propagation["everywhere"]
    visible_p99_ms = percentile(everywhere, 0.99) * 1000 if everywhere else float("inf")
    propagation_ok = visible_p99_ms < PROPAGATION_GOAL_MS and not propagation["failures"]
    print(f"\nsummary (load average {os.getloadavg()[0]:.2f} at the end)")
    print(
        f"  topic visible on every node: p99 {visible_p99_ms:.1f} ms, "
        f"max {max(everywhere, default=0) * 1000:.1f} ms "
        f"(goal: p99 < {PROPAGATION_GOAL_MS:.0f} ms, no failure): {verdict(propagation_ok)}"
    )
    controller_ok = max(created) < CONTROLLER_FAILOVER_GOAL_S
    print(
        f"  controller failover: max {max(created):.2f} s until a topic create works "
        f"(goal: every round < {CONTROLLER_FAILOVER_GOAL_S:.0f} s): {verdict(controller_ok)}"
    )
    print(
        f"  partition leader failover: max {max(moved):.2f} s "
        f"(goal: every round < session timeout {args.session_timeout_ms / 1000:.1f} s + "
        f"{LEADER_FAILOVER_MARGIN_S:.0f} s = {leader_goal_s:.1f} s): {verdict(max(moved) < leader_goal_s)}"
    )


def main() -> None:
    defaults = NodeConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topics", type=int, default=100, help="topics created for the propagation figure")
    parser.add_argument("--rounds", type=int, default=5, help="kills per failover figure")
    parser.add_argument(
        "--heartbeat-interval-ms",
        type=int,
        default=defaults.heartbeat_interval_ms,
        help="passed to every node (default: the node's, %(default)s)",
    )
    parser.add_argument(
        "--session-timeout-ms",
        type=int,
        default=defaults.session_timeout_ms,
        help="passed to every node (default: the node's, %(default)s)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory and node logs")
    args = parser.parse_args()
    if args.topics < 1 or args.rounds < 1:
        parser.error("--topics and --rounds must be at least 1")

    print("command: " + " ".join(["scripts/bench_cluster.py", *sys.argv[1:]]))
    load = os.getloadavg()
    print(
        f"cores: {os.cpu_count()} (usable: {len(os.sched_getaffinity(0))}), "
        f"Python {sys.version.split()[0]}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start"
    )
    print(
        f"nodes: {CONTROLLERS} controllers + {BROKERS} broker-only; "
        f"heartbeat_interval_ms={args.heartbeat_interval_ms}, session_timeout_ms={args.session_timeout_ms}, "
        f"raft election timeout {defaults.raft_election_min_ms}-{defaults.raft_election_max_ms} ms; "
        f"poll interval {POLL_INTERVAL_S * 1000:.0f} ms"
    )
    base = os.path.join(ROOT, "data", "bench-cluster")
    os.makedirs(base, exist_ok=True)
    data_dir = tempfile.mkdtemp(prefix="run-", dir=base)
    total = CONTROLLERS + BROKERS
    cluster = LocalCluster(
        data_dir,
        controllers=CONTROLLERS,
        brokers=BROKERS,
        http_ports=[free_port() for _ in range(total)],
        raft_ports=[free_port() for _ in range(CONTROLLERS)],
        extra_args=(
            "--heartbeat-interval-ms",
            str(args.heartbeat_interval_ms),
            "--session-timeout-ms",
            str(args.session_timeout_ms),
        ),
    )
    print(f"data: {data_dir}")
    started = time.perf_counter()
    try:
        cluster.start(wait_s=60)
        asyncio.run(run(cluster, args))
    except BaseException:
        cluster.print_log_tails()
        raise
    finally:
        cluster.kill()
        if args.keep:
            print(f"kept {data_dir}")
        else:
            cluster.remove_data()
            with contextlib.suppress(OSError):
                os.rmdir(base)  # only when no other run's directory is left in it
    print(f"total time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
