"""Where a benchmark's results go: ``<name>.json`` for machines, ``<name>.md`` for the README."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save(out: Path, name: str, report: dict[str, Any], table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(table + "\n")
    print(table)
