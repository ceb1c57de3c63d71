"""Model registry (open_clip + offline default), scenarios, LoRA targets.

Names are listed from config files, without importing open_clip, so params can be checked cheaply.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"


def project_configs() -> list[str]:
    """The project's own model configs (models/configs/<name>.json)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def open_clip_architectures() -> list[str]:
    spec = importlib.util.find_spec("open_clip")
    folder = Path(spec.submodule_search_locations[0]) / "model_configs"
    return sorted(p.stem for p in folder.glob("*.json"))
