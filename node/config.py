"""Node configuration: command-line flags, RAFTKA_* environment variables and a TOML file.

Precedence, highest first: a flag on the command line, the environment variable, the config file
(`--config`), the default. Every option has all three forms: `--data-dir`, `RAFTKA_DATA_DIR` and
`data_dir` in the file.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, fields


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

    @property
    def host_port(self) -> tuple[str, int]:
        return split_host_port(self.listen, "listen")

    @property
    def advertised(self) -> str:
        return self.advertise or self.listen


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
