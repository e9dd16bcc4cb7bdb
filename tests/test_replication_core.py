"""The pure replication decisions (node/replication.py), case by case; the simulation
(tests/test_replication_sim.py) drives them together with real logs."""

from __future__ import annotations

from node.replication import (
    UNDEFINED_EPOCH,
    UNDEFINED_OFFSET,
    Diverging,
    IsrProposal,
    LeaderCore,
    follower_high_watermark,
    follower_truncation_offset,
    leader_check_fetch,
)


def leader(**overrides) -> LeaderCore:
    fields = {
        "replica_id": 1,
        "replicas": (1, 2, 3),
        "isr": (1, 2, 3),
        "leader_epoch": 5,
        "partition_epoch": 7,
        "epoch_start_offset": 10,
        "high_watermark": 8,
        "log_end_offset": 10,
        "min_insync_replicas": 2,
        "now_ms": 1_000,
    }
    fields.update(overrides)
    return LeaderCore(**fields)


def test_the_high_watermark_is_the_smallest_log_end_in_the_isr_and_never_goes_back():
    core = leader()
    assert core.high_watermark == 8  # followers have not fetched in this leadership
    assert not core.high_watermark_known  # below the epoch start (10)
    assert core.on_append(15) is False
    assert core.on_fetch(2, 12, 1_100) is False  # follower 3 is still unknown
    assert core.on_fetch(3, 11, 1_100) is True
    assert core.high_watermark == 11 and core.high_watermark_known
    assert core.on_fetch(2, 15, 1_200) is False  # 3 holds it back
    assert core.on_fetch(3, 15, 1_200) is True and core.high_watermark == 15
    assert core.on_fetch(3, 9, 1_300) is False  # a stale fetch never moves it back
    assert core.high_watermark == 15


def test_a_follower_cannot_claim_more_than_the_leader_holds():
    core = leader(isr=(1, 2), replicas=(1, 2), high_watermark=10)
    core.on_fetch(2, 99, 1_100)
    assert core.followers[2].log_end_offset == 10 and core.high_watermark == 10


def test_the_high_watermark_stops_below_min_insync_replicas():
    core = leader(isr=(1,), min_insync_replicas=2, high_watermark=10)
    assert not core.enough_replicas()
    assert core.on_append(20) is False and core.high_watermark == 10
    assert core.on_metadata((1, 2), 8, 2) is False  # follower 2 has not fetched yet
    assert core.on_fetch(2, 20, 2_000) is True and core.high_watermark == 20


def test_a_lone_leader_commits_at_once():
    core = leader(replicas=(1,), isr=(1,), min_insync_replicas=1, high_watermark=0, epoch_start_offset=0)
    assert core.high_watermark == 10
    assert core.on_append(11) is True and core.high_watermark == 11


def test_a_follower_that_stops_catching_up_is_proposed_out_of_the_isr():
    core = leader()
    core.on_fetch(2, 10, 1_000)
    core.on_fetch(3, 10, 1_000)
    core.on_append(20)
    core.on_fetch(2, 20, 5_000)  # 2 caught up; 3 stays at 10
    assert core.isr_proposal(5_000, lag_time_max_ms=10_000) is None
    proposal = core.isr_proposal(11_500, lag_time_max_ms=10_000)
    assert proposal == IsrProposal((1, 2), 5, 7)
    assert core.isr_proposal(12_000, 10_000) is None  # one change in flight at a time
    assert core.high_watermark == 10  # the removal counts only once committed
    core.on_metadata((1, 2), 8, 2)
    assert core.pending is None and core.high_watermark == 20


def test_a_follower_that_caught_up_is_proposed_into_the_isr_and_counts_at_once():
    core = leader(isr=(1, 2), high_watermark=10, epoch_start_offset=10)
    core.on_fetch(2, 10, 1_000)
    core.on_append(30)
    core.on_fetch(2, 30, 1_100)
    assert core.high_watermark == 30
    core.on_fetch(3, 20, 1_200, broker_epoch=40)  # below the HW: not yet
    assert core.isr_proposal(1_200, 10_000) is None
    core.on_append(31)
    core.on_fetch(3, 30, 1_300, broker_epoch=40)  # reached the HW (30) and the epoch start
    proposal = core.isr_proposal(1_300, 10_000)
    # The incarnation whose fetches qualified it goes with the request (KIP-903).
    assert proposal == IsrProposal((1, 2, 3), 5, 7, joining=((3, 40),))
    core.on_fetch(2, 31, 1_400)
    assert core.high_watermark == 30  # 3, being added, holds the HW back already
    core.on_proposal_failed()
    core.on_fetch(2, 31, 1_500)
    assert core.high_watermark == 31


def test_the_leader_reports_divergence_from_its_epoch_cache():
    # Leader epochs: 1 from 0, 3 from 50, 4 from 80; log end 100.
    entries = [(1, 0), (3, 50), (4, 80)]

    def end_offset_for(epoch):
        older = [e for e in entries if e[0] <= epoch]
        if not older:
            return UNDEFINED_EPOCH, UNDEFINED_OFFSET
        i = entries.index(older[-1])
        return older[-1][0], entries[i + 1][1] if i + 1 < len(entries) else 100

    check = lambda offset, epoch: leader_check_fetch(offset, epoch, 0, 100, end_offset_for)  # noqa: E731
    assert check(60, 3) is None  # epoch 3 runs to 80 here
    assert check(80, 3) is None
    assert check(85, 3) == Diverging(3, 80)  # the follower has more of epoch 3 than the leader
    assert check(70, 2) == Diverging(1, 50)  # the leader never had epoch 2
    assert check(0, UNDEFINED_EPOCH) is None  # an empty follower
    assert check(100, 4) is None
    assert leader_check_fetch(30, 0, 0, 100, end_offset_for) == Diverging(UNDEFINED_EPOCH, 0)
    assert leader_check_fetch(10, 0, 10, 100, end_offset_for) is None  # at the leader's log start


