"""Errors raised by the client: one class per node error code, mapped from `{"error_code", "message"}`.

The node answers errors as JSON `{"error_code": 40401, "message": "..."}` with the HTTP status in the
first three digits. `error_from_response` turns such a body into the matching class below. Errors that
come from the client itself (a refused connection, a delivery timeout) carry `error_code=None`.

`retriable` says whether sending the same request again may succeed: the producer retries those until
`delivery_timeout_ms`, the consumer keeps fetching; every other error goes to the caller.
"""

from __future__ import annotations

from typing import Any

import orjson


class RaftkaError(Exception):
    """Base class of every client error: `error_code` (None for client-side errors), `message`, `retriable`."""

    default_retriable = False
    # Whether the error says the client's view of the cluster is stale (leaders, brokers).
    invalidates_metadata = False

    def __init__(self, error_code: int | None, message: str, retriable: bool | None = None):
        super().__init__(message)
        self.error_code = error_code
        self.message = message
        self.retriable = self.default_retriable if retriable is None else retriable

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(error_code={self.error_code!r}, message={self.message!r})"


# ---- 4xx: the request was refused; sending it again will not help -------------------------------------


class InvalidRequestError(RaftkaError):
    """A malformed or invalid request (400xx, 422xx): the message names the bad field."""


class UnknownTopicError(RaftkaError):
    """40401: the topic does not exist."""


class UnknownPartitionError(RaftkaError):
    """40402: the partition does not exist in the topic."""


class NotLeaderError(RaftkaError):
    """40403: the node does not lead the partition or it is not available now; refresh metadata and retry."""

    default_retriable = True
    invalidates_metadata = True


class TopicExistsError(RaftkaError):
    """40901: a topic with that name exists."""


class ProducerFencedError(RaftkaError):
    """40902: a newer producer with the same id took over."""


class OutOfOrderSequenceError(RaftkaError):
    """42203: an idempotent batch does not continue its producer's sequence on that partition (an
    earlier batch is missing). The producer retries it after the earlier ones, or starts the
    partition's sequence again (accumulator.py)."""


class UnknownProducerIdError(RaftkaError):
    """42204: the partition has no state for the producer (expired, or never there) and the batch does
    not start at sequence 0; the producer starts the partition's sequence again."""


class RecordTooLargeError(RaftkaError):
    """41301: the request is over the node's max_request_bytes or the batch over max.message.bytes."""


class OffsetOutOfRangeError(RaftkaError):
    """41601: a fetch offset outside the partition's log; carries the valid range."""

    def __init__(
        self,
        error_code: int | None,
        message: str,
        retriable: bool | None = None,
        *,
        log_start_offset: int | None = None,
        high_watermark: int | None = None,
        log_end_offset: int | None = None,
    ):
        super().__init__(error_code, message, retriable)
        self.log_start_offset = log_start_offset
        self.high_watermark = high_watermark
        self.log_end_offset = log_end_offset


class CorruptRecordError(RaftkaError):
    """42202: the node found a batch whose checksum does not match (or the client did, on fetch)."""


class UnknownMemberError(RaftkaError):
    """40405: the group has no such member (its session lapsed, or the coordinator moved): the member
    lost its partitions and joins again."""


class UnknownGroupError(RaftkaError):
    """40406: the group does not exist (no members and no committed offsets)."""


class StaleMemberEpochError(RaftkaError):
    """40906: the member epoch is older than the coordinator's (fenced): the member lost its
    partitions and joins again."""


class GroupNotEmptyError(RaftkaError):
    """40907: the group has members: it cannot be deleted, its offsets cannot be reset, and a commit
    must come from a member."""


class NotPartitionOwnerError(RaftkaError):
    """40908: a commit names a partition that the member does not own in the group."""


class UnsupportedError(RaftkaError):
    """405xx, 406xx, 415xx: the node does not support this method or content type."""


# ---- 408, 5xx and the network: retriable ---------------------------------------------------------------


class RequestTimeoutError(RaftkaError):
    """408xx or no answer within request_timeout_ms."""

    default_retriable = True


class ServerError(RaftkaError):
    """500xx: the node failed while serving the request (storage or internal error)."""

    default_retriable = True


class NotEnoughReplicasError(RaftkaError):
    """50301: acks=all cannot be met because the ISR is smaller than min.insync.replicas."""

    default_retriable = True


class FencedLeaderEpochError(RaftkaError):
    """40905: the client named a leader epoch older than the partition's (KIP-320); refresh metadata."""

    default_retriable = True
    invalidates_metadata = True


