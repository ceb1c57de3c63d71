"""params.yaml access. The whole file is validated by config.py's typed models when a stage or
command starts; `check_choice` guards library functions called with a dict of their own.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from catalog_search.errors import UserError


class ParamsError(UserError, ValueError):
    """A params.yaml value is invalid; the message names the key and the valid values."""


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """The file as YAML, unchecked (config.load_config validates it)."""
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def check_choice(key: str, value: Any, valid: Iterable[str]) -> None:
    valid = list(valid)
    if value not in valid:
        raise ParamsError(f"params.yaml: {key}={value!r} is not valid; choose one of {valid}")


def deep_merge(base: dict, override: dict) -> dict:
    """Return `base` with `override` applied recursively (override wins), both left intact."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
