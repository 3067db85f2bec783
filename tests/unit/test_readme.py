"""The README is the user's manual: its configuration table must match the settings."""

from __future__ import annotations

import re

from app.config import Settings
from tests.servers import REPO


def test_every_setting_is_documented_and_nothing_else() -> None:
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"^\| `(EBM_[A-Z_]+)` \|", readme, flags=re.M))
    settings = {f"EBM_{name.upper()}" for name in Settings.model_fields}
    assert documented == settings
