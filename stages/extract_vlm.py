"""extract_vlm: attributes as JSON from the VLM for the clean-catalog products that miss one of
vlm.attributes (`vlm.extract: missing`; `all`: every product) -> data/vlm/predictions.jsonl, in the
shape predict_attributes writes (search fills from either)."""
import json
from pathlib import Path

from catalog_search.config import start

CATALOG = Path("data/clean/catalog.parquet")

if __name__ == "__main__":
    p = start().vlm.model_dump()

    from catalog_search import catalog
    from catalog_search.core.device import pick_device
    from catalog_search.io import atomic_path
    from catalog_search.vlm.build import load_vlm
    from catalog_search.vlm.extract import catalog_records, extract_images, needs_extraction
    from catalog_search.vlm.language import cache_dir

    device = pick_device()
    model, template, labels, settings, tokenizer = load_vlm(Path("models/vlm"), cache_dir(p["cache_dir"]))
    rows = catalog.load(CATALOG).to_dict("records")
    if p["extract"] == "missing":
        rows = [rows[i] for i in needs_extraction(rows, list(labels.labels))]
    images = [catalog.resolve_image(CATALOG, r["image_path"]).read_bytes() for r in rows]
    answers, repaired, images_per_s = extract_images(settings, model, template, tokenizer, images, p["extract_batch"],
                                                     device, free=p["decoding"] == "free", quantize=p["quantize"])
    with atomic_path("data/vlm/predictions.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in catalog_records(rows, answers, repaired)))
    print(f"extract_vlm: {len(rows)} products ({p['extract']}), {sum(repaired)} repaired, {images_per_s:.1f} images/s")
