"""predict_attributes: every clean-catalog product's attributes with confidences ->
data/attributes/predictions.jsonl (gaps filled, marked `predicted`), counts -> metrics/predict_attributes.json."""
import json
from pathlib import Path

from catalog_search.config import start

CATALOG = Path("data/clean/catalog.parquet")


class ImageFiles(list):
    """Image bytes read when a batch asks for them: the catalog's pictures are never all in memory."""

    def __getitem__(self, i):
        return Path(super().__getitem__(i)).read_bytes()

if __name__ == "__main__":
    p = start().attributes.model_dump()

    from catalog_search import catalog
    from catalog_search.attributes.evaluate import catalog_predictions, prediction_summary
    from catalog_search.attributes.model import load_classifier
    from catalog_search.attributes.train import predict_probs
    from catalog_search.core.device import pick_device
    from catalog_search.io import atomic_path, write_json

    device = pick_device()
    model, labels, _ = load_classifier(Path("models/attributes"))
    rows = catalog.load(CATALOG).to_dict("records")
    images = ImageFiles([catalog.resolve_image(CATALOG, r["image_path"]) for r in rows])
    probs = predict_probs(model.to(device), images, p["batch_size"], device, p["workers"])
    records = catalog_predictions(labels, rows, probs, p["min_confidence"])
    with atomic_path("data/attributes/predictions.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = prediction_summary(records, rows, p["min_confidence"])
    write_json("metrics/predict_attributes.json", summary)
    print(f"predict_attributes: {len(records)} products; " + ", ".join(
        f"{a}: {s['filled']} filled, {s['unknown']} unknown" for a, s in summary["attributes"].items()))