class CommitTimeoutError(RaftkaError):
    """50304: acks=all timed out waiting for the in-sync replicas. The records were appended by the
    leader and may or may not be committed: a retry may duplicate them (an idempotent producer's does
    not)."""

    default_retriable = True


class NodeNotReadyError(RaftkaError):
    """50302 (and other 503xx): the node is starting or stopping."""

    default_retriable = True
    invalidates_metadata = True


class RaftkaConnectionError(RaftkaError):
    """The node could not be reached: refused, reset, DNS failure, disconnected mid-answer."""

    default_retriable = True
    invalidates_metadata = True

    def __init__(self, address: str, reason: str):
        super().__init__(None, f"cannot connect to {address}: {reason}")
        self.address = address
        self.reason = reason


# ---- client-side outcomes -------------------------------------------------------------------------------


class DeliveryTimeoutError(RaftkaError):
    """A record was not acknowledged within delivery_timeout_ms; `__cause__` holds the last error."""


class ProducerClosedError(RaftkaError):
    """send() on a producer that is closing or closed."""

    def __init__(self, message: str = "the producer is closed"):
        super().__init__(None, message)


class NoOffsetForPartitionError(RaftkaError):
    """A partition has no position and auto_offset_reset is "error"."""


class CommitFailedError(RaftkaError):
    """A consumer's offset commit was refused for good: the member was fenced (40405, 40906: its
    partitions were dropped and it joins again) or does not own a partition (40908). `error_code` is
    the node's, `__cause__` the node's error. The records since the last commit will be delivered
    again, to this member or to the partition's next owner."""


class SerializationError(RaftkaError):
    """A serializer or deserializer refused a key or value."""


class BrokerNotAvailableError(RaftkaError):
    """The metadata names a leader the client has no address for; refresh and retry."""

    default_retriable = True
    invalidates_metadata = True


_BY_CODE: dict[int, type[RaftkaError]] = {
    40401: UnknownTopicError,
    40402: UnknownPartitionError,
    40403: NotLeaderError,
    40901: TopicExistsError,
    40902: ProducerFencedError,
    41301: RecordTooLargeError,
    42203: OutOfOrderSequenceError,
    42204: UnknownProducerIdError,
    41601: OffsetOutOfRangeError,
    42202: CorruptRecordError,
    40905: FencedLeaderEpochError,
    40405: UnknownMemberError,
    40406: UnknownGroupError,
    40906: StaleMemberEpochError,
    40907: GroupNotEmptyError,
    40908: NotPartitionOwnerError,
    50301: NotEnoughReplicasError,
    50302: NodeNotReadyError,
    50304: CommitTimeoutError,
}

_BY_STATUS: dict[int, type[RaftkaError]] = {
    400: InvalidRequestError,
    404: RaftkaError,
    405: UnsupportedError,
    406: UnsupportedError,
    408: RequestTimeoutError,
    413: RecordTooLargeError,
    415: UnsupportedError,
    416: OffsetOutOfRangeError,
    422: InvalidRequestError,
    500: ServerError,
    502: ServerError,
    503: NodeNotReadyError,
    504: RequestTimeoutError,
}


def error_for_code(error_code: int, message: str, extra: dict[str, Any] | None = None) -> RaftkaError:
    """The error class for a node error code: exact code first, then its HTTP status (first 3 digits)."""
    status = error_code // 100 if error_code >= 10000 else error_code
    cls = _BY_CODE.get(error_code) or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else RaftkaError
    if cls is OffsetOutOfRangeError:
        extra = extra or {}
        return OffsetOutOfRangeError(
            error_code,
            message,
            log_start_offset=_int_or_none(extra.get("log_start_offset")),
            high_watermark=_int_or_none(extra.get("high_watermark")),
            log_end_offset=_int_or_none(extra.get("log_end_offset")),
        )
    return cls(error_code, message)


def error_from_response(status: int, body: bytes, where: str = "") -> RaftkaError:
    """The error for a non-2xx answer; tolerates bodies that are not the node's JSON (a proxy's page).

    `where` ("GET /v1/topics on host:port") goes into the message of an answer that is not the node's.
    """
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error_code"), int):
        message = parsed.get("message")
        return error_for_code(parsed["error_code"], str(message) if message else f"HTTP {status}", parsed)
    text = body[:200].decode("utf-8", "replace").strip()
    message = f"HTTP {status}" + (f" from {where}" if where else "")
    message += f": {text}" if text else " with no Raftka error body (is that address a Raftka node?)"
    return error_for_code(status, message)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
