"""Partition replication as pure decisions: the leader's view of its followers, and a follower's
answers to what the leader tells it. No IO, no clock (times are passed in): the node's fetcher and
HTTP handlers (node/replica.py, node/fetcher.py) are thin adapters around these, and the simulation
tests drive the very same code.

Theory of operation (Kafka's ISR model, ../shared/DESIGN.md "Partition replication")
-----------------------------------------------------------------------------------
Followers pull. A follower's fetch names its *fetch offset* (its log end offset, LEO: it holds
every record below it) and the epoch of its last batch. The leader answers with batches from the
fetch offset, its high watermark (HW) and log start offset, or, when the follower's history has
diverged from its own, with the *diverging epoch*: the largest epoch it knows that is not above the
follower's last epoch, and where that epoch ends in the leader's log (KIP-101/279/595). The
follower truncates to the smaller of that end and its own end of the same epoch, and fetches again;
each round moves it to an earlier epoch, so it converges to the longest common prefix. It never
truncates to its own HW alone.

The leader (`LeaderCore`) keeps each follower's LEO (its last fetch offset) and when it last caught
up (fetched at or past the leader's LEO of the time). The HW is the smallest LEO over the ISR
(the leader's own included); it only moves forward, and it stops while the ISR is smaller than
min.insync.replicas. A new leader does not publish a HW until it reaches the start offset of its
own epoch (its LEO when it took over): below that it could only repeat an older, lower HW, and
consumers would see the HW go back.

The ISR changes only through the controller. The leader proposes: drop a follower that has not
caught up for `replica_lag_time_max_ms`; add one whose LEO reached the HW and the start of the
current epoch. While an addition is in flight, the HW counts the candidate too (the larger set),
and a removal counts only once committed: so the HW is right under either outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field

UNDEFINED_EPOCH = -1
UNDEFINED_OFFSET = -1
PENDING_TIMEOUT_MS = 10_000


@dataclass
class FollowerState:
    log_end_offset: int = -1  # -1: has not fetched since this leadership began
    last_caught_up_ms: int = 0
    last_fetch_ms: int = 0
    broker_epoch: int = -1  # the incarnation of the follower that fetched last (KIP-903)


@dataclass(frozen=True)
class IsrProposal:
    """What the leader asks the controller: the new ISR, on top of the partition epoch it knows."""

    isr: tuple[int, ...]
    leader_epoch: int
    partition_epoch: int
    # (replica, broker epoch) of each replica added: the incarnation whose fetches qualified it. The
    # controller refuses the addition when that broker has registered again since (it may have lost
    # what it had: KIP-903).
    joining: tuple[tuple[int, int], ...] = ()


@dataclass
class LeaderCore:
    """The leader's side of one partition, for one leader epoch."""

    replica_id: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]  # as committed in the metadata
    leader_epoch: int
    partition_epoch: int
    epoch_start_offset: int  # the LEO when this leadership began
    high_watermark: int
    log_end_offset: int
    min_insync_replicas: int
    now_ms: int
    followers: dict[int, FollowerState] = field(default_factory=dict)
    pending: IsrProposal | None = None
    pending_since_ms: int = 0

    def __post_init__(self) -> None:
        for replica in self.replicas:
            if replica != self.replica_id:
                # A follower in the ISR is taken to be caught up when the leadership begins, so it
                # has a full lag period to show it before it may be dropped.
                self.followers.setdefault(replica, FollowerState(-1, self.now_ms, 0))
        self.high_watermark = min(self.high_watermark, self.log_end_offset)
        self._advance()

    # -- events ------------------------------------------------------------------------------------

    def on_append(self, log_end_offset: int) -> bool:
        """This replica appended up to `log_end_offset`; True when the HW moved."""
        self.log_end_offset = log_end_offset
        return self._advance()

    def on_fetch(self, replica_id: int, fetch_offset: int, now_ms: int, broker_epoch: int = -1) -> bool:
        """A follower (incarnation `broker_epoch`) fetched from `fetch_offset`: it holds everything
        below. True when the HW moved."""
        state = self.followers.get(replica_id)
        if state is None:
            return False
        state.log_end_offset = min(fetch_offset, self.log_end_offset)
        state.last_fetch_ms = now_ms
        state.broker_epoch = broker_epoch
        if fetch_offset >= self.log_end_offset:
            state.last_caught_up_ms = now_ms
        return self._advance()

    def on_metadata(self, isr: tuple[int, ...], partition_epoch: int, min_insync_replicas: int) -> bool:
        """The committed ISR changed (or not); True when the HW moved."""
        self.isr = tuple(isr)
        self.partition_epoch = partition_epoch
        self.min_insync_replicas = min_insync_replicas
        if self.pending is not None and partition_epoch > self.pending.partition_epoch:
            self.pending = None  # decided, one way or the other (an image that did not change this
            # partition leaves its epoch as it was: the proposal may still be committed)
        return self._advance()

    def on_proposal_failed(self) -> None:
        self.pending = None

    # -- decisions -----------------------------------------------------------------------------------

    @property
    def hw_isr(self) -> tuple[int, ...]:
        """The replicas whose LEOs bound the HW: the committed ISR, plus one being added."""
        if self.pending is None:
            return self.isr
        return tuple(sorted(set(self.isr) | set(self.pending.isr)))

    def _advance(self) -> bool:
        if len(self.isr) < self.min_insync_replicas:
            return False
        ends = [self.log_end_offset]
        for replica in self.hw_isr:
            if replica != self.replica_id:
                state = self.followers.get(replica)
                ends.append(state.log_end_offset if state is not None else -1)
        candidate = min(ends)
        if candidate > self.high_watermark:
            self.high_watermark = candidate
            return True
        return False

    @property
    def high_watermark_known(self) -> bool:
        """False until the HW reached the start of this leader's epoch (see the module notes)."""
        return self.high_watermark >= self.epoch_start_offset

    def enough_replicas(self) -> bool:
        return len(self.isr) >= self.min_insync_replicas

    def isr_proposal(self, now_ms: int, lag_time_max_ms: int) -> IsrProposal | None:
        """The next ISR change to ask the controller for, if any (one at a time). A proposal whose
        outcome never arrived (lost answer, controller change) is given up after PENDING_TIMEOUT_MS,
        far longer than metadata takes to arrive, and decided again."""
        if self.pending is not None:
            if now_ms - self.pending_since_ms < PENDING_TIMEOUT_MS:
                return None
            self.pending = None
        isr = set(self.isr)
        lagging = {
            r
            for r in isr
            if r != self.replica_id and now_ms - self.followers[r].last_caught_up_ms > lag_time_max_ms
        }
        if lagging:
            new = tuple(r for r in self.replicas if r in isr and r not in lagging)
            return self._propose(new, now_ms)
        joining = {
            r
            for r, state in self.followers.items()
            if r not in isr
            and state.log_end_offset >= self.high_watermark
            and state.log_end_offset >= self.epoch_start_offset
            and now_ms - state.last_fetch_ms <= lag_time_max_ms
        }
        if joining:
            new = tuple(r for r in self.replicas if r in isr or r in joining)
            epochs = tuple((r, self.followers[r].broker_epoch) for r in sorted(joining))
            return self._propose(new, now_ms, epochs)
        return None

    def _propose(
        self, isr: tuple[int, ...], now_ms: int, joining: tuple[tuple[int, int], ...] = ()
    ) -> IsrProposal:
        self.pending = IsrProposal(isr, self.leader_epoch, self.partition_epoch, joining)
        self.pending_since_ms = now_ms
        self._advance()
        return self.pending


