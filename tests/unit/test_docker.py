"""No Docker engine here: the Dockerfile and the compose files are kept correct by static
checks against the CLI, the settings and the files they name."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from app.cli import build_parser
from app.config import Settings
from tests.servers import REPO

SETTINGS = {f"EBM_{name.upper()}" for name in Settings.model_fields}
COMPOSE = REPO / "docker-compose.yml"
GPU_COMPOSE = REPO / "docker" / "compose.gpu.yml"
ENV_EXAMPLE = REPO / "docker" / "env.example"


def _dockerfile() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction; comment lines go before continuations join."""
    lines = [ln for ln in (REPO / "Dockerfile").read_text().splitlines() if ln.strip()[:1] != "#"]
    text = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    instructions = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _args(keyword: str) -> list[str]:
    return [rest for k, rest in _dockerfile() if k == keyword]


def _assignments(keyword: str) -> dict[str, str]:
    """``ENV``/``ARG`` ``name=value`` pairs (an ``ARG`` without a default maps to "")."""
    pairs: dict[str, str] = {}
    for rest in _args(keyword):
        for token in shlex.split(rest):
            name, _, value = token.partition("=")
            pairs[name] = value
    return pairs


def _check_setting(name: str, value: object, where: str) -> None:
    assert name in SETTINGS, f"{where}: {name} is not a setting"
    assert isinstance(value, str), f"{where}: {name} must be a string, got {value!r}"
    Settings.model_validate({name.removeprefix("EBM_").lower(): value})


def _dockerfile_cmd() -> list[str]:
    (cmd,) = _args("CMD")
    argv: list[str] = json.loads(cmd)
    return argv


def _compose(path: Path = COMPOSE) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Compose's merge of mappings (what the checks here need of ``-f a -f b``)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _parse(command: list[str], where: str) -> Any:
    assert command[0] == "ebm", where
    return build_parser().parse_args(command[1:])


def _seconds(duration: str) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts, duration
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * scale[unit] for n, unit in parts)


def _request_timeout_s(environment: dict[str, str]) -> float:
    timeout = environment.get("EBM_REQUEST_TIMEOUT_MS")
    if timeout is None:
        return float(Settings.model_fields["request_timeout_ms"].default) / 1000
    return float(timeout) / 1000


# --- Dockerfile ---------------------------------------------------------------------------


def test_dockerfile_serves_on_the_port_it_exposes_and_health_checks() -> None:
    args = _parse(_dockerfile_cmd(), "CMD")
    assert args.command == "serve"
    assert args.host == "0.0.0.0"  # reachable from outside the container
    assert str(args.port) in " ".join(_args("EXPOSE")).split()
    (healthcheck,) = _args("HEALTHCHECK")
    assert f"127.0.0.1:{args.port}/readyz" in healthcheck


def test_dockerfile_env_and_args_name_real_settings_with_valid_values() -> None:
    env = _assignments("ENV")
    named = {name: value for name, value in env.items() if name.startswith("EBM_")}
    named |= {name: value for name, value in _assignments("ARG").items() if name.startswith("EBM_")}
    assert named
    for name, value in named.items():
        _check_setting(name, value, "Dockerfile")
    # The models are served from where they are copied to.
    copies = [shlex.split(rest) for rest in _args("COPY")]
    assert ["models", env["EBM_MODELS_DIR"]] in copies


def test_dockerfile_copies_files_that_exist_and_the_context_sends_them() -> None:
    ignore = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    sources = [source for rest in _args("COPY") for source in shlex.split(rest)[:-1]]
    assert sources
    for source in sources:
        assert not source.startswith("--"), "COPY --from/--chown: extend this parser"
        assert (REPO / source).exists(), source
        # The context excludes everything, then lets back in what is copied.
        if "*" in ignore:
            kept = {f"!{source}", f"!{source}/"}
            assert kept & set(ignore[ignore.index("*") :]), f"{source} is left out of the context"


