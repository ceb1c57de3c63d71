"""Data-parallel training without DDP's module wrapper.

The trainer embeds through `encode_image`/`encode_text` and, for frozen towers, only through the
projections on cached features, so DistributedDataParallel's forward hooks never see a forward
call. What DDP would do is done here explicitly: each rank embeds its slice of the global batch,
open_clip's losses gather the features across ranks (with gradients), and the trainable
parameters' gradients are averaged with one flat all-reduce per step. Same maths as open_clip's
trainer, and it composes with the gradient cache and the feature cache.

`torchrun --nproc_per_node N stages/train.py <scenario>` sets RANK/WORLD_SIZE/LOCAL_RANK;
`train.nproc: N` makes the stage launch itself that way.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def split(self, n: int) -> slice:
        """This rank's contiguous part of `n` rows (sizes differ by at most one)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))


def init(device_type: str) -> World:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA); a lone process gets World()."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return world


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """Re-run this script under torchrun with `nproc` processes; returns torchrun's exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *argv]
    return subprocess.call(cmd)


def average_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    """What DDP's reducer does: mean of every rank's gradient, one flat buffer, one all-reduce."""
    if world.size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def mean(value: float, world: World, device: torch.device) -> float:
    if world.size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world.size


def gather_rows(local: torch.Tensor, n: int, world: World) -> torch.Tensor:
    """Reassemble rows that ranks computed for their `world.split(n)` parts (every rank gets all)."""
    if world.size == 1:
        return local
    width = -(-n // world.size)
    device = torch.device("cuda", world.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
    padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: len(local)] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    sizes = [World(r, world.size).split(n) for r in range(world.size)]
    return torch.cat([p[: s.stop - s.start] for p, s in zip(parts, sizes)]).to(local.device)
