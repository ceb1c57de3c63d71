"""embed@<scenario>: test-split image and text embeddings + FAISS index -> data/embeddings/<scenario>/.

Loads the merged checkpoint with plain open_clip (`local-dir:`), as a user of the model would.
"""
import sys
from pathlib import Path

import open_clip
import pandas as pd
import torch

from catalog_search.catalog import ATTRIBUTES
from catalog_search.index import file_fingerprint, save_embeddings
from catalog_search.models.encode import autocast, pick_device
from catalog_search.params import load_params
from catalog_search.training.data import SplitEncoder, load_split

if __name__ == "__main__":
    name = sys.argv[1]
    p = load_params()["embed"]
    merged = f"local-dir:models/{name}/merged"
    device = pick_device()
    model, _, preprocess = open_clip.create_model_and_transforms(merged, device=device)
    model.eval()
    samples = load_split(Path("data/shards"), p["split"])
    enc = SplitEncoder(model, preprocess, open_clip.get_tokenizer(merged), samples, set(), device, p["batch_size"],
                       workers=p["workers"])
    with torch.no_grad(), autocast(device):
        images, texts = enc.embed_all("image"), enc.embed_all("text")
    items = pd.DataFrame([{k: s.get(k) for k in ["product_id", "title", "captions", *ATTRIBUTES]} for s in samples])
    fingerprint = file_fingerprint(Path(f"models/{name}/merged/open_clip_model.safetensors"))
    save_embeddings(Path("data/embeddings") / name, images, texts, items, pd.DataFrame({"text": enc.texts}),
                    {"scenario": name, "split": p["split"], "model_fingerprint": fingerprint}, p["index"])
    print(f"embed@{name}: {len(images)} images, {len(texts)} texts, dim {images.shape[1]}")
