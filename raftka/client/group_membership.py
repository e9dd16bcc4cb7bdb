"""A consumer's membership in a group, the client side: a pure core (no IO, no clock, no event loop).

Theory of operation
-------------------
The group coordinator (node/groups.py, KIP-848 style) decides who owns what; a member joins, then
heartbeats, and each answer says what it should own now. This core keeps the member's side of that
conversation and tells its shell (raftka/client/consumer.py) what to send and what to do:

- `assignment`: what the coordinator's last answer says the member should own.
- `owned`: what the consumer holds now (fetch state and positions). It changes only when the shell
  reports what it did: `assigned()` once it looked up the committed offsets of new partitions,
  `revoked()` once it committed and stopped fetching partitions it gave up, and all at once when the
  member is fenced.
- `to_revoke()` = owned - assignment: give these up (commit their positions first with auto-commit,
  stop fetching), then heartbeat at once, without them in `owned`: the coordinator hands a partition
  to its next owner only after that.
- `to_assign()` = assignment - owned: take these, starting at their committed offsets.
- Fenced (40405 unknown member: the session lapsed or the coordinator moved; 40906 stale member
  epoch; or no answer from the coordinator for a whole session): every owned partition is *lost*.
  The shell drops them without committing (another member may own them already), and the member
  joins again as a new member. Each fence starts a new *generation*; partitions the shell took under
  an older generation are refused by `assigned()`.

Requests: `next_request(now_ms)` returns the request due now, a `Join` or a `Heartbeat`, or None;
`wakeup_ms()` says when one will be due. One request is in flight at a time, and an answer or error
is taken only for the request in flight (an answer that arrives after a fence is dropped). Cadence:
`heartbeat_interval_ms` from the coordinator; `reconcile_backoff_ms` while the answer says
`reconciling` (the target is not reached yet); at once after a revocation; after an error,
`retry_backoff_ms` doubling up to `retry_backoff_max_ms`.

The decisions of *when* a revocation runs belong to the shell: it runs inside `poll()`, because the
records that earlier polls returned have been processed by then (the poll-loop contract), so the
positions it commits are safe to commit.

Not thread-safe: one consumer's event loop owns it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote

from raftka.client.accumulator import TopicPartition

# Codes that mean the member lost its partitions and must join again as a new member.
UNKNOWN_MEMBER = 40405
STALE_MEMBER_EPOCH = 40906
FENCED_CODES = (UNKNOWN_MEMBER, STALE_MEMBER_EPOCH)

# KIP-848 consumers heartbeat again "soon" while reconciling; the API suggests 100 ms.
DEFAULT_RECONCILE_BACKOFF_MS = 100
# Kafka's session.timeout.ms default (45 s): used until the coordinator's first answer says otherwise.
DEFAULT_SESSION_TIMEOUT_MS = 45_000
# Kafka's heartbeat.interval.ms default (3 s): used until the first answer.
DEFAULT_HEARTBEAT_INTERVAL_MS = 3_000


def group_path(group: str, *rest: object) -> str:
    """/v1/groups/{group}/... with every part escaped."""
    path = "/v1/groups/" + quote(group, safe="")
    for part in rest:
        path += "/" + quote(str(part), safe="")
    return path


def partitions_json(partitions: Iterable[tuple[str, int]]) -> list[dict[str, Any]]:
    return [{"topic": t, "partition": p} for t, p in sorted(partitions)]


def partitions_from_json(items: Iterable[Mapping[str, Any]] | None) -> list[TopicPartition]:
    return [TopicPartition(str(item["topic"]), int(item["partition"])) for item in items or ()]


class Join(NamedTuple):
    """POST /v1/groups/{group}/members with `body`."""

    body: dict[str, Any]


class Heartbeat(NamedTuple):
    """POST /v1/groups/{group}/members/{member_id}/heartbeat with the epoch and what is owned."""

    member_id: str
    member_epoch: int
    owned: tuple[TopicPartition, ...]

    @property
    def body(self) -> dict[str, Any]:
        return {"member_epoch": self.member_epoch, "owned": partitions_json(self.owned)}


@dataclass(frozen=True, slots=True)
class MemberAnswer:
    """The coordinator's answer to a join or a heartbeat."""

    member_id: str
    member_epoch: int
    assignment: frozenset[TopicPartition]
    heartbeat_interval_ms: int
    session_timeout_ms: int
    reconciling: bool

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> MemberAnswer:
        """Raises ValueError (or KeyError, TypeError) for an answer without the fields."""
        member_id = document["member_id"]
        if not isinstance(member_id, str) or not member_id:
            raise ValueError(f"member_id must be a non-empty string, got {member_id!r}")
        return cls(
            member_id=member_id,
            member_epoch=int(document["member_epoch"]),
            assignment=frozenset(partitions_from_json(document["assignment"])),
            heartbeat_interval_ms=max(
                1, int(document.get("heartbeat_interval_ms", DEFAULT_HEARTBEAT_INTERVAL_MS))
            ),
            session_timeout_ms=max(1, int(document.get("session_timeout_ms", DEFAULT_SESSION_TIMEOUT_MS))),
            reconciling=bool(document.get("reconciling", False)),
        )


