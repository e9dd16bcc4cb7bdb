"""The Kubernetes deployment (k8s/, Dockerfile) without a cluster: the overlays render (in Python, and
as kubectl kustomize renders them where kubectl exists), every object validates against the strict
schemas of several Kubernetes releases, and the semantic checks of scripts/k8s_check.py find nothing
wrong in them while they do find each kind of mistake that breaks a deployment."""

from __future__ import annotations

import copy
import os
import re
import shutil
import sys
import tomllib

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import k8s_check  # noqa: E402 - scripts/ is not a package
from k8s_check import RenderError, find, object_key, the_container  # noqa: E402

EXPECTED_KINDS = ["ConfigMap", "PodDisruptionBudget", "Service", "Service", "StatefulSet"]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: k8s_check.render_overlay(name) for name in k8s_check.OVERLAYS}


def by_key(objects: list[dict]) -> list[dict]:
    return sorted(objects, key=object_key)


def test_the_python_rendering_is_what_kubectl_kustomize_prints(rendered):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed here; the Python rendering is compared with it where it is")
    for name, objects in rendered.items():
        assert by_key(objects) == by_key(
            k8s_check.render_with_kubectl(os.path.join(ROOT, "k8s", "overlays", name))
        )


def test_every_object_validates_strictly_against_every_release(rendered):
    assert len(k8s_check.KUBERNETES_VERSIONS) >= 5
    for name, objects in rendered.items():
        assert sorted(o["kind"] for o in objects) == EXPECTED_KINDS, name
        assert k8s_check.validate(objects) == [], name


def test_strict_validation_fails_on_unknown_fields_wrong_types_missing_schemas_and_releases(rendered):
    objects = copy.deepcopy(rendered["prod"])
    (sts,) = find(objects, "StatefulSet")
    the_container(sts)["readinesProbe"] = {"httpGet": {"path": "/readyz", "port": "http"}}
    assert any("'readinesProbe' was unexpected" in p for p in k8s_check.validate([sts], ["1.37"]))
    sts = copy.deepcopy(find(rendered["prod"], "StatefulSet")[0])
    sts["spec"]["replicas"] = "five"
    assert any("spec.replicas" in p for p in k8s_check.validate([sts], ["1.30"]))
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert any("Couldn't find schema" in p for p in k8s_check.validate([widget], ["1.33"]))
    # A release without bundled schemas is a failure, never a silent fall-back to an older one.
    assert k8s_check.validate(rendered["dev"], ["1.24"]) == [
        "kubernetes-validate has no schemas for Kubernetes 1.24"
    ]


def test_the_overlays_fit_together(rendered):
    for name, objects in rendered.items():
        assert k8s_check.check(objects) == [], name


def test_the_command_line_check_passes(capsys):
    assert k8s_check.main([]) == 0
    out = capsys.readouterr().out
    assert "dev: 5 objects valid" in out and "prod: 5 objects valid" in out


