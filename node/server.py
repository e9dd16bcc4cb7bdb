"""`Node`: one Raftka node process: storage, metadata, replicas and the HTTP server, started and
stopped in order.

Start: take the data directory (checking `meta.properties`), open the HTTP port at once (so /livez
answers and /readyz says 503 while logs load), load the logs in a worker thread, load the metadata,
register this broker, open the replicas, start the log cleaner and the periodic flush and retention
tasks, then report ready.

Stop (SIGTERM, Ctrl-C): stop accepting requests, stop the periodic tasks and the cleaner, flush and
close every log, write the clean-shutdown marker.

On disk, in the data directory: `meta.properties` (node.id and cluster.id, written on first start; a
directory that belongs to another node id is refused), `logs/` (the LogManager's directory) and
`metadata/` (the metadata store).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid

from aiohttp import web

from metadata.commands import MetadataError, RegisterBroker, plan_create_topic
from metadata.image import TopicInfo
from metadata.store import LocalMetadataStore
from node.api import build_app, new_topic_id
from node.config import NodeConfig
from node.errors import ApiError
from node.metrics import NodeMetrics
from node.replica import ReplicaManager
from storage.cleaner import LogCleaner
from storage.fileio import write_atomic
from storage.manager import LogManager

log = logging.getLogger(__name__)

META_PROPERTIES = "meta.properties"


class DataDirError(RuntimeError):
    """The data directory belongs to another node or cluster, or cannot be used."""


def check_meta_properties(data_dir: str, node_id: int, cluster_id: str | None) -> str:
    """Read or write `meta.properties`; return the cluster id. Refuses a directory of another node."""
    path = os.path.join(data_dir, META_PROPERTIES)
    if os.path.exists(path):
        props = {}
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                name, sep, value = line.strip().partition("=")
                if sep and not name.startswith("#"):
                    props[name] = value
        stored_node = props.get("node.id")
        if stored_node != str(node_id):
            raise DataDirError(f"data directory {data_dir} belongs to node {stored_node}, not node {node_id}")
        stored_cluster = props.get("cluster.id", "")
        if cluster_id and stored_cluster != cluster_id:
            raise DataDirError(
                f"data directory {data_dir} belongs to cluster {stored_cluster}, not {cluster_id}"
            )
        return stored_cluster
    cluster_id = cluster_id or uuid.uuid4().hex
    text = f"# written by raftka on first start; do not edit\nversion=1\nnode.id={node_id}\ncluster.id={cluster_id}\n"
    write_atomic(path, text.encode())
    return cluster_id


class ListenError(RuntimeError):
    """The HTTP address cannot be bound (in use, not local, no permission)."""


class Node:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.ready = False
        self.metrics = NodeMetrics()
        self.cluster_id = ""
        self.log_manager: LogManager | None = None
        self.store: LocalMetadataStore | None = None
        self.replicas: ReplicaManager | None = None
        self.cleaner = LogCleaner()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        data_dir = os.path.abspath(self.config.data_dir)
        os.makedirs(data_dir, exist_ok=True)
        self.cluster_id = check_meta_properties(data_dir, self.config.node_id, self.config.cluster_id)
        self._runner = web.AppRunner(build_app(self), access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = self.config.host_port
        try:
            await web.TCPSite(self._runner, host, port, reuse_address=True).start()
        except OSError as exc:
            raise ListenError(f"cannot listen on {self.config.listen}: {exc.strerror or exc}") from None
        log.info(
            "listening on http://%s:%d (node %d, cluster %s)",
            host,
            port,
            self.config.node_id,
            self.cluster_id,
        )
        loop = asyncio.get_running_loop()
        self.log_manager = await loop.run_in_executor(
            None, lambda: LogManager(os.path.join(data_dir, "logs"))
        )
        recovered = sum(1 for lg in self.log_manager.logs().values() if lg.load_report.recovered_segments)
        log.info(
            "loaded %d logs (%s shutdown, %d recovered)",
            len(self.log_manager.logs()),
            "clean" if self.log_manager.clean_shutdown else "unclean",
            recovered,
        )
        self.store = LocalMetadataStore(os.path.join(data_dir, "metadata"))
        self.replicas = ReplicaManager(self.config.node_id, self.log_manager, self.cleaner)
        me = self.store.image.brokers.get(self.config.node_id)
        if me is None or me.address != self.config.advertised:
            await self.store.propose(RegisterBroker(self.config.node_id, self.config.advertised))
        self.replicas.apply_image(self.store.image)
        self.store.subscribe(lambda old, new: self.replicas.apply_image(new))
        self.cleaner.start(self.config.cleaner_interval_ms / 1000)
        self._tasks = [
            asyncio.create_task(
                self._every(self.config.flush_check_interval_ms, self.log_manager.flush_dirty)
            ),
            asyncio.create_task(
                self._every(self.config.retention_check_interval_ms, self.replicas.run_retention)
            ),
        ]
        self.ready = True
        log.info("node %d ready", self.config.node_id)

    async def _every(self, interval_ms: int, work) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval_ms / 1000)
            try:
                await loop.run_in_executor(None, work)
            except Exception:
                log.exception("periodic %s failed", getattr(work, "__name__", work))

    async def stop(self) -> None:
        self.ready = False
        if self._runner is not None:
            await self._runner.cleanup()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.cleaner.stop()
        if self.log_manager is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.log_manager.shutdown)
        log.info("node %d stopped cleanly", self.config.node_id)

    # -- topic operations used by the API ------------------------------------------------------------

    async def create_topic(
        self, name: object, partitions: object, replication_factor: object, configs: object
    ) -> TopicInfo:
        topic_id = new_topic_id()
        try:
            command = plan_create_topic(
                self.store.image, name, partitions, replication_factor, configs, topic_id
            )
        except MetadataError as exc:
            raise ApiError(exc.error_code, exc.message) from None
        image = await self.store.propose(command)
        topic = image.topics.get(command.name)
        if topic is None or topic.topic_id != topic_id:
            raise ApiError(40901, f"topic {command.name!r} already exists")
        return topic

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
