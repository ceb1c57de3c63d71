"""Attribute classifier: labels, masked loss, hierarchy conditioning, backbones with LoRA,
save/load, metrics, and the predictions that fill search filters."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from catalog_search.attributes.evaluate import (attribute_metrics, catalog_predictions, confusion_rows,
                                                prediction_summary)
from catalog_search.attributes.model import (AttributeClassifier, load_classifier, prepare, save_classifier,
                                             set_train_mode)
from catalog_search.attributes.train import AttributeLoss, predict_probs, train_classifier
from catalog_search.core.backbones import Backbone, build_backbone
from catalog_search.core.labels import LabelSet, MISSING, OTHER
from catalog_search.params import ParamsError, load_params
from conftest import ROOT, assert_frozen_unchanged

HEADS = {"category": [], "subcategory": ["category"], "color": []}
ROWS = ([{"category": "A", "subcategory": "a1", "color": "Red"}] * 6
        + [{"category": "B", "subcategory": "b1", "color": "Blue"}] * 3
        + [{"category": "B", "subcategory": "b2", "color": None},          # b2: one example -> "other"
           {"category": None, "subcategory": "a1", "color": "Red"}])


def test_labels_mask_missing_merge_rare_classes_and_weight_them():
    labels = LabelSet.fit(ROWS, HEADS, min_count=2, class_weights="balanced")
    sub = labels.labels["subcategory"]
    assert sub.classes == ["a1", "b1", OTHER] and sub.counts == [7, 3, 1]
    np.testing.assert_allclose(sub.weights, [11 / (3 * 7), 11 / (3 * 3), 11 / 3], rtol=1e-5)  # n / (k * count)
    y = labels.targets(ROWS)
    assert y.shape == (11, 3)
    assert y[9, 2] == MISSING and y[10, 0] == MISSING  # unknown colour / category: masked, not guessed
    assert sub.encode(["zz"])[0] == sub.classes.index(OTHER)  # unseen value of a head with "other"
    assert labels.labels["category"].encode(["zz"])[0] == MISSING  # no "other": the model has no class for it
    assert labels.pairs["category>subcategory"] == [["A", "a1"], ["B", "b1"], ["B", OTHER]]
    assert LabelSet.fit(ROWS, HEADS, 0, "none").labels["subcategory"].classes == ["a1", "b1", "b2"]


def test_labels_refuse_bad_hierarchies_and_empty_attributes():
    with pytest.raises(ParamsError, match="subcategory conditions on 'category'.*list parents first"):
        LabelSet.fit(ROWS, {"subcategory": ["category"], "category": []}, 1, "none")
    with pytest.raises(ValueError, match="'gender' has no labels in the training split"):
        LabelSet.fit(ROWS, {"gender": []}, 1, "none")
    with pytest.raises(ParamsError, match="class_weights"):
        LabelSet.fit(ROWS, HEADS, 1, "inverse")


def test_loss_masks_missing_labels_and_skips_unlabelled_heads():
    labels = LabelSet.fit(ROWS, HEADS, min_count=2, class_weights="balanced")
    loss_fn = AttributeLoss(labels, {"color": 2.0})
    torch.manual_seed(0)
    logits = {a: torch.randn(4, len(e.classes), requires_grad=True) for a, e in labels.labels.items()}
    y = torch.tensor([[0, 0, 0], [1, MISSING, MISSING], [MISSING, 1, MISSING], [1, 2, MISSING]])
    total, parts = loss_fn(logits, y)
    w = torch.tensor(labels.labels["category"].weights)
    keep = torch.tensor([0, 1, 3])
    expected = F.cross_entropy(logits["category"][keep], y[keep, 0], weight=w)
    assert parts["category"] == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    assert torch.all(logits["category"].grad[2] == 0)  # the unlabelled row teaches nothing
    assert torch.all(logits["color"].grad[1:] == 0) and torch.any(logits["color"].grad[0] != 0)
    only_missing = torch.full((4, 3), MISSING)
    only_missing[:, 0] = 0
    total, parts = loss_fn(logits, only_missing)
    assert set(parts) == {"category"} and torch.isfinite(total)


class Pixels(Backbone):
    """A stand-in backbone: mean colour per channel through one linear layer."""

    def __init__(self):
        super().__init__("test", "EfficientNet", (0.5,) * 3, (0.5,) * 3, 8)
        self.trunk = nn.Linear(3, 6)

    def forward(self, pixels):
        return self.trunk(pixels.mean((2, 3)))


def test_heads_see_their_parents_probabilities_only_with_hierarchy_on():
    labels = LabelSet.fit(ROWS, HEADS, min_count=2, class_weights="none")
    torch.manual_seed(0)
    x = torch.randn(5, 3, 8, 8)
    for hierarchy in (True, False):
        model = AttributeClassifier(Pixels(), labels, hidden=0, dropout=0.0, hierarchy=hierarchy).eval()
        n_category = len(labels.labels["category"].classes)
        assert model.heads["subcategory"].in_features == 6 + (n_category if hierarchy else 0)
        assert model.heads["color"].in_features == 6
        before = model(x)
        with torch.no_grad():
            model.heads["category"].bias += torch.tensor([5.0, -5.0])  # change only what the category head thinks
        after = model(x)
        assert torch.equal(after["color"], before["color"])
        assert torch.equal(after["subcategory"], before["subcategory"]) != hierarchy


def tiny_vit(folder):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                       patch_size=8), add_pooling_layer=False).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.4, 0.4, 0.4], "image_std": [0.2] * 3}))
    return str(folder)


def tiny_clip(models_root):
    from catalog_search.models.export import save_model
    from catalog_search.models.registry import create_model

    save_model(models_root / "tiny_run", create_model("tiny", "none"), None, {})
    return "clip:tiny_run"


@pytest.mark.parametrize("kind,targets", [
    ("packaged", {"conv_pw", "conv_pwl"}),
    ("vit", {"q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"}),
    ("clip", {"attn", "c_fc", "c_proj"}),
])
def test_backbones_take_lora_where_the_towers_table_says_and_every_lora_tensor_learns(tmp_path, kind, targets):
    name = {"packaged": lambda: "packaged:efficientnet-lite0", "vit": lambda: tiny_vit(tmp_path / "vit"),
            "clip": lambda: tiny_clip(tmp_path)}[kind]()
    backbone = build_backbone(name, 48, tmp_path)  # 48: not the ViT's native 32 (position embeddings interpolate)
    if kind == "vit":
        assert backbone.mean == (0.4, 0.4, 0.4) and backbone.std == (0.2, 0.2, 0.2)
    labels = LabelSet.fit(ROWS, HEADS, min_count=2, class_weights="balanced")
    torch.manual_seed(0)
    model = AttributeClassifier(backbone, labels, hidden=16, dropout=0.1, hierarchy=True)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    prepare(model, "lora", {"r": 4, "alpha": 8, "dropout": 0.0, "last_blocks": 1})
    layers = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    # (peft's MultiheadAttention LoRA holds a LoRA out_proj of its own inside `attn`)
    assert {n.rsplit(".", 1)[-1] for n in layers if not any(n.startswith(f"{p}.") for p in layers)} == targets
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("backbone.") for n in frozen)
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    set_train_mode(model, "lora")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    y = torch.from_numpy(labels.targets(ROWS[:4]))
    for _ in range(2):  # lora_B starts at zero, so lora_A's gradient appears from the second step
        optimizer.zero_grad()
        loss, _ = AttributeLoss(labels, {})(model(torch.randn(4, 3, 48, 48)), y)
        loss.backward()
        optimizer.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values()), \
        [n for n, p in lora.items() if p.grad is None or not p.grad.abs().sum()]
    assert_frozen_unchanged(frozen, {n: p for n, p in model.named_parameters() if n in frozen})
    after = dict(model.named_buffers())
    assert all(torch.equal(after[n], b) for n, b in buffers.items() if n in after)  # BatchNorm statistics kept


@pytest.fixture(scope="module")
def trained(demo_shards, tmp_path_factory):
    from catalog_search.core.data import load_split

    shards, _ = demo_shards
    cfg = load_params(ROOT / "params.yaml")["attributes"]
    cfg.update(image_size=32, epochs=2, batch_size=16, head_hidden=32, min_count=2, workers=0,
               lora={"r": 4, "alpha": 8, "dropout": 0.05, "last_blocks": 1})
    train, val, test = (load_split(shards, s) for s in ("train", "val", "test"))
    for row in train[::4]:
        row["color"] = None  # labels a feed left out
    model, wrapper, labels, record = train_classifier(cfg, train, val, torch.device("cpu"))
    out = tmp_path_factory.mktemp("models") / "attributes"
    keys = ("backbone", "image_size", "heads", "hierarchy", "head_hidden", "head_dropout", "mode", "lora")
    save_classifier(out, model, wrapper, labels, {k: cfg[k] for k in keys})
    return model, labels, record, out, test, cfg


def test_training_saves_a_model_that_loads_to_the_same_predictions(trained):
    model, labels, record, out, test, cfg = trained
    assert record["steps"] > 0 and np.isfinite(record["final_loss"])
    assert 0 < record["lora_params"] < record["trainable_params"] < record["backbone_params"]
    assert labels.labels["color"].counts and sum(labels.labels["color"].counts) < sum(labels.labels["category"].counts)
    assert (out / "adapter/adapter_config.json").exists() and (out / "labels.json").exists()
    images = [r["image"] for r in test]
    before = predict_probs(model, images, 16, torch.device("cpu"))
    loaded, loaded_labels, config = load_classifier(out)
    after = predict_probs(loaded, images, 16, torch.device("cpu"))
    assert config["mode"] == "lora" and loaded_labels.pairs == labels.pairs
    for a in before:
        np.testing.assert_allclose(after[a], before[a], atol=1e-5)
        np.testing.assert_allclose(after[a].sum(1), 1, atol=1e-5)
    metrics = attribute_metrics(labels, test, before)
    assert set(metrics["attributes"]) == set(cfg["heads"])
    assert set(metrics["consistency"]) == {"category>subcategory", "category>article_type", "subcategory>article_type"}
    assert all(0 <= m["accuracy"] <= 1 and 0 <= m["macro_f1"] <= 1 for m in metrics["attributes"].values())
    rows = confusion_rows(labels, test, before, "article_type")
    assert len(rows) == metrics["attributes"]["article_type"]["n"] and set(rows[0]) == {"actual", "predicted"}


def test_metrics_by_hand():
    labels = LabelSet.fit(ROWS, {"category": [], "subcategory": ["category"]}, 2, "none")
    rows = [{"category": "A", "subcategory": "a1"}, {"category": "B", "subcategory": "b1"},
            {"category": "B", "subcategory": "b9"}, {"category": None, "subcategory": "a1"}]
    onehot = lambda ids, n: np.eye(n)[ids]
    probs = {"category": onehot([0, 0, 1, 0], 2),            # A A B A   (row 2 right, row 1 wrong)
             "subcategory": onehot([0, 1, 2, 1], 3)}         # a1 b1 other b1
    m = attribute_metrics(labels, rows, probs)
    assert m["attributes"]["category"] == {"accuracy": round(2 / 3, 4), "macro_f1": round(2 / 3, 4), "n": 3, "classes": 2}
    assert m["attributes"]["subcategory"]["accuracy"] == 0.75  # b9 was never seen: scored as "other", which is right
    # (A,a1) ok, (A,b1) never seen, (B,other) seen, (A,b1) never seen
    assert m["consistency"] == {"category>subcategory": 0.5} and m["hierarchy_consistency"] == 0.5


def test_predictions_fill_only_gaps_and_only_when_confident():
    labels = LabelSet.fit(ROWS, HEADS, 2, "none")
    rows = [{"product_id": "p1", "category": "A", "subcategory": None, "color": None, "color_true": "Blue"},
            {"product_id": "p2", "category": None, "subcategory": "b1", "color": "Red"}]
    probs = {"category": np.array([[0.1, 0.9], [0.4, 0.6]]),
             "subcategory": np.array([[0.1, 0.1, 0.8], [0.1, 0.9, 0.0]]),   # p1: "other" names no value
             "color": np.array([[0.7, 0.3], [0.95, 0.05]])}                 # classes: Blue, Red
    records = catalog_predictions(labels, rows, probs, min_confidence=0.65)
    p1, p2 = (r["attributes"] for r in records)
    assert p1["category"] == {"value": "A", "source": "catalog", "prediction": "B", "confidence": 0.9}
    assert p1["subcategory"]["value"] is None and p1["subcategory"]["source"] is None
    assert p1["color"] == {"value": "Blue", "source": "predicted", "prediction": "Blue", "confidence": 0.7}
    assert p2["category"]["value"] is None  # 0.6 < 0.65: left unknown
    summary = prediction_summary(records, rows, 0.65)["attributes"]
    assert summary["color"] == {"catalog": 1, "filled": 1, "unknown": 0, "disagrees_with_catalog": 1,
                                "filled_accuracy": 1.0, "filled_scored": 1}
    assert summary["category"]["disagrees_with_catalog"] == 1 and summary["category"]["unknown"] == 1


def test_search_filters_match_predicted_attributes(tmp_path):
    from catalog_search.index import ProductIndex, save_embeddings

    vectors = np.random.default_rng(0).normal(size=(6, 8)).astype("float32")
    items = pd.DataFrame({"product_id": [f"p{i}" for i in range(6)], "title": "t", "captions": [["c"]] * 6,
                          "color": ["Red", None, "Blue", None, "Red", "Blue"]})
    save_embeddings(tmp_path, vectors, vectors[:2], items, pd.DataFrame({"text": ["c", "d"]}), {"scenario": "s"})
    predictions = tmp_path / "predictions.jsonl"
    lines = [{"product_id": "p1", "attributes": {"color": {"value": "Red", "source": "predicted"}}},
             {"product_id": "p3", "attributes": {"color": {"value": None, "source": None}}},
             {"product_id": "p4", "attributes": {"color": {"value": "Red", "source": "catalog"}}}]
    predictions.write_text("".join(json.dumps(x) + "\n" for x in lines))
    index = ProductIndex(tmp_path)
    assert set(index.allowed({"color": "red"})) == {0, 4}
    assert index.fill_attributes(predictions) == 1
    assert set(index.allowed({"color": "red"})) == {0, 1, 4}
    colors = index.items["color"]
    assert colors.isna().tolist() == [False, False, False, True, False, False]
    assert colors[[0, 2, 4, 5]].tolist() == ["Red", "Blue", "Red", "Blue"]  # catalog values never replaced
