"""Batch embedding on Ray Data (`serve.engine: ray`): the serving index's missing vectors computed
by a pool of actors, one model each, reading their images in parallel; the driver keeps the
cache, the index and every output file exactly as the local engine writes them.

`serve.ray.address: null` starts a local Ray for the run (nothing to start by hand); an address
(`ray://head:10001` or `auto`) uses a cluster, whose workers must see the same image paths
(shared storage) and have this package installed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class EmbedImages:
    """One actor: loads the scenario's query encoder once, then embeds each batch of image paths."""

    def __init__(self, kind: str, model_dir: str, threads: int | None):
        from catalog_search.serving.encoders import load_encoder

        self.encoder = load_encoder(kind, Path(model_dir), threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from PIL import Image

        images = []
        for path in batch["path"]:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        return {"row": batch["row"], "vector": self.encoder.encode_image(images)}


def ray_encoder(kind: str, model_dir: Path, batch_size: int, actors: int, address: str | None,
                threads_per_actor: int | None = 1):
    """A function image paths -> vectors (row order kept) that runs on Ray Data."""
    def encode(paths: list[str]) -> np.ndarray:
        import ray

        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     **({"num_cpus": actors} if address is None else {}))
        ray.data.DataContext.get_current().enable_progress_bars = False
        dataset = ray.data.from_items([{"row": i, "path": p} for i, p in enumerate(paths)],
                                      override_num_blocks=max(1, min(len(paths) // batch_size, 4 * actors)))
        out = dataset.map_batches(EmbedImages, fn_constructor_args=(kind, str(model_dir), threads_per_actor),
                                  batch_size=batch_size, concurrency=actors, num_cpus=1, batch_format="numpy")
        rows, vectors = [], []
        for batch in out.iter_batches(batch_format="numpy", batch_size=None):
            rows.append(batch["row"])
            vectors.append(np.stack(batch["vector"]) if batch["vector"].dtype == object else batch["vector"])
        order = np.argsort(np.concatenate(rows))
        return np.concatenate(vectors)[order].astype(np.float32)
    return encode