class ErrorOutcome(NamedTuple):
    """What an error to a join or heartbeat means to the shell."""

    fenced: bool  # the member lost its partitions (see take_lost) and joins again
    report: bool  # neither retriable nor a fence: poll() should raise it


class GroupMembership:
    """The member's side of the group protocol. Events in (answers, errors, what the shell did),
    decisions out (the next request and when, what to revoke, take or drop)."""

    def __init__(
        self,
        group: str,
        topics: Iterable[str],
        *,
        instance_id: str | None = None,
        assignor: str | None = None,
        retry_backoff_ms: int = 100,
        retry_backoff_max_ms: int = 1000,
        reconcile_backoff_ms: int = DEFAULT_RECONCILE_BACKOFF_MS,
    ):
        self.group = group
        self.topics = tuple(sorted(set(topics)))
        if not self.topics:
            raise ValueError("a group member subscribes to at least one topic")
        if retry_backoff_ms < 0 or retry_backoff_max_ms < retry_backoff_ms:
            raise ValueError("need 0 <= retry_backoff_ms <= retry_backoff_max_ms")
        self.instance_id = instance_id
        self.assignor = assignor
        self.retry_backoff_ms = retry_backoff_ms
        self.retry_backoff_max_ms = retry_backoff_max_ms
        self.reconcile_backoff_ms = reconcile_backoff_ms
        self.member_id: str | None = None
        self.member_epoch = 0
        self.generation = 0  # one more at every fence
        self.assignment: frozenset[TopicPartition] = frozenset()
        self.owned: set[TopicPartition] = set()
        self.heartbeat_interval_ms = DEFAULT_HEARTBEAT_INTERVAL_MS
        self.session_timeout_ms = DEFAULT_SESSION_TIMEOUT_MS
        self.left = False
        self.fence_reason: str | None = None  # why the last fence happened (for logs and errors)
        self._lost: list[TopicPartition] = []  # dropped by a fence, not yet taken by the shell
        self._in_flight: Join | Heartbeat | None = None
        self._due_ms = 0  # when the next request is due
        self._last_answer_ms: int | None = None
        self._failures = 0  # consecutive errors, for the backoff

    # -- what the shell asks --------------------------------------------------------------------------

    @property
    def joined(self) -> bool:
        return self.member_id is not None

    def to_revoke(self) -> list[TopicPartition]:
        """Owned partitions the coordinator took away: commit (auto-commit), stop fetching, revoked()."""
        return sorted(self.owned - self.assignment)

    def to_assign(self) -> list[TopicPartition]:
        """Assigned partitions not taken yet: look up their committed offsets, then assigned()."""
        return sorted(self.assignment - self.owned)

    def take_lost(self) -> list[TopicPartition]:
        """Partitions a fence took away since the last call: drop them without committing."""
        lost, self._lost = self._lost, []
        return lost

    def next_request(self, now_ms: int) -> Join | Heartbeat | None:
        """The request to send now (it is then in flight), or None while one is in flight or not due."""
        if self.left or self._in_flight is not None or now_ms < self._due_ms:
            return None
        if self.member_id is None:
            body: dict[str, Any] = {"topics": list(self.topics)}
            if self.instance_id is not None:
                body["instance_id"] = self.instance_id
            if self.assignor is not None:
                body["assignor"] = self.assignor
            self._in_flight = Join(body)
        else:
            self._in_flight = Heartbeat(self.member_id, self.member_epoch, tuple(sorted(self.owned)))
        return self._in_flight

    def wakeup_ms(self) -> int | None:
        """When next_request will have something to send (None: not before an answer, or never)."""
        if self.left or self._in_flight is not None:
            return None
        return self._due_ms

    # -- events ---------------------------------------------------------------------------------------

    def on_answer(self, request: Join | Heartbeat, now_ms: int, answer: MemberAnswer) -> bool:
        """The coordinator answered `request`. False when the answer is dropped (not the request in
        flight: a fence or a leave came first)."""
        if request is not self._in_flight:
            return False
        self._in_flight = None
        if self.left:
            return False
        self._failures = 0
        self._last_answer_ms = now_ms
        self.member_id = answer.member_id
        self.member_epoch = answer.member_epoch
        self.assignment = answer.assignment
        self.heartbeat_interval_ms = answer.heartbeat_interval_ms
        self.session_timeout_ms = answer.session_timeout_ms
        self.fence_reason = None
        # A revocation makes the next heartbeat due at once (revoked()); until then the usual cadence
        # keeps the session alive.
        wait_ms = self.reconcile_backoff_ms if answer.reconciling else self.heartbeat_interval_ms
        self._due_ms = now_ms + min(wait_ms, self.heartbeat_interval_ms)
        return True

    def on_error(
        self,
        request: Join | Heartbeat,
        now_ms: int,
        error_code: int | None,
        retriable: bool,
        message: str = "",
    ) -> ErrorOutcome:
        """`request` failed. A fence code loses everything owned and joins again at once; any other
        error tries the same request again after the backoff (a retriable one silently)."""
        if request is not self._in_flight:
            return ErrorOutcome(fenced=False, report=False)
        self._in_flight = None
        if self.left:
            return ErrorOutcome(fenced=False, report=False)
        if error_code in FENCED_CODES and isinstance(request, Heartbeat):
            self._fence(now_ms, message or f"error {error_code}")
            return ErrorOutcome(fenced=True, report=False)
        self._failures += 1
        backoff = self.retry_backoff_ms * 2 ** min(self._failures - 1, 30)
        self._due_ms = now_ms + min(backoff, self.retry_backoff_max_ms)
        return ErrorOutcome(fenced=False, report=not retriable and error_code not in FENCED_CODES)

    def maybe_expire(self, now_ms: int) -> bool:
        """Fence the member when the coordinator has not answered for a whole session: it has removed
        the member by now, and another may own its partitions. True when that happened."""
        if self.member_id is None or self._last_answer_ms is None or self.left:
            return False
        if now_ms - self._last_answer_ms < self.session_timeout_ms:
            return False
        self._fence(now_ms, f"no answer from the group coordinator for {now_ms - self._last_answer_ms} ms")
        return True

    def fenced(self, now_ms: int, member_id: str, member_epoch: int | None, message: str) -> bool:
        """A commit with (member_id, member_epoch) was fenced (40405 with member_epoch None, 40906 with
        the epoch it used). Taken only when that is still the member's identity. True when it fenced."""
        if self.left or member_id != self.member_id:
            return False
        if member_epoch is not None and member_epoch != self.member_epoch:
            return False  # the commit used an older epoch; the current one may be fine
        self._fence(now_ms, message)
        return True

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """The shell gave these up (committed, stopped fetching): heartbeat at once without them."""
        before = len(self.owned)
        self.owned.difference_update(partitions)
        if len(self.owned) != before and self._in_flight is None:
            self._due_ms = 0

    def assigned(self, partitions: Iterable[TopicPartition], generation: int) -> list[TopicPartition]:
        """The shell took these (read under `generation`). Returns the ones that are now owned; the
        shell drops the others (a fence came in between, or the assignment moved on)."""
        if generation != self.generation or self.left:
            return []
        accepted = sorted(set(partitions) & (self.assignment - self.owned))
        self.owned.update(accepted)
        return accepted

    def leave(self) -> tuple[str, int] | None:
        """Stop: no more requests. (member_id, member_epoch) to send the leave with, or None when the
        member has not joined (nothing to leave)."""
        self.left = True
        self._in_flight = None
        if self.member_id is None:
            return None
        return self.member_id, self.member_epoch

    # -- inside ---------------------------------------------------------------------------------------

    def _fence(self, now_ms: int, reason: str) -> None:
        self._lost.extend(sorted(self.owned - set(self._lost)))
        self.owned.clear()
        self.assignment = frozenset()
        self.member_id = None
        self.member_epoch = 0
        self.generation += 1
        self.fence_reason = reason
        self._in_flight = None
        self._last_answer_ms = None
        self._failures = 0
        self._due_ms = now_ms  # join again at once
