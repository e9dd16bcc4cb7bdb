"""Render the Kubernetes overlays (k8s/), validate them offline and check that they fit together.

    .venv/bin/python scripts/k8s_check.py            # every overlay: exit 0 when all is well
    .venv/bin/python scripts/k8s_check.py --print prod   # the rendered YAML of one overlay

Theory of operation
-------------------
`render` builds an overlay in pure Python, so neither CI nor an operator needs a kustomize binary: it
implements the kustomization fields k8s/ uses (`resources`: files and directories; `patches`: RFC 6902
JSON patches with a kind/name target; `replicas`; `images`), applied in kustomize's order (patches,
replicas, images), and refuses any other field or any patch that matches nothing, so an overlay that
needs more cannot render silently wrong. Where kubectl exists, tests/test_k8s_manifests.py compares
this rendering with `kubectl kustomize` object by object.

`validate` checks every rendered object against the Kubernetes OpenAPI schemas of several releases
(kubernetes-validate's bundled copies) in strict mode, where an unknown field is an error; a kind
with no schema for a release, or a release that would fall back to an older schema, is a failure.

`check` reads the objects as Kubernetes and the node would and lists what does not fit: selectors
against labels, the StatefulSet's service, probe and Service ports, the controller list against the
replica count and the stable DNS names, the preStop timeout against the grace period, the restricted
security context against the image's user, the node configuration against node/config.py.

`pod_environment` and `container_command` resolve a pod's environment and command line as the
kubelet does (downward API, ConfigMap and Secret references, `$(VAR)` expansion); the check and the
local rehearsal (scripts/k8s_rehearsal.py) use them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

K8S_DIR = os.path.join(ROOT, "k8s")
OVERLAYS = ("dev", "prod")
# Releases the objects must validate against: the supported Kubernetes releases and the next ones
# kubernetes-validate bundles (the pod-index label needs 1.28; 1.30 is the oldest checked).
KUBERNETES_VERSIONS = ("1.30", "1.31", "1.32", "1.33", "1.34", "1.35", "1.36", "1.37")
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "patches", "replicas", "images"}
REPLICATED_KINDS = {"Deployment", "ReplicaSet", "ReplicationController", "StatefulSet"}
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
CONTROLLER_COUNTS = (3, 5)
CHECK_NAMESPACE = "ns"  # any namespace: the manifests must not name one
STOP_MARGIN_S = 15  # after the drain and SIGTERM's controlled shutdown: flush and close every log


class RenderError(ValueError):
    """A kustomization this renderer cannot build exactly as kustomize would."""


# -- rendering -------------------------------------------------------------------------------------


def _load_yaml_documents(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def _kustomization(directory: str) -> dict:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            documents = _load_yaml_documents(path)
            if len(documents) != 1 or not isinstance(documents[0], dict):
                raise RenderError(f"{path}: expected one mapping")
            unknown = set(documents[0]) - KUSTOMIZATION_FIELDS
            if unknown:
                raise RenderError(
                    f"{path}: {', '.join(sorted(unknown))} not supported by scripts/k8s_check.py "
                    f"(it renders {', '.join(sorted(KUSTOMIZATION_FIELDS))}); extend it, and the "
                    "comparison with kubectl kustomize in tests/test_k8s_manifests.py"
                )
            return documents[0]
    raise RenderError(f"{directory}: no kustomization.yaml")


def render(directory: str) -> list[dict]:
    """The objects `kubectl kustomize directory` would print (in resource order)."""
    directory = os.path.abspath(directory)
    kustomization = _kustomization(directory)
    objects: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = os.path.join(directory, entry)
        if os.path.isdir(path):
            objects += render(path)
        elif os.path.isfile(path):
            objects += _load_yaml_documents(path)
        else:
            raise RenderError(f"{directory}: resource {entry} does not exist")
    seen = set()
    for obj in objects:
        key = object_key(obj)
        if key in seen:
            raise RenderError(f"{directory}: {key[0]}/{key[1]} is defined twice")
        seen.add(key)
    for patch in kustomization.get("patches", []):
        _apply_patch(directory, objects, patch)
    for replicas in kustomization.get("replicas", []):
        _apply_replicas(directory, objects, replicas)
    for image in kustomization.get("images", []):
        _apply_image(objects, image)
    return objects


def object_key(obj: dict) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def _apply_patch(directory: str, objects: list[dict], entry: dict) -> None:
    unknown = set(entry) - {"target", "patch", "path"}
    target = entry.get("target") or {}
    if unknown or set(target) - {"kind", "name"} or not target.get("kind") or not target.get("name"):
        raise RenderError(f"{directory}: a patch needs target kind and name (and nothing else): {entry}")
    if "path" in entry:
        with open(os.path.join(directory, entry["path"]), encoding="utf-8") as handle:
            text = handle.read()
    else:
        text = entry.get("patch", "")
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise RenderError(f"{directory}: only JSON patches (a list of operations) are supported: {entry}")
    matched = [o for o in objects if object_key(o) == (target["kind"], target["name"])]
    if not matched:
        raise RenderError(f"{directory}: patch target {target['kind']}/{target['name']} matches nothing")
    for index, obj in enumerate(objects):
        if object_key(obj) == (target["kind"], target["name"]):
            patched = copy.deepcopy(obj)
            for operation in operations:
                patched = json_patch(patched, operation)
            objects[index] = patched


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise RenderError(f"JSON pointer {path!r} must start with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _child(container: Any, token: str, path: str) -> Any:
    if isinstance(container, list):
        if not token.isdigit() or int(token) >= len(container):
            raise RenderError(f"JSON patch: {path}: no index {token}")
        return container[int(token)]
    if not isinstance(container, dict) or token not in container:
        raise RenderError(f"JSON patch: {path}: no member {token!r}")
    return container[token]


def json_patch(document: Any, operation: dict) -> Any:
    """One RFC 6902 operation (add, remove, replace, test) applied to `document` (changed in place)."""
    op, path = operation.get("op"), operation.get("path")
    if op not in ("add", "remove", "replace", "test") or not isinstance(path, str):
        raise RenderError(f"JSON patch: unsupported operation {operation}")
    tokens = _pointer(path)
    if not tokens:
        if op in ("add", "replace"):
            return copy.deepcopy(operation["value"])
        raise RenderError(f"JSON patch: {op} of the whole document")
    parent = document
    for token in tokens[:-1]:
        parent = _child(parent, token, path)
    last = tokens[-1]
    if op == "test":
        if _child(parent, last, path) != operation["value"]:
            raise RenderError(f"JSON patch: test failed at {path}")
        return document
    if isinstance(parent, list):
        if op == "add":
            index = len(parent) if last == "-" else int(last) if last.isdigit() else -1
            if not 0 <= index <= len(parent):
                raise RenderError(f"JSON patch: {path}: bad index")
            parent.insert(index, copy.deepcopy(operation["value"]))
            return document
        _child(parent, last, path)
        if op == "remove":
            del parent[int(last)]
        else:
            parent[int(last)] = copy.deepcopy(operation["value"])
        return document
    if not isinstance(parent, dict):
        raise RenderError(f"JSON patch: {path}: the parent is not an object")
    if op in ("remove", "replace"):
        _child(parent, last, path)
    if op == "remove":
        del parent[last]
    else:
        parent[last] = copy.deepcopy(operation["value"])
    return document


def _apply_replicas(directory: str, objects: list[dict], entry: dict) -> None:
    if set(entry) != {"name", "count"}:
        raise RenderError(f"{directory}: replicas entries take name and count: {entry}")
    matched = [o for o in objects if o["kind"] in REPLICATED_KINDS and o["metadata"]["name"] == entry["name"]]
    if not matched:
        raise RenderError(f"{directory}: replicas: nothing named {entry['name']} has replicas")
    for obj in matched:
        obj.setdefault("spec", {})["replicas"] = int(entry["count"])


def _split_image(image: str) -> tuple[str, str]:
    """("name", "rest") where rest is ":tag", "@digest" or ""; a registry port is part of the name."""
    at = image.find("@")
    if at >= 0:
        return image[:at], image[at:]
    colon = image.rfind(":")
    if colon > image.rfind("/"):
        return image[:colon], image[colon:]
    return image, ""


def pod_spec(obj: dict) -> dict | None:
    if obj["kind"] == "Pod":
        return obj.get("spec")
    return obj.get("spec", {}).get("template", {}).get("spec")


def _apply_image(objects: list[dict], entry: dict) -> None:
    if set(entry) - {"name", "newName", "newTag", "digest"} or "name" not in entry:
        raise RenderError(f"images entries take name, newName, newTag, digest: {entry}")
    for obj in objects:
        spec = pod_spec(obj)
        if not spec:
            continue
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            name, rest = _split_image(container.get("image", ""))
            if name != entry["name"]:
                continue
            if "digest" in entry:
                rest = "@" + entry["digest"]
            elif "newTag" in entry:
                rest = ":" + str(entry["newTag"])
            container["image"] = entry.get("newName", name) + rest


def render_with_kubectl(directory: str) -> list[dict]:
    """`kubectl kustomize directory`, parsed; RuntimeError when kubectl is missing or fails."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is not on PATH")
    done = subprocess.run([kubectl, "kustomize", directory], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory}: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]


