"""`BrokerLifecycle`: this node as a broker of the cluster: registration, heartbeats, controlled shutdown.

Theory of operation
-------------------
At start the broker registers with the active controller (HTTP), which commits a `RegisterBroker`
and answers with the new broker epoch; the broker starts fenced. It then heartbeats every
`heartbeat_interval_ms` with its epoch and the metadata version it has applied; the controller
unfences it once that version reaches its registration, and fences it again if heartbeats stop for
`session_timeout_ms`. A heartbeat refused for a stale epoch (the controller fenced and forgot this
incarnation, or a newer registration exists) makes it register again.

The controller is found through the metadata: the image's controller id and that broker's address;
the active controller itself (not yet registered on its first start) talks to its own address.
Errors (no controller yet, controller unreachable, controller changed) are retried at the next beat.

Controlled shutdown (SIGTERM): ask the controller to move this broker's leaderships away, repeating
until it leads nothing or `controlled_shutdown_timeout_ms` passes, then stop.

Thread-safety: event loop only.
"""

from __future__ import annotations

import asyncio
import logging
import time

from node.errors import ApiError
from node.forward import call

log = logging.getLogger(__name__)

SHUTDOWN_ATTEMPTS = (
    3  # consecutive failures to reach the controller (Kafka's controlled.shutdown.max.retries)
)


class BrokerLifecycle:
    def __init__(self, node):
        self.node = node
        self.config = node.config
        self.broker_epoch: int | None = None
        self.status = "starting"
        self.last_error: str | None = None

    def controller_address(self) -> str | None:
        image = self.node.store.image
        if image.controller_id < 0:
            return None
        if image.controller_id == self.config.node_id:
            return self.config.advertised
        broker = image.brokers.get(image.controller_id)
        return None if broker is None else broker.address

    async def _call(self, path: str, document: dict) -> dict:
        address = self.controller_address()
        if address is None:
            raise ApiError(50303, "no active controller known yet")
        status, body, _ = await call(self.node, address, "POST", path, document)
        if status != 200:
            raise ApiError(int(body.get("error_code", status * 100 + 1)), str(body.get("message", body)))
        return body

    async def register(self) -> int:
        body = await self._call(
            f"/v1/internal/brokers/{self.config.node_id}/register",
            {
                "address": self.config.advertised,
                "rack": self.config.rack,
                "roles": sorted(self.config.role_set),
            },
        )
        self.broker_epoch = int(body["broker_epoch"])
        log.info(
            "registered with the controller as broker %d epoch %d", self.config.node_id, self.broker_epoch
        )
        return self.broker_epoch

    async def allocate_producer_ids(self) -> tuple[int, int]:
        """A block of producer ids (first, size) from the active controller, for this incarnation."""
        if self.broker_epoch is None:
            raise ApiError(50302, f"node {self.config.node_id} is not registered with the controller yet")
        body = await self._call(
            f"/v1/internal/brokers/{self.config.node_id}/producer-ids", {"broker_epoch": self.broker_epoch}
        )
        try:
            return int(body["first"]), int(body["size"])
        except (KeyError, TypeError, ValueError):
            raise ApiError(50001, f"the controller answered a producer id block with {body!r}") from None

    async def heartbeat(self) -> str:
        body = await self._call(
            f"/v1/internal/brokers/{self.config.node_id}/heartbeat",
            {"broker_epoch": self.broker_epoch, "metadata_version": self.node.store.image.version},
        )
        status = str(body.get("status"))
        if status != self.status:
            log.info("broker %d is %s", self.config.node_id, status)
        self.status = status
        return status

    async def run(self) -> None:
        interval = self.config.heartbeat_interval_ms / 1000
        while True:
            try:
                if self.broker_epoch is None:
                    await self.register()
                await self.heartbeat()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.error_code == 40904:
                    log.warning("controller refused epoch %s: registering again", self.broker_epoch)
                    self.broker_epoch = None
                    continue
                if exc.message != self.last_error:
                    log.info("controller not reachable yet: %s", exc.message)
                self.last_error = exc.message
            except Exception:
                log.exception("heartbeat failed")
            # Beat faster while fenced, so that unfencing follows catching up closely.
            await asyncio.sleep(interval if self.status == "active" else min(interval, 0.2))

    async def controlled_shutdown(self) -> bool:
        """True when the controller moved every leadership away in time."""
        if self.broker_epoch is None:
            return True
        deadline = time.monotonic() + self.config.controlled_shutdown_timeout_ms / 1000
        failures = 0
        while time.monotonic() < deadline and failures < SHUTDOWN_ATTEMPTS:
            try:
                body = await self._call(
                    f"/v1/internal/brokers/{self.config.node_id}/shutdown",
                    {"broker_epoch": self.broker_epoch},
                )
                remaining = int(body.get("remaining_leaderships", 0))
                if remaining == 0:
                    log.info("controlled shutdown: no leaderships left on broker %d", self.config.node_id)
                    return True
                log.info(
                    "controlled shutdown: broker %d still leads %d partition(s)",
                    self.config.node_id,
                    remaining,
                )
                failures = 0
            except ApiError as exc:
                failures += 1  # no controller (the whole cluster may be stopping): give up soon
                log.info("controlled shutdown: %s", exc.message)
            await asyncio.sleep(0.3)
        log.warning("controlled shutdown did not complete; stopping anyway")
        return False
