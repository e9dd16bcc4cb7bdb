"""Node-to-node and client requests are sent once: aiohttp would otherwise resend a GET, PUT or DELETE
whose connection broke before the answer, turning "applied, answer lost" into a second request (a
forwarded topic delete answered 40401 for a delete that happened: found by a link-half-open
experiment, raftka/chaos/links.py)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from raftka.client._http import send_once


async def _count_requests_when_the_answer_is_lost(once: bool) -> int:
    received = 0

    async def delete(request: web.Request) -> web.Response:
        nonlocal received
        received += 1
        request.transport.close()  # applied, then the connection breaks before the answer
        await asyncio.sleep(0.5)
        return web.Response(text="gone")

    app = web.Application()
    app.router.add_delete("/v1/topics/t", delete)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        session = aiohttp.ClientSession()
        async with send_once(session) if once else session:
            with pytest.raises((aiohttp.ClientError, OSError)):
                async with session.delete(f"http://127.0.0.1:{port}/v1/topics/t") as response:
                    await response.read()
    finally:
        await runner.cleanup()
    return received


def test_a_delete_whose_answer_is_lost_is_sent_once():
    assert asyncio.run(_count_requests_when_the_answer_is_lost(once=True)) == 1


def test_without_it_aiohttp_sends_it_twice():
    """The behaviour send_once turns off; if aiohttp stops resending, this test says so (then
    send_once may go)."""
    assert asyncio.run(_count_requests_when_the_answer_is_lost(once=False)) == 2
