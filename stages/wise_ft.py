"""wise_ft@<scenario>: WiSE-FT's alpha curve -> metrics/wise_ft/<scenario>.json, reports/wise_ft/<scenario>.json,
and the interpolation at `wise_ft.alpha` -> models/<scenario>-wise/ (servable: serve.scenarios: [<scenario>-wise]).

Along alpha (0 = zero-shot, 1 = the tuned scenario), on the test split: in-domain title -> image
and attribute -> product, and retention of what the zero-shot model was made for: the pretraining
task's generic captions ("a navy jersey", written by the captioner from the picture alone) -> image,
which fine-tuning never saw. Each alpha is paired with alpha = 1 on the same queries.
"""
import shutil
import sys
from pathlib import Path

from catalog_search.config import start

if __name__ == "__main__":
    name = sys.argv[1]
    params = start().model_dump()

    import numpy as np
    import open_clip
    import torch
    from safetensors.torch import save_file

    from catalog_search.catalog import ATTRIBUTES
    from catalog_search.evaluation import (attribute_queries, caption_positives, normalise, paired_difference, precision_at,
                                           ranks, title_positives)
    from catalog_search.core.data import load_split
    from catalog_search.core.device import autocast, pick_device
    from catalog_search.index import product_title
    from catalog_search.io import write_json
    from catalog_search.models.captioner import GenericCaptioner
    from catalog_search.models.encode import encode
    from catalog_search.models.wise_ft import WEIGHTS, interpolate, load_pair
    from catalog_search.shards import decode_image
    from catalog_search.training.data import SplitEncoder
    from catalog_search.training.pretrain import caption_texts

    p, e = params["wise_ft"], params["embed"]
    tuned_dir, device = Path("models") / name / "merged", pick_device()
    zero_shot, tuned = load_pair(Path("models/zero_shot/merged"), tuned_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tuned_dir}", device=device)
    model.eval()  # BatchNorm on its running statistics, as embed@ loads it
    tokenize = open_clip.get_tokenizer(f"local-dir:{tuned_dir}")
    samples = load_split(params["shard"]["read_from"], e["split"])
    enc = SplitEncoder(model, preprocess, tokenize, samples, set(), device, e["batch_size"], workers=e["workers"])
    titles = [product_title(s) for s in samples]
    asked = [a for a in ATTRIBUTES if a in params["evaluate"]["attributes"]]
    queries, relevant = attribute_queries(samples, asked)
    captions = GenericCaptioner(params["pretrain"]["caption_size"], device=device)([decode_image(s["image"]) for s in samples])
    generic, _, generic_to_image = caption_positives(
        [caption_texts(c.label, c.color, params["pretrain"]["templates"]) for c in captions])

    def text(items: list[str]) -> np.ndarray:
        return normalise(encode(model, "text", items, lambda b: tokenize(list(b)).to(device), e["batch_size"], device).numpy())

    curve, per_alpha = [], {}
    for alpha in p["alphas"]:
        model.load_state_dict(interpolate(zero_shot, tuned, alpha))
        with torch.no_grad(), autocast(device):  # as embed@ does: alpha 1 reproduces evaluate@'s numbers
            images = normalise(enc.embed_all("image"))
        scores = {"title_to_image": ranks(text(titles), images, title_positives(titles)),
                  "generic_to_image": ranks(text(generic), images, generic_to_image)}
        if queries:
            scores.update({f"attribute_{k}": v for k, v in precision_at(text([v for _, v in queries]), images, relevant).items()})
        per_query = {"title_to_image_R@1": scores["title_to_image"] <= 1, "title_to_image_R@10": scores["title_to_image"] <= 10,
                     **{k: scores[k] for k in ("attribute_P@1", "attribute_P@10") if k in scores},
                     "generic_to_image_R@10": scores["generic_to_image"] <= 10}
        per_alpha[alpha] = per_query
        curve.append({"alpha": alpha, **{k: round(float(np.mean(v)), 4) for k, v in per_query.items()}})
        print(f"wise_ft@{name} alpha {alpha}: " + ", ".join(f"{k} {v}" for k, v in curve[-1].items() if k != "alpha"))

    n, seed = params["evaluate"]["bootstrap"], params["evaluate"]["seed"]
    tuned_scores = per_alpha.get(1.0)
    vs_tuned = {str(a): {k: paired_difference(v, tuned_scores[k], n, seed) for k, v in scores.items()}
                for a, scores in per_alpha.items() if tuned_scores is not None and a != 1.0}
    write_json(f"metrics/wise_ft/{name}.json", {"served_alpha": p["alpha"], "n_test": len(samples),
                                                "generic_captions": len(generic), "curve": curve, "vs_tuned": vs_tuned})
    write_json(f"reports/wise_ft/{name}.json", curve)

    out = Path("models") / f"{name}-wise"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(tuned_dir, out / "merged")  # config and tokenizer files: the same architecture
    save_file({k: v.contiguous() for k, v in interpolate(zero_shot, tuned, p["alpha"]).items()}, out / "merged" / WEIGHTS)
    write_json(out / "model_card.json", {"scenario": f"{name}-wise", "wise_ft": {"alpha": p["alpha"], "zero_shot":
                                         "models/zero_shot/merged", "tuned": str(tuned_dir)}})
    print(f"wise_ft@{name}: models/{name}-wise at alpha {p['alpha']}")
