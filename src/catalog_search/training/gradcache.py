"""One contrastive step over a batch larger than memory, equal to the one big batch.

Gradient accumulation would compute the loss per micro-batch, so each sample sees only its
micro-batch's negatives. The gradient cache (Gao et al., 2021, "Scaling Deep Contrastive
Learning Batch Size under Memory Limited Setup") keeps the full batch's negatives:

1. embed every micro-batch without a graph, remembering the RNG state before each (dropout);
2. compute the loss on the concatenated embeddings and backpropagate to them only;
3. re-embed each micro-batch with a graph, RNG restored, and backpropagate the cached
   embedding gradients into the weights.

Memory is one micro-batch's activations plus the batch's embeddings. The price is a second
forward. Layers that look across the batch (BatchNorm in train mode, i.e. a fully trained
EfficientNet) see micro-batches, not the batch: exact only where no such layer trains.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from catalog_search.training.data import SplitEncoder


class _RngState:
    """CPU and current-CUDA-device generator states, so a re-forward draws the same dropout masks."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def _embed(enc: SplitEncoder, image: torch.Tensor, text: torch.Tensor, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    with autocast():
        i, t = enc.embed_inputs("image", image), enc.embed_inputs("text", text)
    return F.normalize(i.float(), dim=-1), F.normalize(t.float(), dim=-1)


def contrastive_step(enc: SplitEncoder, image: torch.Tensor, text: torch.Tensor, loss_fn: Callable,
                     logit_args: Callable[[], list[torch.Tensor]], micro_batch: int, backward: Callable,
                     autocast: Callable) -> torch.Tensor:
    """Backpropagate the batch loss of `image`/`text` inputs (rows paired) into the weights.

    `logit_args()` returns the loss's logit scale (and SigLIP bias) with autograd; `backward(loss)`
    runs the (possibly scaled) backward pass. Returns the loss, detached.
    """
    n = len(image)
    if micro_batch >= n:
        img, txt = _embed(enc, image, text, autocast)
        loss = loss_fn(img, txt, *logit_args())
        backward(loss)
        return loss.detach()
    chunks = [slice(s, min(s + micro_batch, n)) for s in range(0, n, micro_batch)]
    states, imgs, txts = [], [], []
    with torch.no_grad():
        for c in chunks:
            states.append(_RngState(image.device))
            i, t = _embed(enc, image[c], text[c], autocast)
            imgs.append(i)
            txts.append(t)
    img, txt = torch.cat(imgs).requires_grad_(), torch.cat(txts).requires_grad_()
    loss = loss_fn(img, txt, *logit_args())
    backward(loss)  # reaches the logit scale/bias and stops at the cached embeddings
    after = _RngState(image.device)
    for c, state in zip(chunks, states):
        state.restore()
        i, t = _embed(enc, image[c], text[c], autocast)
        # a side with nothing trainable (SigLIP2's image tower in linear_probe: no projection) has no graph
        pairs = [(e, g[c]) for e, g in ((i, img.grad), (t, txt.grad)) if e.requires_grad]
        torch.autograd.backward([e for e, _ in pairs], [g for _, g in pairs])
    after.restore()  # the generator continues as if each micro-batch had been drawn once
    return loss.detach()
