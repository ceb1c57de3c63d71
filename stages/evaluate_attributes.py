"""evaluate_attributes: test-split accuracy, macro-F1, hierarchy consistency -> metrics/attributes.json,
and the confusion matrix of one attribute for `dvc plots` -> reports/attributes/confusion.json."""
from pathlib import Path

from catalog_search.config import start

if __name__ == "__main__":
    p = start().attributes.model_dump()

    from catalog_search.attributes.evaluate import attribute_metrics, confusion_rows
    from catalog_search.attributes.model import load_classifier
    from catalog_search.attributes.train import predict_probs
    from catalog_search.core.data import load_split
    from catalog_search.core.device import pick_device
    from catalog_search.io import write_json

    device = pick_device()
    model, labels, _ = load_classifier(Path("models/attributes"))
    test = load_split(Path("data/shards"), "test")
    probs = predict_probs(model.to(device), [r["image"] for r in test], p["batch_size"], device, p["workers"])
    metrics = attribute_metrics(labels, test, probs)
    write_json("metrics/attributes.json", metrics)
    write_json("reports/attributes/confusion.json", confusion_rows(labels, test, probs, p["confusion"]))
    print(f"evaluate_attributes: mean accuracy {metrics['mean_accuracy']}, macro-F1 {metrics['mean_macro_f1']}, "
          f"hierarchy consistency {metrics['hierarchy_consistency']}; "
          + ", ".join(f"{a} {m['accuracy']}" for a, m in metrics["attributes"].items()))
