"""Start and stop real `raftka node` processes for integration tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 now, never one this process handed out before: the OS may give the
    same free port twice in a row, and two nodes of one cluster must not both get it (a test once
    gave node 3's HTTP port to node 2's Raft endpoint)."""
    while True:
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class NodeProcess:
    def __init__(
        self, data_dir: str, *extra: str, port: int | None = None, env: dict[str, str] | None = None
    ):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.extra = list(extra)
        if "--raft-listen" not in self.extra and "--controllers" not in self.extra:
            # The single-node default binds Raft on 127.0.0.1:9093: give each test node its own port.
            self.extra += ["--raft-listen", f"127.0.0.1:{free_port()}"]
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(os.path.dirname(os.path.abspath(data_dir)), f"node-{self.port}.log")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self, timeout_s: float = 20.0) -> NodeProcess:
        env = {**os.environ, "PYTHONPATH": ROOT, **self.env}
        args = [
            sys.executable,
            "-m",
            "node",
            "--data-dir",
            self.data_dir,
            "--listen",
            self.address,
            *self.extra,
        ]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(OSError):
                status, *_ = self.request("GET", "/readyz")
                if status == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"node not ready after {timeout_s}s:\n{self.output()}")

    def output(self) -> str:
        with open(self.log_path, "rb") as handle:
            return handle.read().decode(errors="replace")

    def request(
        self, method: str, path: str, body=None, headers: dict[str, str] | None = None, timeout: float = 30
    ):
        """(status, parsed JSON or raw bytes, response headers) for one HTTP request."""
        data = None
        all_headers = dict(headers or {})
        if body is not None:
            if isinstance(body, bytes | bytearray):
                data = bytes(body)
            else:
                data = json.dumps(body).encode()
                all_headers.setdefault("Content-Type", "application/json")
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, _decode(response.read(), response.headers), response.headers
        except urllib.error.HTTPError as error:
            return error.code, _decode(error.read(), error.headers), error.headers

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.wait(timeout_s)

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)

    def wait(self, timeout_s: float = 20.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout_s)
        self._log.close()
        return code


def _decode(raw: bytes, headers):
    if headers.get("Content-Type", "").startswith("application/json"):
        return json.loads(raw)
    return raw
