"""The lock: constraints.txt pins every dependency (all extras) to one version that its
requirement admits, torch to exactly 2.13.0, and every install path uses it."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.servers import REPO


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, version = line.split("==")
        assert canonicalize_name(name) not in pins, f"{name} pinned twice"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        listed += extra
    return [Requirement(r) for r in listed]


def test_every_dependency_is_pinned_to_a_version_it_admits() -> None:
    pins = _pins()
    for requirement in _requirements():
        pinned = pins.get(canonicalize_name(requirement.name))
        assert pinned is not None, f"{requirement.name} is not in constraints.txt"
        assert requirement.specifier.contains(pinned, prereleases=True), (requirement, pinned)


def test_torch_is_pinned_exactly() -> None:
    assert str(_pins()["torch"]) == "2.13.0"


def test_every_install_uses_the_constraints() -> None:
    makefile = (REPO / "Makefile").read_text()
    installs = re.findall(r"pip install -q (.*-e .*)", makefile)
    assert len(installs) == 3  # serve, dev, bench
    assert all(line.startswith("-c constraints.txt") for line in installs)
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY pyproject.toml README.md constraints.txt ./" in dockerfile
    assert "pip install -c constraints.txt ." in dockerfile