def test_dev_and_prod_differ_where_they_should(rendered):
    dev = find(rendered["dev"], "StatefulSet")[0]
    prod = find(rendered["prod"], "StatefulSet")[0]
    assert dev["spec"]["replicas"] == 3
    assert prod["spec"]["replicas"] == 5  # three controllers and two broker-only nodes
    assert the_container(dev)["image"] == "raftka:dev"
    assert re.fullmatch(r"[^:@]+:\d+\.\d+\.\d+", the_container(prod)["image"])  # a pinned release
    dev_affinity = dev["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    prod_affinity = prod["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert list(dev_affinity) == ["preferredDuringSchedulingIgnoredDuringExecution"]  # one-node clusters
    assert list(prod_affinity) == ["requiredDuringSchedulingIgnoredDuringExecution"]
    assert the_container(dev)["resources"]["limits"]["memory"] == "512Mi"
    assert the_container(prod)["resources"]["requests"]["memory"] == "4Gi"


def _sts(objects):
    return find(objects, "StatefulSet")[0]


def _env(objects, name):
    return next(e for e in the_container(_sts(objects))["env"] if e["name"] == name)


def _node_toml(objects, edit):
    config_map = find(objects, "ConfigMap", "raftka-config")[0]
    config_map["data"]["node.toml"] = edit(config_map["data"]["node.toml"])


BREAKAGES = {
    "serviceName": (
        lambda o: _sts(o)["spec"].update(serviceName="raftka-peers"),
        "is not the headless Service",
    ),
    "pod labels": (
        lambda o: _sts(o)["spec"]["template"]["metadata"]["labels"].update({"app.kubernetes.io/name": "rk"}),
        "selector does not match",
    ),
    "probe port": (
        lambda o: the_container(_sts(o))["livenessProbe"]["httpGet"].update(port="metrics"),
        "livenessProbe uses port metrics",
    ),
    "liveness on readiness": (
        lambda o: the_container(_sts(o))["livenessProbe"]["httpGet"].update(path="/readyz"),
        "livenessProbe must ask /livez",
    ),
    "grace below preStop": (
        lambda o: _sts(o)["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=60),
        "is not below the grace period",
    ),
    "grace without room for SIGTERM": (
        lambda o: _sts(o)["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=100),
        "plus SIGTERM's controlled shutdown",
    ),
    "fewer replicas than controllers": (lambda o: _sts(o)["spec"].update(replicas=2), "no quorum can form"),
    "a voter missing": (
        lambda o: _env(o, "RAFTKA_CONTROLLERS").update(
            value=_env(o, "RAFTKA_CONTROLLERS")["value"].rsplit(",", 1)[0]
        ),
        "a quorum needs 3 or 5",
    ),
    "a voter misnamed": (
        lambda o: _env(o, "RAFTKA_CONTROLLERS").update(
            value=_env(o, "RAFTKA_CONTROLLERS")["value"].replace(
                "raftka-2.raftka-headless", "raftka-2.raftka"
            )
        ),
        "not its stable name",
    ),
    "node id from the pod name": (
        lambda o: _env(o, "RAFTKA_NODE_ID")["valueFrom"]["fieldRef"].update(fieldPath="metadata.name"),
        "the node would refuse its configuration: RAFTKA_NODE_ID must be an integer",
    ),
    "not-ready pods unnamed": (
        lambda o: find(o, "Service", "raftka-headless")[0]["spec"].update(publishNotReadyAddresses=False),
        "publish not-ready addresses",
    ),
    "budget of two": (
        lambda o: find(o, "PodDisruptionBudget")[0]["spec"].update(maxUnavailable=2),
        "maxUnavailable: 1",
    ),
    "ordered start": (
        lambda o: _sts(o)["spec"].update(podManagementPolicy="OrderedReady"),
        "podManagementPolicy must be Parallel",
    ),
    "root": (
        lambda o: _sts(o)["spec"]["template"]["spec"]["securityContext"].update(runAsUser=0),
        "runAsUser must be the image's user 10001",
    ),
    "privilege escalation": (
        lambda o: the_container(_sts(o))["securityContext"].pop("allowPrivilegeEscalation"),
        "allowPrivilegeEscalation must be false",
    ),
    "service links": (
        lambda o: _sts(o)["spec"]["template"]["spec"].pop("enableServiceLinks"),
        "enableServiceLinks must be false",
    ),
    "a Secret in the manifests": (
        lambda o: o.append(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "raftka-raft"}, "data": {}}
        ),
        "a Secret is part of the manifests",
    ),
    "the password in the environment": (
        lambda o: the_container(_sts(o))["env"].append({"name": "RAFTKA_RAFT_PASSWORD", "value": "hunter2"}),
        "the Raft password is in the manifests",
    ),
    "data off the volume": (
        lambda o: _node_toml(o, lambda t: t.replace('"/var/lib/raftka/data"', '"/tmp/data"')),
        "is not on a volume claim",
    ),
    "an unknown node option": (
        lambda o: _node_toml(o, lambda t: t + "log_levle = 'debug'\n"),
        "unknown option 'log_levle'",
    ),
    "every pod a controller": (
        lambda o: _node_toml(o, lambda t: t.replace('roles = "auto"', 'roles = "controller,broker"')),
        "node 4 is not in controllers",
    ),
    "listening on another port": (
        lambda o: _node_toml(o, lambda t: t.replace('"0.0.0.0:9092"', '"0.0.0.0:8080"')),
        "not on the http port 9092",
    ),
    "draining another port": (
        lambda o: the_container(_sts(o))["lifecycle"]["preStop"]["exec"].update(
            command=["raftka", "drain", "--node", "127.0.0.1:8080", "--timeout-s", "60"]
        ),
        "preStop drains 127.0.0.1:8080",
    ),
    "no anti-affinity": (
        lambda o: _sts(o)["spec"]["template"]["spec"].pop("affinity"),
        "no pod anti-affinity",
    ),
    "no memory limit": (
        lambda o: the_container(_sts(o))["resources"]["limits"].pop("memory"),
        "no memory limit",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_the_checks_catch_what_breaks_a_deployment(rendered, breakage):
    objects = copy.deepcopy(rendered["prod"])
    change, expected = BREAKAGES[breakage]
    change(objects)
    problems = k8s_check.check(objects)
    assert any(expected in p for p in problems), problems


def _write(directory, name, documents):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
        yaml.safe_dump_all(documents, handle)


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path):
    base = str(tmp_path / "base")
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
    _write(base, "cm.yaml", [config_map])
    _write(base, "kustomization.yaml", [{"resources": ["cm.yaml"]}])
    assert k8s_check.render(base) == [config_map]
    cases = {
        "prefix": {"resources": ["../base"], "namePrefix": "x-"},
        "nothing matched": {
            "resources": ["../base"],
            "patches": [{"target": {"kind": "ConfigMap", "name": "d"}, "patch": "[]"}],
        },
        "strategic merge": {
            "resources": ["../base"],
            "patches": [{"target": {"kind": "ConfigMap", "name": "c"}, "patch": "data: {a: '2'}"}],
        },
        "replicas of nothing": {"resources": ["../base"], "replicas": [{"name": "c", "count": 2}]},
        "twice": {"resources": ["../base", "../base/cm.yaml"]},
        "missing": {"resources": ["../nowhere"]},
    }
    for name, kustomization in cases.items():
        overlay = str(tmp_path / name.replace(" ", "-"))
        _write(overlay, "kustomization.yaml", [kustomization])
        with pytest.raises(RenderError):
            k8s_check.render(overlay)


def test_json_patch_operations():
    document = {"a": {"list": [1, 2]}, "b": "x", "c~/d": 1}
    k8s_check.json_patch(document, {"op": "add", "path": "/a/list/-", "value": 3})
    k8s_check.json_patch(document, {"op": "add", "path": "/a/list/0", "value": 0})
    k8s_check.json_patch(document, {"op": "remove", "path": "/a/list/1"})
    k8s_check.json_patch(document, {"op": "replace", "path": "/b", "value": {"y": 1}})
    k8s_check.json_patch(document, {"op": "replace", "path": "/c~0~1d", "value": 2})
    k8s_check.json_patch(document, {"op": "test", "path": "/b/y", "value": 1})
    assert document == {"a": {"list": [0, 2, 3]}, "b": {"y": 1}, "c~/d": 2}
    for bad in (
        {"op": "replace", "path": "/nope", "value": 1},
        {"op": "remove", "path": "/a/list/9"},
        {"op": "test", "path": "/b/y", "value": 2},
        {"op": "move", "from": "/b", "path": "/z"},
    ):
        with pytest.raises(RenderError):
            k8s_check.json_patch(copy.deepcopy(document), bad)


def test_kubelet_variable_expansion():
    env = {"A": "1", "B": "x"}
    assert k8s_check.expand("$(A)-$(B)", env) == "1-x"
    assert k8s_check.expand("$(UNSET) $$(A) $$$(A)", env) == "$(UNSET) $(A) $1"


def test_the_image_recipe():
    stage = k8s_check.dockerfile_stage()
    with open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8") as handle:
        text = handle.read()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base), base  # slim, a pinned minor Python
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)
    assert project["project"]["requires-python"] == ">=3.11"
    assert k8s_check.dockerfile_entrypoint() == ["raftka", "node"]
    uid, gid = k8s_check.dockerfile_user()
    assert uid >= 10000 and gid >= 10000  # not root, and no uid of the base image
    for keyword, rest in stage:
        if keyword in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"PASSWORD|SECRET|TOKEN|KEY", rest, re.I), rest
    # Everything the package build needs is copied: pyproject's packages and the README it names.
    copied = set()
    for source in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        *sources, _target = source.split()
        copied.update(sources)
    assert project["project"]["readme"] in copied
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in copied, pattern
    for source in copied:
        assert os.path.exists(os.path.join(ROOT, source)), source
    with open(os.path.join(ROOT, ".dockerignore"), encoding="utf-8") as handle:
        ignored = {line.strip() for line in handle if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "data"} <= ignored
    assert not ignored & copied  # nothing the build copies is left out of the context


