"""Node configuration: command-line flags, RAFTKA_* environment variables and a TOML file.

Precedence, highest first: a flag on the command line, the environment variable, the config file
(`--config`), the default. Every option has all three forms: `--data-dir`, `RAFTKA_DATA_DIR` and
`data_dir` in the file.
"""

from __future__ import annotations

import argparse
import functools
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: int = 1
    data_dir: str = "./data"
    listen: str = "127.0.0.1:9092"
    advertise: str | None = None  # the address other nodes and clients use; defaults to `listen`
    auto_create_topics: bool = False
    default_partitions: int = 1
    default_replication_factor: int = 1
    # Upper bound of one HTTP request body (Kafka's socket.request.max.bytes is 100 MB; one node
    # buffers whole bodies in memory, so the default is smaller).
    max_request_bytes: int = 16 * 1024 * 1024
    # Longest long-poll a fetch may ask for (Kafka's fetch.max.wait.ms default is 500; clients ask).
    fetch_wait_max_ms: int = 30_000
    fetch_bytes_max: int = 64 * 1024 * 1024
    retention_check_interval_ms: int = 60_000  # Kafka's log.retention.check.interval.ms is 5 minutes
    flush_check_interval_ms: int = 200
    cleaner_interval_ms: int = 15_000  # Kafka's log.cleaner.backoff.ms
    log_level: str = "info"
    log_format: str = "text"  # text | json
    cluster_id: str | None = None
    # -- the cluster (see docs/cluster.md) ------------------------------------------------------
    # Where this node's Raft endpoint binds; defaults to its own entry in `controllers`, or
    # 127.0.0.1:9093 for the single-node default.
    raft_listen: str | None = None
    # The fixed voter set, "1@host:port,2@host:port,3@host:port" (KRaft's controller.quorum.voters).
    # Unset: this node alone is the quorum (the single-node default).
    controllers: str | None = None
    roles: str = "controller,broker"  # or "broker": follows the metadata without voting
    # "auto": controller,broker when node_id is in `controllers`, else broker (one pod template, k8s/).
    rack: str | None = None
    # Authenticates and encrypts Raft traffic; required when the quorum has more than one node.
    raft_password: str | None = None
    raft_password_file: str | None = None
    heartbeat_interval_ms: int = 1000  # broker -> controller (Kafka: broker.heartbeat.interval.ms 2000)
    session_timeout_ms: int = 6000  # fenced after this without a heartbeat (Kafka: 9000)
    controlled_shutdown_timeout_ms: int = 15_000
    preferred_election_interval_ms: int = 60_000  # 0 turns the periodic election off
    # -- replication (see docs/replication.md) ---------------------------------------------------
    # A follower that has not caught up with the leader's log end for this long leaves the ISR
    # (Kafka's replica.lag.time.max.ms is 30000; shorter here, for small clusters and experiments).
    replica_lag_time_max_ms: int = 10_000
    replica_fetch_wait_max_ms: int = 500  # a follower's long-poll (Kafka's replica.fetch.wait.max.ms)
    replica_fetch_max_bytes: int = 1024 * 1024  # per partition (Kafka's replica.fetch.max.bytes)
    # How long an acks=all produce waits for the in-sync replicas unless it asks (?timeout_ms=).
    produce_timeout_ms: int = 30_000
    # An idempotent producer's state (its last five batches per partition) is forgotten this long after
    # its last batch's timestamp (Kafka's producer.id.expiration.ms, one day). A producer silent for
    # longer must start again at sequence 0 (its client does so on 42204).
    producer_id_expiration_ms: int = 24 * 60 * 60 * 1000
    # -- consumer groups (see docs/groups.md) ----------------------------------------------------
    # Kafka's group.consumer.heartbeat.interval.ms is 5000 and session 45000; shorter here so that a
    # clean rebalance settles within half a second (members learn of it at their next heartbeat) and a
    # dead member is noticed in 10 s, at 2 requests per second per member (docs/groups.md).
    group_heartbeat_interval_ms: int = 500
    group_session_timeout_ms: int = 10_000
    # A member that keeps a partition it was told to give up this long is removed from its group.
    group_rebalance_timeout_ms: int = 30_000
    # The internal topic __consumer_offsets, made by the first group request (Kafka: 50 partitions,
    # replication factor 3; the replication factor is capped by the active brokers at creation).
    offsets_topic_partitions: int = 10
    offsets_topic_replication_factor: int = 3
    offsets_topic_min_insync_replicas: int = 2
    # Raft election timeouts (pysyncobj's raftMinTimeout/raftMaxTimeout, in ms).
    raft_election_min_ms: int = 400
    raft_election_max_ms: int = 1400
    # For fault experiments (docs/reliability.md): "ADDRESS=VIA,..." makes this node dial VIA whenever it
    # would connect to ADDRESS, a controller's Raft address or a broker's advertised HTTP address. The
    # chaos tooling points each node-to-node link at its own proxy this way; clients are not affected
    # and the other nodes still know this node by its own addresses.
    connect_via: str | None = None

    @property
    def host_port(self) -> tuple[str, int]:
        return split_host_port(self.listen, "listen")

    @property
    def advertised(self) -> str:
        return self.advertise or self.listen

    @property
    def role_set(self) -> frozenset[str]:
        return frozenset(r.strip() for r in self.roles.split(",") if r.strip())

    @property
    def is_controller(self) -> bool:
        return "controller" in self.role_set

    @property
    def voters(self) -> dict[int, str]:
        """Voter node id -> Raft address."""
        if not self.controllers:
            return {self.node_id: self.raft_listen or DEFAULT_RAFT_LISTEN}
        return parse_controllers(self.controllers)

    @property
    def raft_bind(self) -> str | None:
        if not self.is_controller:
            return None
        return self.raft_listen or self.voters[self.node_id]

    @property
    def routes(self) -> Mapping[str, str]:
        """`connect_via` as {address: address to dial instead} (parsed once per text)."""
        return _parsed_routes(self.connect_via) if self.connect_via else {}

    def dial(self, address: str) -> str:
        """The address this node connects to when it wants to reach `address`."""
        return self.routes.get(address, address) if self.connect_via else address

    def password(self) -> str | None:
        """The Raft password from --raft-password or the file --raft-password-file names."""
        if self.raft_password:
            return self.raft_password
        if self.raft_password_file:
            with open(self.raft_password_file, encoding="utf-8") as handle:
                return handle.read().strip() or None
        return None


