import copy
import shutil
import subprocess
import sys

import pytest
import yaml

from catalog_search.checks import validate
from catalog_search.params import ParamsError, load_params
from conftest import ROOT


@pytest.fixture
def params():
    return load_params(ROOT / "params.yaml")


@pytest.mark.parametrize("path, value, message", [
    (("data", "source"), "s3", r"data.source='s3'.*'demo', 'table'"),
    (("clean", "backend"), "gpt", r"clean.backend='gpt'.*'rules'"),
    (("clean", "dedupe", "near"), "drop", r"clean.dedupe.near='drop'.*'reject', 'group', 'keep'"),
    (("clean", "dedupe", "max_distance"), 200, r"max_distance=200 must be an integer 0..63"),
    (("clean", "workers"), -1, r"clean.workers=-1 must be 0 \(in-process\)"),
    (("clean", "chunk_rows"), 0, r"clean.chunk_rows=0 must be a positive integer"),
    (("clean", "openai_batch", "image_detail"), "ultra", r"image_detail='ultra'.*'low', 'high', 'auto'"),
    (("clean", "openai_batch", "max_attempts"), 0, r"max_attempts=0 must be an integer >= 1"),
    (("clean", "openai_batch", "vocabulary"), {"color": "Red"}, r"vocabulary must map an answer field to a list"),
    (("clean", "openai_batch", "vocabulary"), {"colour": ["Red"]}, r"vocabulary key='colour'.*'color'"),
    (("clean", "openai_batch", "api_key"), "anything", r"clean.openai_batch.api_key looks like an API key.*OPENAI_API_KEY"),
    (("clean", "openai_batch", "base_url"), "sk-proj-abcdefghijklmnop1234", r"clean.openai_batch.base_url looks like an API key"),
    (("attributes", "mode"), "linear", r"attributes.mode='linear'.*'lora', 'frozen', 'full'"),
    (("attributes", "heads"), {"subcategory": ["category"], "category": []}, r"conditions on 'category'.*parents first"),
    (("attributes", "confusion"), "brand", r"attributes.confusion='brand'.*'article_type'"),
    (("attributes", "loss_weights"), {"colour": 2}, r"loss_weights names \['colour'\], which are not heads"),
    (("attributes", "min_confidence"), 1.5, r"min_confidence=1.5 must be between 0 and 1"),
    (("train", "defaults", "loss"), "triplet", r"train.chance.loss='triplet'.*'infonce', 'siglip'"),
    (("pretrain", "templates"), ["{color} {label}"], r"pretrain.templates entry '\{color\} \{label\}' has the shape"),
    (("train", "dual_lora", "precision"), "fp8", r"train.dual_lora.precision='fp8'.*'bf16', 'fp16'"),
    (("train", "dual_lora", "positives"), "title", r"train.dual_lora.positives='title'.*'pair', 'caption', 'caption_group'"),
    (("train", "defaults", "hard_negatives", "share"), 1.5, r"hard_negatives.share=1.5 must be between 0"),
    (("train", "defaults", "hard_negatives", "ranks"), [20, 10], r"hard_negatives.ranks=\[20, 10\] must be \[first, last\]"),
    (("train", "defaults", "hard_negatives", "cluster"), 1, r"hard_negatives.cluster=1 must be an integer >= 2"),
    (("wise_ft", "scenarios"), ["zero_shot"], r"wise_ft.scenarios names \['zero_shot'\]; choose scenarios that train"),
    (("wise_ft", "alpha"), 2, r"wise_ft.alpha: Input should be less than or equal to 1"),
    (("wise_ft", "alphas"), [0.0, 1.5], r"wise_ft.alphas=\[0.0, 1.5\] must lie in \[0, 1\]"),
    (("serve", "scenarios"), ["linear_probe-wise"], r"serve.scenarios names \['linear_probe-wise'\].*'dual_lora-wise'"),
    (("train", "defaults", "early_stopping", "metric"), "loss", r"early_stopping.metric='loss'.*'text_to_image_R@10'"),
    (("train", "defaults", "micro_batch_size"), 1000, r"micro_batch_size=1000 must be between 1 and batch_size"),
    (("train", "defaults", "checkpoint_every"), 0, r"checkpoint_every=0 must be a positive integer"),
    (("model", "name"), "ViT-Q-1", r"model.name='ViT-Q-1'.*ViT-B-32"),
    (("vlm", "layers"), 0, r"vlm.layers=0 must be a positive integer or null"),
    (("vlm", "align_epochs"), -1, r"vlm.align_epochs=-1 must be 0 \(no alignment phase\)"),
    (("vlm", "extract"), "gaps", r"vlm.extract='gaps'.*'missing', 'all'"),
    (("vlm", "decoding"), "beam", r"vlm.decoding='beam'.*'constrained', 'free'"),
])
def test_invalid_choice_lists_valid_values(params, path, value, message):
    bad = copy.deepcopy(params)
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ParamsError, match=message):
        validate(bad)


def test_unknown_scenario_and_missing_overrides(params):
    with pytest.raises(ParamsError, match=r"scenarios\[\]='dual'.*'dual_lora'"):
        validate({**params, "train": {**params["train"], "scenarios": ["zero_shot", "dual"]}})
    train = {k: v for k, v in params["train"].items() if k != "text_lora"}
    with pytest.raises(ParamsError, match="train.text_lora is missing"):
        validate({**params, "train": train})


def test_default_params_are_valid(params):
    validate(params)


def test_first_stage_refuses_bad_params_before_any_work(tmp_path, params):
    """A real stage process: the error names the key and the valid values; nothing is written."""
    params["train"]["scenarios"] = ["zero_shot", "dual"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(ROOT / "stages", tmp_path / "stages")
    run = subprocess.run([sys.executable, "stages/ingest.py"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode != 0
    assert "train.scenarios[]='dual' is not valid" in run.stderr and "dual_lora" in run.stderr
    assert not (tmp_path / "data").exists()
