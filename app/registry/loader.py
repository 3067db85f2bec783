"""Discover, verify and load every model version under the models directory.

``models/<name>/<version>/manifest.json`` per version. Each version is loaded on its own: a
bad hash, a backend that fails to load, or a parity probe that disagrees marks that version
unavailable (with the reason, in /v1/models and the log) while every other version serves.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from app.config import BackendChoice, Settings
from app.errors import (
    BackendError,
    EBMError,
    ManifestError,
    ModelNotFound,
    ModelUnavailable,
    VersionNotFound,
    shown,
)
from app.registry.backends.base import EnergyBackend
from app.registry.cost import seconds_per_row
from app.registry.hashing import sha256_of
from app.registry.manifest import (
    MANIFEST_FILE,
    NAME_PATTERN,
    VERSION_PATTERN,
    Artifact,
    Manifest,
    read_manifest,
)
from app.registry.parity import check_agreement, check_probe, rows_independent

log = logging.getLogger("ebm.registry")


@dataclass
class LoadedModel:
    manifest: Manifest
    directory: Path
    backend: EnergyBackend
    parity: dict[str, dict[str, float]] = field(default_factory=dict)
    # A row's outputs do not depend on the batch around it: searches may coalesce seeded
    # requests and still replay them bit for bit (see parity.rows_independent).
    rows_independent: bool = False
    # Seconds per row of an energy-and-gradient call, measured at load (admission).
    row_seconds: float | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version


@dataclass(frozen=True)
class Unavailable:
    name: str
    version: int | None
    reason: str


class _Versioned(Protocol):
    @property
    def version(self) -> int: ...


M = TypeVar("M", bound=_Versioned)


@dataclass
class Registry(Generic[M]):
    """Every version of every model, by name: loaded models (``Registry[LoadedModel]``, where
    compute happens) or their manifests alone (``Catalog``, all a queue-mode API needs)."""

    models: dict[str, dict[int, M]] = field(default_factory=dict)
    unavailable: list[Unavailable] = field(default_factory=list)

    def names(self) -> list[str]:
        return sorted(set(self.models) | {u.name for u in self.unavailable})

    def versions(self, name: str) -> dict[int, M]:
        return self.models.get(name, {})

    def problems(self, name: str) -> list[Unavailable]:
        return [u for u in self.unavailable if u.name == name]

    def get(self, name: str, version: int | None = None) -> M:
        """The requested version, or the newest available one when ``version`` is None."""
        versions = self.versions(name)
        problems = self.problems(name)
        if not versions and not problems:
            known = ", ".join(self.names()) or "none"
            raise ModelNotFound(f"model '{shown(name)}' does not exist; models: {known}")
        if version is None:
            if not versions:
                raise ModelUnavailable(f"model '{name}' is unavailable: {problems[0].reason}")
            return versions[max(versions)]
        if version in versions:
            return versions[version]
        for problem in problems:
            if problem.version == version:
                raise ModelUnavailable(
                    f"model '{name}' version {version} is unavailable: {problem.reason}"
                )
        available = ", ".join(str(v) for v in sorted(versions)) or "none"
        raise VersionNotFound(
            f"model '{name}' has no version {version}; available versions: {available}"
        )


Catalog = Registry[Manifest]


def catalog_of(registry: Registry[LoadedModel]) -> Catalog:
    """The manifests of a loaded registry (embedded mode: the API and the engine agree)."""
    models = {
        name: {v: model.manifest for v, model in versions.items()}
        for name, versions in registry.models.items()
    }
    return Catalog(models=models, unavailable=list(registry.unavailable))


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _verify_hashes(manifest: Manifest, directory: Path) -> None:
    for slot, artifact in manifest.artifacts:
        if not isinstance(artifact, Artifact):
            continue
        path = directory / artifact.file
        if not path.is_file():
            raise ManifestError(f"artifact {slot} file {artifact.file} is missing")
        actual = sha256_of(path)
        if actual != artifact.sha256:
            raise ManifestError(
                f"artifact {artifact.file} has sha256 {actual[:12]}..., "
                f"manifest says {artifact.sha256[:12]}..."
            )


def _onnx_backend(manifest: Manifest, directory: Path, settings: Settings) -> EnergyBackend:
    from app.registry.backends.onnx import OnnxBackend

    artifacts = manifest.artifacts
    assert artifacts.energy_onnx is not None
    score = directory / artifacts.score_onnx.file if artifacts.score_onnx else None
    decoder = directory / artifacts.decoder_onnx.file if artifacts.decoder_onnx else None
    return OnnxBackend(
        directory / artifacts.energy_onnx.file,
        score,
        decoder,
        settings.intra_op_threads,
        settings.device,
    )


def _torch_backend(manifest: Manifest, directory: Path, settings: Settings) -> EnergyBackend:
    from app.registry.backends.torch import TorchBackend

    artifacts = manifest.artifacts
    assert artifacts.energy_pt2 is not None
    return TorchBackend(
        directory / artifacts.energy_pt2.file,
        directory / artifacts.decoder_pt2.file if artifacts.decoder_pt2 else None,
        manifest.input_names,
        manifest.grad_names,
        settings.intra_op_threads,
        settings.device,
    )


BackendFactory = Callable[[Manifest, Path, Settings], EnergyBackend]


def _usable_backends(manifest: Manifest) -> dict[str, BackendFactory]:
    """Backends whose library is installed and whose artifact the model ships, best first."""
    usable: dict[str, BackendFactory] = {}
    if manifest.artifacts.energy_onnx is not None and has_module("onnxruntime"):
        usable["onnx"] = _onnx_backend
    if manifest.artifacts.energy_pt2 is not None and has_module("torch"):
        usable["torch"] = _torch_backend
    return usable


def read_version_manifest(directory: Path, expected_dir: Path | None = None) -> Manifest:
    """The manifest of one version directory, checked against where it lives."""
    manifest = read_manifest(directory / MANIFEST_FILE)
    home = expected_dir or directory
    name, version = home.parent.name, home.name
    if manifest.name != name or str(manifest.version) != version:
        raise ManifestError(
            f"manifest says {manifest.name}/{manifest.version} but lives in {name}/{version}"
        )
    return manifest


def load_version(
    directory: Path, settings: Settings, expected_dir: Path | None = None
) -> LoadedModel:
    """Load one version directory; raises EBMError with the reason when it cannot serve.

    ``expected_dir`` is where the version will live when it is checked in a staging folder.
    """
    manifest = read_version_manifest(directory, expected_dir)
    _verify_hashes(manifest, directory)
    usable = _usable_backends(manifest)
    wanted = settings.backend.value
    if settings.backend == BackendChoice.AUTO:
        if not usable:
            raise BackendError("no backend can run it: install onnxruntime or torch")
        wanted = next(iter(usable))
    if wanted not in usable:
        raise BackendError(
            f"EBM_BACKEND={wanted} cannot run it: it needs the {wanted} artifact and library; "
            f"usable here: {', '.join(usable) or 'none'}"
        )
    backend = usable[wanted](manifest, directory, settings)
    model = LoadedModel(manifest=manifest, directory=directory, backend=backend)
    if manifest.probe is not None:
        model.parity[f"{wanted}_vs_probe"] = check_probe(backend, manifest, settings.parity_rtol)
        model.rows_independent = rows_independent(backend, manifest)
        model.row_seconds = seconds_per_row(backend, manifest)
    # Asked to cross-check (always when publishing): the other backend, when it can run
    # here, must agree too. Off by default: it would import torch into a process serving
    # on onnxruntime, for ~400 MB the process then never gives back.
    for other_name, factory in usable.items():
        if other_name == wanted or not settings.cross_check:
            continue
        other = factory(manifest, directory, settings)
        model.parity[f"{wanted}_vs_{other_name}"] = check_agreement(
            backend, other, manifest, settings.parity_rtol
        )
    return model


def _version_dirs(settings: Settings, only: frozenset[str] | None) -> Iterator[Path | str]:
    """Every version directory to load, in order; a model name (str) for a model whose
    recipe exists but was never trained."""
    root = settings.models_dir
    if not root.is_dir():
        log.warning("models directory %s does not exist; serving no models", root)
        return
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if not re.match(NAME_PATTERN, model_dir.name):
            if not model_dir.name.startswith((".", "__")):  # hidden and cache folders: quiet
                log.warning(
                    "skipping folder %s: not a model name (%s)", shown(model_dir.name), NAME_PATTERN
                )
            continue
        if only is not None and model_dir.name not in only:
            continue
        version_dirs = []
        for folder in model_dir.iterdir():
            if not folder.is_dir():
                continue
            if re.fullmatch(VERSION_PATTERN, folder.name):
                version_dirs.append(folder)
            elif not folder.name.startswith((".", "__")):
                log.warning(
                    "skipping folder %s/%s: not a version number (%s)",
                    model_dir.name,
                    shown(folder.name),
                    VERSION_PATTERN,
                )
        version_dirs.sort(key=lambda p: int(p.name))
        if not version_dirs and (model_dir / "train.py").is_file():
            yield model_dir.name
        yield from version_dirs


def _collect(
    settings: Settings, load: Callable[[Path], M], only: frozenset[str] | None
) -> Registry[M]:
    registry: Registry[M] = Registry()
    for item in _version_dirs(settings, only):
        if isinstance(item, str):
            reason = f"not trained yet: run `ebm train {item}`"
            registry.unavailable.append(Unavailable(item, None, reason))
            log.warning("model %s unavailable: %s", item, reason)
            continue
        name, version = item.parent.name, int(item.name)
        try:
            entry = load(item)
        except EBMError as exc:
            registry.unavailable.append(Unavailable(name, version, exc.message))
            log.error("model %s version %d unavailable: %s", name, version, exc.message)
            continue
        except Exception as exc:  # a runtime refusing an artifact: only this version fails
            reason = f"failed to load: {type(exc).__name__}: {shown(str(exc).strip(), 300)}"
            registry.unavailable.append(Unavailable(name, version, reason))
            log.exception("model %s version %d unavailable", name, version)
            continue
        registry.models.setdefault(name, {})[version] = entry
    return registry


def load_registry(settings: Settings, only: frozenset[str] | None = None) -> Registry[LoadedModel]:
    """Load (hash check, backend, parity probe) every version, or those of ``only``."""

    def load(directory: Path) -> LoadedModel:
        model = load_version(directory, settings)
        log.info(
            "model %s version %d loaded on %s; parity %s; %s us per row-step",
            model.name,
            model.version,
            model.backend.name,
            {k: max(v.values()) for k, v in model.parity.items()},
            f"{model.row_seconds * 1e6:.2f}" if model.row_seconds is not None else "unmeasured",
        )
        return model

    return _collect(settings, load, only)


def load_catalog(settings: Settings) -> Catalog:
    """Every version's manifest, nothing loaded: what the API needs in queue mode (it
    validates requests and enqueues; workers load the artifacts)."""
    return _collect(settings, read_version_manifest, None)
