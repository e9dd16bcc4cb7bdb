#!/usr/bin/env python3
"""CPU per fetch exchange: an HTTP POST per fetch, a WebSocket message each way, and the replica
stream's frames (node/replica_stream.py).

Why the followers replicate over a stream of their own (node/fetcher.py): a follower fetches about
once per produced batch, so the fixed cost of one exchange counts as much as the bytes it carries.
This script runs an aiohttp server (the node's HTTP server) and a client on 127.0.0.1, with the
shapes the replication path uses: a ~200-byte JSON fetch document up, a binary answer of
`--answer-bytes` down. It measures the CPU time per exchange (both ends together, and each end) for

- `post`: `POST` with the document, answer as an `application/octet-stream` body (a keep-alive
  connection, as aiohttp's client session keeps it);
- `websocket`: one binary message up, one binary message down on an open aiohttp WebSocket (what the
  followers used before the replica stream);
- `stream`: the replica stream as the node speaks it: `replica_stream.accept` on the server,
  `FollowerStream` as the client, one fetch frame up and one answer frame down.

With `--processes 1` both ends run in one process and event loop; with `--processes 2` (the
default) the server runs in a process of its own, as a leader and its follower do, and each end's
CPU is read from its process. Each figure is the median of `--rounds` rounds of `--exchanges`
exchanges; within a round the three run one after the other, so load from other processes falls on
all of them. Both processes take the node's allocator settings (node/memory.py).

    .venv/bin/python scripts/bench_transport.py [--answer-bytes 100,133000,300000]
        [--exchanges 2000] [--rounds 3] [--processes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time

import aiohttp
import orjson
from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_replication import process_cpu_s  # scripts/ is not a package: this script's folder

from node import replica_stream
from node.memory import tune_malloc
from node.replica_stream import FollowerStream

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
TRANSPORTS = ("post", "websocket", "stream")
WARM_UP = 50


# -- the server (the leader's end) -----------------------------------------------------------------


async def start_server(answer: bytes) -> tuple[web.AppRunner, int]:
    async def post(request: web.Request) -> web.Response:
        orjson.loads(await request.read())
        return web.Response(body=answer, content_type="application/octet-stream")

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, compress=False)
        await ws.prepare(request)
        async for message in ws:
            orjson.loads(message.data)
            await ws.send_bytes(answer)
        return ws

    async def stream(request: web.Request) -> web.StreamResponse:
        leader = await replica_stream.accept(request, 1 << 26)
        while (fetch := await leader.next_fetch()) is not None:
            orjson.loads(fetch)
            await leader.send_answer([answer])
        leader.close()
        return leader.response

    app = web.Application(client_max_size=1 << 26)
    app.router.add_post("/fetch", post)
    app.router.add_get("/websocket", websocket)
    app.router.add_get(replica_stream.STREAM_PATH, stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


def server_process(answer: bytes, ports, stop) -> None:
    """The server alone in its process, until `stop` is set."""
    tune_malloc()

    async def main() -> None:
        runner, port = await start_server(answer)
        ports.put(port)
        await asyncio.to_thread(stop.wait)
        await runner.cleanup()

    asyncio.run(main())


# -- the client (the follower's end) ---------------------------------------------------------------


async def exchanges(port: int, answer_bytes: int, count: int, server_cpu) -> dict[str, tuple[float, float]]:
    """For each transport, (client, server) CPU microseconds per exchange; `server_cpu()` reads the
    server's CPU seconds (the whole process's time when both ends share it: then the client's is 0)."""
    url = f"http://127.0.0.1:{port}"
    out = {}
    async with aiohttp.ClientSession() as http:

        async def post() -> None:
            async with http.post(
                f"{url}/fetch", data=DOCUMENT, headers={"Content-Type": "application/json"}
            ) as r:
                body = await r.read()
                assert r.status == 200 and len(body) == answer_bytes

        async with http.ws_connect(f"{url}/websocket", max_msg_size=0, compress=0) as ws:

            async def websocket() -> None:
                await ws.send_bytes(DOCUMENT)
                message = await ws.receive()
                assert message.type == aiohttp.WSMsgType.BINARY and len(message.data) == answer_bytes

            stream = await FollowerStream.open(f"127.0.0.1:{port}", 2, 10)

            async def frames() -> None:
                assert len(await stream.exchange(DOCUMENT)) == answer_bytes

            try:
                for name, one in zip(TRANSPORTS, (post, websocket, frames), strict=True):
                    for _ in range(WARM_UP):
                        await one()
                    client_started, server_started = time.process_time(), server_cpu()
                    for _ in range(count):
                        await one()
                    client_s = time.process_time() - client_started
                    server_s = server_cpu() - server_started
                    out[name] = (client_s / count * 1e6, server_s / count * 1e6)
            finally:
                stream.close()
    return out


def measure(answer_bytes: int, count: int, processes: int) -> dict[str, tuple[float, float]]:
    answer = os.urandom(answer_bytes)
    if processes == 1:

        async def together() -> dict[str, tuple[float, float]]:
            runner, port = await start_server(answer)
            try:
                # One process: its whole CPU time goes in the server's column, the client's is 0.
                figures = await exchanges(port, answer_bytes, count, time.process_time)
            finally:
                await runner.cleanup()
            return {name: (0.0, server) for name, (_client, server) in figures.items()}

        return asyncio.run(together())
    context = multiprocessing.get_context("spawn")
    ports, stop = context.Queue(), context.Event()
    server = context.Process(target=server_process, args=(answer, ports, stop), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=60)
        return asyncio.run(exchanges(port, answer_bytes, count, lambda: process_cpu_s(server.pid)))
    finally:
        stop.set()
        server.join(10)
        if server.is_alive():
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answer-bytes", default="100,133000,300000", help="answer sizes, comma-separated")
    parser.add_argument("--exchanges", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, choices=(1, 2))
    args = parser.parse_args()
    tune_malloc()
    sizes = [int(s) for s in args.answer_bytes.split(",")]
    load = os.getloadavg()
    print("command: " + " ".join(["scripts/bench_transport.py", *sys.argv[1:]]))
    print(
        f"cores: {os.cpu_count()}, Python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start"
    )
    where = (
        "server and client in one process" if args.processes == 1 else "server and client in two processes"
    )
    print(f"CPU microseconds per exchange ({where}), median of {args.rounds} rounds")
    if args.processes == 2:
        print("each cell: both ends (client + server)")
    print(f"{'answer bytes':>12} " + " ".join(f"{t:>20}" for t in TRANSPORTS) + f" {'stream/websocket':>17}")
    for size in sizes:
        rounds = [measure(size, args.exchanges, args.processes) for _ in range(args.rounds)]
        cells, totals = [], {}
        for name in TRANSPORTS:
            client = statistics.median(r[name][0] for r in rounds)
            server = statistics.median(r[name][1] for r in rounds)
            totals[name] = statistics.median(sum(r[name]) for r in rounds)
            cells.append(
                f"{totals[name]:>20.0f}"
                if args.processes == 1
                else f"{f'{totals[name]:.0f} ({client:.0f} + {server:.0f})':>20}"
            )
        print(f"{size:>12,} " + " ".join(cells) + f" {totals['stream'] / totals['websocket']:>17.2f}")


if __name__ == "__main__":
    main()
