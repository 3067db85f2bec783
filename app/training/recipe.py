"""The command line every recipe shares: `python models/<name>/train.py [--smoke] ...`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


def recipe_main(train: Callable[..., dict[str, Any]], recipe_file: str, doc: str | None) -> None:
    """Parse ``--models-dir`` (default: the repository's models/), ``--smoke``, ``--seed``."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    parser.add_argument("--models-dir", type=Path, default=Path(recipe_file).resolve().parents[1])
    parser.add_argument("--smoke", action="store_true", help="a few steps, to test the export")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train(args.models_dir, smoke=args.smoke, seed=args.seed)
