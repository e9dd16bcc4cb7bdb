"""`RaftMetadataStore`: the cluster metadata replicated by pysyncobj, bridged to asyncio.

Theory of operation
-------------------
Every controller node runs a pysyncobj voter whose replicated state is one `MetadataImage`; a
broker-only node runs a read-only member (`SyncObj(None, voters)`) that receives the same log
without voting. A command travels as the JSON of `command_to_dict` through one `@replicated`
method, `apply_command`, which decodes it and calls the pure `metadata.commands.apply`: apply cannot
raise, uses no clock, randomness or IO, and so gives the same image on every replica and on every
replay of the journal after a restart (pysyncobj re-runs the whole log from its last snapshot).

pysyncobj runs the network, apply functions and callbacks on its own tick thread. The bridge to the
event loop: after each apply the tick thread records the newest image and schedules one delivery on
the loop (several applies in a row are delivered once, newest last); the loop-side `image` and the
listeners only ever see images in log order. `propose` hands the command to pysyncobj with a callback
that resolves an asyncio future through `call_soon_threadsafe`, under our own timeout (pysyncobj has
none for asynchronous calls). Nothing here blocks the event loop: no `sync=True` calls.

Settings (measured pitfalls, ../shared/PYSYNCOBJ.md): journal and full dump files both on (a journal
alone lost the snapshot after log compaction), batching of append entries off (100 ms per command
otherwise), a 2.5 s leader fallback (a leader cut off from its followers steps down instead of
believing it leads for 30 s), and a password: pysyncobj unpickles what peers send, so its traffic
must be authenticated (the password derives the key that encrypts and signs every message).

Durability: pysyncobj writes its journal through an mmap and never fsyncs it. An applied command
survives kill -9 of any number of nodes (the page cache keeps it) but not a power loss of a majority.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import orjson
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj import tcp_connection as pysyncobj_tcp_connection
from pysyncobj.dns_resolver import globalDnsResolver
from pysyncobj.node import TCPNode

from metadata.commands import MetadataError, apply, command_from_dict, command_to_dict
from metadata.image import MetadataImage

log = logging.getLogger(__name__)

Listener = Callable[[MetadataImage, MetadataImage], None]

IDLE_CONNECTION_TIMEOUT_S = 3600.0
CONNECTION_RETRY_S = 0.5  # pysyncobj's default 5 s kept a restarted voter unheard for up to 5 s
TCP_KEEPALIVE = (3, 1, 3)  # idle 3 s, then a probe a second, 3 unanswered: dead (about 6 s)
TCP_USER_TIMEOUT_MS = 5000  # sent data unacknowledged this long: dead (a silent network partition)
# A peer's name is looked up again this long after its last lookup (pysyncobj's default is 600 s; a
# failed lookup is kept 30 s). In Kubernetes a pod created again has a new address under the same name:
# with the defaults the peers that dial it kept dialing the old address and it stayed out of the quorum
# (tests/test_k8s_rehearsal.py). Lookups happen only when pysyncobj dials, on its tick thread.
DNS_CACHE_S = 5.0
DNS_FAIL_CACHE_S = 1.0


def _set_socket_options(sock: socket.socket, after_idle_s: int, interval_s: int, probes: int) -> None:
    """pysyncobj's keepalive hook, extended with TCP_USER_TIMEOUT where the platform has it."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", after_idle_s),
        ("TCP_KEEPINTVL", interval_s),
        ("TCP_KEEPCNT", probes),
    ):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS)


# Every pysyncobj socket (outgoing and accepted) gets its options through this module-level hook.
pysyncobj_tcp_connection.set_keepalive = _set_socket_options

JOURNAL_FILE = "raft.journal"
DUMP_FILE = "raft.dump"

_FAILURES = {
    FAIL_REASON.QUEUE_FULL: "the Raft command queue is full",
    FAIL_REASON.MISSING_LEADER: "no Raft leader (election in progress or no quorum)",
    FAIL_REASON.DISCARDED: "the command was discarded by a new Raft leader",
    FAIL_REASON.NOT_LEADER: "the Raft leader changed before the command committed",
    FAIL_REASON.LEADER_CHANGED: "the Raft leader changed before the command committed",
    FAIL_REASON.REQUEST_DENIED: "the command was refused",
    FAIL_REASON.UNKNOWN_OUTCOME: "the command's outcome is unknown",
}


RAFT_LEADER_STATE = 2  # pysyncobj's _RAFT_STATE.LEADER, as onStateChanged reports it


class MetadataUnavailableError(MetadataError):
    """The command could not be committed (no quorum, leader change, timeout); it may still apply."""

    def __init__(self, message: str):
        super().__init__(50303, message)


