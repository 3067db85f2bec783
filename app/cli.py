"""The ``ebm`` command: serve, worker, train, loadtest."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from app.config import Settings, get_settings


def _serve(args: argparse.Namespace) -> int:
    from app.main import create_app
    from app.server import serve

    settings = get_settings()
    serve(
        create_app(settings),
        settings,
        host=args.host or settings.host,
        port=args.port if args.port is not None else settings.port,
        access_log=args.access_log,
    )
    return 0


def recipe_names(models_dir: Path) -> list[str]:
    return sorted(p.parent.name for p in models_dir.glob("*/train.py"))


def recipe_module(models_dir: Path, name: str) -> ModuleType:
    """``models/<name>/train.py`` as a module (repository code, never loaded to serve)."""
    path = models_dir / name / "train.py"
    if not path.is_file():
        known = ", ".join(recipe_names(models_dir)) or "none"
        raise SystemExit(f"no recipe {path}; recipes: {known}")
    spec = importlib.util.spec_from_file_location(f"ebm_recipe_{name.replace('-', '_')}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_recipe(models_dir: Path, name: str) -> Callable[..., dict[str, Any]]:
    """The ``train`` function of ``models/<name>/train.py``."""
    train: Callable[..., dict[str, Any]] = recipe_module(models_dir, name).train
    return train


def _train(args: argparse.Namespace) -> int:
    models_dir = Path(args.models_dir or get_settings().models_dir)
    names = recipe_names(models_dir) if args.all else [args.name]
    if not names or names == [None]:
        print("name a model or pass --all", file=sys.stderr)
        return 2
    for name in names:
        started = time.monotonic()
        metrics = load_recipe(models_dir, name)(models_dir, smoke=args.smoke)
        print(f"{name}: trained in {time.monotonic() - started:.1f} s; metrics {metrics}")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from app.worker import run_worker

    overrides: dict[str, Any] = {}
    if args.redis_url:
        overrides["redis_url"] = args.redis_url
    if args.device:
        overrides["device"] = args.device
    if args.backend:
        overrides["backend"] = args.backend
    if args.models:
        overrides["worker_models"] = args.models
    try:  # flags win over the environment, and are validated like it
        settings = Settings(**overrides)
    except ValueError as exc:
        print(f"ebm worker: {exc}", file=sys.stderr)
        return 2
    if not settings.redis_url:
        print("ebm worker needs Redis: pass --redis-url or set EBM_REDIS_URL", file=sys.stderr)
        return 2
    return run_worker(settings)


def _loadtest(args: argparse.Namespace) -> int:
    from app.client.loadtest import run

    return run(args)


def _loadtest_arguments(parser: argparse.ArgumentParser) -> None:
    from app.client.loadtest import add_arguments

    add_arguments(parser)


class _Subparser(argparse.ArgumentParser):
    """A subcommand's parser that can add its options only when that subcommand is used.

    `ebm loadtest`'s options live in app.client.loadtest, whose import (the SDK, httpx,
    numpy: ~0.3 s) `ebm serve` and `ebm worker` should neither wait for nor carry.
    """

    def __init__(
        self,
        *args: Any,
        lazy_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._lazy_arguments = lazy_arguments

    def _add_lazy_arguments(self) -> None:
        add, self._lazy_arguments = self._lazy_arguments, None
        if add is not None:
            add(self)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._add_lazy_arguments()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._add_lazy_arguments()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ebm", description="Serve energy-based models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Subparser)

    serve = sub.add_parser("serve", help="serve the model repository over HTTP")
    serve.add_argument("--host", default=None, help="bind address (default EBM_HOST)")
    serve.add_argument("--port", type=int, default=None, help="port (default EBM_PORT)")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(func=_serve)

    worker = sub.add_parser(
        "worker", help="pull jobs from the Redis queue, compute them, reply (queue mode)"
    )
    worker.add_argument("--redis-url", default=None, help="default EBM_REDIS_URL")
    worker.add_argument(
        "--device",
        default=None,
        help="auto (CUDA when a GPU is visible), cpu, cuda or cuda:N (default EBM_DEVICE)",
    )
    worker.add_argument(
        "--backend", choices=["onnx", "torch", "auto"], default=None, help="default EBM_BACKEND"
    )
    worker.add_argument(
        "--models", default=None, help="comma-separated models to serve (default: all)"
    )
    worker.set_defaults(func=_worker)

    train = sub.add_parser("train", help="train a model with its recipe and publish it")
    train.add_argument("name", nargs="?", help="model name (folder under the models dir)")
    train.add_argument("--all", action="store_true", help="retrain every recipe")
    train.add_argument("--models-dir", default=None, help="default EBM_MODELS_DIR")
    train.add_argument("--smoke", action="store_true", help="a few steps only (tests)")
    train.set_defaults(func=_train)

    loadtest = sub.add_parser(
        "loadtest",
        help="load-test a model endpoint: throughput, latency percentiles, errors",
        lazy_arguments=_loadtest_arguments,
    )
    loadtest.set_defaults(func=_loadtest)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
