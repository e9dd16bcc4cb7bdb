"""The HTTP carrier shared by Producer, Consumer and Admin: one aiohttp session, errors mapped.

Nothing here decides anything: a request goes to the address it is given, a non-2xx answer becomes
the matching `RaftkaError`, and a network failure becomes a retriable `RaftkaConnectionError` or
`RequestTimeoutError`. Retrying and routing are the callers' business.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from raftka.client.errors import (
    InvalidRequestError,
    RaftkaConnectionError,
    RaftkaError,
    RequestTimeoutError,
    error_from_response,
)

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
BOOTSTRAP_ENV = "RAFTKA_BOOTSTRAP"
DEFAULT_PORT = 9092
BATCH_CONTENT_TYPE = "application/vnd.raftka.batch"
JSON_CONTENT_TYPE = "application/json"
# Kafka's request.timeout.ms default.
DEFAULT_REQUEST_TIMEOUT_MS = 30_000
# Connections per client (aiohttp's default): bounds sockets to the cluster.
DEFAULT_CONNECTIONS_MAX = 100


def parse_bootstrap(bootstrap: str | Sequence[str] | None) -> list[str]:
    """ "host:port[,host:port...]" (or a list) into addresses; None reads RAFTKA_BOOTSTRAP, then the default.

    A missing port means 9092; an "http://" prefix is allowed and dropped.
    """
    if bootstrap is None:
        bootstrap = os.environ.get(BOOTSTRAP_ENV) or DEFAULT_BOOTSTRAP
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    addresses: list[str] = []
    for item in items:
        text = item.strip()
        if text.startswith("http://"):
            text = text[len("http://") :]
        text = text.rstrip("/")
        if not text:
            continue
        host, sep, port = text.rpartition(":")
        if not sep or host.endswith(":"):  # no port, or a bare IPv6 address
            host, port = text, str(DEFAULT_PORT)
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
            raise InvalidRequestError(None, f"bad bootstrap address {item.strip()!r}: expected HOST:PORT")
        addresses.append(f"{host}:{int(port)}")
    if not addresses:
        raise InvalidRequestError(None, "no bootstrap address given: expected HOST:PORT")
    return addresses


def topic_path(topic: str, *rest: object) -> str:
    """/v1/topics/{topic}/... with the topic name escaped."""
    path = "/v1/topics/" + quote(topic, safe="")
    for part in rest:
        path += "/" + quote(str(part), safe="")
    return path


def send_once(session: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """The session, with aiohttp's own resend of GET, PUT and DELETE after a broken connection off.

    A request whose answer was lost may have been applied: a topic deleted, a config set. Sent again
    by aiohttp, the delete comes back as 40401 and the caller would record "nothing happened" for a
    change that happened. Every caller here decides retries itself, knowing the outcome is unknown.
    (aiohttp has no public switch for it; tests/test_send_once.py fails if this one stops working.)
    """
    session._retry_connection = False
    return session


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: CIMultiDictProxy[str] | Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            text = self.body[:200].decode("utf-8", "replace")
            raise RaftkaError(
                None, f"the node answered HTTP {self.status} with a body that is not JSON: {text!r}"
            ) from None


class HttpTransport:
    """One aiohttp ClientSession (created on first use, inside the running loop) and the error mapping.

    Not thread-safe: use it from one event loop.
    """

    def __init__(
        self,
        *,
        request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS,
        connections_max: int = DEFAULT_CONNECTIONS_MAX,
        session: aiohttp.ClientSession | None = None,
    ):
        self.request_timeout_ms = request_timeout_ms
        self._connections_max = connections_max
        self._session = session
        self._owns_session = session is None

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._connections_max, ttl_dns_cache=300)
            self._session = send_once(
                aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))
            )
            self._owns_session = True
        return self._session

    async def request(
        self,
        method: str,
        address: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_ms: int | None = None,
    ) -> HttpResponse:
        """Send one request; return the answer if it is 2xx, else raise the mapped RaftkaError."""
        session = self._ensure_session()
        send_headers = dict(headers) if headers else {}
        if json is not None:
            body = orjson.dumps(json)
            send_headers.setdefault("Content-Type", JSON_CONTENT_TYPE)
        timeout_s = (self.request_timeout_ms if timeout_ms is None else timeout_ms) / 1000
        url = f"http://{address}{path}"
        try:
            async with session.request(
                method,
                url,
                params=params,
                data=body,
                headers=send_headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                data = await response.read()
                status = response.status
                response_headers = response.headers
        except aiohttp.ClientConnectorError as exc:
            raise RaftkaConnectionError(address, _reason(exc)) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
            raise RaftkaConnectionError(address, _reason(exc)) from exc
        except TimeoutError as exc:
            raise RequestTimeoutError(
                None, f"{method} {path} to {address}: no answer within {timeout_s * 1000:.0f} ms"
            ) from exc
        except aiohttp.InvalidURL as exc:
            raise InvalidRequestError(None, f"bad address {address!r}: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise RaftkaConnectionError(address, _reason(exc)) from exc
        if status >= 300:
            raise error_from_response(status, data, where=f"{method} {path} on {address}")
        return HttpResponse(status, response_headers, data)

    async def close(self) -> None:
        if self._session is not None and self._owns_session and not self._session.closed:
            await self._session.close()
            # Let the connector's transports close before the loop goes away (aiohttp's advice).
            await asyncio.sleep(0)
        self._session = None


def _reason(exc: BaseException) -> str:
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError):
        # asyncio's strerror for a refused connect is "Connect call failed (...)": the errno says more.
        if os_error.errno and os_error.errno > 0:
            return os.strerror(os_error.errno).lower()
        if os_error.strerror:  # getaddrinfo errors have negative codes and a good message
            return os_error.strerror.lower()
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the node closed the connection"
    text = str(exc) or type(exc).__name__
    return text
