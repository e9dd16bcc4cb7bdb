"""`Node`: one Raftka node process: storage, metadata, replicas and the HTTP server, started and
stopped in order.

Start: take the data directory (checking `meta.properties`), open the HTTP port at once (so /livez
answers and /readyz says 503 until the node can serve), load the logs in a worker thread, join the
metadata quorum (a pysyncobj voter on controller nodes, a read-only member on broker-only nodes),
open the replicas the metadata assigns here, start the controller service (controller nodes), the
broker lifecycle (registration and heartbeats), the log cleaner and the periodic flush and retention
tasks. The node is ready once its logs are loaded, its metadata caught up and the controller
unfenced it.

Stop (SIGTERM, Ctrl-C): a controlled shutdown first (the controller moves this broker's leaderships
away, bounded by controlled_shutdown_timeout_ms), then stop accepting requests, stop the tasks, the
Raft member and the cleaner, flush and close every log, write the clean-shutdown marker.

On disk, in the data directory: `meta.properties` (node.id, the voter set, and cluster.id once the
quorum has one; a directory of another node, cluster or voter set is refused), `logs/` (the
LogManager's directory) and `metadata/` (the Raft journal and snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket

import aiohttp
from aiohttp import web

from metadata.commands import plan_create_topic
from metadata.image import MetadataImage, TopicInfo
from metadata.raft import RaftMetadataStore
from node.api import build_app, new_topic_id
from node.config import NodeConfig, split_host_port
from node.controller import ControllerService
from node.coordinator import GroupCoordinator
from node.errors import ApiError
from node.fetcher import ReplicaFetcher
from node.forward import METADATA_VERSION_HEADER, METADATA_WAIT_S, call
from node.lifecycle import BrokerLifecycle
from node.metrics import NodeMetrics
from node.producer_ids import ProducerIds
from node.replica import ReplicaManager
from raftka.client._http import send_once
from storage.cleaner import LogCleaner
from storage.fileio import write_atomic
from storage.manager import LogManager

log = logging.getLogger(__name__)

META_PROPERTIES = "meta.properties"
ISR_CHECK_S = 0.25


class DataDirError(RuntimeError):
    """The data directory belongs to another node or cluster, or cannot be used."""


def read_meta_properties(data_dir: str) -> dict[str, str]:
    path = os.path.join(data_dir, META_PROPERTIES)
    props: dict[str, str] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                name, sep, value = line.strip().partition("=")
                if sep and not name.startswith("#"):
                    props[name] = value
    return props


def write_meta_properties(data_dir: str, props: dict[str, str]) -> None:
    lines = ["# written by raftka; do not edit"] + [f"{k}={v}" for k, v in props.items()]
    write_atomic(os.path.join(data_dir, META_PROPERTIES), ("\n".join(lines) + "\n").encode())


def check_meta_properties(
    data_dir: str, node_id: int, cluster_id: str | None, controllers: str
) -> dict[str, str]:
    """Read or write `meta.properties` (node id, the voter set, the cluster id once known).

    Refuses a directory of another node id, another cluster, or another voter set: a node that once
    belonged to a quorum and is restarted with a different one (a typo, a missing --controllers)
    could otherwise elect itself alone and accept writes (split brain)."""
    props = read_meta_properties(data_dir)
    if not props:
        props = {"version": "1", "node.id": str(node_id), "controllers": controllers}
        if cluster_id:
            props["cluster.id"] = cluster_id
        write_meta_properties(data_dir, props)
        return props
    stored_node = props.get("node.id")
    if stored_node != str(node_id):
        raise DataDirError(f"data directory {data_dir} belongs to node {stored_node}, not node {node_id}")
    stored_cluster = props.get("cluster.id", "")
    if cluster_id and stored_cluster and stored_cluster != cluster_id:
        raise DataDirError(f"data directory {data_dir} belongs to cluster {stored_cluster}, not {cluster_id}")
    stored_voters = props.get("controllers")
    if (
        stored_voters is not None
        and stored_voters != controllers
        and not _same_single_voter(stored_voters, controllers)
    ):
        raise DataDirError(
            f"data directory {data_dir} was started with controllers {stored_voters}, now {controllers}: "
            "the voter set of a cluster cannot change by restarting with other flags "
            "(give the same --controllers, or use a new data directory)"
        )
    if stored_voters != controllers:  # first start of this version, or a single voter that moved
        props["controllers"] = controllers
        write_meta_properties(data_dir, props)
    return props


def _same_single_voter(stored: str, now: str) -> bool:
    """A quorum of one that moved its Raft address: nothing else votes, so the move is safe."""
    stored_ids = [part.partition("@")[0] for part in stored.split(",")]
    now_ids = [part.partition("@")[0] for part in now.split(",")]
    return len(stored_ids) == 1 and stored_ids == now_ids


def voters_text(voters: dict[int, str]) -> str:
    return ",".join(f"{node}@{address}" for node, address in sorted(voters.items()))


class ListenError(RuntimeError):
    """The HTTP address cannot be bound (in use, not local, no permission)."""


class Node:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.metrics = NodeMetrics()
        self.cluster_id = ""
        self.logs_loaded = False
        self.metadata_ready = False
        self.log_manager: LogManager | None = None
        self.store: RaftMetadataStore | None = None
        self.replicas: ReplicaManager | None = None
        self.controller: ControllerService | None = None
        self.lifecycle = BrokerLifecycle(self)
        self.fetcher = ReplicaFetcher(self)
        self.producer_ids = ProducerIds(self.lifecycle)
        self.coordinator = GroupCoordinator(self)
        self.http: aiohttp.ClientSession | None = None
        self.cleaner = LogCleaner()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task] = []
        self._props: dict[str, str] = {}
        self.fatal: asyncio.Future | None = None  # set when the node must stop (a cluster id clash)

    @property
    def ready(self) -> bool:
        """Logs loaded, metadata caught up, registered and unfenced: this node can serve."""
        return self.logs_loaded and self.metadata_ready and self.lifecycle.status == "active"

    def not_ready_reason(self) -> str:
        if not self.logs_loaded:
            return "logs are still loading"
        if not self.metadata_ready:
            return "metadata is catching up with the controller quorum"
        return f"broker is {self.lifecycle.status} (waiting for the controller to admit it)"

    async def start(self) -> None:
        config = self.config
        data_dir = os.path.abspath(config.data_dir)
        os.makedirs(data_dir, exist_ok=True)
        loop = asyncio.get_running_loop()
        self.fatal = loop.create_future()
        voters = config.voters
        self._props = check_meta_properties(data_dir, config.node_id, config.cluster_id, voters_text(voters))
        self.cluster_id = self._props.get("cluster.id", "")
        self._runner = web.AppRunner(build_app(self), access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = config.host_port
        try:
            await web.TCPSite(self._runner, host, port, reuse_address=True).start()
        except OSError as exc:
            raise ListenError(f"cannot listen on {config.listen}: {exc.strerror or exc}") from None
        log.info("listening on http://%s:%d (node %d, roles %s)", host, port, config.node_id, config.roles)
        # Node-to-node requests go out once: a forwarded DELETE whose answer was lost must not be
        # resent by aiohttp (the client gets 50303 "may still apply" and decides).
        self.http = send_once(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)))
        self.log_manager = await loop.run_in_executor(
            None,
            lambda: LogManager(
                os.path.join(data_dir, "logs"),
                background_flush=True,
                producer_id_expiration_ms=config.producer_id_expiration_ms,
            ),
        )
        recovered = sum(1 for lg in self.log_manager.logs().values() if lg.load_report.recovered_segments)
        log.info(
            "loaded %d logs (%s shutdown, %d recovered)",
            len(self.log_manager.logs()),
            "clean" if self.log_manager.clean_shutdown else "unclean",
            recovered,
        )
        self.logs_loaded = True
        self.replicas = ReplicaManager(config.node_id, self.log_manager, self.cleaner)
        raft_bind = config.raft_bind
        if raft_bind is not None:
            check_can_bind(raft_bind)
        password = config.password()
        if password is None:  # a quorum of one: no peers, but keep the port closed to strangers
            password = secrets.token_hex(16)
        self.store = RaftMetadataStore(
            os.path.join(data_dir, "metadata"),
            voters[config.node_id] if config.is_controller else None,
            [voters[n] for n in sorted(voters)],
            bind_address=raft_bind,
            password=password,
            raft_min_timeout_s=config.raft_election_min_ms / 1000,
            raft_max_timeout_s=config.raft_election_max_ms / 1000,
            routes=config.routes,
        )
        log.info(
            "metadata: %s of the quorum %s",
            "voter" if config.is_controller else "read-only member",
            voters_text(voters),
        )
        self.store.subscribe(self._on_metadata)
        if config.is_controller:
            self.controller = ControllerService(self)
            self._tasks.append(asyncio.create_task(self.controller.run()))
        self._tasks += [
            asyncio.create_task(self._follow_metadata()),
            asyncio.create_task(self._propose_isr_changes()),
            asyncio.create_task(self._every(config.flush_check_interval_ms, self.log_manager.flush_dirty)),
            asyncio.create_task(self._every(config.retention_check_interval_ms, self.replicas.run_retention)),
        ]
        self.cleaner.start(config.cleaner_interval_ms / 1000)
        self.coordinator.start()

    async def _follow_metadata(self) -> None:
        """Open the replicas and start the broker only once the metadata has caught up."""
        image = await self.store.wait_ready()
        self.metadata_ready = True
        self._on_metadata(image, image)
        log.info("metadata caught up at version %d", image.version)
        await self.lifecycle.run()

    def _on_metadata(self, old: MetadataImage, new: MetadataImage) -> None:
        if not self.metadata_ready:
            return  # a replay in progress: the image may still lack topics whose logs are here
        self.replicas.apply_image(new)
        self.fetcher.reconcile()
        if new.cluster_id and new.cluster_id != self.cluster_id:
            if self.cluster_id:
                message = (
                    f"data directory {self.config.data_dir} belongs to cluster {self.cluster_id}, "
                    f"but the controller quorum is cluster {new.cluster_id}"
                )
                log.error(message)
                if self.fatal is not None and not self.fatal.done():
                    self.fatal.set_exception(DataDirError(message))
                return
            self.cluster_id = new.cluster_id
            self._props["cluster.id"] = new.cluster_id
            write_meta_properties(os.path.abspath(self.config.data_dir), self._props)
            log.info("joined cluster %s", new.cluster_id)

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
        while not self.ready:
            if deadline is not None and asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(self.not_ready_reason())
            await asyncio.sleep(0.05)

    async def _propose_isr_changes(self) -> None:
        """Leaders ask the controller to shrink or expand ISRs (never change them alone)."""
        lag_ms = self.config.replica_lag_time_max_ms
        while True:
            await asyncio.sleep(ISR_CHECK_S)
            if not self.metadata_ready or self.lifecycle.broker_epoch is None:
                continue
            changes = []
            for partition in list(self.replicas.partitions.values()):
                proposal = partition.isr_proposal(lag_ms)
                if proposal is not None:
                    changes.append(self._alter_partition(partition, proposal))
            await asyncio.gather(*changes)

    async def _alter_partition(self, partition, proposal) -> None:
        address = self.lifecycle.controller_address()
        document = {
            "broker_id": self.config.node_id,
            "broker_epoch": self.lifecycle.broker_epoch,
            "topic_id": partition.topic_id,
            "partition": partition.index,
            "leader_epoch": proposal.leader_epoch,
            "partition_epoch": proposal.partition_epoch,
            "isr": list(proposal.isr),
            "joining": [list(pair) for pair in proposal.joining],
        }
        try:
            if address is None:
                raise ApiError(50303, "no controller")
            status, body, headers = await call(
                self, address, "POST", "/v1/internal/alter-partition", document
            )
            if 400 <= status < 500:  # the controller decided: nothing was committed
                log.info(
                    "%s-%d: ISR change to %s refused: %s",
                    partition.topic,
                    partition.index,
                    list(proposal.isr),
                    body.get("message"),
                )
                if partition.leader is not None and partition.leader.pending == proposal:
                    partition.leader.on_proposal_failed()
                return
            if status != 200:
                raise ApiError(int(body.get("error_code", status * 100 + 1)), str(body.get("message")))
            log.info(
                "%s-%d: ISR now %s (asked %s)",
                partition.topic,
                partition.index,
                body.get("isr"),
                list(proposal.isr),
            )
            await self.store.wait_for_version(int(headers.get(METADATA_VERSION_HEADER, "0")), METADATA_WAIT_S)
        except ApiError as exc:
            # Unreachable controller, 5xx, no answer: the change may or may not be committed. Keep
            # it pending: the metadata decides it, or the leader gives it up after a while (see
            # LeaderCore.isr_proposal) and decides again.
            log.info(
                "%s-%d: ISR change to %s: outcome unknown (%s)",
                partition.topic,
                partition.index,
                list(proposal.isr),
                exc.message,
            )

    async def _every(self, interval_ms: int, work) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval_ms / 1000)
            try:
                await loop.run_in_executor(None, work)
            except Exception:
                log.exception("periodic %s failed", getattr(work, "__name__", work))

    async def stop(self, controlled: bool = True) -> None:
        """Controlled shutdown (leaderships moved away first, bounded), then stop everything in order."""
        if controlled and self.store is not None and self.lifecycle.broker_epoch is not None:
            await self.lifecycle.controlled_shutdown()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.fetcher.stop()
        await self.coordinator.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.cleaner.stop()
        loop = asyncio.get_running_loop()
        if self.store is not None:
            await loop.run_in_executor(None, self.store.close)
        if self.http is not None:
            await self.http.close()
        if self.log_manager is not None:
            await loop.run_in_executor(None, self.log_manager.shutdown)
        log.info("node %d stopped cleanly", self.config.node_id)

    # -- topic operations used by the API ------------------------------------------------------------

    async def create_topic(
        self, name: object, partitions: object, replication_factor: object, configs: object
    ) -> TopicInfo:
        """Create through the active controller (this node, or one HTTP call to it)."""
        if self.controller is not None and self.controller.active:
            topic_id = new_topic_id()
            image = await self.controller.propose_planned(
                lambda image: plan_create_topic(
                    image, name, partitions, replication_factor, configs, topic_id
                )
            )
            topic = image.topics.get(name) if isinstance(name, str) else None
            if topic is None or topic.topic_id != topic_id:
                raise ApiError(40901, f"topic {name!r} already exists")
            return topic
        address = self.lifecycle.controller_address()
        if address is None:
            raise ApiError(50303, "no active controller is known yet; retry")
        document = {"name": name, "partitions": partitions, "replication_factor": replication_factor}
        if configs is not None:
            document["configs"] = configs
        status, body, headers = await call(
            self, address, "POST", "/v1/topics", document, unreachable_code=50303
        )
        if status != 201:
            raise ApiError(int(body.get("error_code", status * 100 + 1)), str(body.get("message", body)))
        await self.store.wait_for_version(int(headers.get(METADATA_VERSION_HEADER, "0")), METADATA_WAIT_S)
        return self.store.image.topics[body["name"]]

    async def topic_for_produce(self, name: str) -> TopicInfo:
        topic = self.store.image.topics.get(name)
        if topic is not None:
            return topic
        if self.config.auto_create_topics:
            try:
                return await self.create_topic(
                    name, self.config.default_partitions, self.config.default_replication_factor, None
                )
            except ApiError as exc:
                if exc.error_code != 40901:
                    raise
                return self.store.image.topics[name]
        raise ApiError(
            40401,
            f"topic {name!r} does not exist: create it with POST /v1/topics "
            f'{{"name": "{name}", "partitions": 1}} or `raftka topic create {name}` '
            "(or start the node with --auto-create-topics)",
        )


def check_can_bind(address: str) -> None:
    """Fail fast with a clear message when the Raft address is taken (pysyncobj would retry forever)."""
    host, port = split_host_port(address, "raft_listen")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ListenError(f"cannot listen for Raft on {address}: {exc.strerror or exc}") from None
