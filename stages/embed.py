"""embed@<scenario>: test-split image, caption, title and attribute-query embeddings + FAISS index -> data/embeddings/<scenario>/.

Loads the merged checkpoint with plain open_clip (`local-dir:`), as a user of the model would.
"""
import sys
from pathlib import Path

from catalog_search.config import start

if __name__ == "__main__":
    name = sys.argv[1]
    params = start().model_dump()

    import numpy as np
    import open_clip
    import pandas as pd
    import torch

    from catalog_search.catalog import ATTRIBUTES
    from catalog_search.core.data import load_split
    from catalog_search.core.device import autocast, pick_device
    from catalog_search.evaluation import attribute_queries
    from catalog_search.index import file_fingerprint, product_title, save_embeddings, save_queries
    from catalog_search.models.encode import encode
    from catalog_search.training.data import SplitEncoder

    p = params["embed"]
    merged = f"local-dir:models/{name}/merged"
    device = pick_device()
    model, _, preprocess = open_clip.create_model_and_transforms(merged, device=device)
    model.eval()
    samples = load_split(params["shard"]["read_from"], p["split"])
    enc = SplitEncoder(model, preprocess, open_clip.get_tokenizer(merged), samples, set(), device, p["batch_size"],
                       workers=p["workers"])
    with torch.no_grad(), autocast(device):
        images, texts = enc.embed_all("image"), enc.embed_all("text")
        # the evaluation protocols' own queries: each product's title (mostly one of the captions:
        # those are looked up, not encoded again), each attribute value as a text
        titles = [product_title(s) for s in samples]
        queries, _ = attribute_queries(samples, ATTRIBUTES)
        position = {t: i for i, t in enumerate(enc.texts)}
        other = sorted({t for t in titles if t not in position})
        tokenize = open_clip.get_tokenizer(merged)
        other_vectors, query_vectors = (
            encode(model, "text", texts_, lambda b: tokenize(list(b)).to(device), p["batch_size"], device).numpy()
            for texts_ in (other, [value for _, value in queries]))
        vectors = {**{t: texts[i] for t, i in position.items()}, **dict(zip(other, other_vectors))}
        title_vectors = np.stack([vectors[t] for t in titles])
    items = pd.DataFrame([{k: s.get(k) for k in ["product_id", "title", "captions", *ATTRIBUTES]} for s in samples])
    fingerprint = file_fingerprint(Path(f"models/{name}/merged/open_clip_model.safetensors"))
    out = Path("data/embeddings") / name
    save_embeddings(out, images, texts, items, pd.DataFrame({"text": enc.texts}),
                    {"scenario": name, "split": p["split"], "model_fingerprint": fingerprint}, p["index"])
    save_queries(out, titles, title_vectors, queries, query_vectors)
    print(f"embed@{name}: {len(images)} images, {len(texts)} texts, dim {images.shape[1]}")
