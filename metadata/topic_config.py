"""Topic configs: the names a user may set, their defaults, and their validation.

Every topic config is stored as a string in the metadata (as Kafka stores them), validated once when a
topic is created or altered, and turned into a `storage.config.LogConfig` for the logs. Defaults are
Kafka's where they make sense; see docs/storage.md for the storage ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from storage.config import CleanupPolicy, FlushPolicy, LogConfig


class InvalidConfigError(ValueError):
    """A topic config name or value that is refused; the message names it."""


@dataclass(frozen=True, slots=True)
class ConfigDef:
    name: str
    default: str
    check: Callable[[str], object]
    doc: str


def _int(minimum: int, maximum: int = 2**63 - 1) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not minimum <= value <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum}")
        return value

    return parse


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be between 0 and 1")
    return value


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered not in ("true", "false"):
        raise ValueError("must be true or false")
    return lowered == "true"


def _enum(kind) -> Callable[[str], object]:
    def parse(text: str) -> object:
        try:
            return kind(text.replace(" ", ""))
        except ValueError:
            raise ValueError(f"must be one of {', '.join(v.value for v in kind)}") from None

    return parse


_DEFAULT_LOG = LogConfig()

CONFIGS: dict[str, ConfigDef] = {
    d.name: d
    for d in [
        ConfigDef(
            "retention.ms", str(_DEFAULT_LOG.retention_ms), _int(-1), "keep data this long; -1 = forever"
        ),
        ConfigDef(
            "retention.bytes",
            str(_DEFAULT_LOG.retention_bytes),
            _int(-1),
            "size limit per partition; -1 = none",
        ),
        ConfigDef(
            "segment.bytes", str(_DEFAULT_LOG.segment_bytes), _int(1024, 2**32 - 1), "segment file size"
        ),
        ConfigDef("segment.ms", str(_DEFAULT_LOG.segment_ms), _int(1), "roll a segment after this long"),
        ConfigDef(
            "cleanup.policy",
            _DEFAULT_LOG.cleanup_policy.value,
            _enum(CleanupPolicy),
            "delete, compact or both",
        ),
        ConfigDef("min.compaction.lag.ms", "0", _int(0), "records younger than this are not compacted"),
        ConfigDef(
            "delete.retention.ms", str(_DEFAULT_LOG.delete_retention_ms), _int(0), "tombstones live this long"
        ),
        ConfigDef("min.cleanable.dirty.ratio", "0.5", _ratio, "compact when this share of the log is dirty"),
        ConfigDef(
            "min.insync.replicas", "1", _int(1, 2**31 - 1), "acks=all needs this many in-sync replicas"
        ),
        ConfigDef(
            "max.message.bytes", str(_DEFAULT_LOG.max_message_bytes), _int(128, 2**31 - 1), "largest batch"
        ),
        ConfigDef(
            "unclean.leader.election.enable", "false", _bool, "elect out-of-sync replicas (loses data)"
        ),
        ConfigDef(
            "flush.policy", _DEFAULT_LOG.flush_policy.value, _enum(FlushPolicy), "batch, interval or os"
        ),
        ConfigDef(
            "flush.interval.ms",
            str(_DEFAULT_LOG.flush_interval_ms),
            _int(0),
            "fsync interval for flush.policy=interval",
        ),
    ]
}

_LOG_CONFIG_NAMES = {
    name for name in CONFIGS if name not in ("min.insync.replicas", "unclean.leader.election.enable")
}


def validate_configs(configs: object) -> dict[str, str]:
    """Check user-given configs; return them normalized to strings. Raises InvalidConfigError."""
    if not isinstance(configs, dict):
        raise InvalidConfigError("configs must be an object of name -> value")
    out: dict[str, str] = {}
    for name, raw in configs.items():
        definition = CONFIGS.get(name)
        if definition is None:
            raise InvalidConfigError(f"unknown topic config {name!r} (known: {', '.join(sorted(CONFIGS))})")
        if isinstance(raw, bool):
            text = "true" if raw else "false"
        elif isinstance(raw, int | float | str):
            text = str(raw)
        else:
            raise InvalidConfigError(
                f"topic config {name!r} must be a string or a number, got {type(raw).__name__}"
            )
        try:
            definition.check(text)
        except ValueError as exc:
            raise InvalidConfigError(f"topic config {name!r} has an invalid value {text!r}: {exc}") from None
        out[name] = text.replace(" ", "") if name == "cleanup.policy" else text
    return out


def effective_configs(configs: dict[str, str]) -> dict[str, str]:
    """Every known config with the topic's value or the default."""
    return {name: configs.get(name, d.default) for name, d in sorted(CONFIGS.items())}


def log_config(configs: dict[str, str]) -> LogConfig:
    """The storage settings of a topic with these (validated) configs."""
    return LogConfig.from_topic_configs({k: v for k, v in configs.items() if k in _LOG_CONFIG_NAMES})


def min_insync_replicas(configs: dict[str, str]) -> int:
    return int(configs.get("min.insync.replicas", CONFIGS["min.insync.replicas"].default))


def unclean_leader_election(configs: dict[str, str]) -> bool:
    return _bool(configs.get("unclean.leader.election.enable", "false"))
