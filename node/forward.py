"""Node-to-node HTTP: forwarding a request to the node that can answer it, and calls to the controller.

Theory of operation
-------------------
Any node answers any request (../shared/DESIGN.md): a node that does not lead a partition, or is not
the active controller, raises `ForwardTo(address)`; the error middleware then sends the same request
(method, path and query, body, content headers) to that node and relays its answer. A forwarded
request carries `X-Raftka-Forwarded-By`, and a node that receives one answers for itself or fails
(one hop, never a loop). Answers to metadata changes carry `X-Raftka-Metadata-Version`; the
forwarding node waits until it has applied that version before it answers, so a client that created
a topic through any node sees it on that node at once.

A node that cannot reach the target answers 40403 for a partition leader (retriable: the client
refreshes metadata) and 50303 for the controller (retriable: a new one is being elected).
"""

from __future__ import annotations

import logging

import aiohttp
import orjson
from aiohttp import web

from node.errors import ApiError

log = logging.getLogger(__name__)

FORWARDED_HEADER = "X-Raftka-Forwarded-By"
METADATA_VERSION_HEADER = "X-Raftka-Metadata-Version"
_PASSED_REQUEST_HEADERS = ("Content-Type", "Accept")
METADATA_WAIT_S = 5.0


class ForwardTo(Exception):  # a control-flow signal, not an error
    def __init__(self, address: str, what: str, unreachable_code: int = 40403):
        super().__init__(address)
        self.address = address
        self.what = what
        # 40403 for a partition leader (refresh metadata), 50303 for the controller (retry).
        self.unreachable_code = unreachable_code


def is_forwarded(request: web.Request) -> bool:
    return FORWARDED_HEADER in request.headers


async def forward(node, request: web.Request, target: ForwardTo) -> web.Response:
    if is_forwarded(request):
        raise ApiError(
            40403,
            f"{target.what} is not on node {node.config.node_id} and the request was already forwarded once",
        )
    body = await request.read()
    headers = {h: request.headers[h] for h in _PASSED_REQUEST_HEADERS if h in request.headers}
    headers[FORWARDED_HEADER] = str(node.config.node_id)
    wait_ms = _int_query(request, "max_wait_ms")
    timeout = aiohttp.ClientTimeout(total=30 + wait_ms / 1000)
    url = f"http://{node.config.dial(target.address)}{request.path_qs}"
    try:
        async with node.http.request(
            request.method, url, data=body, headers=headers, timeout=timeout
        ) as response:
            data = await response.read()
            relayed = {k: v for k, v in response.headers.items() if k.startswith("X-Raftka-")}
            content_type = response.headers.get("Content-Type", "application/json")
            status = response.status
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise ApiError(
            target.unreachable_code,
            f"{target.what} is on {target.address}, which node {node.config.node_id} cannot reach: {exc}",
        ) from None
    version = relayed.get(METADATA_VERSION_HEADER)
    if version is not None and version.isdigit():
        await node.store.wait_for_version(int(version), METADATA_WAIT_S)
    relayed["Content-Type"] = content_type
    return web.Response(body=data, status=status, headers=relayed)


def _int_query(request: web.Request, name: str) -> int:
    raw = request.query.get(name, "0")
    return int(raw) if raw.isdigit() else 0


async def call(
    node,
    address: str,
    method: str,
    path: str,
    document: dict | None = None,
    timeout_s: float = 10.0,
    unreachable_code: int = 40403,
):
    """One JSON request to another node: (status, decoded body, headers); ApiError `unreachable_code`
    when it cannot be reached."""
    url = f"http://{node.config.dial(address)}{path}"
    try:
        async with node.http.request(
            method,
            url,
            data=None if document is None else orjson.dumps(document),
            headers={"Content-Type": "application/json", FORWARDED_HEADER: str(node.config.node_id)},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            data = await response.read()
            try:
                body = orjson.loads(data) if data else {}
            except orjson.JSONDecodeError:
                body = {"message": data[:200].decode(errors="replace")}
            return response.status, body, response.headers
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise ApiError(unreachable_code, f"cannot reach {address}: {exc}") from None
