"""`LocalCluster`: a cluster of `raftka node` processes on this machine (`raftka cluster up`, tests).

Node i (from 1) runs with data under `<data_dir>/node-i`, HTTP on `127.0.0.1:<http_ports[i-1]>` and,
for the first `controllers` nodes, Raft on `127.0.0.1:<raft_ports[i-1]>`; later nodes are broker-only
(`--roles broker`). Every node gets the same `--controllers` list and the same Raft password, kept
in `<data_dir>/raft-password` (created once, mode 0600) so restarts find it.

Each node's output goes to `<data_dir>/node-i/node.log`, or to a callback line by line (the
foreground `cluster up` prefixes each line with the node's name).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 now (the OS picks them; they may be taken later)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class LocalNode:
    def __init__(self, cluster: LocalCluster, node_id: int, http_port: int, raft_port: int | None):
        self.cluster = cluster
        self.node_id = node_id
        self.http_port = http_port
        self.raft_port = raft_port
        self.data_dir = os.path.join(cluster.data_dir, f"node-{node_id}")
        self.proc: subprocess.Popen | None = None
        self._pump: threading.Thread | None = None

    @property
    def host(self) -> str:
        return self.cluster.hosts[self.node_id - 1]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def is_controller(self) -> bool:
        return self.raft_port is not None

    @property
    def log_path(self) -> str:
        return os.path.join(self.data_dir, "node.log")

    def args(self) -> list[str]:
        args = [
            *self.cluster.prefixes[self.node_id - 1],
            sys.executable,
            "-m",
            "node",
            "--node-id",
            str(self.node_id),
            "--data-dir",
            os.path.join(self.data_dir, "data"),
            "--listen",
            self.address,
            "--controllers",
            self.cluster.controllers,
            "--raft-password-file",
            self.cluster.password_file,
        ]
        if self.is_controller:
            args += ["--raft-listen", f"{self.host}:{self.raft_port}"]
        else:
            args += ["--roles", "broker"]
        return args + list(self.cluster.extra_args) + list(self.cluster.node_args.get(self.node_id, ()))

    def start(self) -> LocalNode:
        os.makedirs(self.data_dir, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        if self.cluster.on_line is None:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    self.args(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
                )
        else:
            self.proc = subprocess.Popen(
                self.args(), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            self._pump = threading.Thread(target=self._pump_lines, args=(self.proc,), daemon=True)
            self._pump.start()
        return self

    def _pump_lines(self, proc: subprocess.Popen) -> None:
        for raw in proc.stdout:
            self.cluster.on_line(self, raw.decode(errors="replace").rstrip("\n"))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """kill -9, no cleanup: what a crash or power cut of the process looks like."""
        if self.alive():
            self.proc.kill()
        self.wait(10)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (controlled shutdown), then SIGKILL after `timeout_s`; the exit status."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def wait(self, timeout_s: float) -> int | None:
        if self.proc is None:
            return None
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self._pump is not None:
            self._pump.join(2)
        return code

    def output(self) -> str:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as handle:
            return handle.read().decode(errors="replace")
        return ""


class LocalCluster:
    def __init__(
        self,
        data_dir: str,
        *,
        controllers: int = 3,
        brokers: int = 0,
        http_ports: list[int] | None = None,
        raft_ports: list[int] | None = None,
        extra_args: tuple[str, ...] = (),
        on_line: Callable[[LocalNode, str], None] | None = None,
        hosts: list[str] | None = None,
        prefixes: list[list[str]] | None = None,
        node_args: dict[int, list[str]] | None = None,
    ):
        """`hosts`: each node's address (default 127.0.0.1); `prefixes`: a command each node's process
        runs under (e.g. `ip netns exec NAME`, raftka/chaos/netns.py), default none; `node_args`: more
        arguments for one node (by node id) after `extra_args`."""
        if controllers < 1:
            raise ValueError("a cluster needs at least one controller")
        total = controllers + brokers
        http_ports = http_ports or [9400 + i for i in range(1, total + 1)]
        raft_ports = raft_ports or [9500 + i for i in range(1, controllers + 1)]
        if len(http_ports) < total or len(raft_ports) < controllers:
            raise ValueError("not enough ports for the nodes")
        self.data_dir = os.path.abspath(data_dir)
        self.extra_args = extra_args
        self.node_args = node_args or {}
        self.hosts = hosts or ["127.0.0.1"] * total
        self.prefixes = prefixes or [[] for _ in range(total)]
        if len(self.hosts) < total or len(self.prefixes) < total:
            raise ValueError("a host and a prefix for each node are needed")
        self.on_line = on_line
        os.makedirs(self.data_dir, exist_ok=True)
        self.password_file = os.path.join(self.data_dir, "raft-password")
        if not os.path.exists(self.password_file):
            descriptor = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(24) + "\n")
        self.nodes = [
            LocalNode(self, i + 1, http_ports[i], raft_ports[i] if i < controllers else None)
            for i in range(total)
        ]
        self.controllers = ",".join(
            f"{n.node_id}@{n.host}:{n.raft_port}" for n in self.nodes if n.is_controller
        )

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes)

    def node(self, node_id: int) -> LocalNode:
        return self.nodes[node_id - 1]

    def start(self, wait_s: float | None = 60.0) -> LocalCluster:
        """Start every node (and wait until all are ready); on failure kill those started, then raise."""
        try:
            for node in self.nodes:
                node.start()
            if wait_s is not None:
                self.wait_ready(wait_s)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout_s: float, nodes: list[LocalNode] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(nodes or self.nodes)
        while pending:
            for node in list(pending):
                if not node.alive():
                    raise RuntimeError(
                        f"node {node.node_id} exited with {node.proc.returncode}:\n{node.output()[-4000:]}"
                    )
                if node.ready():
                    pending.remove(node)
            if pending and time.monotonic() > deadline:
                names = ", ".join(str(n.node_id) for n in pending)
                raise RuntimeError(f"node(s) {names} not ready after {timeout_s:.0f} s")
            time.sleep(0.05)

    def print_log_tails(self, lines: int = 40, file=None) -> None:
        """The last `lines` lines of every node's log (on stderr by default): what a failed run needs."""
        for node in self.nodes:
            tail = node.output().splitlines()[-lines:]
            print(f"\n--- last {len(tail)} lines of {node.log_path}", file=file or sys.stderr)
            for line in tail:
                print(line, file=file or sys.stderr)

    def kill(self) -> None:
        """kill -9 every node (a benchmark's or a test's last word: nothing is left running)."""
        for node in self.nodes:
            node.kill()

    def remove_data(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def stop(self, timeout_s: float = 30.0) -> dict[int, int | None]:
        """Stop every node at once (controlled shutdowns run in parallel)."""
        for node in self.nodes:
            node.signal(signal.SIGTERM)
        return {node.node_id: node.wait(timeout_s) for node in self.nodes}
