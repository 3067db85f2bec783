"""No cluster here: the manifests under deploy/kubernetes are validated against the
Kubernetes schemas that kubernetes-validate bundles (offline, strict: unknown fields fail),
the KEDA ScaledObject against a schema of the fields used, and cross-checked with the CLI,
the settings, the shipped models and each other."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from app.cli import build_parser
from app.config import Settings
from app.dispatch.queue import Keys
from tests.servers import REPO

K8S = REPO / "deploy" / "kubernetes"
SETTINGS = {f"EBM_{name.upper()}" for name in Settings.model_fields}
# The oldest Kubernetes still commonly run, and the newest the library knows.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())

_STR = {"type": "string", "minLength": 1}
_COUNT = {"type": "string", "pattern": "^[0-9]+$"}  # KEDA metadata values are strings
# The redis-streams trigger (KEDA's redis_streams_scaler.go): without consumerGroup it
# scales on XLEN (streamLength); with one on XPENDING (pendingEntriesCount), unless
# lagCount is set, which then wins and needs activationLagCount.
REDIS_STREAMS_TRIGGER = {
    "type": "object",
    "required": ["type", "metadata"],
    "additionalProperties": False,
    "properties": {
        "type": {"const": "redis-streams"},
        # scalingModifiers' formula names triggers: an expression identifier.
        "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "metricType": {"enum": ["AverageValue", "Value"]},
        "authenticationRef": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {"name": _STR, "kind": {"enum": ["TriggerAuthentication"]}},
        },
        "metadata": {
            "type": "object",
            "required": ["stream"],
            "additionalProperties": False,
            "anyOf": [{"required": ["address"]}, {"required": ["host", "port"]}],
            "properties": {
                "address": {"type": "string", "pattern": r"^[A-Za-z0-9.-]+:[0-9]+$"},
                "host": _STR,
                "port": _COUNT,
                "databaseIndex": _COUNT,
                "stream": _STR,
                "consumerGroup": _STR,
                "streamLength": _COUNT,
                "pendingEntriesCount": _COUNT,
                "lagCount": _COUNT,
                "activationLagCount": _COUNT,
                "enableTLS": {"enum": ["true", "false"]},
            },
            "dependentRequired": {
                "pendingEntriesCount": ["consumerGroup"],
                "lagCount": ["consumerGroup", "activationLagCount"],
            },
            # Ignored in the mode the others select: a sign of a mistaken intent.
            "not": {
                "anyOf": [
                    {"required": ["pendingEntriesCount", "lagCount"]},
                    {"required": ["streamLength", "consumerGroup"]},
                ]
            },
        },
    },
}
SCALED_OBJECT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": _STR,
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": _STR,
                        "kind": {"const": "Deployment"},
                        "apiVersion": {"const": "apps/v1"},
                    },
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            # behavior is the HPA's: validated against Kubernetes' schema below.
                            "properties": {"name": _STR, "behavior": {"type": "object"}},
                        },
                        "scalingModifiers": {
                            "type": "object",
                            "required": ["formula", "target"],
                            "additionalProperties": False,
                            "properties": {
                                "formula": _STR,
                                "target": _COUNT,
                                "activationTarget": _COUNT,
                                "metricType": {"enum": ["AverageValue", "Value"]},
                            },
                        },
                    },
                },
                "triggers": {"type": "array", "minItems": 1, "items": REDIS_STREAMS_TRIGGER},
            },
        },
    },
}


def _kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return data


def _objects() -> list[dict[str, Any]]:
    objects = []
    for resource in _kustomization()["resources"]:
        objects += [doc for doc in yaml.safe_load_all((K8S / resource).read_text()) if doc]
    return objects


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [
        o for o in _objects() if o["kind"] == kind and name in (None, o["metadata"]["name"])
    ]
    return found


def _container(deployment: str) -> dict[str, Any]:
    (container,) = _one("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _setting(env: dict[str, str], name: str) -> Any:
    """The value a container sees for a setting: its env var, else the default."""
    key = f"EBM_{name.upper()}"
    if key in env:
        return getattr(Settings.model_validate({name: env[key]}), name)
    return Settings.model_fields[name].default


def _parse(container: dict[str, Any]) -> Any:
    command = container["command"] + container.get("args", [])
    assert command[0] == "ebm", container["name"]
    return build_parser().parse_args(command[1:])


def _shipped_models() -> list[str]:
    return sorted(
        p.name
        for p in (REPO / "models").iterdir()
        if p.is_dir() and any(v.is_dir() and v.name.isdigit() for v in p.iterdir())
    )


def _redis_service() -> dict[str, Any]:
    redis_set = _one("StatefulSet", "redis")
    return _one("Service", redis_set["spec"]["serviceName"])


def _core_objects() -> list[dict[str, Any]]:
    return [o for o in _objects() if not o["apiVersion"].startswith("keda.sh/")]


def _name(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def test_kustomization_lists_every_manifest_in_one_namespace() -> None:
    kustomization = _kustomization()
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    assert _one("Namespace")["metadata"]["name"] == kustomization["namespace"]
    # The kustomization sets the namespace; a manifest naming another would escape it.
    assert all("namespace" not in o["metadata"] for o in _objects())


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("obj", _core_objects(), ids=_name)
def test_core_objects_validate_strictly(obj: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


def test_the_core_objects_are_all_there() -> None:
    kinds = {_name(o) for o in _core_objects()}
    expected = {"Deployment/ebm-api", "Service/ebm-api", "Deployment/ebm-worker"}
    assert expected | {"StatefulSet/redis", "Service/redis"} <= kinds


def test_selectors_match_their_pods() -> None:
    pods = {}
    for obj in _objects():
        if obj["kind"] in {"Deployment", "StatefulSet"}:
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items(), _name(obj)
            pods[_name(obj)] = labels
    for service in (o for o in _objects() if o["kind"] == "Service"):
        selector = service["spec"]["selector"].items()
        matched = [name for name, labels in pods.items() if selector <= labels.items()]
        assert len(matched) == 1, (_name(service), matched)


def test_scaled_object_matches_the_keda_schema_and_hpa_behavior() -> None:
    scaled = _one("ScaledObject")
    jsonschema.Draft202012Validator.check_schema(SCALED_OBJECT_SCHEMA)
    jsonschema.Draft202012Validator(SCALED_OBJECT_SCHEMA).validate(scaled)
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-hpa"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
            "maxReplicas": scaled["spec"]["maxReplicaCount"],
            "behavior": behavior,
        },
    }
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(hpa, version, strict=True)


def test_scaled_object_targets_the_worker_deployment_it_owns() -> None:
    spec = _one("ScaledObject")["spec"]
    worker = _one("Deployment", spec["scaleTargetRef"]["name"])
    assert _parse(worker["spec"]["template"]["spec"]["containers"][0]).command == "worker"
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    # KEDA's HPA owns the count; a `replicas` here would reset it on every apply.
    assert "replicas" not in worker["spec"]


def test_triggers_watch_the_stream_of_every_model_the_workers_serve() -> None:
    triggers = [t["metadata"] for t in _one("ScaledObject")["spec"]["triggers"]]
    worker_env = _env(_container("ebm-worker"))
    keys = Keys(_setting(worker_env, "queue_prefix"))
    served = _setting(worker_env, "worker_models")
    models = served.split(",") if served else _shipped_models()
    assert "car" in models
    assert sorted(t["stream"] for t in triggers) == sorted(keys.jobs(m) for m in models)
    service = _redis_service()
    (port,) = service["spec"]["ports"]
    # KEDA connects from its own namespace: the Service's full DNS name.
    host = f"{service['metadata']['name']}.{_kustomization()['namespace']}.svc.cluster.local"
    database = urlsplit(worker_env["EBM_REDIS_URL"]).path.lstrip("/") or "0"
    for trigger in triggers:
        assert trigger["address"] == f"{host}:{port['port']}"
        assert trigger.get("databaseIndex", "0") == database
        # Workers delete answered jobs, so XLEN is the backlog: KEDA reads it only without
        # a consumer group (with one it reads XPENDING, blind to queued jobs).
        assert "consumerGroup" not in trigger, trigger["stream"]


def test_the_formula_sums_every_stream_against_a_per_worker_target() -> None:
    spec = _one("ScaledObject")["spec"]
    modifiers = spec["advanced"]["scalingModifiers"]
    names = [t["name"] for t in spec["triggers"]]
    assert len(set(names)) == len(names)
    # One worker serves every stream: their backlogs add up (a max would under-provision).
    assert sorted(modifiers["formula"].split(" + ")) == sorted(names)
    assert modifiers.get("metricType", "AverageValue") == "AverageValue"
    target = int(modifiers["target"])
    worker_env = _env(_container("ebm-worker"))
    # Above what one worker holds, jobs would queue behind full workers without asking for
    # another; and the backlog per stream stops at EBM_MAX_BACKLOG.
    assert 1 <= target <= _setting(worker_env, "worker_prefetch")
    assert target < _setting(_env(_container("ebm-api")), "max_backlog")


def test_container_commands_parse_with_the_cli() -> None:
    api = _container("ebm-api")
    args = _parse(api)
    assert args.command == "serve"
    assert args.host == "0.0.0.0"
    assert args.port in [p["containerPort"] for p in api["ports"]]
    assert _parse(_container("ebm-worker")).command == "worker"


def test_env_vars_name_real_settings_with_valid_values() -> None:
    checked = 0
    for name in ("ebm-api", "ebm-worker"):
        for var in _container(name).get("env", []):
            assert var["name"] in SETTINGS, (name, var["name"])
            if "valueFrom" in var:  # e.g. EBM_API_KEYS from a Secret
                continue
            assert isinstance(var.get("value"), str), (name, var)
            Settings.model_validate({var["name"].removeprefix("EBM_").lower(): var["value"]})
            checked += 1
    assert checked


def test_api_and_workers_share_the_queue_on_the_redis_service() -> None:
    service = _redis_service()
    assert service["spec"]["clusterIP"] == "None"  # headless: the StatefulSet's stable name
    (port,) = service["spec"]["ports"]
    envs = [_env(_container(name)) for name in ("ebm-api", "ebm-worker")]
    for env in envs:
        url = urlsplit(env["EBM_REDIS_URL"])
        assert url.scheme == "redis"
        assert url.hostname == service["metadata"]["name"]
        assert url.port == port["port"]
    assert len({env["EBM_REDIS_URL"] for env in envs}) == 1
    assert len({_setting(env, "queue_prefix") for env in envs}) == 1


def test_api_probes_hit_health_endpoints_on_the_container_port() -> None:
    api = _container("ebm-api")
    (port,) = api["ports"]
    expected = {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
        "startupProbe": "/healthz",
    }
    assert {"livenessProbe", "readinessProbe"} <= set(api)
    for probe, path in expected.items():
        if probe in api:
            assert api[probe]["httpGet"]["path"] == path, probe
            assert api[probe]["httpGet"]["port"] in (port["containerPort"], port.get("name"))
    service = _one("Service", "ebm-api")["spec"]
    (service_port,) = service["ports"]
    assert service_port["targetPort"] in (port["containerPort"], port.get("name"))
    pod_labels = _one("Deployment", "ebm-api")["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()


def test_workers_get_a_gpu_and_time_to_finish_a_batch() -> None:
    pod = _one("Deployment", "ebm-worker")["spec"]["template"]["spec"]
    worker = _container("ebm-worker")
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert str(_setting(_env(worker), "device")).startswith("cuda")
    # A batch is not worth finishing past its request's deadline; up to that it is.
    timeout_s = _setting(_env(_container("ebm-api")), "request_timeout_ms") / 1000
    assert pod["terminationGracePeriodSeconds"] >= timeout_s
    api_pod = _one("Deployment", "ebm-api")["spec"]["template"]["spec"]
    assert api_pod["terminationGracePeriodSeconds"] >= timeout_s


def test_redis_persists_every_write_on_its_volume() -> None:
    redis_set = _one("StatefulSet", "redis")
    (container,) = redis_set["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "redis:7"
    command = " ".join(container.get("command", []) + container.get("args", []))
    assert "--appendonly yes" in command
    assert "--appendfsync always" in command
    (claim,) = redis_set["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data"


def test_pods_run_as_the_images_non_root_user() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    match = re.search(r"^USER (\d+)(?::(\d+))?$", dockerfile, flags=re.M)
    assert match
    for name in ("ebm-api", "ebm-worker"):
        security = _one("Deployment", name)["spec"]["template"]["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == int(match.group(1))
        if match.group(2):
            assert security["runAsGroup"] == int(match.group(2))
