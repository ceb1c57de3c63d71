"""pretrain: the aligned start -> models/pretrained/ (zero_shot, and every scenario's starting point).

model.name's towers from `pretrain.base`, projections trained contrastively on train-split photos
with generic captions (catalog_search.training.pretrain). When model.pretrained is something else
(an open_clip tag, your own checkpoint), nothing is trained and the card says so.
"""
from pathlib import Path

from catalog_search.config import start

OUT = Path("models/pretrained")
CHECKPOINT = OUT / "merged" / "open_clip_model.safetensors"

if __name__ == "__main__":
    params = start().model_dump()

    import pandas as pd
    import torch

    from catalog_search.core.adapters import trainable_summary
    from catalog_search.core.data import load_split
    from catalog_search.core.device import pick_device
    from catalog_search.io import write_json
    from catalog_search.models.captioner import GenericCaptioner
    from catalog_search.models.export import save_model
    from catalog_search.models.lora import apply_scenario
    from catalog_search.models.registry import create_model
    from catalog_search.models.scenarios import get_scenario
    from catalog_search.params import deep_merge
    from catalog_search.shards import decode_image
    from catalog_search.training.pretrain import build_corpus
    from catalog_search.training.trainer import train

    p, m = params["pretrain"], params["model"]
    OUT.mkdir(parents=True, exist_ok=True)
    if Path(m["pretrained"]) != CHECKPOINT:
        note = f"model.pretrained={m['pretrained']!r} is not {CHECKPOINT}: no aligned start is built"
        write_json(OUT / "model_card.json", {"used": False, "note": note})
        write_json("metrics/pretrain.json", {"used": False})
        print(f"pretrain: {note}")
        raise SystemExit(0)
    samples = load_split(Path("data/shards"), "train")  # the train split only: never a val or test photo
    device = pick_device()
    captions = GenericCaptioner(p["caption_size"], device=device)([decode_image(s["image"]) for s in samples])
    corpus, held_out = build_corpus(samples, captions, p["templates"], p["val_fraction"], p["seed"])
    cfg = deep_merge(params["train"]["defaults"], p["train"])
    torch.manual_seed(cfg["seed"])
    bundle = create_model(m["name"], p["base"], image_size=m["image_size"], loss=cfg["loss"], device=device)
    scenario = get_scenario("linear_probe")  # towers frozen: only the projections (and logit scale) learn
    apply_scenario(bundle.model, scenario, cfg["lora"])
    sizes = trainable_summary(bundle.model)
    result = train(bundle, scenario, corpus, held_out, cfg, device)
    labels = pd.Series([c.label for c in captions])
    card = {"used": True, "base": p["base"], "model": m["name"], "images": len(samples), "split": "train",
            "captioner": {"labels": "ImageNet-1k lemmas (packaged EfficientNet-Lite0)", "colors": "basic colour terms",
                          "image_size": p["caption_size"]}, "templates": p["templates"], "train": cfg, **sizes,
            **{k: v for k, v in result.items() if k != "val"}, "val_metrics": result["val"]}
    save_model(OUT, bundle, None, card)
    pd.DataFrame([{"key": r["key"], "product_id": r["product_id"], "captions": r["captions"]}
                  for r in corpus + held_out]).to_parquet(OUT / "corpus.parquet", index=False)
    write_json("metrics/pretrain.json", {
        "used": True, "images": len(samples), "distinct_labels": int(labels.nunique()),
        "distinct_captions": len({c for r in corpus for c in r["captions"]}), **sizes,
        **{k: result[k] for k in ("train_seconds", "steps", "best_step")},
        "held_out_text_to_image_R@10": result["val"]["text_to_image_R@10"]})
    print(f"pretrain: {len(samples)} train-split photos, {labels.nunique()} distinct labels, "
          f"{result['steps']} steps, {result['train_seconds']} s; held-out t2i R@10 {result['val']['text_to_image_R@10']}")
