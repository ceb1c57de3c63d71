"""The real offline default VLM (EfficientNet-Lite0 -> tag-token projector -> SmolLM2-135M-Instruct,
12 layers, + LoRA) trains for a few steps: its free generations become valid JSON far more often
than the untuned model's. Slow (~1.5 min on 2
cores): `make test-slow`."""
import pytest
import torch

from catalog_search.core.labels import LabelSet
from catalog_search.params import load_params
from catalog_search.vlm.build import build
from catalog_search.vlm.extract import extract, vlm_metrics
from catalog_search.vlm.language import cache_dir
from catalog_search.vlm.train import fit, image_inputs
from conftest import ROOT
from test_vlm import _images

pytestmark = pytest.mark.slow


def test_default_vlm_learns_the_answer_format(demo_shards):
    p = {**load_params(ROOT / "params.yaml")["vlm"], "epochs": 10, "batch_size": 16}
    _, kept = demo_shards
    rows = kept.to_dict("records")[:64]
    labels = LabelSet.fit(rows, {a: [] for a in p["attributes"]}, 2, "none")
    features = image_inputs(p, [r["image"] for r in _images(demo_shards, rows)], 64,
                              torch.device("cpu"))
    model, template, tokenizer = build(p, labels, features.shape[1], cache_dir(p["cache_dir"]))
    record = fit(model, template, labels, rows, features, p, torch.device("cpu"))
    tune = [e["loss"] for e in record["epochs"] if e["phase"] == "tune"]
    assert tune[-1] < tune[0]
    cpu = torch.device("cpu")
    tuned = vlm_metrics(labels, rows[:16], *extract(model, template, tokenizer, features[:16], 16, cpu, free=True))
    untuned, template, tokenizer = build(p, labels, features.shape[1], cache_dir(p["cache_dir"]), tune=False)
    base = vlm_metrics(labels, rows[:16], *extract(untuned, template, tokenizer, features[:16], 16, cpu, free=True))
    assert tuned["valid_json_raw"] >= base["valid_json_raw"] + 0.5  # 40 steps teach most of the format