def test_the_follower_truncates_to_the_common_end_of_the_epoch_never_past_its_own_end():
    local = {1: (1, 40), 2: (2, 70)}  # follower: epoch 1 from 0 to 40, epoch 2 from 40 to 70 (its LEO)

    def local_end_offset_for(epoch):
        if epoch >= 2:
            return 2, 70
        if epoch == 1:
            return local[1]
        return UNDEFINED_EPOCH, UNDEFINED_OFFSET

    assert follower_truncation_offset(Diverging(1, 50), local_end_offset_for, 0, 70) == 40
    assert follower_truncation_offset(Diverging(1, 30), local_end_offset_for, 0, 70) == 30
    assert follower_truncation_offset(Diverging(2, 60), local_end_offset_for, 0, 70) == 60
    assert follower_truncation_offset(Diverging(0, 20), local_end_offset_for, 5, 70) == 5  # nothing shared
    assert follower_truncation_offset(Diverging(UNDEFINED_EPOCH, 12), local_end_offset_for, 0, 70) == 12


def test_a_follower_high_watermark_never_exceeds_what_it_holds():
    assert follower_high_watermark(50, 40) == 40
    assert follower_high_watermark(30, 40) == 30


def test_an_addition_being_decided_survives_metadata_that_did_not_change_the_partition():
    core = leader(isr=(1, 2), high_watermark=10)
    core.on_fetch(2, 10, 1_000)
    core.on_fetch(3, 10, 1_000, broker_epoch=9)
    assert core.isr_proposal(1_000, 10_000) is not None
    core.on_metadata((1, 2), 7, 2)  # an image in which this partition did not change (same epoch)
    assert core.pending is not None
    core.on_append(20)
    core.on_fetch(2, 20, 1_100)
    assert core.high_watermark == 10  # 3, perhaps committed into the ISR already, holds it back
    core.on_metadata((1, 2, 3), 8, 2)  # decided
    assert core.pending is None


def test_a_proposal_whose_answer_never_came_is_decided_again_after_a_while():
    core = leader(isr=(1, 2), high_watermark=10)
    core.on_fetch(2, 10, 1_000)
    core.on_fetch(3, 10, 1_000, broker_epoch=9)
    first = core.isr_proposal(1_000, 100_000)
    assert core.isr_proposal(5_000, 100_000) is None  # still waiting
    core.on_fetch(3, 10, 10_900, broker_epoch=9)
    again = core.isr_proposal(11_001, 100_000)
    assert again == first


def test_the_controller_checks_an_isr_change_against_the_committed_partition():
    import pytest

    from metadata.commands import (
        ActivateController,
        CreateTopic,
        MetadataError,
        RegisterBroker,
        UnfenceBroker,
        apply,
    )
    from metadata.controller import plan_alter_partition
    from metadata.image import MetadataImage

    image = apply(MetadataImage(), ActivateController(1, 1))
    for node in (1, 2, 3):
        image = apply(image, RegisterBroker(node, f"h:{node}", controller_epoch=1))
        image = apply(image, UnfenceBroker(node, image.brokers[node].epoch, 1))
    image = apply(image, CreateTopic("t", "tid", {}, ((1, 2, 3),), 1))
    epochs = {n: image.brokers[n].epoch for n in (1, 2, 3)}
    shrink = plan_alter_partition(image, 1, epochs[1], "tid", 0, 0, 0, (1, 2))
    image = apply(image, shrink)
    assert image.topics["t"].partitions[0].isr == (1, 2)
    assert image.topics["t"].partitions[0].partition_epoch == 1

    def refused(code, *args):
        with pytest.raises(MetadataError) as caught:
            plan_alter_partition(image, *args)
        assert caught.value.error_code == code, caught.value.message

    refused(40905, 1, epochs[1], "tid", 0, 0, 0, (1, 2, 3), ((3, epochs[3]),))  # stale partition epoch
    refused(40403, 2, epochs[2], "tid", 0, 0, 1, (1, 2, 3), ((3, epochs[3]),))  # not the leader
    refused(40904, 1, epochs[1] - 1, "tid", 0, 0, 1, (1, 2))  # an old incarnation of the leader
    refused(42201, 1, epochs[1], "tid", 0, 0, 1, (2, 3), ((3, epochs[3]),))  # the ISR without its leader
    refused(
        40904, 1, epochs[1], "tid", 0, 0, 1, (1, 2, 3), ((3, epochs[3] - 1),)
    )  # caught up as before a restart
    refused(40904, 1, epochs[1], "tid", 0, 0, 1, (1, 2, 3))  # no incarnation given for the newcomer
    grow = plan_alter_partition(image, 1, epochs[1], "tid", 0, 0, 1, (1, 2, 3), ((3, epochs[3]),))
    image = apply(image, grow)
    assert image.topics["t"].partitions[0].isr == (1, 2, 3)
