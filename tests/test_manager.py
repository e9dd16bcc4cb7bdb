"""LogManager: discovery, checkpoints, the clean-shutdown marker, the directory lock, deletion."""

from __future__ import annotations

import os

import pytest

from storage.config import CleanupPolicy, FlushPolicy, LogConfig
from storage.manager import (
    CLEAN_SHUTDOWN_FILE,
    LOG_START_CHECKPOINT,
    RECOVERY_POINT_CHECKPOINT,
    DataDirLockedError,
    LogManager,
    read_checkpoint,
    validate_topic_name,
)
from tests.conftest import make_batch

SMALL = LogConfig(segment_bytes=2048, flush_policy=FlushPolicy.OS)


def test_logs_survive_a_clean_restart_with_checkpoints(tmp_path, clock):
    manager = LogManager(str(tmp_path), default_config=SMALL, clock=clock)
    for partition in range(3):
        log = manager.get_or_create_log("orders.v1", partition)
        for i in range(20 * (partition + 1)):
            log.append_as_leader(make_batch([f"{partition}-{i}"]), 0)
    manager.get_log("orders.v1", 1).advance_log_start_offset(5, upper_bound_offset=10)
    manager.shutdown()
    assert os.path.exists(tmp_path / CLEAN_SHUTDOWN_FILE)
    points = read_checkpoint(str(tmp_path / RECOVERY_POINT_CHECKPOINT))
    assert points == {("orders.v1", 0): 20, ("orders.v1", 1): 40, ("orders.v1", 2): 60}
    assert read_checkpoint(str(tmp_path / LOG_START_CHECKPOINT))[("orders.v1", 1)] == 5

    manager = LogManager(str(tmp_path), default_config=SMALL, clock=clock)
    assert manager.clean_shutdown
    assert not os.path.exists(tmp_path / CLEAN_SHUTDOWN_FILE)  # a crash from now on is unclean
    assert sorted(manager.logs()) == [("orders.v1", 0), ("orders.v1", 1), ("orders.v1", 2)]
    assert manager.get_log("orders.v1", 2).log_end_offset == 60
    assert manager.get_log("orders.v1", 1).log_start_offset == 5
    assert all(log.load_report.recovered_segments == 0 for log in manager.logs().values())
    manager.shutdown()


def test_unclean_restart_recovers_from_the_checkpointed_recovery_point(tmp_path, clock):
    manager = LogManager(str(tmp_path), default_config=SMALL, clock=clock)
    log = manager.get_or_create_log("t", 0)
    for i in range(100):
        log.append_as_leader(make_batch([f"v{i}"]), 0)
    log.flush()
    manager.checkpoint()
    for i in range(100, 120):
        log.append_as_leader(make_batch([f"v{i}"]), 0)
    manager.close_unclean()
    manager = LogManager(str(tmp_path), default_config=SMALL, clock=clock)
    assert not manager.clean_shutdown
    log = manager.get_log("t", 0)
    assert log.log_end_offset == 120
    assert 1 <= log.load_report.recovered_segments < len(log.segments)
    manager.shutdown()


def test_a_second_process_is_refused(tmp_path, clock):
    manager = LogManager(str(tmp_path), clock=clock)
    with pytest.raises(DataDirLockedError, match="in use"):
        LogManager(str(tmp_path), clock=clock)
    manager.shutdown()
    LogManager(str(tmp_path), clock=clock).shutdown()


def test_delete_log_and_leftover_delete_dirs(tmp_path, clock):
    manager = LogManager(str(tmp_path), default_config=SMALL, clock=clock)
    manager.get_or_create_log("gone", 0).append_as_leader(make_batch(["x"]), 0)
    assert manager.delete_log("gone", 0)
    assert not manager.delete_log("gone", 0)
    assert manager.get_log("gone", 0) is None
    assert not os.path.exists(tmp_path / "gone-0")
    manager.shutdown()
    (tmp_path / "half-0.delete").mkdir()
    (tmp_path / "not a log").mkdir()
    manager = LogManager(str(tmp_path), default_config=SMALL, clock=clock)
    assert not os.path.exists(tmp_path / "half-0.delete")
    assert manager.logs() == {}
    manager.shutdown()


def test_topic_configs_per_topic_and_updates(tmp_path, clock):
    compacted = SMALL.replace(cleanup_policy=CleanupPolicy.COMPACT)
    manager = LogManager(
        str(tmp_path),
        default_config=SMALL,
        config_for=lambda t: compacted if t == "c" else SMALL,
        clock=clock,
    )
    assert manager.get_or_create_log("c", 0).config.compact
    assert not manager.get_or_create_log("d", 0).config.compact
    manager.update_config("d", compacted)
    assert manager.get_log("d", 0).config.compact
    manager.shutdown()


def test_retention_and_flush_sweeps(tmp_path, clock):
    config = LogConfig(
        segment_bytes=2048, retention_bytes=2048, flush_policy=FlushPolicy.INTERVAL, flush_interval_ms=100
    )
    manager = LogManager(str(tmp_path), default_config=config, clock=clock)
    log = manager.get_or_create_log("r", 0)
    for i in range(200):
        log.append_as_leader(make_batch([f"value-{i:05d}"]), 0)
    assert manager.run_retention(lambda topic, partition: 0) == 0
    assert manager.run_retention(lambda topic, partition: log.log_end_offset) > 0
    assert read_checkpoint(str(tmp_path / LOG_START_CHECKPOINT))[("r", 0)] == log.log_start_offset > 0
    clock.advance(200)
    log.append_as_leader(make_batch(["late"]), 0)  # interval passed: this append flushes
    log.append_as_leader(make_batch(["later"]), 0)
    clock.advance(200)
    assert manager.flush_dirty() == 1
    assert log.recovery_point == log.log_end_offset
    manager.shutdown()


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        ("..", "not allowed"),
        ("a" * 250, "limit"),
        ("bad/name", "may only hold"),
        ("sp ace", "may only hold"),
    ],
)
def test_topic_names_are_checked(tmp_path, clock, name, problem):
    with pytest.raises(ValueError, match=problem):
        validate_topic_name(name)
    manager = LogManager(str(tmp_path), clock=clock)
    with pytest.raises(ValueError, match=problem):
        manager.get_or_create_log(name, 0)
    manager.shutdown()


def test_malformed_checkpoints_read_as_empty(tmp_path):
    path = tmp_path / RECOVERY_POINT_CHECKPOINT
    path.write_text("0\n3\nt 0 5\n")
    assert read_checkpoint(str(path)) == {}


def test_a_log_of_an_older_topic_with_the_same_name_is_replaced(tmp_path):
    """A topic deleted and created again while a node was away: its old log must not serve the new topic."""
    manager = LogManager(str(tmp_path))
    manager.get_or_create_log("reborn", 0, topic_id="old-id").append_as_leader(make_batch(["old"]), 0)
    assert manager.get_or_create_log("reborn", 0, topic_id="old-id").log_end_offset == 1  # same topic: kept
    manager.shutdown()
    manager = LogManager(str(tmp_path))
    assert manager.get_log("reborn", 0).log_end_offset == 1
    fresh = manager.get_or_create_log("reborn", 0, topic_id="new-id")
    assert fresh.log_end_offset == 0
    manager.shutdown()
    manager = LogManager(str(tmp_path))
    assert manager.get_or_create_log("reborn", 0, topic_id="new-id").log_end_offset == 0
    assert manager.get_or_create_log("reborn", 0, topic_id="new-id") is manager.get_log("reborn", 0)
    manager.shutdown()
