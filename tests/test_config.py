"""LogConfig: Kafka-style names, defaults and refusal of bad values."""

from __future__ import annotations

import pytest

from storage.config import CleanupPolicy, FlushPolicy, LogConfig


def test_from_topic_configs_reads_dotted_names():
    config = LogConfig.from_topic_configs(
        {
            "retention.ms": "60000",
            "cleanup.policy": "compact,delete",
            "flush.policy": "batch",
            "segment.bytes": 4096,
        }
    )
    assert config.retention_ms == 60000
    assert config.cleanup_policy is CleanupPolicy.COMPACT_DELETE
    assert config.compact
    assert config.delete
    assert config.flush_policy is FlushPolicy.BATCH
    assert LogConfig.from_topic_configs(config.to_topic_configs()) == config


@pytest.mark.parametrize(
    ("configs", "message"),
    [
        ({"retention.mss": 1}, "unknown topic config 'retention.mss'"),
        ({"retention.ms": "soon"}, "invalid value"),
        ({"retention.ms": True}, "invalid value"),
        ({"cleanup.policy": "shred"}, "invalid value"),
        ({"segment.bytes": 10}, "segment.bytes must be at least 1024"),
        ({"min.cleanable.dirty.ratio": 2}, "min.cleanable.dirty.ratio"),
        ({"retention.bytes": -5}, "retention.bytes"),
    ],
)
def test_bad_values_are_named(configs, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        LogConfig.from_topic_configs(configs)


def test_defaults():
    config = LogConfig()
    assert config.flush_policy is FlushPolicy.INTERVAL
    assert config.flush_interval_ms == 1000
    assert config.cleanup_policy is CleanupPolicy.DELETE
    assert config.index_entries_max == 10 * 1024 * 1024 // 8
