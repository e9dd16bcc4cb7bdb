"""Run the StatefulSet's pods on this machine, as Kubernetes would run them, without a cluster.

    .venv/bin/python scripts/k8s_rehearsal.py --overlay prod --pods 4   # Ctrl-C stops (preStop, SIGTERM)

Theory of operation
-------------------
`Rehearsal` renders an overlay (scripts/k8s_check.py) and plays the parts of Kubernetes that a pod's
process sees, taking the container's args and environment exactly as rendered:

- the kubelet: each pod's environment is resolved from the manifest (downward API: name, namespace,
  the pod-index label; ConfigMap and Secret keys; `$(VAR)` expansion) on top of the image's ENV; its
  command is the image's ENTRYPOINT (`raftka node`, run as `python -m raftka.cli node`) plus the
  args; its volumes are directories: a volume claim `data-raftka-N` outlives the pod, ConfigMap and
  Secret volumes are filled with their keys, an emptyDir is new for each pod. Stopping a pod runs its
  preStop command in the pod's environment, then sends SIGTERM, then SIGKILL when the grace period
  is over.
- the pod network: every pod gets an address of its own, 127.<a>.<b>.N (one /24 picked per run), and a
  pod created again gets a new one, as a new pod does. A pod has its own network namespace in
  Kubernetes; here all share the machine's, so the wildcard and loopback addresses in its args,
  environment and config file (0.0.0.0, 127.0.0.1, localhost) become its own address. Ports stay
  as rendered.
- cluster DNS: the headless Service's names, `<pod>.<service>.<namespace>.svc.<domain>`, resolve to the
  pod's current address from the moment the pod exists (publishNotReadyAddresses) and stop resolving
  when it is deleted. The node processes (and the preStop command) resolve them through a small
  `sitecustomize` that answers names under `svc.<domain>` from a table this class keeps; every other
  name goes to the system resolver. The node's code is not changed.

Paths inside the container (volume mounts) become the volume's directory here, in args, environment
values and the config file (re-emitted with the same keys).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import k8s_check
from k8s_check import (
    PodIdentity,
    PodVolumes,
    container_command,
    dockerfile_entrypoint,
    dockerfile_env,
    dockerfile_stage,
    find,
    localize_args,
    pod_environment,
    secret_keys,
    the_container,
)

ROOT = k8s_check.ROOT
NAMESPACE = "rehearsal"
DNS_TABLE_ENV = "K8S_REHEARSAL_DNS_TABLE"
DNS_SUFFIX_ENV = "K8S_REHEARSAL_DNS_SUFFIX"
SITECUSTOMIZE = '''"""Cluster DNS for a rehearsal pod (scripts/k8s_rehearsal.py): names under the cluster's service
domain resolve from a table the rehearsal keeps, as the cluster's DNS would answer them."""
import json as _json
import os as _os
import socket as _socket

_TABLE = _os.environ.get("{table}")
_SUFFIX = _os.environ.get("{suffix}", "")
_system_getaddrinfo = _socket.getaddrinfo


def _getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    name = host.decode() if isinstance(host, bytes) else host
    if _TABLE and isinstance(name, str) and name.rstrip(".").endswith(_SUFFIX):
        with open(_TABLE, encoding="utf-8") as handle:
            address = _json.load(handle).get(name.rstrip("."))
        if address is None:
            raise _socket.gaierror(_socket.EAI_NONAME, "Name or service not known")
        host = address
    return _system_getaddrinfo(host, port, family, type, proto, flags)


