"""The replica stream: the connection a follower fetches on, one per follower per leader.

Wire format
-----------
The follower connects to the leader's HTTP port and asks to switch protocols:

    GET /v1/internal/replica/stream HTTP/1.1
    Host: <the leader's address>
    Connection: Upgrade
    Upgrade: raftka-replica/1
    X-Raftka-Forwarded-By: <the follower's node id>

The leader answers `101 Switching Protocols` with `Upgrade: raftka-replica/1`, or an HTTP error with
the usual JSON error body (426, error code 42601, when the Upgrade header is missing or names another
protocol). From then on both sides send frames: a 5-byte header (kind: uint8, length: uint32, big
endian) and `length` bytes.

| kind | name | from | payload |
| --- | --- | --- | --- |
| 1 | FETCH | follower | a fetch document, JSON (as `POST /v1/internal/replica/fetch` takes) |
| 2 | ANSWER | leader | the answer (node/fetcher.py, `encode_fetch_response`) |
| 3 | REFUSED | leader | JSON `{"error_code", "message"}`: the fetch was bad; the leader closes after it |

The connection alternates strictly: the follower sends a fetch and waits for its answer before it
sends the next (a client that does not is answered in order, but the leader stops reading while
QUEUED_FETCHES_MAX fetches wait). A fetch frame over the node's max request bytes is refused (41301) as soon as its
header arrives. An answer has no limit of its own: each partition's part is bounded by the fetch's
`max_bytes`.

Why a protocol of its own: a follower fetches about once per produced batch, so what each exchange
costs counts. The node spoke WebSocket here before; with both ends in two processes and a 133 KB
answer, an exchange took about a quarter less CPU on this framing (docs/performance.md, "The replica
stream's own framing").

How the leader's end works: the HTTP server (aiohttp) routes the upgrade request to
`node/api.py` like any other; `accept` answers 101 and takes the connection's transport over with
`set_protocol`, so the bytes that follow reach `LeaderStream` and never the HTTP parser. When the
connection ends, the HTTP server's protocol is told too (`connection_lost`), so its own bookkeeping
of connections holds. The follower's end is a plain `asyncio.Protocol` (`FollowerStream`).

Thread-safety: event loop only.
"""

from __future__ import annotations

import asyncio
import collections
import struct

import orjson
from aiohttp import web

from node.errors import ApiError
from node.forward import FORWARDED_HEADER

STREAM_PATH = "/v1/internal/replica/stream"
PROTOCOL = "raftka-replica/1"
HEADER = struct.Struct(">BI")  # kind, length
FETCH = 1
ANSWER = 2
REFUSED = 3
HANDSHAKE_BYTES_MAX = 64 << 10  # the leader's HTTP answer to the upgrade, head and error body
QUEUED_FETCHES_MAX = 8  # a follower that sends fetches without waiting for answers is read no further


class FrameTooLarge(Exception):
    def __init__(self, length: int, limit: int):
        super().__init__(f"a frame of {length} bytes is over the limit of {limit}")
        self.length = length
        self.limit = limit


class FrameReader:
    """Splits a byte stream into frames: feed it what arrived, get back the frames it completed.

    A frame that arrived whole in one piece is a memoryview into that piece, with no copy; one that
    arrived in several is joined once when its last byte comes."""

    def __init__(self, max_length: int | None = None):
        self._max_length = max_length
        self._pending: list = []  # pieces of an unfinished frame
        self._pending_size = 0
        self._needed = HEADER.size  # bytes the unfinished frame needs before it is looked at again

    def feed(self, data: bytes) -> list[tuple[int, memoryview]]:
        if self._pending:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size < self._needed:
                return []
            data = b"".join(self._pending)
            self._pending, self._pending_size = [], 0
        view = memoryview(data)
        frames = []
        position, end = 0, len(view)
        self._needed = HEADER.size
        while end - position >= HEADER.size:
            kind, length = HEADER.unpack_from(view, position)
            if self._max_length is not None and length > self._max_length:
                raise FrameTooLarge(length, self._max_length)
            if end - position - HEADER.size < length:
                self._needed = HEADER.size + length
                break
            start = position + HEADER.size
            frames.append((kind, view[start : start + length]))
            position = start + length
        if position < end:
            self._pending = [view[position:]]
            self._pending_size = end - position
        return frames


