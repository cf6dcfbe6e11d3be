"""The losses: binding modalities into one space, and regressing onto a decoder's conditioning."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def positive_mask(groups_a: torch.Tensor | None, groups_b: torch.Tensor | None, n: int, device) -> torch.Tensor:
    """(B, B) True where row i of a and column j of b are a positive pair.

    Without groups, only the diagonal. With groups (class labels), every same-class pair is
    positive: with class-level pairing, same-digit items in a batch are not negatives.
    """
    if groups_a is None or groups_b is None:
        return torch.eye(n, dtype=torch.bool, device=device)
    return groups_a[:, None] == groups_b[None, :]


class BindLoss(nn.Module):
    """Symmetric InfoNCE with a learnable temperature and multi-positive targets (CLIP/ImageBind)."""

    def __init__(self, init_temperature: float = 0.07, max_logit_scale: float = 100.0):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.max_logit_scale = max_logit_scale

    @property
    def temperature(self) -> float:
        return float(1 / self.logit_scale.detach().exp().clamp(max=self.max_logit_scale))

    def forward(self, a: torch.Tensor, b: torch.Tensor, groups_a=None, groups_b=None, symmetric: bool = True):
        """a, b: (B, D) L2-normalised; returns the scalar loss."""
        scale = self.logit_scale.exp().clamp(max=self.max_logit_scale)
        logits = scale * a @ b.T  # (B, B)
        positives = positive_mask(groups_a, groups_b, len(a), a.device).float()
        loss_ab = -(positives * F.log_softmax(logits, dim=1)).sum(1) / positives.sum(1)
        if not symmetric:
            return loss_ab.mean()
        loss_ba = -(positives.T * F.log_softmax(logits.T, dim=1)).sum(1) / positives.T.sum(1)
        return (loss_ab.mean() + loss_ba.mean()) / 2


def conditioning_loss(predicted: torch.Tensor, target: torch.Tensor, bank: torch.Tensor | None,
                      temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mse, contrast)`` of projected conditioning ``(B, T, W)`` against its captions' encodings.

    ``contrast``: cross-entropy over ``-distance / temperature`` to every caption's encoding in
    ``bank`` ``(C, T, W)``, the right one being the bank entry nearest ``target`` (zero without
    a bank of at least two captions). The MSE alone leaves a residual that can sit nearer
    another label's caption; a mild contrast keeps each one nearest its own."""
    predicted, target = predicted.float(), target.float()
    mse = F.mse_loss(predicted, target)
    if bank is None or len(bank) < 2:
        return mse, predicted.new_zeros(())
    bank = bank.to(predicted.device).float()
    distance = (predicted[:, None] - bank[None]).pow(2).mean((-1, -2))  # (B, C)
    own = (target[:, None] - bank[None]).pow(2).mean((-1, -2)).argmin(1)
    return mse, F.cross_entropy(-distance / temperature, own)
