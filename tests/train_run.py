"""A small real training run of the tiny model, in this process or as a script.

The resume and distributed tests need the same run in other processes: killed with SIGKILL
mid-epoch, or launched by torchrun. `python tests/train_run.py SHARDS OUT [--ckpt DIR]
[--kill-at STEP] [--cfg JSON]` writes OUT/result.json and OUT/trainable.pt (rank 0).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest  # noqa: E402,F401  (offline environment variables)

from catalog_search.models.lora import apply_scenario  # noqa: E402
from catalog_search.models.registry import create_model  # noqa: E402
from catalog_search.models.scenarios import SCENARIOS, scenario_config  # noqa: E402
from catalog_search.params import load_params  # noqa: E402
from catalog_search.training import distributed  # noqa: E402
from catalog_search.training.checkpoint import trainable_state  # noqa: E402
from catalog_search.core.data import load_split  # noqa: E402
from catalog_search.training.trainer import train  # noqa: E402

SCENARIO = "dual_lora"


def config(**overrides) -> dict:
    cfg = scenario_config(load_params(conftest.ROOT / "params.yaml")["train"], SCENARIO)
    return {**cfg, "batch_size": 8, "lr": 3e-3, "warmup_fraction": 0.0, "epochs": 2, **overrides}


def run(shards: Path, cfg: dict, ckpt: Path | None = None, kill_at: int | None = None):
    """Train the tiny model; returns (summary + each step's gradient norm, trainable tensors, world)."""
    world = distributed.init("cpu")
    torch.manual_seed(0)
    bundle = create_model("tiny", "none", loss=cfg["loss"])
    apply_scenario(bundle.model, SCENARIOS[SCENARIO], cfg["lora"])

    grad_norms = []

    def on_step(step: int) -> None:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        grads = [p.grad for p in bundle.model.parameters() if p.requires_grad]
        grad_norms.append(float(torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]))))

    result = train(bundle, SCENARIOS[SCENARIO], load_split(shards, "train"), load_split(shards, "val"), cfg,
                   torch.device("cpu"), world=world, checkpoint_dir=ckpt, on_step=on_step)
    return {**result, "grad_norms": grad_norms}, trainable_state(bundle.model), world


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("shards", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--ckpt", type=Path)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--cfg", default="{}")
    args = parser.parse_args()
    result, state, world = run(args.shards, config(**json.loads(args.cfg)), args.ckpt, args.kill_at)
    if world.is_main:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "result.json").write_text(json.dumps(result))
        torch.save(state, args.out / "trainable.pt")
    distributed.shutdown()
