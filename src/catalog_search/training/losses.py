"""open_clip's contrastive losses with several positives per row: a catalog repeats itself.

ClipLoss and SigLipLoss take row i's own caption as its only positive, so two products called
"Puma Men Black Sports Shoes" in one batch are pushed apart. Here `positives[i, j]` marks caption j
as a match of image i (its own caption always): InfoNCE's target is uniform over row i's positives
(the soft-target cross-entropy of SupCon / UniCL), SigLIP's label is +1 on every positive. Given
the identity, or no matrix, both are open_clip's loss exactly: the plain recipe.

`positives` covers the global batch (every rank plans the same one). Features are gathered across
ranks with their gradients in rank order, and each rank's rows are its contiguous slice of the
batch (`World.split`), so the matrix's rows and columns line up with the gathered features.
"""
from __future__ import annotations

import torch
import torch.distributed.nn
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss


def _soft_cross_entropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    target = positives.to(logits.dtype)
    return -(target / target.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()


class MultiPositiveClipLoss(ClipLoss):
    """InfoNCE over the gathered global batch (open_clip's `gather_with_grad`, not `local_loss`)."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        super().__init__(gather_with_grad=True, cache_labels=True, rank=rank, world_size=world_size)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                positives: torch.Tensor | None = None) -> torch.Tensor:
        if positives is None:
            return super().forward(image_features, text_features, logit_scale)
        per_image, per_text = self.get_logits(image_features, text_features, logit_scale)  # global x global
        positives = positives.to(per_image.device)
        return (_soft_cross_entropy(per_image, positives) + _soft_cross_entropy(per_text, positives.T)) / 2


class MultiPositiveSigLipLoss(SigLipLoss):
    """Sigmoid loss; with a matrix, across ranks each rank's images meet every rank's texts through one
    all-gather (the sum open_clip's neighbour exchange computes block by block)."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor, positives: torch.Tensor | None = None) -> torch.Tensor:
        if positives is None:
            return super().forward(image_features, text_features, logit_scale, logit_bias)
        n = len(image_features)
        if self.world_size > 1:
            text_features = torch.cat(torch.distributed.nn.all_gather(text_features))
        rows = positives[self.rank * n:(self.rank + 1) * n].to(image_features.device)
        logits = self.get_logits(image_features, text_features, logit_scale, logit_bias)
        labels = 2 * rows.to(logits.dtype) - 1
        return -F.logsigmoid(labels * logits).sum() / n