def test_dockerfile_base_is_a_build_argument_defaulting_to_slim_python() -> None:
    instructions = _dockerfile()
    assert instructions[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert _args("FROM") == ["${BASE_IMAGE}"]
    # The default base's Python satisfies the project's.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    required = re.fullmatch(r">=\s*3\.(\d+)", project["requires-python"])
    base = re.fullmatch(r"python:3\.(\d+)-slim", _assignments("ARG")["BASE_IMAGE"])
    assert required
    assert base
    assert int(base.group(1)) >= int(required.group(1))


def test_the_onnxruntime_argument_replaces_the_projects_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dependencies = {re.split(r"[<>=!~\[ ;]", dep, maxsplit=1)[0] for dep in project["dependencies"]}
    default = _assignments("ARG")["ONNXRUNTIME"]
    assert default in dependencies
    installs = [rest for rest in _args("RUN") if "pip install -c constraints.txt ." in rest]
    assert len(installs) == 1
    assert re.findall(r"pip uninstall -y (\S+)", installs[0]) == [default]
    assert '"$ONNXRUNTIME"' in installs[0]
    # The serving image has no torch: nothing installs the train extra.
    assert not any("torch" in rest or "[train" in rest for rest in _args("RUN"))


def test_dockerfile_runs_as_a_numeric_non_root_user() -> None:
    (user,) = _args("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    assert any(f"--uid {uid}" in rest for rest in _args("RUN"))
    if gid:
        assert any(f"--gid {gid}" in rest for rest in _args("RUN"))


# --- docker-compose.yml ---------------------------------------------------------------------


def test_compose_commands_parse_with_the_cli() -> None:
    services = _compose()["services"]
    expected = {"api": "serve", "worker": "worker", "embedded": "serve"}
    assert set(expected) | {"redis"} <= set(services)
    for name, command in expected.items():
        assert _parse(services[name]["command"], name).command == command, name
    for name in ("api", "embedded"):
        args = _parse(services[name]["command"], name)
        assert args.host == "0.0.0.0"
        assert any(p.endswith(f":{args.port}") for p in services[name]["ports"]), name


def test_compose_environment_names_real_settings_with_valid_values() -> None:
    checked = 0
    for path in (COMPOSE, GPU_COMPOSE):
        for name, service in _compose(path)["services"].items():
            for key, value in service.get("environment", {}).items():
                _check_setting(key, value, f"{path.name}: {name}")
                checked += 1
    assert checked


def test_queue_services_reach_the_healthy_redis_service() -> None:
    services = _compose()["services"]
    for name in ("api", "worker"):
        url = urlsplit(services[name]["environment"]["EBM_REDIS_URL"])
        assert url.scheme == "redis"
        assert url.hostname in services, f"{name}: {url.hostname} is not a compose service"
        assert services[url.hostname]["image"].startswith("redis:")
        assert url.port == 6379
        assert services[name]["depends_on"][url.hostname]["condition"] == "service_healthy"


def test_redis_persists_every_write_and_reports_health() -> None:
    compose = _compose()
    redis = compose["services"]["redis"]
    assert redis["image"] == "redis:7"
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync always" in command
    volume, _, target = next(v for v in redis["volumes"] if v.endswith(":/data")).partition(":")
    assert volume in compose["volumes"]
    assert target == "/data"
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_build_contexts_and_arguments_exist() -> None:
    compose = _compose()
    built = [s for s in compose["services"].values() if "build" in s]
    assert len(built) >= 3
    for service in built:
        # Paths resolve from the first compose file's folder, also in the GPU override.
        assert (REPO / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    declared = set(_assignments("ARG"))
    gpu_args = _compose(GPU_COMPOSE)["services"]["worker"]["build"]["args"]
    assert set(gpu_args) <= declared


def test_embedded_service_runs_alone_beside_the_queue_stack() -> None:
    services = _compose()["services"]
    embedded = services["embedded"]
    assert embedded["profiles"] == ["embedded"]
    assert "EBM_REDIS_URL" not in embedded["environment"]
    assert "depends_on" not in embedded
    host_ports = [p.rsplit(":", 1)[0] for s in services.values() for p in s.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), host_ports


def test_http_services_health_check_readiness_on_their_port() -> None:
    services = _compose()["services"]
    for name in ("api", "embedded"):
        port = _parse(services[name]["command"], name).port
        assert f"127.0.0.1:{port}/readyz" in " ".join(services[name]["healthcheck"]["test"])
    # A worker serves no HTTP, so the image's check is off there.
    assert services["worker"]["healthcheck"] == {"disable": True}


def test_workers_scale_and_have_time_to_finish_a_batch() -> None:
    worker = _compose()["services"]["worker"]
    assert "ports" not in worker
    assert "container_name" not in worker
    grace = _seconds(worker["stop_grace_period"])
    assert grace >= _request_timeout_s(worker["environment"])


def test_gpu_override_reserves_a_gpu_and_builds_a_cuda_image() -> None:
    base = _compose()["services"]
    override = _compose(GPU_COMPOSE)["services"]
    assert set(override) == {"worker"}
    worker = _merge(base["worker"], override["worker"])
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert int(device["count"]) >= 1
    assert worker["image"] != base["api"]["image"], "the GPU build would replace the API's image"
    assert worker["environment"]["EBM_DEVICE"].startswith("cuda")
    args = worker["build"]["args"]
    assert args["BASE_IMAGE"].startswith("nvidia/cuda:")
    assert args["ONNXRUNTIME"].startswith("onnxruntime-gpu")
    assert _parse(worker["command"], "worker").command == "worker"


def test_env_example_lists_real_settings_with_valid_values() -> None:
    seen = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"(#\s*)?(EBM_\w+)=(.*)", line.strip())
        if match is None:
            assert not line.strip() or line.startswith("#"), line
            continue
        commented, name, value = match.groups()
        assert name not in seen, name
        seen.add(name)
        if commented and not value:
            assert name in SETTINGS, name
        else:
            _check_setting(name, value, "env.example")
    assert {"EBM_REDIS_URL", "EBM_DEVICE", "EBM_MODELS_DIR"} <= seen