def render_overlay(name: str) -> list[dict]:
    return render(os.path.join(K8S_DIR, "overlays", name))


# -- schema validation -------------------------------------------------------------------------------


def validate(objects: Iterable[dict], versions: Iterable[str] = KUBERNETES_VERSIONS) -> list[str]:
    """Problems found by validating each object against each release's strict schema (none: valid)."""
    import kubernetes_validate
    from kubernetes_validate import utils

    problems = []
    available = {utils.major_minor(v) for v in utils.all_versions()}
    for version in versions:
        if version not in available:
            problems.append(f"kubernetes-validate has no schemas for Kubernetes {version}")
            continue
        for obj in objects:
            name = "{}/{}".format(*object_key(obj))
            try:
                used = kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError as exc:
                problems.append(f"{name}: {exc.message}")
                continue
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path) or "(top)"
                problems.append(f"{name} in Kubernetes {version}: {where}: {exc.message}")
                continue
            if used != version:
                problems.append(f"{name}: validated against Kubernetes {used}'s schema, not {version}'s")
    return problems


# -- reading a pod as the kubelet does -----------------------------------------------------------------


@dataclass(frozen=True)
class PodIdentity:
    """What Kubernetes gives pod `ordinal` of a StatefulSet: its name, namespace, labels and address."""

    statefulset: dict
    ordinal: int
    namespace: str
    ip: str

    @property
    def name(self) -> str:
        return f"{self.statefulset['metadata']['name']}-{self.ordinal}"

    @property
    def labels(self) -> dict[str, str]:
        labels = dict(self.statefulset["spec"]["template"]["metadata"].get("labels", {}))
        labels[POD_NAME_LABEL] = self.name
        labels[POD_INDEX_LABEL] = str(self.ordinal)
        return labels

    def field(self, path: str) -> str:
        """A downward API fieldRef."""
        match = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
        if match:
            return self.labels.get(match.group(1), "")
        values = {"metadata.name": self.name, "metadata.namespace": self.namespace, "status.podIP": self.ip}
        if path not in values:
            raise ValueError(f"fieldRef {path} is not emulated")
        return values[path]


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: a defined VAR is replaced, `$$` is `$`, the rest stays."""
    out = []
    index = 0
    while index < len(text):
        if text.startswith("$$", index):
            out.append("$")
            index += 2
            continue
        match = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)").match(text, index)
        if match and match.group(1) in env:
            out.append(env[match.group(1)])
            index = match.end()
            continue
        out.append(text[index])
        index += 1
    return "".join(out)


def find(objects: Iterable[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def the_container(statefulset: dict) -> dict:
    containers = statefulset["spec"]["template"]["spec"]["containers"]
    if len(containers) != 1:
        raise ValueError(f"expected one container in the StatefulSet, found {len(containers)}")
    return containers[0]


def pod_environment(
    objects: list[dict], pod: PodIdentity, secrets: dict[str, dict[str, str]]
) -> dict[str, str]:
    """The container's environment in pod `pod`, in order; `secrets` stands in for the Secrets."""
    env: dict[str, str] = {}
    for entry in the_container(pod.statefulset).get("env", []):
        name = entry["name"]
        if "value" in entry:
            env[name] = expand(str(entry["value"]), env)
            continue
        source = entry["valueFrom"]
        if "fieldRef" in source:
            env[name] = pod.field(source["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            (config_map,) = find(objects, "ConfigMap", ref["name"])
            env[name] = config_map["data"][ref["key"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[name] = secrets[ref["name"]][ref["key"]]
        else:
            raise ValueError(f"env {name}: {sorted(source)} is not emulated")
    return env


def container_command(container: dict, entrypoint: list[str], env: dict[str, str]) -> list[str]:
    """The process the container runs: `command` or the image's ENTRYPOINT, then `args`, expanded."""
    command = container.get("command", entrypoint)
    return [expand(str(part), env) for part in [*command, *container.get("args", [])]]


def secret_keys(statefulset: dict) -> dict[str, list[str]]:
    """Secret name -> the keys the pod template reads from it (volumes and environment)."""
    keys: dict[str, list[str]] = {}
    spec = statefulset["spec"]["template"]["spec"]
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            items = volume["secret"].get("items", [])
            keys.setdefault(volume["secret"]["secretName"], []).extend(i["key"] for i in items)
    for entry in the_container(statefulset).get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            keys.setdefault(ref["name"], []).append(ref["key"])
    return keys


class PodVolumes:
    """A pod's volumes as directories on this machine, filled as the kubelet fills them: a volume claim
    is `<claims_dir>/<template>-<pod>` (it outlives the pod, like the PersistentVolumeClaim of that
    name), ConfigMap and Secret volumes get their files, an emptyDir starts empty (under `pod_dir`).
    `path` maps a path inside the container to this machine."""

    def __init__(
        self,
        objects: list[dict],
        pod: PodIdentity,
        secrets: dict[str, dict[str, str]],
        pod_dir: str,
        claims_dir: str,
    ):
        sts = pod.statefulset
        volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"].get("volumes", [])}
        claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
        self.mounts: dict[str, str] = {}
        for mount in the_container(sts).get("volumeMounts", []):
            name = mount["name"]
            if name in claims:
                host = os.path.join(claims_dir, f"{name}-{pod.name}")
                os.makedirs(host, exist_ok=True)
            else:
                host = os.path.join(pod_dir, "volumes", name)
                shutil.rmtree(host, ignore_errors=True)
                os.makedirs(host)
                self._fill(objects, volumes[name], host, secrets)
            self.mounts[mount["mountPath"].rstrip("/") or "/"] = host

    @staticmethod
    def _fill(objects: list[dict], volume: dict, host: str, secrets: dict[str, dict[str, str]]) -> None:
        if "configMap" in volume:
            source = volume["configMap"]
            (config_map,) = find(objects, "ConfigMap", source["name"])
            data = config_map.get("data", {})
        elif "secret" in volume:
            source = volume["secret"]
            data = secrets[source["secretName"]]
        elif "emptyDir" in volume:
            return
        else:
            raise ValueError(
                f"volume {volume['name']}: only claims, configMap, secret and emptyDir are emulated"
            )
        for item in source.get("items") or [{"key": key, "path": key} for key in data]:
            path = os.path.join(host, item["path"])
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(data[item["key"]])
            os.chmod(path, item.get("mode", source.get("defaultMode", 0o644)))

    def path(self, value: str) -> str:
        for mount in sorted(self.mounts, key=len, reverse=True):
            if value == mount or value.startswith(mount + "/"):
                return self.mounts[mount] + value[len(mount) :]
        return value


def localize_toml(text: str, localize) -> str:
    """A flat TOML document with `localize` applied to every string value (re-emitted, comments gone)."""
    import tomllib

    lines = []
    for key, value in tomllib.loads(text).items():
        if isinstance(value, str):
            lines.append(f"{key} = {json.dumps(localize(value))}")
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int):
            lines.append(f"{key} = {value}")
        else:
            raise ValueError(f"{key}: only strings, integers and booleans are expected in node.toml")
    return "\n".join(lines) + "\n"


def localize_args(args: list[str], localize) -> list[str]:
    """`args` with `localize` applied to each; a --config file is rewritten the same way beside itself."""
    args = [localize(a) for a in args]
    if "--config" in args:
        index = args.index("--config") + 1
        with open(args[index], encoding="utf-8") as handle:
            text = localize_toml(handle.read(), localize)
        local = os.path.join(os.path.dirname(os.path.dirname(args[index])), "node.local.toml")
        with open(local, "w", encoding="utf-8") as handle:
            handle.write(text)
        args[index] = local
    return args


DOCKERFILE = os.path.join(ROOT, "Dockerfile")


def dockerfile_stage(path: str = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile's final stage, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as handle:
        text = re.sub(r"\\\n", " ", handle.read())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            instructions = []
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_entrypoint(path: str = DOCKERFILE) -> list[str]:
    """The ENTRYPOINT of the image (exec form)."""
    entries = [json.loads(rest) for keyword, rest in dockerfile_stage(path) if keyword == "ENTRYPOINT"]
    if not entries or not isinstance(entries[-1], list):
        raise ValueError(f"{path}: no ENTRYPOINT in exec form")
    return entries[-1]


def dockerfile_user(path: str = DOCKERFILE) -> tuple[int, int]:
    """(uid, gid) of the image's USER, which must be numeric."""
    users = [rest for keyword, rest in dockerfile_stage(path) if keyword == "USER"]
    match = re.fullmatch(r"(\d+):(\d+)", users[-1] if users else "")
    if not match:
        raise ValueError(f"{path}: the final stage needs USER uid:gid in numbers, got {users}")
    return int(match.group(1)), int(match.group(2))


def dockerfile_env(path: str = DOCKERFILE) -> dict[str, str]:
    """The image's ENV (KEY=VALUE form), as the container starts with it."""
    env: dict[str, str] = {}
    for keyword, rest in dockerfile_stage(path):
        if keyword == "ENV":
            for pair in rest.split():
                name, sep, value = pair.partition("=")
                if not sep:
                    raise ValueError(f"{path}: ENV {rest}: use the KEY=VALUE form")
                env[name] = value
    return env


# -- semantic checks ---------------------------------------------------------------------------------


def _matches(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _option(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None


def check(objects: list[dict]) -> list[str]:
    """What does not fit together in one rendered overlay (none: all is well)."""
    problems: list[str] = []
    statefulsets = find(objects, "StatefulSet")
    if len(statefulsets) != 1:
        return [f"expected one StatefulSet, found {len(statefulsets)}"]
    (sts,) = statefulsets
    spec = sts["spec"]
    template = spec["template"]
    pod_labels = template["metadata"].get("labels", {})
    pod = template["spec"]
    container = the_container(sts)
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    port_numbers = set(ports.values())
    replicas = spec.get("replicas", 1)

    if not _matches(spec["selector"].get("matchLabels"), pod_labels) or spec["selector"].get(
        "matchExpressions"
    ):
        problems.append("the StatefulSet's selector does not match its pod template's labels")
    if spec.get("podManagementPolicy") != "Parallel":
        problems.append("podManagementPolicy must be Parallel (controllers are ready only together)")

    # Services: one headless with stable names for every pod, one for clients.
    services = find(objects, "Service")
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    if len(headless) != 1:
        problems.append(f"expected one headless Service, found {len(headless)}")
    elif headless[0]["metadata"]["name"] != spec.get("serviceName"):
        problems.append(
            f"the StatefulSet's serviceName {spec.get('serviceName')!r} is not the headless Service "
            f"{headless[0]['metadata']['name']!r}"
        )
    elif not headless[0]["spec"].get("publishNotReadyAddresses"):
        problems.append(
            "the headless Service must publish not-ready addresses (controllers meet before ready)"
        )
    if not [s for s in services if s["spec"].get("clusterIP") != "None"]:
        problems.append("no client Service")
    for service in services:
        name = service["metadata"]["name"]
        if not _matches(service["spec"].get("selector"), pod_labels):
            problems.append(f"Service {name}'s selector does not match the pods' labels")
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            if target not in ports and target not in port_numbers:
                problems.append(
                    f"Service {name} port {port.get('name')} targets {target}, not a container port"
                )
    if headless:
        headless_ports = {p.get("targetPort") for p in headless[0]["spec"].get("ports", [])}
        for needed in ("http", "raft"):
            if needed not in headless_ports and ports.get(needed) not in headless_ports:
                problems.append(f"the headless Service does not carry the {needed} port")

    # Probes.
    expected_paths = {"startupProbe": None, "readinessProbe": "/readyz", "livenessProbe": "/livez"}
    for probe_name, path in expected_paths.items():
        probe = container.get(probe_name)
        if not probe or "httpGet" not in probe:
            problems.append(f"no {probe_name} (httpGet)")
            continue
        port = probe["httpGet"]["port"]
        if port not in ports and port not in port_numbers:
            problems.append(f"{probe_name} uses port {port}, which the container does not declare")
        if path and probe["httpGet"]["path"] != path:
            problems.append(f"{probe_name} must ask {path}, asks {probe['httpGet']['path']}")

    # Disruptions.
    budgets = find(objects, "PodDisruptionBudget")
    if len(budgets) != 1:
        problems.append(f"expected one PodDisruptionBudget, found {len(budgets)}")
    else:
        budget = budgets[0]["spec"]
        if budget.get("maxUnavailable") != 1 or "minAvailable" in budget:
            problems.append("the PodDisruptionBudget must say maxUnavailable: 1")
        if not _matches(budget.get("selector", {}).get("matchLabels"), pod_labels):
            problems.append("the PodDisruptionBudget's selector does not match the pods")
    for term in pod.get("affinity", {}).get("podAntiAffinity", {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution", []
    ) + [
        t["podAffinityTerm"]
        for t in pod.get("affinity", {})
        .get("podAntiAffinity", {})
        .get("preferredDuringSchedulingIgnoredDuringExecution", [])
    ]:
        if not _matches(term.get("labelSelector", {}).get("matchLabels"), pod_labels):
            problems.append("a pod anti-affinity term does not select the pods")
    if not pod.get("affinity", {}).get("podAntiAffinity"):
        problems.append("no pod anti-affinity")
    spreads = pod.get("topologySpreadConstraints", [])
    if not spreads:
        problems.append("no topology spread constraint")
    for spread in spreads:
        if not _matches(spread.get("labelSelector", {}).get("matchLabels"), pod_labels):
            problems.append("a topology spread constraint does not select the pods")

    # Resources and security.
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(kind, {}):
                problems.append(f"no {resource} {kind[:-1]}")
    if pod.get("enableServiceLinks") is not False:
        problems.append("enableServiceLinks must be false (service links add RAFTKA_* variables)")
    problems += _check_security(pod, container)

    # Storage: the data directory lives on the volume claim template.
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    claims = [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])]
    if not claims:
        problems.append("no volumeClaimTemplates")
    for claim in claims:
        if claim not in mounts:
            problems.append(f"volume claim template {claim} is not mounted")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for name in mounts:
        if name not in volumes and name not in claims:
            problems.append(f"volume mount {name} has no volume")
    if find(objects, "Secret"):
        problems.append("a Secret is part of the manifests: secrets must not be kept in k8s/")

    problems += _check_node_config(objects, sts, container, ports, claims, replicas)
    return list(dict.fromkeys(problems))  # each pod checked says the same of shared settings: once


def _check_security(pod: dict, container: dict) -> list[str]:
    """The Pod Security Standard "restricted", and the image's user."""
    problems = []
    pod_security = pod.get("securityContext", {})
    security = container.get("securityContext", {})
    if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
        problems.append("runAsNonRoot is not set")
    if security.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation must be false")
    if security.get("capabilities", {}).get("drop") != ["ALL"] or security.get("capabilities", {}).get("add"):
        problems.append("capabilities must drop ALL and add none")
    seccomp = (security.get("seccompProfile") or pod_security.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        problems.append("seccompProfile must be RuntimeDefault")
    if security.get("privileged"):
        problems.append("the container must not be privileged")
    if not security.get("readOnlyRootFilesystem"):
        problems.append("readOnlyRootFilesystem should be true")
    uid, gid = dockerfile_user()
    if pod_security.get("runAsUser", security.get("runAsUser")) != uid:
        problems.append(f"runAsUser must be the image's user {uid}")
    if pod_security.get("fsGroup") != gid:
        problems.append(f"fsGroup must be the image's group {gid} (the volume must be writable)")
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        problems.append("no host namespaces")
    return problems


def _check_node_config(
    objects: list[dict],
    sts: dict,
    container: dict,
    ports: dict[str, int],
    claims: list[str],
    replicas: int,
) -> list[str]:
    """Load the configuration of the first and the last pod with node/config.py, as the node will."""
    from node.config import load_config

    problems = []
    entrypoint = dockerfile_entrypoint()
    if entrypoint != ["raftka", "node"]:
        return [f"the image's entrypoint must be raftka node, is {entrypoint}"]
    secrets = {name: dict.fromkeys(keys, "not-the-password") for name, keys in secret_keys(sts).items()}
    with tempfile.TemporaryDirectory() as scratch:
        for ordinal in sorted({0, replicas - 1}):
            identity = PodIdentity(sts, ordinal, CHECK_NAMESPACE, "127.0.0.1")
            try:
                volumes = PodVolumes(
                    objects, identity, secrets, os.path.join(scratch, f"pod-{ordinal}"), scratch
                )
                env = pod_environment(objects, identity, secrets)
            except (KeyError, ValueError) as exc:
                problems.append(f"pod {ordinal} cannot be laid out as the kubelet would: {exc!r}")
                continue
            command = container_command(container, entrypoint, env)
            args = localize_args(command[len(entrypoint) :], volumes.path)
            node_env = {k: volumes.path(v) for k, v in env.items() if k.startswith("RAFTKA_")}
            try:
                config = load_config(args, environ=node_env)
            except ValueError as exc:
                problems.append(f"pod {ordinal}: the node would refuse its configuration: {exc}")
                continue
            domain = env.get("CLUSTER_DOMAIN", "cluster.local")
            problems += _check_pod_config(ordinal, config, sts, domain, ports, replicas)
            claim_dirs = [
                volumes.mounts[m["mountPath"]]
                for m in container.get("volumeMounts", [])
                if m["name"] in claims
            ]
            if not any(_under(config.data_dir, d) for d in claim_dirs):
                problems.append(f"data_dir {config.data_dir} is not on a volume claim")
    problems += _check_prestop(container, ports, sts, objects)
    return problems


def _under(path: str, directory: str) -> bool:
    return os.path.normpath(path).startswith(os.path.normpath(directory).rstrip("/") + "/")


def _check_pod_config(
    ordinal: int, config, sts: dict, domain: str, ports: dict[str, int], replicas: int
) -> list[str]:
    problems = []
    sts_name, service = sts["metadata"]["name"], sts["spec"].get("serviceName")

    def stable(node: int, port: int | None) -> str:
        return f"{sts_name}-{node}.{service}.{CHECK_NAMESPACE}.svc.{domain}:{port}"

    if config.node_id != ordinal:
        problems.append(f"pod {ordinal} gets node id {config.node_id}, not its ordinal")
    if config.advertised != stable(ordinal, ports.get("http")):
        problems.append(
            f"pod {ordinal} advertises {config.advertised}, not {stable(ordinal, ports.get('http'))}"
        )
    if config.host_port[1] != ports.get("http"):
        problems.append(f"the node listens on {config.listen}, not on the http port {ports.get('http')}")
    voters = config.voters
    if len(voters) not in CONTROLLER_COUNTS:
        problems.append(f"the controllers list has {len(voters)} voters; a quorum needs 3 or 5")
    if sorted(voters) != list(range(len(voters))):
        problems.append(f"the controllers must be ordinals 0..{len(voters) - 1}, are {sorted(voters)}")
    if len(voters) > replicas:
        problems.append(f"{len(voters)} controllers but only {replicas} replicas: no quorum can form")
    for node_id, address in sorted(voters.items()):
        if address != stable(node_id, ports.get("raft")):
            problems.append(
                f"controller {node_id} is {address}, not its stable name {stable(node_id, ports.get('raft'))}"
            )
    if config.is_controller != (ordinal in voters):
        problems.append(f"pod {ordinal} is {'' if config.is_controller else 'not '}a controller")
    if config.raft_bind and int(config.raft_bind.rsplit(":", 1)[1]) != ports.get("raft"):
        problems.append(f"Raft binds {config.raft_bind}, not the raft port {ports.get('raft')}")
    if config.raft_password:
        problems.append("the Raft password is in the manifests; it must come from the Secret's file")
    if not config.raft_password_file:
        problems.append("no raft_password_file (the Secret's mounted file)")
    return problems


def _check_prestop(container: dict, ports: dict[str, int], sts: dict, objects: list[dict]) -> list[str]:
    problems = []
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if not command or command[:2] != ["raftka", "drain"]:
        return ["the preStop hook must run raftka drain"]
    timeout = _option(command, "--timeout-s")
    node = _option(command, "--node") or "127.0.0.1:9092"
    if node.rsplit(":", 1)[1] != str(ports.get("http")):
        problems.append(f"preStop drains {node}, not the http port {ports.get('http')}")
    grace = sts["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    shutdown_s = _controlled_shutdown_s(objects)
    if timeout is None:
        problems.append("the preStop drain needs an explicit --timeout-s")
    elif float(timeout) >= grace:
        problems.append(f"the preStop timeout {timeout} s is not below the grace period {grace} s")
    elif float(timeout) + shutdown_s + STOP_MARGIN_S > grace:
        problems.append(
            f"the grace period {grace} s is shorter than the drain ({timeout} s) plus SIGTERM's controlled "
            f"shutdown ({shutdown_s:g} s) plus {STOP_MARGIN_S} s to flush and close"
        )
    return problems


def _controlled_shutdown_s(objects: list[dict]) -> float:
    import tomllib

    from node.config import NodeConfig

    value = NodeConfig().controlled_shutdown_timeout_ms
    for config_map in find(objects, "ConfigMap"):
        for text in config_map.get("data", {}).values():
            try:
                value = tomllib.loads(text).get("controlled_shutdown_timeout_ms", value)
            except tomllib.TOMLDecodeError:
                continue
    return value / 1000


# -- command line ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overlays", nargs="*", default=list(OVERLAYS), help="default: all")
    parser.add_argument("--print", action="store_true", help="print the rendered YAML instead of checking")
    args = parser.parse_args(argv)
    failed = False
    for name in args.overlays:
        try:
            objects = render_overlay(name)
        except (RenderError, OSError) as exc:
            print(f"{name}: cannot render: {exc}")
            failed = True
            continue
        if args.print:
            print(yaml.safe_dump_all(objects, sort_keys=False), end="")
            continue
        problems = validate(objects) + check(objects)
        kinds = ", ".join("{}/{}".format(*object_key(o)) for o in objects)
        if problems:
            failed = True
            print(f"{name}: {len(problems)} problem(s) in {kinds}")
            for problem in problems:
                print(f"  {problem}")
        else:
            print(
                f"{name}: {len(objects)} objects valid in Kubernetes {', '.join(KUBERNETES_VERSIONS)} "
                f"(strict) and consistent: {kinds}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
