"""params.yaml `serve`, typed: validated when a serving stage or `catalog-search serve` starts, so a
typo is one line naming the key and what it accepts, before any model loads."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from catalog_search.models.scenarios import WISE_SUFFIX
from catalog_search.params import ParamsError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IndexParams(_Section):
    backend: Literal["faiss", "qdrant"] = "faiss"
    kind: Literal["flat", "hnsw", "ivf"] = "flat"
    hnsw_m: int = Field(32, ge=4)
    ef_construction: int = Field(200, ge=1)
    ef_search: int = Field(128, ge=1)


class QdrantParams(_Section):
    url: str | None = None  # None: local mode, a folder beside the index
    collection: str | None = None  # None: the scenario's name


class RayParams(_Section):
    address: str | None = None  # None: a local Ray started for the run
    actors: int = Field(2, ge=1)  # one model each
    batch_size: int = Field(64, ge=1)


class ArenaParams(_Section):
    k: int = Field(8, ge=1, le=50)
    votes_per_minute: int = Field(20, ge=1)
    sessions_per_minute: int = Field(10, ge=1)
    round_ttl_minutes: float = Field(60, gt=0)


class ServeParams(_Section):
    scenarios: list[str] = Field(min_length=1)
    batch_size: int = Field(64, ge=1)
    fill_attributes: bool = True
    index: IndexParams = IndexParams()
    qdrant: QdrantParams = QdrantParams()
    engine: Literal["local", "ray"] = "local"
    ray: RayParams = RayParams()
    encoder: Literal["torch", "onnx"] = "torch"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    allowed_hosts: list[str] = []
    max_k: int = Field(100, ge=1, le=10_000)
    max_query_chars: int = Field(200, ge=1)
    max_upload_mb: float = Field(8, gt=0)
    max_image_pixels: int = Field(40_000_000, ge=1)
    read_timeout_seconds: float = Field(10, gt=0)
    arena: ArenaParams = ArenaParams()


def serve_params(params: dict) -> ServeParams:
    """The typed `serve` section; every model it names must be made: a scenario of train.scenarios, or
    <scenario>-wise, the WiSE-FT interpolation of one of wise_ft.scenarios."""
    try:
        cfg = ServeParams.model_validate(params["serve"])
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(part) for part in err["loc"])
        raise ParamsError(f"params.yaml: serve.{key}: {err['msg']} (got {err.get('input')!r})") from None
    servable = [*params["train"]["scenarios"], *(s + WISE_SUFFIX for s in params["wise_ft"]["scenarios"])]
    missing = [s for s in cfg.scenarios if s not in servable]
    if missing:
        raise ParamsError(f"params.yaml: serve.scenarios names {missing}, which neither train.scenarios nor "
                          f"wise_ft.scenarios makes; choose from {servable}")
    return cfg
