"""Metadata: commands applied purely and deterministically, controller fencing by epoch, rack-aware
placement, the controller's plans and topic configs.

The property test at the end draws arbitrary command sequences whose ids, epochs and partitions are
picked mostly from the image they are applied to, so most commands hit real brokers and partitions and
many are exactly one epoch off; it checks that `apply` never needs its exception fallback, that what
`apply` itself guarantees holds after every command, and that replaying the sequence (also through the
JSON form) gives the same image.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from unittest import mock

import orjson
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from metadata import commands as commands_module
from metadata.commands import (
    COMMANDS,
    ActivateController,
    AllocateProducerIds,
    AlterConfigs,
    ChangePartitions,
    ControlledShutdown,
    CreatePartitions,
    CreateTopic,
    DeleteTopic,
    FenceBroker,
    MetadataError,
    PartitionChange,
    RegisterBroker,
    UnfenceBroker,
    apply,
    assign_replicas,
    command_from_dict,
    command_to_dict,
    plan_alter_configs,
    plan_create_partitions,
    plan_create_topic,
    plan_delete_topic,
)
from metadata.controller import changes_without
from metadata.image import NO_LEADER, BrokerInfo, MetadataImage
from metadata.topic_config import effective_configs, log_config, validate_configs
from storage.config import CleanupPolicy


def cluster(*ids: int, racks: dict[int, str] | None = None, controller_epoch: int = 0) -> MetadataImage:
    """Brokers `ids`, registered and unfenced (active), under a controller of `controller_epoch`."""
    image = MetadataImage()
    if controller_epoch:
        image = apply(image, ActivateController(100, controller_epoch))
    for node_id in ids:
        rack = (racks or {}).get(node_id)
        image = apply(
            image,
            RegisterBroker(node_id, f"127.0.0.1:{9000 + node_id}", rack, controller_epoch=controller_epoch),
        )
        image = apply(image, UnfenceBroker(node_id, image.brokers[node_id].epoch, controller_epoch))
    return image


def same_but_version(before: MetadataImage, after: MetadataImage) -> bool:
    return after == replace(before, version=before.version + 1)


def partition(image: MetadataImage, name: str, index: int = 0):
    return image.topics[name].partitions[index]


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
    assert MetadataImage.from_dict(orjson.loads(orjson.dumps(image.to_dict()))) == image


def test_commands_that_no_longer_fit_change_nothing_but_the_version():
    image = apply(cluster(1), CreateTopic("t", "id1", {}, ((1,),)))
    again = apply(image, CreateTopic("t", "id2", {}, ((1,),)))
    assert same_but_version(image, again)
    stale = apply(image, DeleteTopic("t", "other-id"))  # a recreated topic is not deleted by an old command
    assert same_but_version(image, stale)
    assert "t" not in apply(image, DeleteTopic("t", "id1")).topics
    assert same_but_version(image, apply(image, CreatePartitions("missing", "x", ((1,),))))
    assert same_but_version(image, apply(image, CreatePartitions("t", "other-id", ((1,),))))
    assert same_but_version(image, apply(image, AlterConfigs("t", "other-id", {"retention.ms": "1"})))


# -- controller epochs ----------------------------------------------------------------------------------


def test_activate_controller_epochs_only_grow():
    image = apply(MetadataImage(), ActivateController(1, 3, cluster_id="first"))
    assert (image.controller_id, image.controller_epoch, image.cluster_id) == (1, 3, "first")
    for stale in (ActivateController(2, 2), ActivateController(2, 3), ActivateController(1, 0)):
        assert same_but_version(image, apply(image, stale)), stale
    newer = apply(image, ActivateController(2, 7, cluster_id="second"))  # terms may skip numbers
    assert (newer.controller_id, newer.controller_epoch) == (2, 7)
    assert newer.cluster_id == "first"  # chosen once, by the first controller
    assert newer.version == image.version + 1


def _epoch_image() -> MetadataImage:
    """Controller epoch 2; brokers 1, 2, 3 active; topic t (RF 2, two partitions) and u."""
    image = cluster(1, 2, 3, controller_epoch=2)
    image = apply(image, CreateTopic("t", "id-t", {}, ((1, 2), (2, 3)), 2))
    return apply(image, CreateTopic("u", "id-u", {}, ((3,),), 2))


def _move_leader(image: MetadataImage) -> tuple:
    p = partition(image, "t")
    return (PartitionChange("id-t", 0, 2, p.leader_epoch + 1, (2,), p.partition_epoch + 1),)


# Every command that carries a controller epoch, built against the image for a given epoch.
EPOCH_FENCED = {
    "RegisterBroker": lambda image, e: RegisterBroker(4, "d:4", "r", controller_epoch=e),
    "FenceBroker": lambda image, e: FenceBroker(1, image.brokers[1].epoch, e, _move_leader(image)),
    "UnfenceBroker": lambda image, e: UnfenceBroker(1, image.brokers[1].epoch, e),
    "ControlledShutdown": lambda image, e: ControlledShutdown(1, image.brokers[1].epoch, e),
    "ChangePartitions": lambda image, e: ChangePartitions(_move_leader(image), e),
    "AllocateProducerIds": lambda image, e: AllocateProducerIds(1, image.brokers[1].epoch, 1000, e),
    "CreateTopic": lambda image, e: CreateTopic("v", "id-v", {}, ((1,),), e),
    "DeleteTopic": lambda image, e: DeleteTopic("t", "id-t", e),
    "CreatePartitions": lambda image, e: CreatePartitions("t", "id-t", ((3, 1),), e),
    "AlterConfigs": lambda image, e: AlterConfigs("t", "id-t", {"retention.ms": "1"}, e),
}


def test_every_controller_command_is_epoch_fenced():
    assert set(EPOCH_FENCED) == set(COMMANDS) - {"ActivateController"}


@pytest.mark.parametrize("name", sorted(EPOCH_FENCED))
def test_commands_of_another_controller_epoch_are_ignored(name):
    image = _epoch_image()
    if name == "UnfenceBroker":
        image = apply(image, FenceBroker(1, image.brokers[1].epoch, 2, _move_leader(image)))
    build = EPOCH_FENCED[name]
    current = apply(image, build(image, 2))
    assert not same_but_version(image, current), f"{name} of the current epoch must change the image"
    for epoch in (0, 1, 3):  # a deposed controller, an older one, one not activated yet
        assert same_but_version(image, apply(image, build(image, epoch))), f"{name} of epoch {epoch}"


def test_commands_before_any_activation_use_epoch_zero():
    image = apply(MetadataImage(), RegisterBroker(1, "a:1"))
    assert 1 in image.brokers
    activated = apply(image, ActivateController(1, 1))
    assert same_but_version(activated, apply(activated, RegisterBroker(2, "b:2")))


# -- brokers --------------------------------------------------------------------------------------------


def test_register_broker_is_a_new_fenced_incarnation():
    image = apply(
        apply(MetadataImage(), ActivateController(1, 1)), RegisterBroker(5, "x", controller_epoch=1)
    )
    image = apply(image, RegisterBroker(1, "h:1", "rack-a", ("broker",), 1))
    broker = image.brokers[1]
    assert broker.epoch == image.version == 3  # the version that registered it
    assert broker == BrokerInfo(1, "h:1", "rack-a", 3, fenced=True, shutting_down=False, roles=("broker",))
    assert broker.status == "fenced"
    assert not broker.active
    assert image.active_brokers() == []

    image = apply(image, UnfenceBroker(1, 3, 1))
    image = apply(image, ControlledShutdown(1, 3, 1))
    assert image.brokers[1].status == "shutting_down"
    again = apply(image, RegisterBroker(1, "h:2", None, controller_epoch=1))
    assert again.brokers[1] == BrokerInfo(1, "h:2", None, again.version, fenced=True)
    assert again.brokers[1].epoch > broker.epoch


def test_register_broker_applies_its_changes_first():
    image = _epoch_image()
    p = partition(image, "t")
    change = PartitionChange("id-t", 0, 2, p.leader_epoch + 1, (2,), p.partition_epoch + 1)
    image = apply(image, RegisterBroker(1, "a:2", controller_epoch=2, changes=(change,)))
    moved = partition(image, "t")
    assert (moved.leader, moved.isr, moved.partition_epoch) == (2, (2,), p.partition_epoch + 1)
    assert image.brokers[1].fenced


def test_broker_status_and_activity():
    assert BrokerInfo(1, "a").active
    assert BrokerInfo(1, "a").status == "active"
    assert not BrokerInfo(1, "a", fenced=True).active
    assert not BrokerInfo(1, "a", shutting_down=True).active
    assert BrokerInfo(1, "a", shutting_down=True).status == "shutting_down"
    assert BrokerInfo(1, "a", fenced=True, shutting_down=True).status == "fenced"


def test_fence_unfence_and_controlled_shutdown():
    image = _epoch_image()
    epoch = image.brokers[1].epoch
    fenced = apply(image, FenceBroker(1, epoch, 2, _move_leader(image)))
    assert fenced.brokers[1].fenced
    assert (partition(fenced, "t").leader, partition(fenced, "t").isr) == (2, (2,))
    assert fenced.active_brokers() == [2, 3]
    unfenced = apply(fenced, UnfenceBroker(1, epoch, 2))
    assert unfenced.brokers[1].active
    assert unfenced.brokers[1].epoch == epoch  # the same incarnation
    leaving = apply(unfenced, ControlledShutdown(1, epoch, 2))
    assert leaving.brokers[1].shutting_down
    assert not leaving.brokers[1].fenced
    assert leaving.active_brokers() == [2, 3]


def test_producer_id_blocks_follow_each_other():
    image = _epoch_image()
    image = apply(image, AllocateProducerIds(1, image.brokers[1].epoch, 1000, 2))
    image = apply(image, AllocateProducerIds(2, image.brokers[2].epoch, 50, 2))
    assert image.next_producer_id == 1050


@pytest.mark.parametrize("kind", [FenceBroker, UnfenceBroker, ControlledShutdown, AllocateProducerIds])
def test_broker_commands_of_an_old_incarnation_are_ignored(kind):
    image = _epoch_image()
    old_epoch = image.brokers[1].epoch
    changes = _move_leader(image)
    # A new incarnation, registered as the controller does it: its old places move away first.
    image = apply(image, RegisterBroker(1, "a:2", controller_epoch=2, changes=changes_without(image, 1)))
    new_epoch = image.brokers[1].epoch
    assert new_epoch > old_epoch
    if kind is not UnfenceBroker:  # the others act on an unfenced broker
        image = apply(image, UnfenceBroker(1, new_epoch, 2))
    if kind is AllocateProducerIds:
        stale = AllocateProducerIds(1, old_epoch, 1000, 2)
    else:
        stale = kind(1, old_epoch, 2, changes)
    assert same_but_version(image, apply(image, stale))
    for wrong in (new_epoch + 1, 0):
        assert same_but_version(image, apply(image, replace(stale, broker_epoch=wrong)))
    unknown = replace(stale, node_id=9, broker_epoch=new_epoch)
    assert same_but_version(image, apply(image, unknown))
    current = replace(stale, broker_epoch=new_epoch)
    if kind is not AllocateProducerIds:
        current = replace(current, changes=())  # the old changes no longer fit
    assert not same_but_version(image, apply(image, current)), "the current incarnation's command"


# -- partition changes ----------------------------------------------------------------------------------


def _three_replicas() -> MetadataImage:
    image = cluster(1, 2, 3, 4)
    return apply(image, CreateTopic("t", "id", {}, ((1, 2, 3),)))


def _changed(image: MetadataImage, *changes: PartitionChange):
    return partition(apply(image, ChangePartitions(changes)), "t")


def test_partition_change_applies_only_on_the_next_partition_epoch():
    image = _three_replicas()  # leader 1, leader_epoch 0, isr (1, 2, 3), partition_epoch 0
    for partition_epoch in (0, 2, -1):
        p = _changed(image, PartitionChange("id", 0, 2, 1, (2, 3), partition_epoch))
        assert p == partition(image, "t"), partition_epoch
    p = _changed(image, PartitionChange("id", 0, 2, 1, (2, 3), 1))
    assert (p.leader, p.leader_epoch, p.isr, p.partition_epoch) == (2, 1, (2, 3), 1)
    assert p.replicas == (1, 2, 3)
    # Two changes in one command: the second builds on the first.
    p = _changed(
        image,
        PartitionChange("id", 0, 2, 1, (2, 3), 1),
        PartitionChange("id", 0, 2, 1, (2, 3, 1), 2),
    )
    assert (p.leader, p.isr, p.partition_epoch) == (2, (2, 3, 1), 2)
    # Two changes built on the same state: only the first applies.
    p = _changed(
        image,
        PartitionChange("id", 0, 2, 1, (2, 3), 1),
        PartitionChange("id", 0, 3, 1, (3,), 1),
    )
    assert (p.leader, p.isr) == (2, (2, 3))


def test_partition_change_never_lowers_the_leader_epoch():
    image = apply(_three_replicas(), ChangePartitions((PartitionChange("id", 0, 2, 5, (1, 2, 3), 1),)))
    p = _changed(image, PartitionChange("id", 0, 3, 4, (1, 2, 3), 2))
    assert (p.leader, p.leader_epoch, p.partition_epoch) == (2, 5, 1)
    p = _changed(image, PartitionChange("id", 0, 2, 5, (1, 2), 2))  # an ISR change keeps the epoch
    assert (p.leader_epoch, p.isr, p.partition_epoch) == (5, (1, 2), 2)


@pytest.mark.parametrize(
    ("leader", "isr"),
    [
        (2, ()),  # never empty
        (NO_LEADER, ()),
        (2, (2, 4)),  # 4 is a broker but not a replica
        (2, (2, 2, 9)),
        (3, (1, 2)),  # the leader must be in the ISR
        (4, (1, 2)),
    ],
)
def test_partition_change_refuses_bad_isr_and_leader(leader, isr):
    image = _three_replicas()
    assert _changed(image, PartitionChange("id", 0, leader, 1, isr, 1)) == partition(image, "t")


def test_partition_change_may_leave_a_partition_leaderless():
    p = _changed(_three_replicas(), PartitionChange("id", 0, NO_LEADER, 1, (3,), 1))
    assert (p.leader, p.isr, p.leader_epoch) == (NO_LEADER, (3,), 1)


def test_partition_change_for_a_missing_topic_or_partition_is_skipped():
    image = _three_replicas()
    for change in (
        PartitionChange("other-id", 0, 2, 1, (2,), 1),
        PartitionChange("id", 1, 2, 1, (2,), 1),
        PartitionChange("id", -1, 2, 1, (2,), 1),
    ):
        assert same_but_version(image, apply(image, ChangePartitions((change,)))), change
    # A skipped change does not stop the others of the command.
    p = _changed(image, PartitionChange("id", 1, 2, 1, (2,), 1), PartitionChange("id", 0, 2, 1, (2,), 1))
    assert (p.leader, p.isr) == (2, (2,))


# -- the JSON form of commands --------------------------------------------------------------------------

CHANGES = (
    PartitionChange("id-a", 0, 2, 3, (2, 1), 7),
    PartitionChange("id-b", 4, NO_LEADER, 1, (3,), 2),
)
EVERY_COMMAND = [
    ActivateController(3, 9, cluster_id="c-1"),
    RegisterBroker(1, "h:1", "rack-a", ("broker",), 4, CHANGES),
    RegisterBroker(2, "h:2"),
    FenceBroker(1, 17, 4, CHANGES),
    UnfenceBroker(1, 17, 4, CHANGES[:1]),
    ControlledShutdown(2, 18, 4, CHANGES),
    ChangePartitions(CHANGES, 4),
    ChangePartitions((), 4),
    AllocateProducerIds(1, 17, 1000, 4),
    CreateTopic("t", "id-t", {"retention.ms": "5"}, ((1, 2), (2, 3)), 4),
    DeleteTopic("t", "id-t", 4),
    CreatePartitions("t", "id-t", ((3, 1), (1, 2)), 4),
    AlterConfigs("t", "id-t", {"unclean.leader.election.enable": "true"}, 4),
]


def test_every_command_type_has_a_round_trip_case():
    assert {type(c).__name__ for c in EVERY_COMMAND} == set(COMMANDS)


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=lambda c: type(c).__name__)
def test_command_json_round_trip(command):
    data = orjson.loads(orjson.dumps(command_to_dict(command)))
    assert data["type"] == type(command).__name__
    back = command_from_dict(data)
    assert back == command
    assert type(back) is type(command)
    for change in getattr(back, "changes", ()):
        assert type(change) is PartitionChange
        assert isinstance(change.isr, tuple)
    for name in ("assignments", "roles"):
        value = getattr(back, name, ())
        assert isinstance(value, tuple)
        assert all(not isinstance(v, list) for v in value)
    assert command_to_dict(back) == command_to_dict(command)


# -- placement ------------------------------------------------------------------------------------------


def test_placement_spreads_leaders_and_replicas():
    brokers = [BrokerInfo(i, f"h:{i}") for i in (3, 1, 2)]
    assignments = assign_replicas(brokers, 4, 2, 0)
    assert assignments == ((1, 2), (2, 3), (3, 1), (1, 3))  # the second round shifts the followers
    for replicas in assignments:
        assert len(set(replicas)) == 2


def _rack_image(racks: dict[int, str]) -> MetadataImage:
    return cluster(*sorted(racks), racks=racks)


@pytest.mark.parametrize("count", [3, 4, 5, 6])
@pytest.mark.parametrize("per_broker", [1, 2, 3])
@pytest.mark.parametrize("factor", [1, 2, 3])
def test_placement_balances_leaders_and_followers(count, per_broker, factor):
    image = cluster(*range(1, count + 1))
    command = plan_create_topic(image, "t", count * per_broker, factor, None, "id")
    assignments = command.assignments
    leaders = Counter(replicas[0] for replicas in assignments)
    assert leaders == dict.fromkeys(range(1, count + 1), per_broker)
    for replicas in assignments:
        assert len(set(replicas)) == factor
    if factor > 1:
        followers = Counter(r for replicas in assignments for r in replicas[1:])
        assert followers == dict.fromkeys(range(1, count + 1), (factor - 1) * per_broker)
    if factor > 1 and per_broker > 1 and count > factor:
        # The followers of a leader differ from one round of leaders to the next.
        for leader in range(1, count + 1):
            sets = {replicas[1:] for replicas in assignments if replicas[0] == leader}
            assert len(sets) > 1, (leader, assignments)
    image = apply(image, command)
    current_leaders = Counter(p.leader for p in image.topics["t"].partitions)
    assert current_leaders == leaders


def test_placement_starts_at_the_broker_leading_fewest_partitions():
    image = cluster(1, 2, 3, 4)
    for index in range(8):
        image = apply(image, plan_create_topic(image, f"t{index}", 1, 2, None, f"id{index}"))
    leaders = Counter(t.partitions[0].leader for t in image.topics.values())
    assert leaders == {1: 2, 2: 2, 3: 2, 4: 2}
    # Topics of uneven sizes still even out: 3 + 2 + 3 partitions over 4 brokers.
    image = cluster(1, 2, 3, 4)
    for index, count in enumerate((3, 2, 3)):
        image = apply(image, plan_create_topic(image, f"t{index}", count, 1, None, f"id{index}"))
    leaders = Counter(p.leader for t in image.topics.values() for p in t.partitions)
    assert leaders == {1: 2, 2: 2, 3: 2, 4: 2}
    command = plan_create_topic(image, "next", 1, 1, None, "id-next")
    assert command.assignments == ((1,),)  # a tie goes to the first broker in placement order
    image = apply(image, CreateTopic("extra", "id-x", {}, ((1,), (2,), (3,))))
    assert plan_create_topic(image, "next", 1, 1, None, "id-next").assignments == ((4,),)


def test_placement_skips_fenced_shutting_down_and_controller_only_brokers():
    image = cluster(1, 2, 3, 4, 5)
    image = apply(image, FenceBroker(2, image.brokers[2].epoch))
    image = apply(image, ControlledShutdown(3, image.brokers[3].epoch))
    image = apply(image, RegisterBroker(6, "h:6", roles=("controller",)))
    image = apply(image, UnfenceBroker(6, image.brokers[6].epoch))
    command = plan_create_topic(image, "t", 6, 2, None, "id")
    used = {r for replicas in command.assignments for r in replicas}
    assert used == {1, 4, 5}
    with pytest.raises(MetadataError, match=r"replication_factor 4 is larger than the 3 available"):
        plan_create_topic(image, "u", 1, 4, None, "id-u")
    grow = plan_create_partitions(apply(image, command), "t", 9)
    assert {r for replicas in grow.assignments for r in replicas} <= {1, 4, 5}


RACK_LAYOUTS = {
    "3 racks of 2": {1: "a", 2: "a", 3: "b", 4: "b", 5: "c", 6: "c"},
    "2 racks of 2": {1: "a", 2: "a", 3: "b", 4: "b"},
    "uneven racks": {1: "a", 2: "a", 3: "a", 4: "b", 5: "c"},
    "one broker per rack": {1: "a", 2: "b", 3: "c", 4: "d"},
}


@pytest.mark.parametrize(
    ("layout", "factor"),
    [
        (layout, factor)
        for layout in sorted(RACK_LAYOUTS)
        for factor in (2, 3)
        if (layout, factor) != ("2 racks of 2", 3)
    ],
)
def test_placement_puts_replicas_on_distinct_racks(layout, factor):
    racks = RACK_LAYOUTS[layout]
    image = _rack_image(racks)
    count = 4 * len(racks)  # several rounds of leaders, so the follower shift is exercised
    command = plan_create_topic(image, "t", count, factor, None, "id")
    leaders = Counter(replicas[0] for replicas in command.assignments)
    assert leaders == dict.fromkeys(racks, 4)
    shared = [
        (index, replicas, [racks[r] for r in replicas])
        for index, replicas in enumerate(command.assignments)
        if len({racks[r] for r in replicas}) < factor
    ]
    assert shared == [], (
        f"BUG (metadata/commands.py assign_replicas): with {len(set(racks.values()))} racks and RF "
        f"{factor}, these partitions put two replicas on one rack: {shared}"
    )


def test_placement_alternates_racks_on_the_first_round():
    racks = RACK_LAYOUTS["3 racks of 2"]
    command = plan_create_topic(_rack_image(racks), "t", 6, 3, None, "id")
    for replicas in command.assignments:
        assert sorted(racks[r] for r in replicas) == ["a", "b", "c"]


# -- plans ----------------------------------------------------------------------------------------------


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


def test_plan_create_topic_needs_active_brokers():
    image = apply(MetadataImage(), RegisterBroker(1, "a:1"))  # registered, still fenced
    with pytest.raises(MetadataError, match=r"larger than the 0 available broker\(s\) \(none\)"):
        plan_create_topic(image, "t", 1, 1, None, "id")


def test_plans_carry_the_controller_epoch():
    image = cluster(1, 2, 3, controller_epoch=4)
    create = plan_create_topic(image, "t", 3, 2, None, "id")
    assert create.controller_epoch == 4
    image = apply(image, create)
    assert "t" in image.topics
    assert plan_create_partitions(image, "t", 4).controller_epoch == 4
    assert plan_alter_configs(image, "t", {"retention.ms": 1}, None).controller_epoch == 4
    assert plan_delete_topic(image, "t").controller_epoch == 4


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


# -- property: arbitrary command sequences --------------------------------------------------------------

NODE_IDS_MAX = 3  # ids 0..3: enough to hit registered brokers and miss them
TOPIC_NAMES = ("t0", "t1", "t2")
TOPIC_IDS = ("id0", "id1", "id2", "id3")
CONFIG_SETS = (
    {},
    {"unclean.leader.election.enable": "true"},
    {"retention.ms": "5", "min.insync.replicas": "1"},
)
CHOICES_PER_COMMAND = 32


class Choices:
    """Turns drawn bytes into the choices that build one command.

    Hypothesis draws one byte string per command instead of one value per choice: generation is then
    many times faster, and shrinking still works (smaller bytes pick earlier options, which are the
    image's own ids and epochs)."""

    def __init__(self, values: bytes):
        self.values = values
        self.used = 0

    def number(self, count: int) -> int:
        value = self.values[self.used] if self.used < len(self.values) else 0
        self.used += 1
        return value % count

    def pick(self, options):
        options = tuple(options)
        return options[self.number(len(options))]

    def near(self, value: int) -> int:
        """Mostly the value itself or one off, so commands hit the edge of being stale."""
        return self.pick((value,) * 6 + (value - 1, value + 1, value + 2))

    def node_id(self, image: MetadataImage) -> int:
        return self.pick((*sorted(image.brokers), *range(NODE_IDS_MAX + 1)))

    def replicas(self) -> tuple:
        return tuple(dict.fromkeys(self.number(NODE_IDS_MAX + 1) for _ in range(1 + self.number(3))))

    def assignments(self) -> tuple:
        return tuple(self.replicas() for _ in range(1 + self.number(3)))

    def changes(self, image: MetadataImage) -> tuple:
        topics = list(image.topics.values())
        if not topics:
            return ()
        out = []
        for _ in range(self.pick((1, 1, 2, 3, 0))):
            topic = self.pick(topics)
            count = len(topic.partitions)
            index = self.pick((*range(count),) * 3 + (count,))  # one past the end now and then
            p = topic.partitions[min(index, len(topic.partitions) - 1)]
            pool = sorted(set(p.replicas) | {self.number(NODE_IDS_MAX + 1)})
            isr = tuple(dict.fromkeys(self.pick(pool) for _ in range(self.pick((1, 2, 3, 1, 2, 0)))))
            leader = self.pick((*isr * 3, NO_LEADER, *range(NODE_IDS_MAX + 1)))
            topic_id = self.pick((topic.topic_id,) * 8 + TOPIC_IDS)
            out.append(
                PartitionChange(
                    topic_id,
                    index,
                    leader,
                    self.near(p.leader_epoch + 1),
                    isr,
                    self.near(p.partition_epoch + 1),
                )
            )
        return tuple(out)


def command_for(image: MetadataImage, choices: Choices):
    """One command of any type, with ids and epochs mostly taken from `image`."""
    kind = choices.pick(sorted(COMMANDS))
    node_id = choices.node_id(image)
    if kind == "ActivateController":
        return ActivateController(node_id, choices.near(image.controller_epoch + 1))
    controller_epoch = choices.near(image.controller_epoch)
    if kind == "RegisterBroker":
        rack = choices.pick((None, "a", "b"))
        roles = choices.pick((("controller", "broker"), ("broker",)))
        return RegisterBroker(node_id, f"h:{node_id}", rack, roles, controller_epoch, choices.changes(image))
    if kind == "ChangePartitions":
        return ChangePartitions(choices.changes(image), controller_epoch)
    if kind in ("FenceBroker", "UnfenceBroker", "ControlledShutdown", "AllocateProducerIds"):
        broker = image.brokers.get(node_id)
        broker_epoch = choices.near(broker.epoch) if broker else choices.number(image.version + 2)
        if kind == "AllocateProducerIds":
            return AllocateProducerIds(node_id, broker_epoch, 1 + choices.number(1000), controller_epoch)
        return COMMANDS[kind](node_id, broker_epoch, controller_epoch, choices.changes(image))
    name = choices.pick((*sorted(image.topics), *TOPIC_NAMES))
    topic = image.topics.get(name)
    topic_id = choices.pick((topic.topic_id,) * 4 + TOPIC_IDS if topic else TOPIC_IDS)
    if kind == "CreateTopic":
        return CreateTopic(name, topic_id, choices.pick(CONFIG_SETS), choices.assignments(), controller_epoch)
    if kind == "DeleteTopic":
        return DeleteTopic(name, topic_id, controller_epoch)
    if kind == "CreatePartitions":
        return CreatePartitions(name, topic_id, choices.assignments(), controller_epoch)
    assert kind == "AlterConfigs"
    return AlterConfigs(name, topic_id, choices.pick(CONFIG_SETS), controller_epoch)


def _never_logged(message, *args, **kwargs):
    raise AssertionError("apply needed its exception fallback: " + message % args)


def check_apply_step(before: MetadataImage, command, after: MetadataImage) -> None:
    """What `apply` itself guarantees, whatever the command."""
    assert after.version == before.version + 1
    assert after.controller_epoch >= before.controller_epoch
    fenced_out = not isinstance(command, ActivateController) and command.controller_epoch != (
        before.controller_epoch
    )
    if fenced_out:
        assert same_but_version(before, after), "a command of another controller epoch changed the image"
    if isinstance(command, RegisterBroker) and not fenced_out:
        registered = after.brokers[command.node_id]
        assert registered.epoch == after.version
        assert registered.fenced
        assert not registered.shutting_down
    assert after.next_producer_id >= before.next_producer_id
    for name, topic in after.topics.items():
        old = before.topics.get(name)
        for index, p in enumerate(topic.partitions):
            assert p.isr, f"{name}-{index}: empty ISR"
            assert set(p.isr) <= set(p.replicas), f"{name}-{index}: ISR {p.isr} outside {p.replicas}"
            assert p.leader == NO_LEADER or p.leader in p.isr, f"{name}-{index}: leader outside the ISR"
            if old is None or old.topic_id != topic.topic_id or index >= len(old.partitions):
                continue
            q = old.partitions[index]
            assert p.replicas == q.replicas
            assert p.leader_epoch >= q.leader_epoch
            assert p.partition_epoch >= q.partition_epoch
            if (p.leader, p.isr) != (q.leader, q.isr):  # one command may change a partition twice
                assert p.partition_epoch > q.partition_epoch, f"{name}-{index} changed in place"
    assert MetadataImage.from_dict(orjson.loads(orjson.dumps(after.to_dict()))) == after


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.binary(min_size=CHOICES_PER_COMMAND, max_size=CHOICES_PER_COMMAND),
        min_size=1,
        max_size=40,
    )
)
def test_apply_never_raises_and_is_deterministic(vectors):
    # Active brokers and topics to start from; the commands add and remove more.
    image = cluster(1, 2, 3)
    image = apply(image, CreateTopic("t0", "id0", {}, ((1, 2), (2, 3))))
    image = apply(image, CreateTopic("t1", "id1", CONFIG_SETS[1], ((3, 1, 2),)))
    start = image
    applied = []
    with mock.patch.object(commands_module.log, "exception", _never_logged):
        for vector in vectors:
            command = command_for(image, Choices(vector))
            note(repr(command))
            after = apply(image, command)
            check_apply_step(image, command, after)
            applied.append(command)
            image = after
    kinds = Counter(type(c).__name__ for c in applied)
    note(f"{kinds}, final version {image.version}")
    replay = start
    for command in applied:
        replay = apply(replay, command_from_dict(orjson.loads(orjson.dumps(command_to_dict(command)))))
    assert replay == image
