"""The real offline default (packaged MiniLM + EfficientNet-Lite0) learns the demo catalog.

Slow (about a minute on 2 cores): run with `make test-slow` or `pytest -m slow`.
"""
import pytest
import torch

from catalog_search.core.data import load_split
from catalog_search.models.lora import apply_scenario
from catalog_search.models.registry import create_model
from catalog_search.models.scenarios import SCENARIOS, scenario_config
from catalog_search.params import load_params
from catalog_search.training.trainer import train
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_dual_lora_beats_the_unaligned_floor(demo_shards):
    shards, _ = demo_shards
    train_split, val_split = load_split(shards, "train"), load_split(shards, "val")
    cfg = {**scenario_config(load_params(ROOT / "params.yaml")["train"], "dual_lora"), "batch_size": 16, "epochs": 3}
    results = {}
    for name in ("zero_shot", "dual_lora"):
        torch.manual_seed(0)
        bundle = create_model("minilm-efficientnet-lite0", "packaged", image_size=64)
        apply_scenario(bundle.model, SCENARIOS[name], cfg["lora"])
        results[name] = train(bundle, SCENARIOS[name], train_split, val_split,
                              {**cfg, "epochs": 0 if name == "zero_shot" else 3}, torch.device("cpu"))["val"]
    assert results["dual_lora"]["text_to_image_R@10"] > results["zero_shot"]["text_to_image_R@10"] + 0.2
