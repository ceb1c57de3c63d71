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


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16, AMX). Elsewhere oneDNN emulates
    it, slower than fp32; here it is 1.3-1.8x faster on the default models (bench/precision.py)."""
    return any(getattr(torch.cpu, check, lambda: False)() for check in ("_is_avx512_bf16_supported",
                                                                         "_is_amx_tile_supported"))


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """`auto` is bf16 on a GPU and on a CPU with native bf16, fp32 on other CPUs."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "auto":
        return "bf16" if device.type == "cuda" or (device.type == "cpu" and native_bf16()) else "fp32"
    return precision


def autocast(device: torch.device, precision: str = "auto"):
    """Mixed precision for `precision` (see `resolve_precision`): the weights stay fp32, matmuls
    and convolutions run in bf16/fp16. fp16 needs CUDA, where the trainer pairs it with a grad scaler."""
    precision = resolve_precision(device, precision)
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