# -- the fetch protocol's decisions -------------------------------------------------------------------


@dataclass(frozen=True)
class Diverging:
    epoch: int
    end_offset: int


def leader_check_fetch(
    fetch_offset: int,
    last_fetched_epoch: int,
    log_start_offset: int,
    log_end_offset: int,
    end_offset_for,
) -> Diverging | None:
    """Whether a follower's history diverged from this leader's (KIP-595's check in the fetch).

    `end_offset_for(epoch)` is the leader's epoch cache: (largest epoch <= epoch, its end offset), or
    (UNDEFINED_EPOCH, UNDEFINED_OFFSET). A follower with no batch yet (last_fetched_epoch undefined)
    or at the leader's log start never diverges.
    """
    if last_fetched_epoch == UNDEFINED_EPOCH or fetch_offset <= log_start_offset:
        return None
    epoch, end = end_offset_for(last_fetched_epoch)
    if epoch == UNDEFINED_EPOCH:
        return Diverging(UNDEFINED_EPOCH, log_start_offset)
    if epoch != last_fetched_epoch or end < fetch_offset:
        return Diverging(epoch, min(end, log_end_offset))
    return None


def follower_truncation_offset(
    diverging: Diverging, local_end_offset_for, log_start_offset: int, log_end_offset: int
) -> int:
    """Where a follower truncates to after the leader reported `diverging`: the end of the common
    epoch in both logs, never past its own end. (KIP-279: min of the leader's end of the epoch and
    the follower's end of the largest epoch it has that is not above it.)"""
    if diverging.epoch == UNDEFINED_EPOCH:
        return min(diverging.end_offset, log_end_offset)
    local_epoch, local_end = local_end_offset_for(diverging.epoch)
    if local_epoch == UNDEFINED_EPOCH:
        # Every batch here is of a later epoch than any the leader shares: none is common.
        return log_start_offset
    return min(diverging.end_offset, local_end, log_end_offset)


def follower_high_watermark(leader_high_watermark: int, log_end_offset: int) -> int:
    """A follower's HW: what the leader said, but never above what it holds."""
    return min(leader_high_watermark, log_end_offset)