DEFAULT_RAFT_LISTEN = "127.0.0.1:9093"
ROLES = ("controller,broker", "broker")


def parse_controllers(text: str) -> dict[int, str]:
    """ "1@host:port,2@host:port" -> {1: "host:port", 2: "host:port"}; ValueError naming the bad part."""
    voters: dict[int, str] = {}
    for part in (p.strip() for p in text.split(",")):
        node, sep, address = part.partition("@")
        if not sep or not node.strip().isdigit():
            raise ValueError(f"controllers: {part!r} is not ID@HOST:PORT (e.g. 1@127.0.0.1:9093)")
        split_host_port(address, f"controllers entry {part!r}")
        if int(node) in voters:
            raise ValueError(f"controllers: node id {node} is listed twice")
        if address in voters.values():
            raise ValueError(f"controllers: address {address} is listed twice")
        voters[int(node)] = address.strip()
    return voters


def parse_connect_via(text: str) -> dict[str, str]:
    """ "h:p=h2:p2,..." -> {"h:p": "h2:p2"}; ValueError naming the bad part."""
    routes: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        address, sep, via = (side.strip() for side in part.partition("="))
        if not sep:
            raise ValueError(
                f"connect_via: {part!r} is not ADDRESS=VIA (e.g. 127.0.0.1:9093=127.0.0.1:21001)"
            )
        split_host_port(address, f"connect_via entry {part!r}")
        split_host_port(via, f"connect_via entry {part!r}")
        if address in routes:
            raise ValueError(f"connect_via: {address} is listed twice")
        routes[address] = via
    return routes


@functools.lru_cache(maxsize=16)
def _parsed_routes(text: str) -> Mapping[str, str]:
    """`parse_connect_via`, read-only and kept: `dial` runs on every node-to-node request."""
    return MappingProxyType(parse_connect_via(text))


def split_host_port(value: str, name: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{name} must be HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


_BOOLEAN_TEXT = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def _convert(label: str, kind: type, raw: object) -> object:
    """`raw` as the option's type; `label` names where it came from (flag, variable or file key)."""
    if isinstance(raw, str):
        text = raw.strip()
        if kind is bool:
            if text.lower() not in _BOOLEAN_TEXT:
                raise ValueError(f"{label} must be true or false, got {raw!r}")
            return _BOOLEAN_TEXT[text.lower()]
        if kind is int:
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"{label} must be an integer, got {raw!r}") from None
        return text
    if kind is bool and isinstance(raw, bool):
        return raw
    if kind is int and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    raise ValueError(f"{label} has the wrong type ({type(raw).__name__})")