def upgrade_request(address: str, node_id: int) -> bytes:
    """The follower's HTTP request that asks the leader at `address` to switch to the stream."""
    return (
        f"GET {STREAM_PATH} HTTP/1.1\r\nHost: {address}\r\nConnection: Upgrade\r\n"
        f"Upgrade: {PROTOCOL}\r\n{FORWARDED_HEADER}: {node_id}\r\n\r\n"
    ).encode()


def frame(kind: int, parts: list) -> bytes:
    """One frame of `parts` (bytes-like) back to back, in one buffer (one write, one copy)."""
    return b"".join([HEADER.pack(kind, sum(len(p) for p in parts)), *parts])


class StreamError(Exception):
    """The replica stream failed: refused, closed, or not spoken by the other end."""


# -- the leader's end -------------------------------------------------------------------------------


async def accept(request: web.Request, max_fetch_bytes: int) -> LeaderStream:
    """Answer an upgrade request with 101 and take its connection over (see the module notes)."""
    upgrade = request.headers.get("Upgrade", "").strip().lower()
    if upgrade != PROTOCOL or "upgrade" not in request.headers.get("Connection", "").lower():
        raise ApiError(
            42601, f"the replica stream is spoken after 'Connection: Upgrade' and 'Upgrade: {PROTOCOL}'"
        )
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the follower went away before the upgrade")
    response = web.StreamResponse(status=101, headers={"Upgrade": PROTOCOL, "Connection": "Upgrade"})
    response.force_close()  # once the handler ends, the connection ends: it never carries HTTP again
    stream = LeaderStream(transport, request.protocol, max_fetch_bytes, response)
    # From here every byte that arrives is the stream's, so nothing the follower sends after the 101
    # can reach the HTTP parser. The 101 itself still goes out through aiohttp's writer.
    transport.set_protocol(stream)
    try:
        await response.prepare(request)
        await response.write_eof()
    except BaseException:
        stream.close()
        raise
    return stream


class LeaderStream(asyncio.Protocol):
    """The leader's end of one follower's connection, after the upgrade."""

    def __init__(self, transport, http_protocol, max_fetch_bytes: int, response: web.StreamResponse):
        self.response = response  # what the HTTP handler returns when the stream is over
        self._transport = transport
        self._http_protocol = http_protocol
        self._reader = FrameReader(max_fetch_bytes)
        self._fetches: collections.deque = collections.deque()
        self._bad: ApiError | None = None
        self._ended = False
        self._waiter: asyncio.Future | None = None
        self._drained: asyncio.Future | None = None  # set while the transport's buffer is over its mark

    def data_received(self, data: bytes) -> None:
        if self._bad is not None:
            return
        try:
            frames = self._reader.feed(data)
        except FrameTooLarge as exc:
            frames = []
            self._bad = ApiError(
                41301, f"a replica fetch of {exc.length} bytes is over the limit of {exc.limit}"
            )
        for kind, payload in frames:
            if kind != FETCH:
                self._bad = ApiError(42201, f"a follower sends fetch frames (kind {FETCH}), not kind {kind}")
                break
            self._fetches.append(payload)
        if len(self._fetches) >= QUEUED_FETCHES_MAX and not self._ended:
            self._transport.pause_reading()  # until next_fetch has taken them
        self._wake()

    def eof_received(self) -> bool:
        return False  # the follower is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended = True
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._http_protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._drained is None or self._drained.done():
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next_fetch(self) -> memoryview | None:
        """The next fetch document, or None once the connection ended; ApiError for a bad frame
        (after the fetches that came before it)."""
        while not self._fetches:
            if self._bad is not None:
                raise self._bad
            if self._ended:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if len(self._fetches) == QUEUED_FETCHES_MAX and not self._ended:
            self._transport.resume_reading()
        return self._fetches.popleft()

    async def send_answer(self, parts: list) -> None:
        if self._drained is not None:
            await self._drained  # a follower that does not read gets no more until it does
        if not self._ended:
            self._transport.write(frame(ANSWER, parts))

    def refuse(self, error: ApiError) -> None:
        """Tell the follower why its fetch was refused, and end the connection."""
        if not self._ended:
            reason = orjson.dumps({"error_code": error.error_code, "message": error.message})
            self._transport.write(frame(REFUSED, [reason]))
        self.close()

    def close(self) -> None:
        self._transport.close()


