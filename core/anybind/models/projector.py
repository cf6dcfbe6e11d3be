"""Input projectors: a bound embedding -> k soft tokens in the LM's input-embedding space.

The projector reads the *shared-space* embedding (not a modality's own encoder tokens),
so one trained on images alone also places audio, video and point clouds where the LM
can read them: any-to-text comes for free from the binding (emergent any-to-text).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from anybind.persistence import PretrainedMixin


@dataclass
class InputProjectorConfig:
    embed_dim: int = 128  # the bound space
    lm_width: int = 576  # the LM's hidden size
    tokens: int = 4  # soft tokens per attachment
    hidden: int = 1024
    modality: str = "image"  # what it was trained on
    backbone: str = ""  # the backbone reference it was trained for


class InputProjector(PretrainedMixin, nn.Module):
    """MLP (D) -> (k, H), each soft token normalised then scaled to the LM's embedding statistics."""

    Config = InputProjectorConfig

    def __init__(self, config: InputProjectorConfig | None = None):
        super().__init__()
        self.config = c = config or InputProjectorConfig()
        self.mlp = nn.Sequential(nn.Linear(c.embed_dim, c.hidden), nn.GELU(), nn.Linear(c.hidden, c.tokens * c.lm_width))
        self.norm = nn.LayerNorm(c.lm_width, elementwise_affine=False)
        # Per-channel scale and offset, initialised from the LM's token embeddings so that the
        # soft tokens start at the magnitude the frozen LM expects.
        self.scale = nn.Parameter(torch.ones(c.lm_width))
        self.shift = nn.Parameter(torch.zeros(c.lm_width))

    @torch.no_grad()
    def match_embeddings(self, embeddings: torch.Tensor) -> None:
        """Start the output scale/offset at the per-channel std/mean of the LM's embedding table."""
        table = embeddings.float()
        self.scale.copy_(table.std(dim=0))
        self.shift.copy_(table.mean(dim=0))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, D) bound embeddings -> (B, k, H) soft tokens."""
        c = self.config
        tokens = self.mlp(embedding).view(-1, c.tokens, c.lm_width)
        return self.norm(tokens) * self.scale + self.shift