def _field_kinds() -> dict[str, type]:
    kinds = {}
    for f in fields(NodeConfig):
        annotation = str(f.type)
        kinds[f.name] = bool if annotation == "bool" else int if annotation == "int" else str
    return kinds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raftka node", description="Run a Raftka node.")
    parser.add_argument("--config", help="TOML file with options (keys as the flags, with _ for -)")
    for f in fields(NodeConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"(env RAFTKA_{f.name.upper()}; default {f.default})"
        if f.name == "auto_create_topics":
            parser.add_argument(flag, nargs="?", const="true", default=None, help=help_text)
        else:
            parser.add_argument(flag, default=None, help=help_text)
    return parser


def load_config(argv: list[str], environ: dict[str, str] | None = None) -> NodeConfig:
    """Flags over environment over file over defaults. Raises ValueError naming the bad option."""
    environ = dict(os.environ if environ is None else environ)
    args = build_parser().parse_args(argv)
    kinds = _field_kinds()
    values: dict[str, object] = {}
    config_path = args.config or environ.get("RAFTKA_CONFIG")
    if config_path:
        try:
            with open(config_path, "rb") as handle:
                document = tomllib.load(handle)
        except OSError as exc:
            raise ValueError(f"cannot read config file {config_path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config file {config_path} is not valid TOML: {exc}") from None
        for key, raw in document.items():
            name = key.replace("-", "_")
            if name not in kinds:
                raise ValueError(f"config file {config_path}: unknown option {key!r}")
            values[name] = _convert(f"{key} in {config_path}", kinds[name], raw)
    for name, kind in kinds.items():
        env_name = f"RAFTKA_{name.upper()}"
        if env_name in environ:
            values[name] = _convert(env_name, kind, environ[env_name])
    for name, kind in kinds.items():
        raw = getattr(args, name)
        if raw is not None:
            values[name] = _convert("--" + name.replace("_", "-"), kind, raw)
    config = NodeConfig(**values)  # type: ignore[arg-type]
    if config.roles.strip() == "auto":
        config = replace(config, roles="controller,broker" if config.node_id in config.voters else "broker")
    _validate(config)
    return config


def _validate(config: NodeConfig) -> None:
    config.host_port  # noqa: B018 - raises ValueError for a bad address
    if config.advertise:
        split_host_port(config.advertise, "advertise")
    if config.node_id < 0:
        raise ValueError(f"node_id must be >= 0, got {config.node_id}")
    if config.log_format not in ("text", "json"):
        raise ValueError(f"log_format must be text or json, got {config.log_format!r}")
    if config.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ValueError(f"log_level must be debug, info, warning or error, got {config.log_level!r}")
    for name in ("default_partitions", "default_replication_factor", "max_request_bytes", "fetch_bytes_max"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1")
    roles = ",".join(sorted(config.role_set, key=lambda r: r != "controller"))
    if roles not in ROLES:
        raise ValueError(f"roles must be controller,broker or broker, got {config.roles!r}")
    if config.raft_listen:
        split_host_port(config.raft_listen, "raft_listen")
    if not config.is_controller and not config.controllers:
        raise ValueError("a --roles broker node needs --controllers to find the metadata quorum")
    voters = config.voters  # raises ValueError for a malformed list
    if config.is_controller and config.node_id not in voters:
        raise ValueError(
            f"node {config.node_id} is not in controllers ({config.controllers}): list it there, "
            "or start it with --roles broker to follow the metadata without voting"
        )
    if not config.is_controller and config.node_id in voters:
        raise ValueError(f"node {config.node_id} is listed in controllers but started with --roles broker")
    if (len(voters) > 1 or not config.is_controller) and not (
        config.raft_password or config.raft_password_file
    ):
        raise ValueError(
            "a cluster needs a Raft password (--raft-password, RAFTKA_RAFT_PASSWORD or --raft-password-file): "
            "Raft messages are unpickled by their receiver, so unauthenticated peers must be refused"
        )
    if config.raft_password_file and not os.path.isfile(config.raft_password_file):
        raise ValueError(f"raft_password_file {config.raft_password_file} does not exist")
    if not 10 <= config.group_heartbeat_interval_ms < config.group_session_timeout_ms:
        raise ValueError("group_heartbeat_interval_ms must be at least 10 and below group_session_timeout_ms")
    if config.group_rebalance_timeout_ms < config.group_heartbeat_interval_ms:
        raise ValueError("group_rebalance_timeout_ms must be at least group_heartbeat_interval_ms")
    for name in (
        "offsets_topic_partitions",
        "offsets_topic_replication_factor",
        "offsets_topic_min_insync_replicas",
    ):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1")
    if config.producer_id_expiration_ms < 1000:
        raise ValueError("producer_id_expiration_ms must be at least 1000")
    if config.heartbeat_interval_ms < 50 or config.session_timeout_ms < 2 * config.heartbeat_interval_ms:
        raise ValueError("session_timeout_ms must be at least twice heartbeat_interval_ms (>= 50)")
    config.routes  # noqa: B018 - raises ValueError for a malformed connect_via
    if not 50 <= config.raft_election_min_ms < config.raft_election_max_ms:
        raise ValueError("raft_election_min_ms must be at least 50 and below raft_election_max_ms")
