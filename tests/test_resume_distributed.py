"""A run killed with SIGKILL resumes to the uninterrupted result; 2 processes (torchrun, gloo)
match one process on the same global batch. Real processes, real signals, real collectives."""
import json
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from train_run import config, run

SCRIPT = ROOT / "tests" / "train_run.py"


@pytest.fixture(scope="module")
def shards(demo_shards):
    return demo_shards[0]


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(shards, tmp_path):
    # batch 8 -> 10 steps per epoch; checkpoints every 3 steps; killed at 14: the run resumes
    # mid-epoch 2 from step 12, redoing steps 13-14
    cfg = config(checkpoint_every=3, eval_every=4)
    expected, expected_state, _ = run(shards, cfg, tmp_path / "uninterrupted")

    ckpt = tmp_path / "killed"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(shards), str(tmp_path / "out"), "--ckpt", str(ckpt),
                           "--kill-at", "14", "--cfg", json.dumps(cfg)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()
    assert torch.load(ckpt / "last.pt", weights_only=False)["step"] == 12

    resumed, state, _ = run(shards, cfg, ckpt)
    assert resumed["steps"] == expected["steps"] == 20
    assert resumed["val"] == expected["val"] and resumed["best_step"] == expected["best_step"]
    assert resumed["final_loss"] == pytest.approx(expected["final_loss"], rel=1e-5)
    for name, tensor in expected_state.items():
        # peft's MultiheadAttention LoRA rounds the frozen weights a little every forward
        # (merge/unmerge); the fresh process starts without that drift: 1e-6, not bit-exact
        torch.testing.assert_close(state[name], tensor, rtol=1e-5, atol=1e-6, msg=name)

    again, _, _ = run(shards, cfg, ckpt)  # finished checkpoint: nothing left to train
    assert again["val"] == expected["val"]


@pytest.mark.parametrize("loss, recipe", [("infonce", "plain"), ("siglip", "plain"), ("infonce", "levers"),
                                          ("siglip", "levers")])
def test_two_processes_match_one_on_the_same_global_batch(shards, tmp_path, loss, recipe):
    # no clipping, and gradient norms compared: AdamW alone would hide a wrongly scaled gradient.
    # levers: multi-positive targets across the ranks' gathered features, hard-negative batches mined on both ranks
    levers = {"positives": "caption_group", "hard_negatives": {"share": 0.5, "ranks": [2, 12], "cluster": 4}}
    cfg = config(loss=loss, max_steps=6, micro_batch_size=2, grad_clip=0.0, lora={**config()["lora"], "dropout": 0.0},
                 **(levers if recipe == "levers" else {}))
    single, single_state, _ = run(shards, cfg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT),
           str(shards), str(tmp_path), "--cfg", json.dumps(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    multi = json.loads((tmp_path / "result.json").read_text())
    multi_state = torch.load(tmp_path / "trainable.pt")
    assert multi["steps"] == single["steps"] == 6
    assert multi["final_loss"] == pytest.approx(single["final_loss"], rel=1e-5)
    assert multi["grad_norms"] == pytest.approx(single["grad_norms"], rel=1e-4)
    # Adam divides by sqrt(v): where an element's gradient is ~0, a 1e-7 difference in the order of
    # the ranks' float sums becomes a visible step; 5e-5 is still 1/60 of one step (lr 3e-3)
    for name, tensor in single_state.items():
        torch.testing.assert_close(multi_state[name], tensor, rtol=1e-4, atol=5e-5, msg=lambda m: f"{name}: {m}")