class MetadataStateMachine(SyncObjConsumer):
    """The replicated state: one image. Only `apply_command` changes it."""

    def __init__(self, on_applied: Callable[[MetadataImage], None]):
        self._on_applied = on_applied
        super().__init__()
        self.image = MetadataImage()

    def _serialize(self) -> dict[str, Any]:
        return {"image": orjson.dumps(self.image.to_dict())}

    def _deserialize(self, data: dict[str, Any]) -> None:
        self.image = MetadataImage.from_dict(orjson.loads(data["image"]))
        self._on_applied(self.image)

    @replicated
    def apply_command(self, encoded: bytes) -> int:
        try:
            command = command_from_dict(orjson.loads(encoded))
        except Exception:  # a command this version cannot read: skip it, never stop the replica
            log.exception("undecodable metadata command %r; ignored", encoded[:200])
            self.image = replace(self.image, version=self.image.version + 1)
        else:
            self.image = apply(self.image, command)
        self._on_applied(self.image)
        return self.image.version


class RoutedNode(TCPNode):
    """A peer known by its own address but reached through another one (a proxy).

    pysyncobj names a node by its address: the dialing side sends its own address first and the
    receiver looks it up among its peers, so identities must stay the real addresses; only where
    the connection goes changes (pysyncobj dials `node.ip`, `node.port`).
    """

    def __init__(self, address: str, via: str):
        super().__init__(address)
        host, _, port = via.rpartition(":")
        self._via_host, self._via_port = host.strip("[]"), int(port)

    @property
    def ip(self) -> str:
        return globalDnsResolver().resolve(self._via_host)

    @property
    def port(self) -> int:
        return self._via_port


