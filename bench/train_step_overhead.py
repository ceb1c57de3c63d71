"""Pipeline training step vs a bare open_clip loop on synthetic tensors: same model, batch,
precision, process. Target: pipeline/bare >= 0.9.

    python bench/train_step_overhead.py                      # CPU: project default model, 64 px
    python bench/train_step_overhead.py --model ViT-B-32 --pretrained none --image-size 224 \
        --batch 256 --workers 8                              # GPU

The pipeline runs `train()` on the `full` scenario (every weight trained, like the bare loop)
from JPEG bytes: decode, preprocess, tokenise, the loss, the optimizer, its bookkeeping. The
bare loop is open_clip's train_one_epoch without a data loader: model(images, texts), ClipLoss,
AdamW, fed the pipeline's tokens (`bare`) and open_clip's full-length padding
(`bare_open_clip_padding`: what the pipeline's BERT padding trim saves). Alternating runs, best
of each. Prints JSON.
"""
import copy
import json
import time

import torch
from open_clip.loss import ClipLoss

from _common import build, parser, samples, train_cfg
from catalog_search.core.device import autocast
from catalog_search.models.scenarios import SCENARIOS
from catalog_search.training.data import trim_padding
from catalog_search.training.trainer import train


def bare_loop(model, tokenizer, texts, args, cfg: dict, device, trim: bool) -> float:
    """Samples/s of open_clip's inner loop on tensors already in memory, with the pipeline's optimizer
    settings (`cfg`); `trim`: the pipeline's tokens (BERT padding columns dropped) instead of
    open_clip's padding to context_length."""
    model.train()
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    tokens = tokenizer(texts[: args.batch])
    pad = getattr(getattr(tokenizer, "tokenizer", None), "pad_token_id", None)
    tokens = (trim_padding(tokens, pad) if trim and pad is not None else tokens).to(device)
    loss_fn = ClipLoss()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"], betas=tuple(cfg["betas"]),
                            eps=cfg["eps"])
    for i in range(args.steps + 1):
        if i == 1:  # the first step is warm-up, as in the pipeline's own measure
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast(device, args.precision):
            img, txt, scale = model(images, tokens)
            loss = loss_fn(img, txt, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        loss.item()
    return args.steps * args.batch / (time.perf_counter() - start)


if __name__ == "__main__":
    ap = parser(__doc__)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    bundle, device = build(args, "full")
    initial = copy.deepcopy(bundle.model.state_dict())
    data = samples(args.batch * (args.steps + 1), args.image_size)
    val = samples(args.batch, args.image_size, seed=1)
    cfg = train_cfg(batch_size=args.batch, max_steps=args.steps + 1, precision=args.precision, workers=args.workers)
    texts = [s["captions"][0] for s in data]
    runs = {"pipeline": [], "bare": [], "bare_open_clip_padding": []}
    for _ in range(args.repeats):
        bundle.model.load_state_dict(initial)
        runs["pipeline"].append(train(bundle, SCENARIOS["full"], data, val, cfg, device)["samples_per_second"])
        for key, trim in (("bare", True), ("bare_open_clip_padding", False)):
            bundle.model.load_state_dict(initial)
            runs[key].append(bare_loop(bundle.model, bundle.tokenizer, texts, args, cfg, device, trim))
    best = {k: round(max(v), 1) for k, v in runs.items()}
    print(json.dumps({"model": args.model, "device": str(device), "precision": args.precision, "batch": args.batch,
                      "image_size": args.image_size, "samples_per_s": best,
                      "ratio_pipeline_over_bare": round(best["pipeline"] / best["bare"], 3),
                      "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()}}, indent=1))
