"""`raftka drain`: hand a node's partition leaderships to other in-sync replicas before it stops.

The Kubernetes StatefulSet (k8s/) runs it as the pod's preStop hook, in the pod, against its own
node (`--node 127.0.0.1:9092`); the kubelet sends SIGTERM only when it returns. See
docs/kubernetes.md.

Theory of operation
-------------------
1. Ask the node who it is (`GET /v1/cluster`: its node id, its broker epoch and status). A node that
   is not registered, or fenced, leads nothing: done.
2. Wait for catching-up replicas (at most `in_sync_wait_s`): while a partition with a replica on this
   node has another replica whose broker is active but not in the ISR (a pod that restarted a moment
   ago and is still fetching), stopping this node could take the partition below
   min.insync.replicas. During a rolling upgrade this is the pod restarted just before: the
   StatefulSet waits for it to be ready (admitted by the controller), this waits for its replicas to
   be back in sync. A replica of a fenced (dead) broker is not waited for.
3. Controlled shutdown: `POST /v1/internal/brokers/{id}/shutdown` (the node forwards it to the active
   controller), repeated until the controller answers that the node leads no partition another
   in-sync replica could take, or until no controller has answered for `controller_wait_s` (the
   quorum is gone: the whole StatefulSet is stopping, nothing can move). The controller marks the broker as shutting down: it leaves every ISR,
   gets no new leadership, and its /readyz says 503, so the pod leaves the client Service.
   Partitions with no other in-sync replica keep this leader until the process stops; they are
   listed.

All of it is bounded by `timeout_s`. The node's own SIGTERM handler asks the controller again (a
no-op after a complete drain), so a drain that timed out still ends in a controlled shutdown.

`catching_up` and `led_here` decide from the documents the node serves (pure); `Drain` does the HTTP.
Thread-safety: none needed (one command, one thread).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import orjson

DEFAULT_NODE = "127.0.0.1:9092"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_IN_SYNC_WAIT_S = 30.0
POLL_S = 0.5
REQUEST_TIMEOUT_S = 5.0
UNREACHABLE_ATTEMPTS = 5  # consecutive failures to reach the node before giving up (it may be gone)
# How long shutdown requests may keep failing (no controller, controller unreachable) before the drain
# gives up: a controller failover takes 1-2 s; longer means the quorum itself is gone (the whole
# StatefulSet is stopping) and nothing can move. The node's SIGTERM handler gives up the same way.
CONTROLLER_WAIT_S = 10.0


class DrainError(Exception):
    """The node cannot be asked (unreachable, or an answer that makes no sense)."""


def _brokers(cluster: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(b["id"]): b for b in cluster.get("brokers", [])}


def catching_up(cluster: dict[str, Any], topics: list[dict[str, Any]], node_id: int) -> list[str]:
    """`topic-partition` of every partition with a replica on `node_id` whose other replica is on an
    active broker but out of the ISR: stopping `node_id` now would leave it fewer in-sync replicas
    than it is about to have again."""
    brokers = _brokers(cluster)
    waiting = []
    for topic in topics:
        for partition in topic["partitions"]:
            replicas, isr = partition["replicas"], partition["isr"]
            if node_id not in replicas:
                continue
            for replica in replicas:
                broker = brokers.get(replica)
                if replica != node_id and replica not in isr and broker and broker["status"] == "active":
                    waiting.append(f"{topic['name']}-{partition['partition']}")
                    break
    return waiting


def led_here(topics: list[dict[str, Any]], node_id: int) -> list[str]:
    """`topic-partition` of every partition `node_id` leads."""
    return [
        f"{topic['name']}-{partition['partition']}"
        for topic in topics
        for partition in topic["partitions"]
        if partition["leader"] == node_id
    ]


def _names(partitions: list[str], shown: int = 5) -> str:
    more = f" (+{len(partitions) - shown} more)" if len(partitions) > shown else ""
    return ", ".join(partitions[:shown]) + more


class Drain:
    def __init__(
        self,
        node: str = DEFAULT_NODE,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        in_sync_wait_s: float = DEFAULT_IN_SYNC_WAIT_S,
        say: Callable[[str], None] = print,
        poll_s: float = POLL_S,
        controller_wait_s: float = CONTROLLER_WAIT_S,
    ):
        self.url = f"http://{node}"
        self.node = node
        self.timeout_s = timeout_s
        self.in_sync_wait_s = in_sync_wait_s
        self.say = say
        self.poll_s = poll_s
        self.controller_wait_s = controller_wait_s

    # -- HTTP ----------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, document: dict | None = None) -> tuple[int, Any]:
        """(status, parsed JSON) of one request; OSError when the node cannot be reached."""
        data = None if document is None else orjson.dumps(document)
        headers = {} if data is None else {"Content-Type": "application/json"}
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                return response.status, orjson.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                return error.code, orjson.loads(body)
            except orjson.JSONDecodeError:
                return error.code, {"message": body.decode(errors="replace")[:200]}

    def _get_ok(self, path: str, deadline: float) -> Any:
        """The answer to GET `path`, retried while the node says it is not ready or does not answer."""
        failures = 0
        last = ""
        while True:
            try:
                status, body = self._request("GET", path)
                if status == 200:
                    return body
                last = f"{status}: {body.get('message') if isinstance(body, dict) else body}"
            except OSError as exc:
                failures += 1
                last = f"cannot reach the node at {self.node}: {getattr(exc, 'reason', exc)}"
                if failures >= UNREACHABLE_ATTEMPTS:
                    raise DrainError(last) from None
            if time.monotonic() + self.poll_s > deadline:
                raise DrainError(f"GET {path}: {last}")
            time.sleep(self.poll_s)

    def _topics(self, deadline: float) -> list[dict[str, Any]]:
        listing = self._get_ok("/v1/topics", deadline)
        return [self._get_ok(f"/v1/topics/{quote(t['name'], safe='')}", deadline) for t in listing["topics"]]

    # -- the steps ----------------------------------------------------------------------------------

    def run(self) -> int:
        """0 when the node leads nothing that could move (or is not serving); 1 otherwise."""
        started = time.monotonic()
        deadline = started + self.timeout_s
        try:
            cluster = self._get_ok("/v1/cluster", deadline)
            node_id = int(cluster["node_id"])
            broker = _brokers(cluster).get(node_id)
            if broker is None or broker["status"] == "fenced":
                state = "not registered" if broker is None else "fenced"
                self.say(f"node {node_id} is {state}: it leads no partition, nothing to drain")
                return 0
            if broker["status"] == "active" and self.in_sync_wait_s > 0:
                self._wait_in_sync(node_id, min(deadline, started + self.in_sync_wait_s), deadline)
            drained = self._shutdown(node_id, deadline)
            still = led_here(self._topics(deadline), node_id)
        except DrainError as exc:
            self.say(f"drain: {exc}")
            return 1
        took = time.monotonic() - started
        if not drained:
            self.say(
                f"node {node_id} not drained after {took:.1f} s ({len(still)} partition(s) led here); "
                "stopping anyway (SIGTERM asks the controller once more)"
            )
            return 1
        if still:
            self.say(
                f"node {node_id} drained in {took:.1f} s; it still leads {len(still)} partition(s) with no "
                f"other in-sync replica ({_names(still)}): they are unavailable until it is back"
            )
        else:
            self.say(f"node {node_id} drained in {took:.1f} s: it leads no partition")
        return 0

    def _wait_in_sync(self, node_id: int, until: float, deadline: float) -> None:
        announced = False
        while True:
            cluster = self._get_ok("/v1/cluster", deadline)
            waiting = catching_up(cluster, self._topics(deadline), node_id)
            if not waiting:
                if announced:
                    self.say("every replica is back in sync")
                return
            if time.monotonic() + self.poll_s > until:
                self.say(
                    f"{len(waiting)} partition(s) still have a replica catching up ({_names(waiting)}); "
                    "draining anyway"
                )
                return
            if not announced:
                self.say(
                    f"waiting for {len(waiting)} partition(s) whose other replicas are catching up "
                    f"({_names(waiting)})"
                )
                announced = True
            time.sleep(self.poll_s)

    def _shutdown(self, node_id: int, deadline: float) -> bool:
        """True once the controller answers that nothing movable is led here."""
        last = ""
        answered = time.monotonic()  # when the controller last answered
        while True:
            cluster = self._get_ok("/v1/cluster", deadline)
            broker = _brokers(cluster).get(node_id)
            if broker is None or broker["status"] == "fenced":
                return True  # fenced meanwhile: its leaderships were moved by the controller
            try:
                status, body = self._request(
                    "POST", f"/v1/internal/brokers/{node_id}/shutdown", {"broker_epoch": broker["epoch"]}
                )
            except OSError as exc:
                status, body = 0, {"message": f"cannot reach the node: {getattr(exc, 'reason', exc)}"}
            if status == 200:
                answered = time.monotonic()
                remaining = int(body.get("remaining_leaderships", 0))
                if remaining == 0:
                    return True
                message = f"node {node_id} still leads {remaining} partition(s) that can move"
            else:
                message = str(body.get("message") if isinstance(body, dict) else body)
            if message != last:
                self.say(message)
                last = message
            if time.monotonic() - answered > self.controller_wait_s:
                self.say(
                    f"no controller answered for {self.controller_wait_s:g} s: the quorum may be stopping"
                )
                return False
            if time.monotonic() + self.poll_s > deadline:
                return False
            time.sleep(self.poll_s)


def drain_main(node: str, timeout_s: float, in_sync_wait_s: float) -> int:
    """`raftka drain`: messages on stdout, exit status 0 (drained) or 1."""
    return Drain(node, timeout_s, in_sync_wait_s, say=lambda line: print(line, flush=True)).run()
