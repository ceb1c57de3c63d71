import pytest
import torch

from catalog_search.core.data import load_split
from catalog_search.models.lora import apply_scenario
from catalog_search.models.registry import create_model
from catalog_search.models.scenarios import SCENARIOS, scenario_config
from catalog_search.params import load_params
from catalog_search.training.trainer import train
from conftest import ROOT, assert_frozen_unchanged


@pytest.fixture(scope="module")
def splits(demo_shards):
    shards, _ = demo_shards
    return load_split(shards, "train"), load_split(shards, "val")


def _cfg(**overrides):
    cfg = scenario_config(load_params(ROOT / "params.yaml")["train"], "dual_lora")
    return {**cfg, "batch_size": 16, "lr": 3e-3, "warmup_fraction": 0.0, **overrides}


@pytest.mark.parametrize("scenario, loss", [("linear_probe", "infonce"), ("dual_lora", "infonce"), ("dual_lora", "siglip")])
def test_training_lowers_the_loss_and_moves_only_trainable_weights(splits, scenario, loss):
    torch.manual_seed(0)
    bundle = create_model("tiny", "none", loss=loss)
    apply_scenario(bundle.model, SCENARIOS[scenario], _cfg()["lora"])
    before = {n: p.detach().clone() for n, p in bundle.model.named_parameters()}
    cfg = _cfg(loss=loss, epochs=4)
    result = train(bundle, SCENARIOS[scenario], splits[0], splits[1], cfg, torch.device("cpu"))
    steps_per_epoch = len(splits[0]) // 16  # drop_last: every step has the full batch of negatives
    assert result["steps"] == 4 * steps_per_epoch
    assert "text_to_image_R@10" in result["val"] and result["train_seconds"] > 0
    params = dict(bundle.model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert all(not torch.equal(params[n], before[n]) for n in trainable if "lora_A" not in n)
    assert_frozen_unchanged({n: t for n, t in before.items() if n not in trainable}, params)
    if loss == "siglip":
        assert "logit_bias" in trainable


def test_loss_decreases(splits, capsys):
    torch.manual_seed(0)
    bundle = create_model("tiny", "none")
    apply_scenario(bundle.model, SCENARIOS["linear_probe"], _cfg()["lora"])
    train(bundle, SCENARIOS["linear_probe"], splits[0], splits[1], _cfg(epochs=6), torch.device("cpu"))
    losses = [float(line.split("loss ")[1].split()[0]) for line in capsys.readouterr().out.splitlines() if "loss " in line]
    assert len(losses) == 6 and losses[-1] < losses[0] * 0.9


def test_zero_shot_takes_no_step(splits):
    bundle = create_model("tiny", "none")
    before = {n: p.detach().clone() for n, p in bundle.model.named_parameters()}
    result = train(bundle, SCENARIOS["zero_shot"], splits[0], splits[1], _cfg(epochs=0), torch.device("cpu"))
    assert result["steps"] == 0 and result["val"]["text_to_image_R@1"] >= 0
    assert all(torch.equal(p, before[n]) for n, p in bundle.model.named_parameters())


def test_max_steps_early_stopping_and_best_weights(splits, tmp_path):
    """lr 0: validation never improves, so patience 1 stops at the second validation and the
    first one's weights are the result; with lr > 0 the model ends on best.pt's weights."""
    from catalog_search.training.checkpoint import BEST, trainable_state

    torch.manual_seed(0)
    bundle = create_model("tiny", "none")
    apply_scenario(bundle.model, SCENARIOS["linear_probe"], _cfg()["lora"])
    stop = {"metric": "text_to_image_R@10", "patience": 1, "min_delta": 0.0}
    result = train(bundle, SCENARIOS["linear_probe"], splits[0], splits[1],
                   _cfg(lr=0.0, epochs=50, eval_every=2, early_stopping=stop), torch.device("cpu"))
    assert (result["steps"], result["best_step"], result["stopped_early"]) == (4, 2, True)

    result = train(bundle, SCENARIOS["linear_probe"], splits[0], splits[1],
                   _cfg(epochs=50, max_steps=6, eval_every=2), torch.device("cpu"), checkpoint_dir=tmp_path)
    assert result["steps"] == 6 and not result["stopped_early"]
    best = torch.load(tmp_path / BEST)
    assert best["step"] == result["best_step"]
    now = trainable_state(bundle.model)
    assert all(torch.equal(now[n], t) for n, t in best["trainable"].items())


def test_dataloader_workers_change_nothing_but_speed(splits):
    """Decoding and tokenising in 2 worker processes gives the same run as in the loop itself
    (dropout on: the workers must not draw from the training RNG)."""
    results = []
    for workers in (0, 2):
        torch.manual_seed(0)
        bundle = create_model("tiny", "none")
        apply_scenario(bundle.model, SCENARIOS["dual_lora"], _cfg()["lora"])
        result = train(bundle, SCENARIOS["dual_lora"], splits[0], splits[1], _cfg(max_steps=4, workers=workers),
                       torch.device("cpu"))
        results.append((result["final_loss"], result["val"], [p.detach().clone() for p in bundle.model.parameters()]))
    assert results[0][:2] == results[1][:2]
    assert all(torch.equal(a, b) for a, b in zip(results[0][2], results[1][2]))