_socket.getaddrinfo = _getaddrinfo
'''


def _python_for(executable: str) -> list[str]:
    """The image's `raftka` console script, run from this checkout."""
    if executable != "raftka":
        raise ValueError(f"the rehearsal runs the image's raftka command, not {executable!r}")
    return [sys.executable, "-m", "raftka.cli"]


@dataclass
class Pod:
    """One pod: its identity (new address each time it is created), its process, its preStop result."""

    ordinal: int
    ip: str
    directory: str
    env: dict[str, str]
    command: list[str]
    pre_stop: list[str] | None
    cwd: str
    process: subprocess.Popen | None = None
    log_path: str = ""
    events: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.http_port}"

    http_port: int = 9092

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as handle:
            return handle.read().decode(errors="replace")
        return ""


@dataclass
class StopResult:
    pre_stop_code: int | None
    pre_stop_output: str
    exit_code: int | None
    killed: bool


class Rehearsal:
    def __init__(self, overlay: str, directory: str, pods: int | None = None, password: str | None = None):
        self.overlay = overlay
        self.directory = os.path.abspath(directory)
        self.objects = k8s_check.render_overlay(overlay)
        (self.sts,) = find(self.objects, "StatefulSet")
        self.container = the_container(self.sts)
        self.replicas = pods if pods is not None else self.sts["spec"].get("replicas", 1)
        self.service = self.sts["spec"]["serviceName"]
        self.grace_s = self.sts["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        self.entrypoint = dockerfile_entrypoint()
        self.image_env = {k: v for k, v in dockerfile_env().items() if k != "PATH"}
        workdirs = [rest for keyword, rest in dockerfile_stage() if keyword == "WORKDIR"]
        self.workdir = workdirs[-1] if workdirs else "/"
        self.http_port = next(p["containerPort"] for p in self.container["ports"] if p["name"] == "http")
        # The Secret an operator creates (docs/kubernetes.md): a random password under each key read.
        password = password or secrets.token_urlsafe(24)
        self.secrets = {name: dict.fromkeys(keys, password) for name, keys in secret_keys(self.sts).items()}
        config_map = next(
            (
                find(self.objects, "ConfigMap", e["valueFrom"]["configMapKeyRef"]["name"])[0]
                for e in self.container.get("env", [])
                if e["name"] == "CLUSTER_DOMAIN" and "configMapKeyRef" in e.get("valueFrom", {})
            ),
            None,
        )
        self.domain = config_map["data"]["cluster-domain"] if config_map else "cluster.local"
        os.makedirs(self.directory, exist_ok=True)
        self.claims_dir = os.path.join(self.directory, "volumes")
        self.dns_table = os.path.join(self.directory, "dns.json")
        self.shim_dir = os.path.join(self.directory, "dns-shim")
        os.makedirs(self.shim_dir, exist_ok=True)
        with open(os.path.join(self.shim_dir, "sitecustomize.py"), "w", encoding="utf-8") as handle:
            handle.write(SITECUSTOMIZE.replace("{table}", DNS_TABLE_ENV).replace("{suffix}", DNS_SUFFIX_ENV))
        self.network = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
        self._next_host = 1
        self._dns: dict[str, str] = {}
        self._write_dns()
        self.pods: dict[int, Pod] = {}

    # -- names and addresses -----------------------------------------------------------------------

    def pod_name(self, ordinal: int) -> str:
        return f"{self.sts['metadata']['name']}-{ordinal}"

    def stable_name(self, ordinal: int) -> str:
        return f"{self.pod_name(ordinal)}.{self.service}.{NAMESPACE}.svc.{self.domain}"

    def _write_dns(self) -> None:
        temporary = self.dns_table + ".tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(self._dns, handle)
        os.replace(temporary, self.dns_table)

    def _new_address(self) -> str:
        if self._next_host > 254:
            raise RuntimeError("the rehearsal's /24 has no address left")
        address = f"{self.network}.{self._next_host}"
        self._next_host += 1
        return address

    # -- pods -----------------------------------------------------------------------------------------

    def _build(self, ordinal: int, ip: str, claim_of: int | None = None) -> Pod:
        """Pod `ordinal` on address `ip`, its volumes laid out (the claim of pod `claim_of` if given:
        a claim bound to the wrong pod, as a restore under the wrong name would)."""
        identity = PodIdentity(self.sts, ordinal, NAMESPACE, ip)
        pod_dir = os.path.join(self.directory, "pods", f"{self.pod_name(ordinal)}-{ip}")
        volumes = PodVolumes(self.objects, identity, self.secrets, pod_dir, self.claims_dir)
        if claim_of is not None:
            owner = PodIdentity(self.sts, claim_of, NAMESPACE, ip)
            for mount, host in list(volumes.mounts.items()):
                if host.startswith(self.claims_dir + os.sep):
                    volumes.mounts[mount] = host.replace(f"-{identity.name}", f"-{owner.name}")
        env = pod_environment(self.objects, identity, self.secrets)

        def localize(value: str) -> str:
            value = re.sub(r"\b(0\.0\.0\.0|127\.0\.0\.1|localhost)\b", ip, value)
            return volumes.path(value)

        command = container_command(self.container, self.entrypoint, env)
        args = localize_args(command[1:], localize)
        pre_stop = self.container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
        process_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            **self.image_env,
            **{k: localize(v) for k, v in env.items()},
            "PYTHONPATH": os.pathsep.join([self.shim_dir, ROOT]),
            DNS_TABLE_ENV: self.dns_table,
            DNS_SUFFIX_ENV: f"svc.{self.domain}",
        }
        pod = Pod(
            ordinal=ordinal,
            ip=ip,
            directory=pod_dir,
            env=process_env,
            command=_python_for(command[0]) + args,
            pre_stop=None
            if pre_stop is None
            else _python_for(pre_stop[0]) + [localize(a) for a in pre_stop[1:]],
            cwd=volumes.path(self.container.get("workingDir") or self.workdir),
            log_path=os.path.join(pod_dir, "container.log"),
            http_port=self.http_port,
        )
        os.makedirs(pod.cwd, exist_ok=True)
        return pod

    def create(self, ordinal: int) -> Pod:
        """Create pod `ordinal` (a new address, its volume claim kept) and start its container."""
        if ordinal in self.pods:
            raise RuntimeError(f"pod {ordinal} exists; delete it first")
        pod = self._build(ordinal, self._new_address())
        self._dns[self.stable_name(ordinal)] = pod.ip
        self._write_dns()
        self.pods[ordinal] = pod
        self.start_container(pod)
        return pod

    def run_once(self, ordinal: int, claim_of: int, timeout_s: float = 60) -> tuple[int, str]:
        """Run pod `ordinal`'s container on pod `claim_of`'s volume claim until it exits (it should:
        the volume belongs to another node); (exit status, output)."""
        pod = self._build(ordinal, self._new_address(), claim_of=claim_of)
        done = subprocess.run(
            pod.command, cwd=pod.cwd, env=pod.env, capture_output=True, text=True, timeout=timeout_s
        )
        return done.returncode, done.stdout + done.stderr

    def start_container(self, pod: Pod) -> None:
        """Start (or, after it died, restart) the pod's container process, as the kubelet does."""
        with open(pod.log_path, "ab") as log:
            pod.process = subprocess.Popen(
                pod.command, cwd=pod.cwd, env=pod.env, stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self, ordinal: int) -> None:
        """SIGKILL the container (a crash, an OOM kill, a node lost)."""
        pod = self.pods[ordinal]
        if pod.alive():
            pod.process.kill()
        if pod.process is not None:
            pod.process.wait(30)

    def delete(self, ordinal: int, graceful: bool = True, between=None) -> StopResult:
        """Delete pod `ordinal` as the kubelet stops a pod: preStop, SIGTERM, SIGKILL at the end of
        the grace period; then its name stops resolving. `between` runs after the preStop hook."""
        pod = self.pods[ordinal]
        result = StopResult(None, "", None, False)
        deadline = time.monotonic() + self.grace_s
        if graceful and pod.alive() and pod.pre_stop:
            hook = subprocess.run(
                pod.pre_stop,
                cwd=pod.cwd,
                env=pod.env,
                capture_output=True,
                text=True,
                timeout=self.grace_s,
            )
            result.pre_stop_code, result.pre_stop_output = hook.returncode, hook.stdout + hook.stderr
            if between is not None:
                between(result)
        if pod.alive():
            pod.process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                pod.process.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pod.process.kill()
                pod.process.wait(30)
                result.killed = True
        result.exit_code = pod.process.returncode if pod.process else None
        del self.pods[ordinal]
        self._dns.pop(self.stable_name(ordinal), None)
        self._write_dns()
        return result

    def start(self) -> Rehearsal:
        for ordinal in range(self.replicas):
            self.create(ordinal)
        return self

    def close(self) -> None:
        """Kill every pod that is left (the test's last word)."""
        for ordinal in list(self.pods):
            self.kill(ordinal)
            del self.pods[ordinal]

    def __enter__(self) -> Rehearsal:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- looking at the pods ------------------------------------------------------------------------

    def request(self, ordinal: int, method: str, path: str, body: dict | None = None, timeout_s: float = 10):
        """(status, parsed JSON) of one request to a pod's HTTP port."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.pods[ordinal].url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def ready(self, ordinal: int) -> bool:
        try:
            return self.request(ordinal, "GET", "/readyz", timeout_s=2)[0] == 200
        except (OSError, ValueError):
            return False

    def not_ready_reason(self, ordinal: int) -> str:
        """What the pod's /readyz says (or why it did not answer)."""
        try:
            status, body = self.request(ordinal, "GET", "/readyz", timeout_s=2)
        except (OSError, ValueError) as exc:
            return repr(exc)
        return body.get("message", str(body)) if isinstance(body, dict) else f"{status} {body}"

    def wait_ready(self, ordinals, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(ordinals)
        while pending:
            for ordinal in sorted(pending):
                pod = self.pods[ordinal]
                if not pod.alive():
                    raise RuntimeError(
                        f"pod {ordinal} exited with {pod.process.returncode}:\n{pod.output()[-3000:]}"
                    )
                if self.ready(ordinal):
                    pending.discard(ordinal)
            if pending and time.monotonic() > deadline:
                reasons = {o: self.not_ready_reason(o) for o in sorted(pending)}
                raise RuntimeError(
                    f"pod(s) {sorted(pending)} not ready after {timeout_s:.0f} s: {reasons}\n{self.logs(40)}"
                )
            time.sleep(0.1)

    def wait_for(self, what: str, condition, timeout_s: float, interval_s: float = 0.2):
        """The first truthy value of `condition()` (exceptions count as not yet), or RuntimeError."""
        deadline = time.monotonic() + timeout_s
        last: object = None
        while True:
            try:
                value = condition()
                if value:
                    return value
                last = value
            except (OSError, ValueError, KeyError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: not within {timeout_s:.0f} s (last: {last!r})")
            time.sleep(interval_s)

    def logs(self, lines: int = 30) -> str:
        """Each pod's view of the cluster and the last lines of its log: what a failed run needs."""
        out = []
        for ordinal in sorted(self.pods):
            try:
                view = self.request(ordinal, "GET", "/v1/cluster", timeout_s=3)[1]
                summary = {
                    k: view.get(k) for k in ("controller_id", "controller_epoch", "metadata_offset", "raft")
                }
            except (OSError, ValueError) as exc:
                summary = {"error": repr(exc)}
            out.append(f"pod {ordinal} ({self.pods[ordinal].ip}): {json.dumps(summary)}")
        for ordinal, pod in sorted(self.pods.items()):
            tail = pod.output().splitlines()[-lines:]
            out.append(f"--- pod {ordinal} ({pod.ip}), last {len(tail)} lines of {pod.log_path}")
            out += tail
        return "\n".join(out)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def stop_all(rehearsal: Rehearsal) -> int:
    """Delete the pods from the highest ordinal down, as a scale-down does; 0 when all drained cleanly."""
    failures = 0
    for ordinal in sorted(rehearsal.pods, reverse=True):
        started = time.monotonic()
        result = rehearsal.delete(ordinal)
        took = time.monotonic() - started
        print(
            f"{rehearsal.pod_name(ordinal)}: preStop exit {result.pre_stop_code}, container exit "
            f"{result.exit_code}{' (killed at the end of the grace period)' if result.killed else ''}, "
            f"{took:.1f} s"
        )
        print("  " + result.pre_stop_output.strip().replace("\n", "\n  "), flush=True)
        failures += result.pre_stop_code != 0 or result.exit_code != 0
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run an overlay's pods on this machine (see the docstring).")
    parser.add_argument("--overlay", default="dev")
    parser.add_argument("--pods", type=int, help="default: the overlay's replicas")
    parser.add_argument("--dir", help="where volumes and logs go (default: a new temporary directory)")
    parser.add_argument(
        "--stop-after", type=float, help="delete the pods (preStop, SIGTERM) after this many seconds"
    )
    parser.add_argument(
        "--partitions", type=int, default=0, help="create a topic with this many partitions (replication 3)"
    )
    args = parser.parse_args(argv)
    directory = args.dir or tempfile.mkdtemp(prefix="raftka-rehearsal-")
    rehearsal = Rehearsal(args.overlay, directory, args.pods)
    try:
        started = time.monotonic()
        rehearsal.start().wait_ready(range(rehearsal.replicas), 120)
        print(f"{rehearsal.replicas} pods ready in {time.monotonic() - started:.1f} s")
        for ordinal, pod in sorted(rehearsal.pods.items()):
            print(
                f"{rehearsal.pod_name(ordinal)}: {pod.url} ({rehearsal.stable_name(ordinal)}), "
                f"RSS {rss_mib(pod.process.pid):.0f} MiB, log {pod.log_path}"
            )
        if args.partitions:
            status, body = rehearsal.request(
                0,
                "POST",
                "/v1/topics",
                {
                    "name": "rehearsal",
                    "partitions": args.partitions,
                    "replication_factor": min(3, rehearsal.replicas),
                },
            )
            if status != 201:
                raise RuntimeError(f"creating the topic: {body}")

            def described() -> list[dict]:
                return rehearsal.request(0, "GET", "/v1/topics/rehearsal")[1]["partitions"]

            rehearsal.wait_for(
                "the topic in sync", lambda: all(len(p["isr"]) == len(p["replicas"]) for p in described()), 60
            )
            leaders = [p["leader"] for p in described()]
            print(
                f"topic rehearsal: {args.partitions} partitions, leaders per node "
                + ", ".join(f"{n}: {leaders.count(n)}" for n in sorted(rehearsal.pods))
            )
        if args.stop_after is not None:
            time.sleep(args.stop_after)
            return stop_all(rehearsal)
        print("Ctrl-C deletes the pods (preStop, SIGTERM)", flush=True)
        while all(p.alive() for p in rehearsal.pods.values()):
            time.sleep(0.5)
        print("a pod exited:\n" + rehearsal.logs())
        return 1
    except KeyboardInterrupt:
        return stop_all(rehearsal)
    finally:
        rehearsal.close()
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
