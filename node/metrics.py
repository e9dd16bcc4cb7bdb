"""Prometheus metrics of one node (prometheus-client), on a registry of its own so that several nodes
can live in one process (tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "raftka_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "raftka_http_request_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.replica_fetches = Histogram(
            "raftka_replica_fetch_seconds",
            "Followers' fetches answered by this node as leader, from arrival to answer (long-poll included)",
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.bytes_in = Counter(
            "raftka_produced_bytes",
            "Record batch bytes appended by producers",
            ["topic"],
            registry=self.registry,
        )
        self.records_in = Counter(
            "raftka_produced_records", "Records appended by producers", ["topic"], registry=self.registry
        )
        self.bytes_out = Counter(
            "raftka_fetched_bytes",
            "Record batch bytes served to consumers",
            ["topic"],
            registry=self.registry,
        )
        self.log_end_offset = Gauge(
            "raftka_log_end_offset",
            "Log end offset per partition",
            ["topic", "partition"],
            registry=self.registry,
        )
        self.high_watermark = Gauge(
            "raftka_high_watermark",
            "High watermark per partition",
            ["topic", "partition"],
            registry=self.registry,
        )
        self.log_size = Gauge(
            "raftka_log_size_bytes",
            "Bytes on disk per partition",
            ["topic", "partition"],
            registry=self.registry,
        )

        self.metadata_offset = Gauge(
            "raftka_metadata_offset", "Metadata commands this node has applied", registry=self.registry
        )
        self.controller_active = Gauge(
            "raftka_controller_active", "1 on the active controller, else 0", registry=self.registry
        )
        self.raft_term = Gauge("raftka_raft_term", "Raft term this node knows", registry=self.registry)
        self.brokers = Gauge(
            "raftka_brokers", "Brokers in the metadata by status", ["status"], registry=self.registry
        )
        self.under_replicated = Gauge(
            "raftka_under_replicated_partitions",
            "Partitions whose ISR is smaller than their replica set",
            registry=self.registry,
        )
        self.offline_partitions = Gauge(
            "raftka_offline_partitions", "Partitions without a leader", registry=self.registry
        )

    def record_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def record_produce(self, topic: str, records: int, size: int) -> None:
        self.records_in.labels(topic).inc(records)
        self.bytes_in.labels(topic).inc(size)

    def record_fetch(self, topic: str, data: bytes) -> None:
        if data:
            self.bytes_out.labels(topic).inc(len(data))

    def render(self, replicas, node=None) -> tuple[bytes, str]:
        """The exposition text, with the gauges refreshed from the replicas (and the node's metadata) now."""
        if node is not None and node.store is not None:
            image = node.store.image
            self.metadata_offset.set(image.version)
            self.raft_term.set(node.store.raft_term())
            self.controller_active.set(1 if node.controller is not None and node.controller.active else 0)
            for status in ("active", "fenced", "shutting_down"):
                self.brokers.labels(status).set(sum(1 for b in image.brokers.values() if b.status == status))
            self.under_replicated.set(
                sum(1 for t in image.topics.values() for p in t.partitions if len(p.isr) < len(p.replicas))
            )
            self.offline_partitions.set(
                sum(1 for t in image.topics.values() for p in t.partitions if p.leader < 0)
            )
        for gauge in (self.log_end_offset, self.high_watermark, self.log_size):
            gauge.clear()
        for (topic, index), partition in list(replicas.partitions.items()):
            self.log_end_offset.labels(topic, str(index)).set(partition.log.log_end_offset)
            self.high_watermark.labels(topic, str(index)).set(partition.high_watermark)
            self.log_size.labels(topic, str(index)).set(partition.log.size_bytes)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
