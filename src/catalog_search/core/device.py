"""Device and precision, shared by every model family: where a stage runs and in which number
format, decided in one place."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
import torch.nn as nn

from catalog_search.core.constants import PRECISIONS
from catalog_search.params import ParamsError, check_choice

def pick_device() -> torch.device:
    """cuda, then mps, then cpu: every stage runs anywhere and uses an accelerator when present."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device: torch.device, precision: str = "auto"):
    """`auto` is bf16 on GPU and fp32 on CPU (where bf16 matmuls are slower on most chips);
    fp16 needs CUDA, where the trainer pairs it with a grad scaler."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    check_choice("precision", precision, PRECISIONS)
    if precision == "fp32":
        return nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ParamsError(f"precision fp16 needs a CUDA device (fp16 without a grad scaler underflows); "
                          f"this run is on {device.type}: use bf16 or fp32")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Inference behaviour (BatchNorm running stats, no dropout), each module's mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)
