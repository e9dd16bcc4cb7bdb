"""Node-to-node links through a Toxiproxy server: cut them, slow them, throttle them, half-open them.

Theory of operation
-------------------
Every connection one node opens to another goes through a proxy of its own: for each ordered pair
(a, b) of nodes, `raft-a-b` forwards to b's Raft address and `http-a-b` to b's HTTP address (Raft
traffic; replication streams, forwarded requests, heartbeats to the controller). Node a is started
with `--connect-via` naming those proxies (node/config.py), so it dials `raft-a-b` where it would dial
b, while every node keeps its own identity (pysyncobj knows a peer by its address) and clients keep
talking to the nodes directly.

A connection carries data both ways. Toxiproxy calls the data from the dialing node to the dialed
one `upstream` and the answers `downstream`. "What a sends to b" is therefore the upstream stream of
a's proxies to b plus the downstream stream of b's proxies to a (`directed_streams`).

Faults (each on the links a partition shape picks, raftka/chaos/netns.py `partition_pairs`):
- `link-cut`: the proxies are disabled: open connections close, new ones are refused.
- `link-slow`: latency (300 ms, jitter 100 ms) on the data in one or both directions.
- `link-bandwidth`: 16 KB/s in one or both directions.
- `link-half-open`: data in one or both directions is dropped while connections stay open (no FIN,
  no RST: only timeouts notice). Bytes were lost inside open streams, so healing also closes the
  affected proxies' connections once, as a real peer would after its timeouts.
- `link-reset`: connections are reset 500 ms after they open (TCP RST), again and again.
- `link-limit`: connections are closed after 64 KB in one direction (a peer that hangs up mid-answer).

"One direction" cuts what the fault's targets send to the others (the others still reach the
targets); for a ring, what the lower node of each cut pair sends to the higher.

The Toxiproxy server (a Go program) is found at `$RAFTKA_TOXIPROXY_SERVER`, in `<repo>/.tools/bin`, or
on the PATH as `toxiproxy-server`; `install_server` puts the pinned version into `.tools/bin` with
`go install` (scripts/install-toxiproxy does the same from the shell).

Thread-safety: one thread (the runner's nemesis thread) drives a `Links`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

from raftka.chaos.netns import partition_pairs
from raftka.local_cluster import ROOT, free_ports

TOXIPROXY_MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server"
TOXIPROXY_VERSION = "v2.5.0"
TOOLS_BIN = os.path.join(ROOT, ".tools", "bin")
SERVER_NAME = "toxiproxy-server"

LINK_FAULTS = ("link-cut", "link-slow", "link-bandwidth", "link-half-open", "link-reset", "link-limit")
# fault -> (toxic type, attributes); link-cut disables the proxies instead
TOXICS = {
    "link-slow": ("latency", {"latency": 300, "jitter": 100}),
    "link-bandwidth": ("bandwidth", {"rate": 16}),  # KB/s
    "link-half-open": ("timeout", {"timeout": 0}),  # 0: drop data, never close
    "link-reset": ("reset_peer", {"timeout": 500}),
    "link-limit": ("limit_data", {"bytes": 64 * 1024}),
}
DROPS_BYTES = ("link-half-open",)  # streams that lost bytes are closed when the fault heals


def find_server() -> str | None:
    """The toxiproxy-server binary to run, or None."""
    configured = os.environ.get("RAFTKA_TOXIPROXY_SERVER")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    local = os.path.join(TOOLS_BIN, SERVER_NAME)
    if os.access(local, os.X_OK):
        return local
    return shutil.which(SERVER_NAME)


def install_server(timeout_s: float = 600) -> str:
    """`go install` the pinned server into `<repo>/.tools/bin`; its path. RuntimeError with go's own
    message when Go is missing or the module cannot be fetched."""
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(
            f"toxiproxy-server is not installed and Go is not on the PATH to build it: install Go, or put a "
            f"toxiproxy-server {TOXIPROXY_VERSION} binary on the PATH or in $RAFTKA_TOXIPROXY_SERVER "
            "(README, 'Fault experiments')"
        )
    os.makedirs(TOOLS_BIN, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=TOOLS_BIN) as scratch:
        done = subprocess.run(
            [go, "install", f"{TOXIPROXY_MODULE}@{TOXIPROXY_VERSION}"],
            env={**os.environ, "GOBIN": scratch},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"go install {TOXIPROXY_MODULE}@{TOXIPROXY_VERSION} failed: {done.stderr.strip()[-800:]}"
            )
        target = os.path.join(TOOLS_BIN, SERVER_NAME)
        os.replace(os.path.join(scratch, "server"), target)
    return target


def directed_streams(source: int, target: int) -> list[tuple[str, str]]:
    """(proxy name, Toxiproxy stream) pairs that carry what `source` sends to `target`."""
    return [(f"{kind}-{source}-{target}", "upstream") for kind in ("raft", "http")] + [
        (f"{kind}-{target}-{source}", "downstream") for kind in ("raft", "http")
    ]


def fault_pairs(shape: str, targets: list[int], nodes: list[int], both: bool) -> list[tuple[int, int]]:
    """The directed (from, to) pairs a link fault hits; with `both` False only one direction of each
    cut link: what the targets send (a ring: the lower node of each pair)."""
    kind = "ring" if shape == "ring" else "isolate"
    pairs = partition_pairs(kind, targets, nodes)
    if both:
        return pairs
    if kind == "ring":
        return [(a, b) for a, b in pairs if a < b]
    return [(a, b) for a, b in pairs if a in targets]


class ToxiproxyServer:
    """One toxiproxy-server process on 127.0.0.1, its output in `log_path`."""

    def __init__(self, binary: str, log_path: str, port: int | None = None):
        self.binary, self.log_path = binary, log_path
        self.port = port or free_ports(1)[0]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20) -> ToxiproxyServer:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-host", "127.0.0.1", "-port", str(self.port)],
                env={**os.environ, "LOG_LEVEL": os.environ.get("LOG_LEVEL", "info")},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"toxiproxy-server exited with {self.proc.returncode} (log: {self.log_path})"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/version", timeout=1) as response:
                    response.read()
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"toxiproxy-server did not answer on {self.url} within {timeout_s} s"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Links:
    """The proxies between `nodes` ({node id: (http address, raft address or None)}) on one server."""

    def __init__(self, server: ToxiproxyServer, nodes: dict[int, tuple[str, str | None]]):
        from toxiproxy import Toxiproxy  # the test dependency, only needed here

        self.server, self.nodes = server, nodes
        self.api = Toxiproxy()
        self.api.update_api_consumer("127.0.0.1", server.port)
        self.proxies: dict[str, object] = {}
        self.listen: dict[str, str] = {}
        self.toxics: list[tuple[str, str]] = []  # (proxy name, toxic name) in place
        self.disabled: set[str] = set()
        self.to_cycle: set[str] = set()

    def setup(self) -> Links:
        """One proxy per ordered pair and kind, each on a port the server picks."""
        for source in self.nodes:
            for target, (http, raft) in self.nodes.items():
                if source == target:
                    continue
                for kind, upstream in (("http", http), ("raft", raft)):
                    if upstream is None:
                        continue
                    name = f"{kind}-{source}-{target}"
                    proxy = self.api.create(upstream=upstream, name=name, listen="127.0.0.1:0", enabled=True)
                    self.proxies[name] = proxy
                    self.listen[name] = proxy.listen
        return self

    def connect_via(self, source: int) -> str:
        """The node's `--connect-via` value: each peer address -> this node's proxy to it."""
        routes = []
        for target, (http, raft) in sorted(self.nodes.items()):
            if target == source:
                continue
            routes.append(f"{http}={self.listen[f'http-{source}-{target}']}")
            if raft is not None:
                routes.append(f"{raft}={self.listen[f'raft-{source}-{target}']}")
        return ",".join(routes)

    def cut(self, pairs: list[tuple[int, int]]) -> None:
        """Disable the proxies of every connection `a` opens to `b`, for each (a, b)."""
        for source, target in pairs:
            for kind in ("raft", "http"):
                name = f"{kind}-{source}-{target}"
                if name in self.proxies and name not in self.disabled:
                    self.proxies[name].disable()
                    self.disabled.add(name)

    def degrade(self, fault: str, pairs: list[tuple[int, int]]) -> None:
        """Add the fault's toxic to every stream carrying what `a` sends to `b`, for each (a, b)."""
        toxic_type, attributes = TOXICS[fault]
        for source, target in pairs:
            for name, stream in directed_streams(source, target):
                if name not in self.proxies:
                    continue
                toxic = f"{fault}-{stream}"
                if (name, toxic) in self.toxics:
                    continue
                self.proxies[name].add_toxic(
                    type=toxic_type, stream=stream, name=toxic, toxicity=1.0, attributes=attributes
                )
                self.toxics.append((name, toxic))
                if fault in DROPS_BYTES:
                    self.to_cycle.add(name)

    def apply(self, fault: str, pairs: list[tuple[int, int]]) -> None:
        if fault == "link-cut":
            self.cut(pairs)
        elif fault in TOXICS:
            self.degrade(fault, pairs)
        else:
            raise ValueError(f"unknown link fault {fault!r}; known: {', '.join(LINK_FAULTS)}")

    def heal(self) -> None:
        """Remove every toxic, enable every proxy; close the connections that lost bytes."""
        for name, toxic in self.toxics:
            self.proxies[name].destroy_toxic(toxic)
        self.toxics.clear()
        for name in sorted(self.to_cycle - self.disabled):
            self.proxies[name].disable()
            self.disabled.add(name)
        self.to_cycle.clear()
        for name in sorted(self.disabled):
            self.proxies[name].enable()
        self.disabled.clear()

    def state(self) -> dict[str, dict]:
        """Each proxy's enabled flag and toxics, as the server reports them."""
        with urllib.request.urlopen(f"{self.server.url}/proxies", timeout=5) as response:
            document = json.loads(response.read())
        return {
            name: {"enabled": p["enabled"], "toxics": sorted(t["name"] for t in p.get("toxics", []))}
            for name, p in document.items()
        }