# -- the follower's end -----------------------------------------------------------------------------


class FollowerStream(asyncio.Protocol):
    """The follower's end: `open` connects and upgrades; `exchange` sends one fetch and returns its
    answer (a memoryview, see `FrameReader`)."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._head = bytearray()  # the leader's HTTP answer, until the upgrade is done
        self._upgraded: asyncio.Future = loop.create_future()
        self._reader = FrameReader()
        self._answer: asyncio.Future | None = None
        self.closed = False

    @classmethod
    async def open(cls, address: str, node_id: int, timeout_s: float) -> FollowerStream:
        """Connect to `address` (host:port) and switch to the stream; StreamError (or OSError,
        TimeoutError) when that fails."""
        host, _, port = address.rpartition(":")
        stream = cls()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.get_running_loop().create_connection(
                    lambda: stream, host.strip("[]"), int(port)
                )
                assert stream._transport is not None
                stream._transport.write(upgrade_request(address, node_id))
                await stream._upgraded
        except BaseException:
            stream.close()
            raise
        return stream

    async def exchange(self, fetch: bytes) -> memoryview:
        if self.closed or self._transport is None:
            raise StreamError("the replica stream is closed")
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(frame(FETCH, [fetch]))
        return await self._answer

    def close(self) -> None:
        self.closed = True
        for waiter in (self._upgraded, self._answer):
            if waiter is not None and not waiter.done():
                waiter.cancel()  # its owner stopped waiting; a failure now would be logged unread
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if not self._upgraded.done():
            self._handshake(data)
            return
        for kind, payload in self._reader.feed(data):
            answer, self._answer = self._answer, None
            if answer is None or answer.done():
                self._fail(StreamError(f"the leader sent a frame (kind {kind}) with no fetch outstanding"))
                return
            if kind == ANSWER:
                answer.set_result(payload)
            elif kind == REFUSED:
                reason = orjson.loads(payload)
                answer.set_exception(
                    StreamError(f"the leader refused the fetch: {reason['error_code']}: {reason['message']}")
                )
            else:
                answer.set_exception(StreamError(f"the leader sent a frame of unknown kind {kind}"))

    def _handshake(self, data: bytes) -> None:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > HANDSHAKE_BYTES_MAX:
                self._fail(StreamError("the leader's answer to the upgrade has no end of head"))
            return
        lines = bytes(self._head[:end]).decode("latin-1").split("\r\n")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        status = lines[0].split(" ", 2)
        if len(status) >= 2 and status[1] == "101" and fields.get("upgrade", "").lower() == PROTOCOL:
            rest = bytes(self._head[end + 4 :])
            self._head = bytearray()
            self._upgraded.set_result(None)
            if rest:
                self.data_received(rest)
            return
        body = bytes(self._head[end + 4 :])
        length = int(fields.get("content-length", "0") or 0)
        if len(body) < min(length, HANDSHAKE_BYTES_MAX):
            return  # the error body is still coming
        self._fail(StreamError(f"the leader did not switch to the replica stream: {lines[0]} {body[:300]!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(StreamError("the leader closed the replica stream" + (f" ({exc})" if exc else "")))

    def _fail(self, error: StreamError) -> None:
        for waiter in (self._upgraded, self._answer):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
        self.close()
