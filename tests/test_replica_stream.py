"""node/replica_stream.py: the frame reader on every way a byte stream can be cut, and the follower's
end against stand-in leaders (one that accepts the upgrade as the node does, and ones that do not)."""

from __future__ import annotations

import asyncio
import itertools

import orjson
import pytest
from aiohttp import web

from node import replica_stream
from node.errors import ApiError
from node.replica_stream import (
    ANSWER,
    FETCH,
    REFUSED,
    FollowerStream,
    FrameReader,
    FrameTooLarge,
    StreamError,
    frame,
)


def test_a_frame_that_arrives_whole_is_not_copied():
    data = frame(ANSWER, [b"head", b"x" * 1000])
    [(kind, payload)] = FrameReader().feed(data)
    assert kind == ANSWER and bytes(payload) == b"head" + b"x" * 1000
    assert payload.obj is data  # a view into what arrived


def test_frames_cut_at_every_byte_come_out_whole_and_in_order():
    stream = frame(FETCH, [b"a"]) + frame(ANSWER, [bytes(range(256)) * 4]) + frame(REFUSED, [b""])
    expected = [(FETCH, b"a"), (ANSWER, bytes(range(256)) * 4), (REFUSED, b"")]
    for cut in range(len(stream) + 1):
        for second_cut in (cut, min(len(stream), cut + 3), min(len(stream), cut + 600)):
            reader = FrameReader()
            got = []
            for piece in (stream[:cut], stream[cut:second_cut], stream[second_cut:]):
                got += [(kind, bytes(payload)) for kind, payload in reader.feed(piece)]
            assert got == expected, (cut, second_cut)


def test_one_byte_at_a_time():
    stream = frame(ANSWER, [b"hello"]) * 3
    reader = FrameReader()
    got = [bytes(p) for i in range(len(stream)) for _, p in reader.feed(stream[i : i + 1])]
    assert got == [b"hello"] * 3


def test_a_frame_over_the_limit_is_refused_from_its_header_alone():
    reader = FrameReader(max_length=100)
    assert [bytes(p) for _, p in reader.feed(frame(FETCH, [b"x" * 100]))] == [b"x" * 100]
    with pytest.raises(FrameTooLarge) as caught:
        reader.feed(replica_stream.HEADER.pack(FETCH, 101))  # no body yet: the header is enough
    assert (caught.value.length, caught.value.limit) == (101, 100)


