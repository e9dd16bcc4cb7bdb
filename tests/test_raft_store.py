"""RaftMetadataStore against real pysyncobj members in one process (three voters on 127.0.0.1).

The point of these tests is what the node relies on: a proposal resolves with the image that holds
it; listeners see images in log order; and `wait_ready` after a restart of every member returns an
image holding every command committed before the restart. (pysyncobj's own "ready" fires once the
member has applied what it believes the commit index is, and after a full restart that belief can
lag behind what was committed in the previous term; a node that acted on such an image deleted the
logs of topics it did not list yet.)
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from metadata.commands import ActivateController, MetadataError, RegisterBroker
from metadata.raft import RaftMetadataStore
from tests.nodeproc import free_port


def open_stores(directory, addresses):
    return [
        RaftMetadataStore(
            str(directory / f"m{i}"),
            address,
            addresses,
            bind_address=address,
            password="test",
            raft_min_timeout_s=0.3,
            raft_max_timeout_s=0.6,
        )
        for i, address in enumerate(addresses)
    ]


async def leader_of(stores, timeout_s: float = 15.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        leaders = [s for s in stores if s.is_raft_leader()]
        if len(leaders) == 1:
            return leaders[0]
        await asyncio.sleep(0.02)
    raise AssertionError("no single Raft leader")


async def activate(stores):
    """What the controller service does first: commit an activation for the leader's term."""
    while True:
        leader = await leader_of(stores)
        term = leader.leader_term()  # leadership and its term together, as the controller reads them
        if term is not None:
            with contextlib.suppress(MetadataError):
                return leader, await leader.propose(ActivateController(1, term))
        await asyncio.sleep(0.05)


async def keep_activating(stores):
    """As the controller service does: whenever a leader's term is newer than the image's epoch."""
    while True:
        for store in stores:
            term = store.leader_term()
            if term is not None and store.image.controller_epoch < term:
                with contextlib.suppress(MetadataError):
                    await store.propose(ActivateController(1, term))
        await asyncio.sleep(0.05)


def close_all(stores):
    for store in stores:
        store.close()


@pytest.mark.parametrize("round_", range(3))
def test_after_a_full_restart_every_member_waits_for_all_committed_commands(tmp_path, round_):
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]

    async def first_life():
        stores = open_stores(tmp_path, addresses)
        seen = []
        stores[1].subscribe(lambda old, new: seen.append(new.version))
        try:
            leader, image = await activate(stores)
            for i in range(60):
                image = await leader.propose(
                    RegisterBroker(i, f"h:{i}", controller_epoch=image.controller_epoch)
                )
            assert len(image.brokers) == 60
            assert seen == sorted(seen)  # listeners see images in log order
            return image.version
        finally:
            close_all(stores)

    async def second_life(committed: int):
        stores = open_stores(tmp_path, addresses)
        try:
            activating = asyncio.ensure_future(keep_activating(stores))
            try:
                images = await asyncio.wait_for(asyncio.gather(*(s.wait_ready() for s in stores)), 30)
            finally:
                activating.cancel()
            for image in images:
                assert image.version > committed  # everything before, and the new activation
                assert len(image.brokers) == 60
        finally:
            close_all(stores)

    committed = asyncio.run(first_life())
    asyncio.run(asyncio.sleep(0.5))  # let the tick threads close their files
    asyncio.run(second_life(committed))


def test_leader_term_names_the_leader_and_its_term_and_no_one_else(tmp_path):
    async def scenario():
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        stores = open_stores(tmp_path, addresses)
        try:
            leader = await leader_of(stores)
            assert leader.leader_term() == leader.raft_term() > 0
            assert [s.leader_term() for s in stores if s is not leader] == [None, None]
        finally:
            close_all(stores)

    asyncio.run(scenario())


def test_a_stepping_down_leader_never_pairs_leadership_with_the_new_term(tmp_path):
    """pysyncobj stores a higher term it hears of before it steps down. Read apart, leadership and
    term then say "leader of term 4" on the leader of term 3, which activated itself as controller
    for epoch 4: committed by the real leader of term 4, that left no node acting as controller
    (the Kubernetes rehearsal's pod that never got ready). `leader_term` reads them as one."""

    class SteppingDown:
        term = 3
        state = "leader"

        def _getTerm(self):
            return self.term

        def _isLeader(self):
            return self.state == "leader"

    store = RaftMetadataStore.__new__(RaftMetadataStore)  # the read side only, no Raft member
    store.self_address = "127.0.0.1:1"
    store._syncobj = raft = SteppingDown()
    store._on_state_changed(1, 2)  # candidate -> leader, in term 3
    assert store.leader_term() == 3
    raft.term = 4  # a message of term 4 arrives: pysyncobj stores the term first ...
    assert (store.is_raft_leader(), store.raft_term()) == (True, 4)  # the pair that misled
    assert store.leader_term() == 3  # an activation for epoch 3 is ignored: the image has it
    raft.state = "follower"
    store._on_state_changed(2, 0)  # ... and then steps down
    assert store.leader_term() is None
