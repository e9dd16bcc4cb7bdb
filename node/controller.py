"""`ControllerService`: the active controller's loop and its request handling, on a controller node.

Theory of operation
-------------------
Every controller node runs this service; it acts only while the node is the *active* controller:
the local Raft member leads, and the image holds this node's `ActivateController` with the current
Raft term as controller epoch. A Raft leader that finds a newer term than the image's controller
epoch first commits its activation; every command it proposes afterwards carries that epoch, so if
it is deposed while a command is in flight, the command is ignored wherever it applies (the new
controller activated a higher epoch before it). Decisions are made from the committed image only
(see metadata/controller.py for the rules).

The loop (every `TICK_S`): activate if needed; then propose `next_command` until there is nothing to
do (fence lapsed brokers, unfence caught-up ones, elect leaderless partitions); every
`preferred_election_interval_ms`, a preferred leader election. Heartbeats, registrations and
controlled shutdowns reach it as HTTP requests (node/api.py) and land here.

Thread-safety: event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from metadata.commands import ActivateController, AllocateProducerIds, MetadataError, RegisterBroker
from metadata.controller import (
    BrokerSessions,
    changes_without,
    controlled_shutdown,
    movable_leaderships,
    next_command,
    preferred_election,
)
from metadata.image import MetadataImage
from node.errors import ApiError

log = logging.getLogger(__name__)

TICK_S = 0.1
PRODUCER_ID_BLOCK = 1000


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class NotControllerError(ApiError):
    def __init__(self, node_id: int, controller_id: int):
        super().__init__(
            50303,
            f"node {node_id} is not the active controller (controller: {controller_id}); retry",
            controller_id=controller_id,
        )


class ControllerService:
    def __init__(self, node):
        self.node = node
        self.config = node.config
        self.sessions: BrokerSessions | None = None
        self._sessions_epoch = -1
        self._last_preferred_ms = now_ms()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one proposal of the controller's own at a time

    @property
    def store(self):
        return self.node.store

    @property
    def active(self) -> bool:
        image = self.store.image
        term = self.store.leader_term()
        return (
            term is not None and image.controller_id == self.config.node_id and image.controller_epoch == term
        )

    def require_active(self) -> MetadataImage:
        if not self.active:
            raise NotControllerError(self.config.node_id, self.store.image.controller_id)
        term = self.store.image.controller_epoch  # the term this node leads in, as it is active
        if self.sessions is None or self._sessions_epoch != term:
            self.sessions = BrokerSessions(self.config.session_timeout_ms, now_ms())
            self._sessions_epoch = term
        return self.store.image

    async def run(self) -> None:
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except MetadataError as exc:
                log.warning("controller: %s", exc.message)
            except Exception:
                log.exception("controller tick failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S)

    async def _tick(self) -> None:
        store = self.store
        term = store.leader_term()  # leadership and its term read together (see leader_term)
        if term is None:
            self.sessions = None
            return
        image = store.image
        if image.controller_epoch < term:
            cluster_id = self.node.cluster_id or self.config.cluster_id or uuid.uuid4().hex
            log.info("node %d becomes the active controller (epoch %d)", self.config.node_id, term)
            await store.propose(ActivateController(self.config.node_id, term, cluster_id))
            return
        if not self.active:
            return
        self.require_active()
        async with self._lock:
            for _ in range(100):  # bounded: the rest waits for the next tick
                if not self.active:
                    return
                command = next_command(store.image, self.sessions, now_ms())
                if command is None:
                    break
                log.info("controller: %s", _describe(command))
                await store.propose(command)
            interval = self.config.preferred_election_interval_ms
            if interval and now_ms() - self._last_preferred_ms >= interval:
                self._last_preferred_ms = now_ms()
                command = preferred_election(store.image)
                if command is not None:
                    log.info(
                        "controller: preferred leader election moves %d partition(s)", len(command.changes)
                    )
                    await store.propose(command)

    # -- requests from brokers --------------------------------------------------------------------

    async def register(self, node_id: int, address: str, rack: str | None, roles: tuple) -> int:
        """A broker starts (a new incarnation): returns its new broker epoch."""
        async with self._lock:
            image = self.require_active()
            changes = changes_without(image, node_id) if node_id in image.brokers else ()
            new = await self.store.propose(
                RegisterBroker(node_id, address, rack, roles, image.controller_epoch, changes)
            )
        broker = new.brokers.get(node_id)
        if broker is None or broker.address != address or new.controller_epoch != image.controller_epoch:
            raise NotControllerError(self.config.node_id, new.controller_id)
        self.sessions.heartbeat(node_id, broker.epoch, 0, now_ms())
        self._wake.set()
        return broker.epoch

    def heartbeat(self, node_id: int, broker_epoch: int, metadata_version: int) -> dict:
        image = self.require_active()
        broker = image.brokers.get(node_id)
        if broker is None or broker.epoch != broker_epoch:
            current = None if broker is None else broker.epoch
            raise ApiError(
                40904,
                f"broker {node_id} epoch {broker_epoch} is not its current registration ({current}); register again",
            )
        self.sessions.heartbeat(node_id, broker_epoch, metadata_version, now_ms())
        if broker.fenced and metadata_version >= broker_epoch:
            self._wake.set()
        return {"status": broker.status, "controller_epoch": image.controller_epoch}

    async def controlled_shutdown(self, node_id: int, broker_epoch: int) -> dict:
        """Move the broker's leaderships away; returns how many it still leads that could move."""
        image = self.require_active()
        broker = image.brokers.get(node_id)
        if broker is None or broker.epoch != broker_epoch:
            raise ApiError(40904, f"broker {node_id} epoch {broker_epoch} is not its current registration")
        async with self._lock:
            image = self.require_active()
            new = await self.store.propose(controlled_shutdown(image, node_id, broker_epoch))
        return {"remaining_leaderships": movable_leaderships(new, node_id)}

    async def allocate_producer_ids(self, node_id: int, broker_epoch: int) -> tuple[int, int]:
        """A block [first, first + size) of producer ids no other broker ever gets."""
        async with self._lock:
            image = self.require_active()
            first = image.next_producer_id
            new = await self.store.propose(
                AllocateProducerIds(node_id, broker_epoch, PRODUCER_ID_BLOCK, image.controller_epoch)
            )
        if new.next_producer_id != first + PRODUCER_ID_BLOCK:
            raise ApiError(40904, f"broker {node_id} epoch {broker_epoch} could not get producer ids; retry")
        return first, PRODUCER_ID_BLOCK

    async def elect_preferred(self) -> int:
        async with self._lock:
            image = self.require_active()
            command = preferred_election(image)
            if command is None:
                return 0
            await self.store.propose(command)
            return len(command.changes)

    async def propose_planned(self, plan) -> MetadataImage:
        """Propose the command `plan(image)` returns, planned against the committed image."""
        async with self._lock:
            image = self.require_active()
            try:
                command = plan(image)
            except MetadataError as exc:
                raise ApiError(exc.error_code, exc.message) from None
            if command is None:
                return image
            new = await self.store.propose(command)
        if new.controller_epoch != image.controller_epoch:
            raise NotControllerError(self.config.node_id, new.controller_id)
        return new


def _describe(command) -> str:
    kind = type(command).__name__
    node = getattr(command, "node_id", None)
    changes = getattr(command, "changes", ())
    moved = ", ".join(f"{c.topic_id[:8]}-{c.partition} leader {c.leader}" for c in changes[:5])
    more = f" (+{len(changes) - 5})" if len(changes) > 5 else ""
    return f"{kind}{'' if node is None else f' broker {node}'}{': ' + moved + more if changes else ''}"