def against(handler, client):
    """Run `client(address)` against an aiohttp server with `handler` at the stream's path."""

    async def run():
        app = web.Application()
        app.router.add_get(replica_stream.STREAM_PATH, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            return await client(f"127.0.0.1:{runner.addresses[0][1]}")
        finally:
            await runner.cleanup()

    return asyncio.run(run())


def test_exchanges_on_one_connection_then_a_refusal_ends_it():
    """The stand-in leader answers each fetch with its own bytes reversed, and refuses "bad"."""
    connections = []

    async def leader(request):
        connections.append(request.headers.get("X-Raftka-Forwarded-By"))
        stream = await replica_stream.accept(request, 1 << 20)
        while (fetch := await stream.next_fetch()) is not None:
            if bytes(fetch) == b"bad":
                stream.refuse(ApiError(42201, "no good"))
                break
            await stream.send_answer([bytes(fetch)[::-1], b"!" * 300_000])
        stream.close()
        return stream.response

    async def follower(address):
        stream = await FollowerStream.open(address, 4, 5)
        answers = [bytes(await stream.exchange(b"fetch-%d" % i)) for i in range(3)]
        with pytest.raises(StreamError) as caught:
            await stream.exchange(b"bad")
        await asyncio.sleep(0.1)
        closed = stream.closed
        with pytest.raises(StreamError):
            await stream.exchange(b"again")
        return answers, str(caught.value), closed

    answers, refusal, closed = against(leader, follower)
    assert answers == [b"%d-hctef" % i + b"!" * 300_000 for i in range(3)]
    assert refusal == "the leader refused the fetch: 42201: no good"
    assert closed and connections == ["4"]


def test_a_leader_that_does_not_upgrade_is_named_in_the_error():
    async def not_found(request):
        return web.json_response({"error_code": 40401, "message": "no such path"}, status=404)

    async def follower(address):
        with pytest.raises(StreamError) as caught:
            await FollowerStream.open(address, 4, 5)
        return str(caught.value)

    message = against(not_found, follower)
    assert message.startswith("the leader did not switch to the replica stream: HTTP/1.1 404 Not Found")
    assert "no such path" in message


def test_a_leader_gone_mid_answer_fails_the_exchange():
    async def half_answer(request):
        stream = await replica_stream.accept(request, 1 << 20)
        await stream.next_fetch()
        stream._transport.write(replica_stream.HEADER.pack(ANSWER, 1000) + b"only part")
        stream.close()
        return stream.response

    async def follower(address):
        stream = await FollowerStream.open(address, 4, 5)
        with pytest.raises(StreamError) as caught:
            await asyncio.wait_for(stream.exchange(b"fetch"), 5)
        return str(caught.value), stream.closed

    message, closed = against(half_answer, follower)
    assert message.startswith("the leader closed the replica stream") and closed


def test_a_leader_that_never_answers_the_upgrade_times_out():
    async def run():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            with pytest.raises(TimeoutError):
                await FollowerStream.open(address, 4, 0.3)
        finally:
            server.close()

    asyncio.run(run())


def test_a_leader_answer_in_pieces_of_one_byte():
    """The 101 head and the answer frame, each written a byte at a time by a stand-in leader."""

    async def run():
        async def leader(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: Raftka-Replica/1\r\nConnection: Upgrade\r\n\r\n"
            for i in range(len(head)):
                writer.write(head[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)
            kind, length = replica_stream.HEADER.unpack(await reader.readexactly(replica_stream.HEADER.size))
            body = await reader.readexactly(length)
            answer = frame(ANSWER, [orjson.dumps({"kind": kind, "got": body.decode()})])
            for i in range(len(answer)):
                writer.write(answer[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.001)

        server = await asyncio.start_server(leader, "127.0.0.1", 0)
        address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            stream = await FollowerStream.open(address, 4, 5)
            answer = orjson.loads(await stream.exchange(b"one"))
            stream.close()
            return answer
        finally:
            server.close()

    assert asyncio.run(run()) == {"kind": FETCH, "got": "one"}


def test_fetches_sent_without_waiting_are_all_answered_in_order():
    """A client that sends 50 fetches in five quick writes to a leader that takes 10 ms over each:
    the leader stops reading while QUEUED_FETCHES_MAX wait (what it holds is then at most one socket
    read past them), reads on as it takes them, and answers every one, in order."""
    calls = []

    async def leader(request):
        stream = await replica_stream.accept(request, 1 << 20)
        transport = stream._transport
        pause, resume = transport.pause_reading, transport.resume_reading
        transport.pause_reading = lambda: (calls.append(("pause", len(stream._fetches))), pause())
        transport.resume_reading = lambda: (calls.append(("resume", len(stream._fetches))), resume())
        while (fetch := await stream.next_fetch()) is not None:
            await asyncio.sleep(0.01)
            await stream.send_answer([bytes(fetch)])
        stream.close()
        return stream.response

    async def client(address):
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(replica_stream.upgrade_request(address, 4))
        await reader.readuntil(b"\r\n\r\n")
        for first in range(0, 50, 10):
            writer.write(b"".join(frame(FETCH, [b"fetch-%02d" % i]) for i in range(first, first + 10)))
            await writer.drain()
            await asyncio.sleep(0.02)
        answers = []
        for _ in range(50):
            kind, length = replica_stream.HEADER.unpack(await asyncio.wait_for(reader.readexactly(5), 5))
            answers.append((kind, await reader.readexactly(length)))
        writer.close()
        return answers

    answers = against(leader, client)
    assert answers == [(ANSWER, b"fetch-%02d" % i) for i in range(50)]
    assert calls and calls[0] == ("pause", 10)  # the first write: 10 fetches in one read
    for (first, held), (second, _) in itertools.pairwise(calls):
        assert (first, second) in (("pause", "resume"), ("resume", "pause"))
        assert held >= replica_stream.QUEUED_FETCHES_MAX
    assert calls[-1][0] == "resume"
