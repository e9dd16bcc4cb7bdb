#!/usr/bin/env python3
"""CPU per fetch exchange: one HTTP POST per fetch against one WebSocket message each way.

Why the followers replicate over a WebSocket (node/fetcher.py): a follower fetches about once per
produced batch, so the fixed cost of one exchange counts as much as the bytes it carries. This
script runs an aiohttp server and client in one process on 127.0.0.1, with the shapes the
replication path uses: a ~200-byte JSON fetch document up, a binary answer of `--answer-bytes` down.
It measures the process CPU time per exchange (both sides together) for

- `post`: `POST` with the document, answer as an `application/octet-stream` body (a keep-alive
  connection, as aiohttp's client session keeps it);
- `websocket`: one binary message up, one binary message down on an open connection.

Each figure is the median of `--rounds` rounds of `--exchanges` exchanges; within a round the two
run one after the other, so load from other processes falls on both.

    .venv/bin/python scripts/bench_transport.py [--answer-bytes 100,110000,300000]
        [--exchanges 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

import aiohttp
import orjson
from aiohttp import web

DOCUMENT = orjson.dumps(
    {
        "replica_id": 2,
        "replica_epoch": 7,
        "max_wait_ms": 500,
        "max_bytes": 1048576,
        "partitions": [
            {
                "topic": "orders",
                "partition": p,
                "fetch_offset": 1234567,
                "last_fetched_epoch": 3,
                "leader_epoch": 3,
            }
            for p in range(2)
        ],
    }
)


async def measure(answer: bytes, exchanges: int) -> dict[str, float]:
    """Process CPU microseconds per exchange for each transport."""

    async def post(request: web.Request) -> web.Response:
        orjson.loads(await request.read())
        return web.Response(body=answer, content_type="application/octet-stream")

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, compress=False)
        await ws.prepare(request)
        async for message in ws:
            orjson.loads(message.data)
            await ws.send_bytes(answer)
        return ws

    app = web.Application(client_max_size=1 << 26)
    app.router.add_post("/fetch", post)
    app.router.add_get("/stream", stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    out = {}
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}"
            headers = {"Content-Type": "application/json"}

            async def one_post() -> None:
                async with http.post(f"{url}/fetch", data=DOCUMENT, headers=headers) as response:
                    body = await response.read()
                    assert response.status == 200 and len(body) == len(answer)

            for _ in range(50):  # warm up the connection and the code paths
                await one_post()
            started = time.process_time()
            for _ in range(exchanges):
                await one_post()
            out["post"] = (time.process_time() - started) / exchanges * 1e6

            async with http.ws_connect(f"{url}/stream", max_msg_size=0, compress=0) as ws:

                async def one_message() -> None:
                    await ws.send_bytes(DOCUMENT)
                    message = await ws.receive()
                    assert message.type == aiohttp.WSMsgType.BINARY and len(message.data) == len(answer)

                for _ in range(50):
                    await one_message()
                started = time.process_time()
                for _ in range(exchanges):
                    await one_message()
                out["websocket"] = (time.process_time() - started) / exchanges * 1e6
    finally:
        await runner.cleanup()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answer-bytes", default="100,110000,300000", help="answer sizes, comma-separated")
    parser.add_argument("--exchanges", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.answer_bytes.split(",")]
    load = os.getloadavg()
    print("command: " + " ".join(["scripts/bench_transport.py", *sys.argv[1:]]))
    print(
        f"cores: {os.cpu_count()}, Python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start"
    )
    print(f"CPU microseconds per exchange (server and client in one process), median of {args.rounds} rounds")
    print(f"{'answer bytes':>12} {'post':>8} {'websocket':>10} {'post/ws':>8}")
    for size in sizes:
        answer = os.urandom(size)
        rounds = [asyncio.run(measure(answer, args.exchanges)) for _ in range(args.rounds)]
        post = statistics.median(r["post"] for r in rounds)
        ws = statistics.median(r["websocket"] for r in rounds)
        print(f"{size:>12,} {post:>8.0f} {ws:>10.0f} {post / ws:>8.1f}")


if __name__ == "__main__":
    main()