class RaftMetadataStore:
    def __init__(
        self,
        directory: str,
        self_address: str | None,
        voters: list[str],
        *,
        bind_address: str | None,
        password: str | None,
        propose_timeout_s: float = 10.0,
        raft_min_timeout_s: float = 0.4,
        raft_max_timeout_s: float = 1.4,
        routes: Mapping[str, str] | None = None,
    ):
        """`self_address` is this voter's entry in `voters` (None for a read-only member); the
        other voters are its peers. Must be created on the event loop it reports to. `routes` maps a
        peer's address to the address to dial instead (a proxy, for fault experiments); the peer keeps
        its own address as its identity."""
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.self_address = self_address
        self.voters = list(voters)
        self.propose_timeout_s = propose_timeout_s
        self._loop = asyncio.get_running_loop()
        self._listeners: list[Listener] = []
        self._version_waiters: list[tuple[int, asyncio.Future]] = []
        self._pending_lock = threading.Lock()
        self._pending: MetadataImage | None = None
        self.image = MetadataImage()
        self.image_changed = asyncio.Event()
        self._machine = MetadataStateMachine(self._on_applied)
        routes = routes or {}
        peers = [RoutedNode(v, routes[v]) if v in routes else v for v in self.voters if v != self_address]
        conf = SyncObjConf(
            journalFile=os.path.join(directory, JOURNAL_FILE),
            fullDumpFile=os.path.join(directory, DUMP_FILE),
            appendEntriesUseBatch=False,
            leaderFallbackTimeout=2.5,
            raftMinTimeout=raft_min_timeout_s,
            appendEntriesPeriod=min(0.1, raft_min_timeout_s / 4),  # pysyncobj wants 3 per election timeout
            raftMaxTimeout=raft_max_timeout_s,
            # Connections between two followers carry nothing while a leader lasts; pysyncobj
            # closes a connection that read nothing for connectionTimeout when it next sends on it,
            # dropping that message: with the default 3.5 s every first vote request between the
            # surviving followers of a dead leader was lost, costing an election round. So idle
            # connections live on, and dead peers are found by TCP instead (see _tcp_options).
            connectionTimeout=IDLE_CONNECTION_TIMEOUT_S,
            connectionRetryTime=CONNECTION_RETRY_S,
            tcp_keepalive=TCP_KEEPALIVE,
            dnsCacheTime=DNS_CACHE_S,
            dnsFailCacheTime=DNS_FAIL_CACHE_S,
            password=password,
            bindAddress=bind_address if self_address is not None else None,
            dynamicMembershipChange=False,
            commandsWaitLeader=True,
            onStateChanged=self._on_state_changed,
        )
        # The term this member leads in, or None: set by pysyncobj's thread as the state changes
        # (see leader_term).
        self._leader_term: int | None = None
        self._syncobj = SyncObj(self_address, peers, conf, consumers=[self._machine])

    # -- the tick thread side -----------------------------------------------------------------------

    def _on_applied(self, image: MetadataImage) -> None:
        with self._pending_lock:
            schedule = self._pending is None
            self._pending = image
        if schedule:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the node is stopping
                self._loop.call_soon_threadsafe(self._deliver)

    # -- the event loop side --------------------------------------------------------------------------

    def _deliver(self) -> None:
        with self._pending_lock:
            new, self._pending = self._pending, None
        if new is None or new.version < self.image.version:
            return
        old, self.image = self.image, new
        for listener in self._listeners:
            try:
                listener(old, new)
            except Exception:
                log.exception("metadata listener failed")
        self.image_changed.set()
        self.image_changed = asyncio.Event()
        still_waiting = []
        for version, future in self._version_waiters:
            if new.version >= version:
                if not future.done():
                    future.set_result(new)
            else:
                still_waiting.append((version, future))
        self._version_waiters = still_waiting

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(old, new)` on the event loop after applied commands, in log order."""
        self._listeners.append(listener)

    async def wait_for_version(self, version: int, timeout_s: float) -> MetadataImage:
        """The image once this node has applied at least `version` commands."""
        if self.image.version >= version:
            return self.image
        future = self._loop.create_future()
        self._version_waiters.append((version, future))
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise MetadataUnavailableError(
                f"metadata on this node is at version {self.image.version}, waited {timeout_s:.1f} s for {version}"
            ) from None

    async def propose(self, command: Any) -> MetadataImage:
        """Replicate `command`; returns this node's image once the command is applied here.
        Raises MetadataUnavailableError when it could not be committed in time (it may still apply)."""
        future = self._loop.create_future()

        def done(result: Any, error: int) -> None:
            self._loop.call_soon_threadsafe(_settle, future, result, error)

        self._machine.apply_command(orjson.dumps(command_to_dict(command)), callback=done)
        try:
            version = await asyncio.wait_for(future, self.propose_timeout_s)
        except TimeoutError:
            raise MetadataUnavailableError(
                f"metadata command not committed within {self.propose_timeout_s:.0f} s (no quorum?)"
            ) from None
        return await self.wait_for_version(version, self.propose_timeout_s)

    # -- Raft status (reads of pysyncobj's fields: momentary, may be stale) ----------------------

    @property
    def ready(self) -> bool:
        """This member has caught up with the log once since it started."""
        return self._syncobj.isReady()

    async def wait_ready(self) -> MetadataImage:
        """Wait until this member holds every command committed before the current Raft term, and
        the loop saw it. Before that the image may be empty or old: nothing may act on it (deleting
        the logs of topics it does not list, for one).

        pysyncobj's own readiness is not enough: it fires once the member has applied up to the
        commit index it knows, and after a restart of the whole quorum that index can lag behind
        what was committed in the previous term (even be 0). What is enough is Raft's rule: a
        leader's first entry of its term commits only after every earlier entry, so a member that
        has applied the activation of the current term's controller (whose epoch is the term) has
        applied everything committed before it."""
        while not (
            self.ready
            and self.image.version >= self._machine.image.version
            and 0 < self.raft_term() <= self.image.controller_epoch
        ):
            await asyncio.sleep(0.02)
        return self.image

    def _on_state_changed(self, old_state: int, new_state: int) -> None:
        """pysyncobj's thread, inside the state change: the term is the one the new state holds.
        (An election takes at least raft_min_timeout_s, long after `_syncobj` is set.)"""
        syncobj = getattr(self, "_syncobj", None)
        leading = new_state == RAFT_LEADER_STATE and syncobj is not None
        self._leader_term = syncobj._getTerm() if leading else None

    def leader_term(self) -> int | None:
        """The term this member leads in, or None when it does not lead, read in one step.

        `is_raft_leader()` and `raft_term()` read separately can pair a new term with the old state:
        pysyncobj's thread stores a higher term it hears of before it steps down, so a leader of
        term 3 could read "leader" and then term 4. It would then activate itself as controller
        for epoch 4, the command would be committed by the real leader of term 4, and no node would
        act as controller until the next election (seen in the Kubernetes rehearsal). This pair is
        written by pysyncobj's thread as the state changes and read here as one value."""
        if self.self_address is None:
            return None
        return self._leader_term

    def is_raft_leader(self) -> bool:
        return self.self_address is not None and self._syncobj._isLeader()

    def raft_term(self) -> int:
        return self._syncobj._getTerm()

    def raft_leader(self) -> str | None:
        leader = self._syncobj._getLeader()
        return None if leader is None else leader.address

    def status(self) -> dict[str, Any]:
        status = self._syncobj.getStatus()
        return {
            "state": {0: "follower", 1: "candidate", 2: "leader"}.get(status["state"], str(status["state"])),
            "term": status["raft_term"],
            "leader": None if status["leader"] is None else status["leader"].address,
            "commit_index": status["commit_idx"],
            "last_applied": status["last_applied"],
            "voter": self.self_address is not None,
        }

    def close(self) -> None:
        """Stop the tick thread and close the files (blocks briefly: call from a worker thread)."""
        self._syncobj.destroy()


def _settle(future: asyncio.Future, result: Any, error: int) -> None:
    if future.done():
        return
    if error == FAIL_REASON.SUCCESS:
        future.set_result(result)
    else:
        future.set_exception(MetadataUnavailableError(_FAILURES.get(error, f"Raft failure {error}")))