def _chaos_objects() -> list[dict]:
    objects = []
    for name in sorted(os.listdir(os.path.join(ROOT, "k8s", "chaos"))):
        with open(os.path.join(ROOT, "k8s", "chaos", name), encoding="utf-8") as handle:
            objects += [doc for doc in yaml.safe_load_all(handle) if doc]
    return objects


def test_the_chaos_manifests_validate_and_fit_the_statefulset_and_the_experiment(rendered):
    objects = _chaos_objects()
    assert sorted(o["kind"] for o in objects) == ["NetworkPolicy", "Role", "RoleBinding", "ServiceAccount"]
    assert k8s_check.validate(objects) == []
    sts = find(rendered["prod"], "StatefulSet")[0]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    (policy,) = find(objects, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == {k8s_check.POD_NAME_LABEL: "raftka-1"}
    # The cut excludes exactly the StatefulSet's pods (by their name label), in both directions.
    for rule in policy["spec"]["ingress"][0]["from"] + policy["spec"]["egress"][0]["to"]:
        (expression,) = rule["podSelector"]["matchExpressions"]
        assert expression["operator"] == "NotIn"
        assert pod_labels[expression["key"]] in expression["values"]
    # The role allows what KubectlPods asks: read the StatefulSet, wait for pods, delete them.
    (role,) = find(objects, "Role")
    allowed = {
        (group, resource, verb)
        for r in role["rules"]
        for group in r["apiGroups"]
        for resource in r["resources"]
        for verb in r["verbs"]
    }
    needed = {("apps", "statefulsets", "get")} | {("", "pods", v) for v in ("get", "list", "watch", "delete")}
    assert needed <= allowed
    (binding,) = find(objects, "RoleBinding")
    (account,) = find(objects, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"]}]


def test_roles_auto_makes_a_node_a_controller_exactly_when_it_is_listed(tmp_path):
    from node.config import load_config

    password = tmp_path / "raft-password"
    password.write_text("secret\n")
    voters = "0@raftka-0.h:9093,1@raftka-1.h:9093,2@raftka-2.h:9093"
    common = ["--roles", "auto", "--controllers", voters, "--raft-password-file", str(password)]
    controller = load_config(["--node-id", "2", *common], environ={})
    assert controller.roles == "controller,broker" and controller.raft_bind == "raftka-2.h:9093"
    broker = load_config(["--node-id", "3", *common], environ={})
    assert broker.roles == "broker" and broker.raft_bind is None
    alone = load_config(
        ["--roles", "auto", "--raft-listen", "127.0.0.1:19093"], environ={"RAFTKA_ROLES": "x"}
    )
    assert alone.roles == "controller,broker"  # no controllers list: the single-node default
    assert load_config(["--node-id", "4", *common[2:]], environ={"RAFTKA_ROLES": "auto"}).roles == "broker"
