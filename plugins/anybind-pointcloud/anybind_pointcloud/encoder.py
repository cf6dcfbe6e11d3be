"""Point-BERT-style tokens: normalise -> farthest-point centres -> kNN groups -> mini-PointNet -> transformer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from anybind.modality import EncoderOutput, ModalityEncoder


def farthest_point_sample(points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``k`` points spread over (N, 3) ``points``, greedy farthest-first from the centroid."""
    n = len(points)
    chosen = torch.empty(k, dtype=torch.long)
    distance = torch.full((n,), float("inf"))
    current = int(torch.argmax(((points - points.mean(0)) ** 2).sum(1)))
    for i in range(k):
        chosen[i] = current
        distance = torch.minimum(distance, ((points - points[current]) ** 2).sum(1))
        current = int(torch.argmax(distance))
    return chosen


@dataclass
class PointCloudEncoderConfig:
    points: int = 256  # resampled to this many points
    groups: int = 32  # FPS centres = tokens
    group_size: int = 16  # neighbours per centre
    width: int = 128
    depth: int = 2
    heads: int = 4


class PointCloudEncoder(ModalityEncoder):
    Config = PointCloudEncoderConfig

    def __init__(self, config: PointCloudEncoderConfig | None = None):
        super().__init__(config or PointCloudEncoderConfig())
        w = self.config.width
        self.point_mlp = nn.Sequential(nn.Linear(3, 64), nn.GELU(), nn.Linear(64, w))  # mini-PointNet
        self.group_mlp = nn.Sequential(nn.Linear(2 * w, w), nn.GELU(), nn.Linear(w, w))
        self.centre_embed = nn.Sequential(nn.Linear(3, w), nn.GELU(), nn.Linear(w, w))
        layer = nn.TransformerEncoderLayer(w, self.config.heads, dim_feedforward=2 * w, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, self.config.depth, enable_nested_tensor=False)

    def preprocess(self, raw: np.ndarray) -> dict[str, torch.Tensor]:
        c = self.config
        points = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))
        points = points - points.mean(0)
        points = points / points.norm(dim=1).max().clamp(min=1e-6)  # unit sphere
        # Deterministic resampling (seeded by the cloud itself) so a file always embeds the same.
        g = torch.Generator().manual_seed(int(len(points)) * 7919 + int(points.abs().sum() * 1000) % 100003)
        index = torch.randperm(len(points), generator=g)[: c.points] if len(points) >= c.points \
            else torch.randint(len(points), (c.points,), generator=g)
        points = points[index]
        centres = points[farthest_point_sample(points, c.groups)]  # (G, 3)
        nearest = torch.cdist(centres, points).topk(c.group_size, largest=False).indices  # (G, K)
        return {"neighbours": points[nearest] - centres[:, None, :], "centres": centres}

    def augment(self, batch):
        """Random rotation about the vertical axis and scaling, the same for centres and groups."""
        b = batch["centres"].shape[0]
        angle = (torch.rand(b) - 0.5) * (math.pi / 12)  # +-7.5 degrees
        cos, sin = angle.cos(), angle.sin()
        rot = torch.zeros(b, 3, 3)
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1], rot[:, 2, 2] = cos, -sin, sin, cos, 1
        rot = rot * torch.empty(b, 1, 1).uniform_(0.85, 1.15)
        return {
            "neighbours": torch.einsum("bgkc,bdc->bgkd", batch["neighbours"], rot),
            "centres": torch.einsum("bgc,bdc->bgd", batch["centres"], rot),
        }

    def forward(self, neighbours: torch.Tensor, centres: torch.Tensor) -> EncoderOutput:
        per_point = self.point_mlp(neighbours)  # (B, G, K, W)
        pooled = per_point.max(dim=2).values  # (B, G, W)
        per_point = torch.cat([per_point, pooled[:, :, None].expand_as(per_point)], dim=-1)
        groups = self.group_mlp(per_point).max(dim=2).values  # (B, G, W)
        return EncoderOutput(tokens=self.transformer(groups + self.centre_embed(centres)))  # (B, G, W)
