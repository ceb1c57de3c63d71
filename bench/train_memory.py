"""Peak training memory: dual_lora vs full fine-tuning at the same batch (goal <= 0.6), and the
gradient cache at a large contrastive batch vs its micro-batch alone (target <= 1.3x).

    python bench/train_memory.py                       # CPU: peak RSS of a fresh process per case
    python bench/train_memory.py --model ViT-B-32 --pretrained none --image-size 224   # GPU

On CUDA the figure is torch.cuda.max_memory_allocated; on CPU it is the child process's peak
resident memory (ru_maxrss) minus its resident memory just before training, so imports and the
model's own weights, identical in every case, do not dilute the ratio. Prints JSON.
"""
import json
import os
import subprocess
import sys

import torch

from _common import build, parser, samples, train_cfg
from catalog_search.models.scenarios import SCENARIOS
from catalog_search.training.trainer import train


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def one_case(args) -> dict:
    """Runs in its own process: one training step of `args.scenario`; memory before and at peak."""
    bundle, device = build(args, args.scenario)
    data, val = samples(args.batch, args.image_size), samples(8, args.image_size, seed=1)
    cfg = train_cfg(batch_size=args.batch, micro_batch_size=args.micro, max_steps=1, precision=args.precision)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        train(bundle, SCENARIOS[args.scenario], data, val, cfg, device)
        return {"before_mib": round(before, 1), "peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    before = rss_mib()
    train(bundle, SCENARIOS[args.scenario], data, val, cfg, device)
    return {"before_mib": round(before, 1)}


def run_case(scenario: str, batch: int, micro: int | None, args) -> dict:
    cmd = [sys.executable, __file__, "--case", scenario, str(batch), str(micro or 0), "--model", args.model,
           "--pretrained", args.pretrained, "--image-size", str(args.image_size), "--precision", args.precision,
           "--lora-dropout", str(args.lora_dropout)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    assert status == 0, f"{cmd} failed"
    result = json.loads(out.strip().splitlines()[-1])
    if "peak_mib" not in result:  # CPU: the child's peak resident memory
        result["peak_mib"] = round(usage.ru_maxrss / 1024, 1)
    result["training_mib"] = round(result["peak_mib"] - result["before_mib"], 1)
    return {"scenario": scenario, "batch": batch, "micro_batch": micro or batch, **result}


if __name__ == "__main__":
    ap = parser(__doc__)
    ap.add_argument("--case", nargs=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--big-batch", type=int, default=512)
    args = ap.parse_args()
    if args.case:
        args.scenario, args.batch, args.micro = args.case[0], int(args.case[1]), int(args.case[2]) or None
        print(json.dumps(one_case(args)))
        sys.exit()
    cases = {"dual_lora": run_case("dual_lora", args.batch, None, args),
             "full": run_case("full", args.batch, None, args),
             "micro_alone": run_case("dual_lora", args.batch, None, args),
             "gradient_cache": run_case("dual_lora", args.big_batch, args.batch, args)}
    t = {k: v["training_mib"] for k, v in cases.items()}
    print(json.dumps({"model": args.model, "lora_dropout": args.lora_dropout, "cases": cases,
                      "ratio_dual_lora_over_full": round(t["dual_lora"] / t["full"], 3),
                      "ratio_gradient_cache_over_micro_alone": round(t["gradient_cache"] / t["micro_alone"], 3)},
                     indent=1))
