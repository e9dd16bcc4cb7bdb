"""Metadata: commands applied purely and deterministically, the controller's plans, topic configs and
the single-node store."""

from __future__ import annotations

import asyncio

import pytest

from metadata.commands import (
    AlterConfigs,
    CreatePartitions,
    CreateTopic,
    DeleteTopic,
    MetadataError,
    RegisterBroker,
    apply,
    assign_replicas,
    command_from_dict,
    command_to_dict,
    plan_alter_configs,
    plan_create_partitions,
    plan_create_topic,
    plan_delete_topic,
)
from metadata.image import MetadataImage
from metadata.store import LocalMetadataStore
from metadata.topic_config import effective_configs, log_config, validate_configs
from storage.config import CleanupPolicy


def cluster(*ids: int) -> MetadataImage:
    image = MetadataImage()
    for node_id in ids:
        image = apply(image, RegisterBroker(node_id, f"127.0.0.1:{9000 + node_id}"))
    return image


def test_apply_is_deterministic_and_versioned():
    commands = [
        RegisterBroker(1, "a:1"),
        RegisterBroker(2, "b:2"),
        CreateTopic("t", "id1", {"retention.ms": "5"}, ((1, 2), (2, 1))),
        CreatePartitions("t", "id1", ((1, 2),)),
        AlterConfigs("t", "id1", {"retention.ms": "9"}),
    ]
    images = []
    for _ in range(2):
        image = MetadataImage()
        for command in commands:
            image = apply(image, command_from_dict(command_to_dict(command)))
        images.append(image)
    assert images[0] == images[1]
    image = images[0]
    assert image.version == 5
    topic = image.topics["t"]
    assert [p.leader for p in topic.partitions] == [1, 2, 1]
    assert topic.partitions[0].isr == (1, 2)
    assert dict(topic.configs) == {"retention.ms": "9"}
    assert image.brokers[2].epoch == 2  # each registration is a new incarnation
    assert MetadataImage.from_dict(image.to_dict()) == image


def test_commands_that_no_longer_fit_change_nothing_but_the_version():
    image = apply(cluster(1), CreateTopic("t", "id1", {}, ((1,),)))
    again = apply(image, CreateTopic("t", "id2", {}, ((1,),)))
    assert again.topics == image.topics
    assert again.version == image.version + 1
    stale = apply(image, DeleteTopic("t", "other-id"))  # a recreated topic is not deleted by an old command
    assert "t" in stale.topics
    assert "t" not in apply(image, DeleteTopic("t", "id1")).topics
    assert apply(image, CreatePartitions("missing", "x", ((1,),))).topics == image.topics


def test_placement_spreads_leaders_and_replicas():
    assignments = assign_replicas([3, 1, 2], 4, 2, 0)
    assert assignments == ((1, 2), (2, 3), (3, 1), (1, 2))
    for replicas in assignments:
        assert len(set(replicas)) == 2


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (("bad name!", 1, 1, None), 42201, "topic name"),
        ((5, 1, 1, None), 42201, "name must be a string"),
        (("t", 0, 1, None), 42201, "partitions"),
        (("t", True, 1, None), 42201, "partitions must be an integer"),
        (("t", 1, 2, None), 42201, "replication_factor 2"),
        (("t", 1, 1, {"nope": 1}), 42201, "unknown topic config 'nope'"),
        (("t", 1, 1, {"min.insync.replicas": 2}), 42201, "min.insync.replicas 2"),
        (("t", 1, 1, ["retention.ms"]), 42201, "configs must be an object"),
        (("exists", 1, 1, None), 40901, "already exists"),
    ],
)
def test_plan_create_topic_refusals(args, code, fragment):
    image = apply(cluster(1), CreateTopic("exists", "id", {}, ((1,),)))
    with pytest.raises(MetadataError) as error:
        plan_create_topic(image, *args, topic_id="new")
    assert error.value.error_code == code
    assert fragment in error.value.message


def test_plans_for_existing_topics():
    image = cluster(1, 2, 3)
    image = apply(image, plan_create_topic(image, "t", 3, 2, {"cleanup.policy": "compact"}, "id"))
    grow = plan_create_partitions(image, "t", 5)
    assert len(grow.assignments) == 2
    with pytest.raises(MetadataError, match="only grow"):
        plan_create_partitions(image, "t", 2)
    alter = plan_alter_configs(image, "t", {"retention.ms": 10}, ["cleanup.policy"])
    assert alter.configs == {"retention.ms": "10"}
    with pytest.raises(MetadataError, match="unknown topic config 'x' in delete"):
        plan_alter_configs(image, "t", None, ["x"])
    with pytest.raises(MetadataError, match=r"min\.insync\.replicas 3"):
        plan_alter_configs(image, "t", {"min.insync.replicas": 3}, None)
    with pytest.raises(MetadataError) as missing:
        plan_delete_topic(image, "nope")
    assert missing.value.error_code == 40401


def test_topic_configs():
    checked = validate_configs(
        {"retention.ms": 100, "cleanup.policy": "compact, delete", "unclean.leader.election.enable": True}
    )
    assert checked == {
        "retention.ms": "100",
        "cleanup.policy": "compact,delete",
        "unclean.leader.election.enable": "true",
    }
    config = log_config(checked)
    assert config.retention_ms == 100
    assert config.cleanup_policy is CleanupPolicy.COMPACT_DELETE
    assert effective_configs({})["min.insync.replicas"] == "1"
    with pytest.raises(ValueError, match=r"segment\.bytes"):
        validate_configs({"segment.bytes": 10})
    with pytest.raises(ValueError, match="must be a string or a number"):
        validate_configs({"retention.ms": [1]})


def test_local_store_persists_and_notifies(tmp_path):
    store = LocalMetadataStore(str(tmp_path))
    seen = []
    store.subscribe(lambda old, new: seen.append((old.version, new.version)))
    asyncio.run(store.propose(RegisterBroker(1, "a:1")))
    asyncio.run(store.propose(CreateTopic("t", "id", {}, ((1,),))))
    assert seen == [(0, 1), (1, 2)]
    reopened = LocalMetadataStore(str(tmp_path))
    assert reopened.image == store.image
