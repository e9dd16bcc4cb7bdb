"""`raftka node`: parse the configuration, set up logging, run a Node until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import orjson

from node.config import NodeConfig, load_config
from node.memory import tune_malloc
from node.server import DataDirError, ListenError, Node
from storage.manager import DataDirLockedError


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message (and exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def setup_logging(config: NodeConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        formatter: logging.Formatter = JsonLogFormatter()
        formatter.converter = __import__("time").gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def run(config: NodeConfig) -> None:
    node = Node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([stopping, node.fatal], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if node.fatal.done():
            node.fatal.result()  # raises the reason
        logging.getLogger("node").info("stopping node %d", config.node_id)
    finally:
        await node.stop(controlled=not node.fatal.done() if node.fatal else False)


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_config(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"raftka node: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config)
    logging.getLogger("node").debug("malloc settings: %s", tune_malloc())
    try:
        asyncio.run(run(config))
    except (DataDirError, DataDirLockedError, ListenError) as exc:
        print(f"raftka node: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
