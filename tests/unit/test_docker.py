"""No Docker engine here: the Docker files are kept correct by static checks against the
CLI and the settings they name."""

from __future__ import annotations

import json
import re
import shlex

import yaml

from app.cli import build_parser
from app.config import Settings
from tests.servers import REPO

DOCKER = REPO / "docker"
SETTINGS = {f"EBM_{name.upper()}" for name in Settings.model_fields}


def _dockerfile() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text()
    text = re.sub(r"\\\n\s*", " ", text)  # join continuation lines
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_command_parses_with_the_cli() -> None:
    (cmd,) = [rest for keyword, rest in _dockerfile() if keyword == "CMD"]
    argv = json.loads(cmd)
    assert argv[0] == "ebm"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve"
    assert args.port == 8000


def test_dockerfile_env_names_real_settings_and_copies_what_exists() -> None:
    env = " ".join(rest for keyword, rest in _dockerfile() if keyword == "ENV")
    names = {n for n in re.findall(r"(\w+)=", env) if n.startswith("EBM_")}
    assert names
    assert names <= SETTINGS
    for keyword, rest in _dockerfile():
        if keyword == "COPY":
            *sources, _ = shlex.split(rest)
            for source in sources:
                assert (REPO / source).exists(), source


def test_compose_services_match_the_cli_and_settings() -> None:
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        assert (
            REPO / "docker" / service["build"]["context"] / service["build"]["dockerfile"]
        ).is_file()
        args = build_parser().parse_args(service["command"][1:])
        assert service["command"][0] == "ebm"
        assert args.command in {"serve"}, name
        assert set(service["environment"]) <= SETTINGS, name
        for key, value in service["environment"].items():
            Settings.model_validate({key.removeprefix("EBM_").lower(): value})
