"""Settings files: a mapping read from JSON, or from YAML by the .yaml/.yml suffix."""

from __future__ import annotations

import json
from pathlib import Path


def read_mapping(path: str | Path) -> dict:
    """The file's top-level mapping; ValueError with the reason when it is not valid or not a mapping."""
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of settings")
    return values
