"""Point-BERT-style tokens: normalise -> farthest-point centres -> kNN groups -> mini-PointNet -> transformer.

Beside the group tokens the transformer reads a few *view tokens*: the same grouped points
splatted onto a grid in the cloud's levelled plane and read by a small CNN (a projected
view, as PointCLIP / SimpleView use). Local groups see fine shape; the view sees the whole
outline at once, which 16 group tokens learn only slowly. ``view=0`` turns it off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from anybind.modality import EncoderOutput, ModalityEncoder


def farthest_point_sample(points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``k`` points spread over ``(..., N, 3)`` ``points`` (each leading index its own
    cloud), greedy farthest-first from the centroid: ``(..., k)``."""
    clouds = points.reshape(-1, *points.shape[-2:])  # (C, N, 3)
    rows = torch.arange(len(clouds))
    chosen = torch.empty(len(clouds), k, dtype=torch.long)
    distance = torch.full(clouds.shape[:2], float("inf"))
    current = ((clouds - clouds.mean(1, keepdim=True)) ** 2).sum(-1).argmax(1)
    for i in range(k):
        chosen[:, i] = current
        distance = torch.minimum(distance, ((clouds - clouds[rows, current][:, None]) ** 2).sum(-1))
        current = distance.argmax(1)
    return chosen.reshape(*points.shape[:-2], k)


def level(points: torch.Tensor, max_tilt: float = 0.7) -> torch.Tensor:
    """Rotate a centred, nearly flat cloud so its thinnest principal axis is z (undo a tilt).

    Only the smallest rotation taking that axis to +z is applied (no in-plane turn), and only
    when the axis is within ``max_tilt`` radians of z: other clouds are returned unchanged.
    """
    normal = torch.linalg.eigh(points.T @ points)[1][:, 0]  # eigenvalues ascending
    normal = -normal if normal[2] < 0 else normal
    if float(normal[2]) < math.cos(max_tilt):
        return points
    v, c = torch.linalg.cross(normal, torch.tensor([0.0, 0.0, 1.0])), float(normal[2])
    vx = torch.tensor([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return points @ (torch.eye(3) + vx + vx @ vx / (1 + c)).T


@dataclass
class PointCloudEncoderConfig:
    points: int = 512  # resampled to this many points
    groups: int = 16  # FPS centres = tokens
    group_size: int = 32  # neighbours per centre
    width: int = 128
    depth: int = 2
    heads: int = 4
    neighbour_scale: float = 8.0  # group offsets are ~0.1 in the unit sphere: bring them to ~1
    absolute: bool = True  # each point sees its absolute position as well as its offset from the centre
    point_norm: bool = True  # LayerNorm inside the mini-PointNet (BatchNorm overfits these small sets)
    final_norm: bool = True  # LayerNorm on the transformer's output tokens
    jitter: float = 0.1  # training only: Gaussian noise on the (scaled) neighbour offsets
    token_drop: float = 0.25  # training only: this fraction of each cloud's groups is dropped
    #: training only: the share of clouds that lose the groups of one side instead of random ones (a
    #: scan from one direction), then re-centred and re-scaled as preprocessing reads a real partial scan
    partial: float = 0.5
    # Side of the projected view grid; 0: no view tokens. The plugin turns it on (16) for new
    # towers; 0 here keeps towers saved before view tokens existed loading as they were.
    view: int = 0
    view_channels: tuple = (16, 32)  # the view CNN's stages before the last (which has `width`)
    # An embedding is the mean over this many resamplings of the cloud (the first is what training
    # reads): one resampling's points are a draw, and the mean of eight named held-out clouds
    # right more often (bench/RESULTS.md, "point clouds: the mean over resamplings").
    test_views: int = 8


class PointCloudEncoder(ModalityEncoder):
    Config = PointCloudEncoderConfig

    def __init__(self, config: PointCloudEncoderConfig | None = None):
        super().__init__(config or PointCloudEncoderConfig())
        c = self.config
        w = c.width
        inp = 6 if c.absolute else 3  # (offset from centre x neighbour_scale, absolute position)
        self.point_mlp = nn.Sequential(nn.Linear(inp, 64), nn.LayerNorm(64) if c.point_norm else nn.Identity(), nn.GELU(),
                                       nn.Linear(64, w))  # mini-PointNet
        self.group_mlp = nn.Sequential(nn.Linear(2 * w, w), nn.GELU(), nn.Linear(w, w))
        self.centre_embed = nn.Sequential(nn.Linear(3, w), nn.GELU(), nn.Linear(w, w))
        layer = nn.TransformerEncoderLayer(w, self.config.heads, dim_feedforward=2 * w, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, self.config.depth, enable_nested_tensor=False)
        self.final = nn.LayerNorm(w) if c.final_norm else nn.Identity()
        if c.view:
            layers, c_in = [], 1
            for c_out in (*c.view_channels, w):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(1, c_out), nn.GELU(), nn.MaxPool2d(2)]
                c_in = c_out
            self.view_cnn = nn.Sequential(*layers)
            side = c.view >> len(layers) // 4
            self.view_pos = nn.Parameter(torch.randn(side * side, w) * 0.02)

    def preprocess(self, raw: np.ndarray) -> dict[str, torch.Tensor]:
        c = self.config
        points = torch.from_numpy(np.array(raw, dtype=np.float32))  # a copy: a read-only array (a memory map) warns
        points = level(points - points.mean(0))
        points = points / points.norm(dim=1).max().clamp(min=1e-6)  # unit sphere
        # Deterministic resampling (seeded by the cloud itself) so a file always embeds the same.
        g = torch.Generator().manual_seed(int(len(points)) * 7919 + int(points.abs().sum() * 1000) % 100003)
        draws = [torch.randperm(len(points), generator=g)[: c.points] if len(points) >= c.points
                 else torch.randint(len(points), (c.points,), generator=g) for _ in range(max(1, c.test_views))]
        points = points[torch.stack(draws)]  # (V, P, 3)
        views = torch.arange(len(points))[:, None]
        centres = points[views, farthest_point_sample(points, c.groups)]  # (V, G, 3)
        nearest = torch.cdist(centres, points).topk(c.group_size, largest=False).indices  # (V, G, K)
        neighbours = (points[views[..., None], nearest] - centres[:, :, None]) * c.neighbour_scale
        sample = {"neighbours": neighbours[0], "centres": centres[0]}
        if len(draws) > 1:
            sample.update(more_neighbours=neighbours[1:], more_centres=centres[1:])
        return sample

    def augment(self, batch):
        """Random rotation about the vertical axis and scaling, the same for centres and groups; then
        jitter on the neighbour offsets and some groups dropped (``jitter``, ``token_drop``): at random,
        or those of one side (``partial``), as a scan from one direction misses them, on the first
        resampling (the one training reads)."""
        b = batch["centres"].shape[0]
        angle = (torch.rand(b) - 0.5) * (math.pi / 12)  # +-7.5 degrees
        cos, sin = angle.cos(), angle.sin()
        rot = torch.zeros(b, 3, 3)
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1], rot[:, 2, 2] = cos, -sin, sin, cos, 1
        rot = rot * torch.empty(b, 1, 1).uniform_(0.85, 1.15)
        out = {
            **batch,  # the further resamplings pass through: training reads the first
            "neighbours": torch.einsum("bgkc,bdc->bgkd", batch["neighbours"], rot),
            "centres": torch.einsum("bgc,bdc->bgd", batch["centres"], rot),
        }
        if self.config.jitter:
            out["neighbours"] = out["neighbours"] + torch.randn_like(out["neighbours"]) * self.config.jitter
        if self.config.token_drop:
            g = out["centres"].shape[1]
            keep = g - int(round(g * self.config.token_drop))
            scores = torch.rand(b, g)
            one_side = torch.rand(b) < self.config.partial
            if one_side.any():
                direction = F.normalize(torch.randn(b, 2), dim=1)
                along = (out["centres"][..., :2] * direction[:, None]).sum(-1) + 0.1 * scores  # (B, G)
                scores = torch.where(one_side[:, None], along, scores)
            idx = scores.argsort(1)[:, :keep]
            out["neighbours"] = torch.gather(out["neighbours"], 1, idx[:, :, None, None].expand(-1, -1, *out["neighbours"].shape[2:]))
            out["centres"] = torch.gather(out["centres"], 1, idx[:, :, None].expand(-1, -1, 3))
            if one_side.any():
                centres, neighbours = self._recentred(out)
                out["centres"] = torch.where(one_side[:, None, None], centres, out["centres"])
                out["neighbours"] = torch.where(one_side[:, None, None, None], neighbours, out["neighbours"])
        return out

    def _recentred(self, groups: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """What is left of each cloud moved and scaled back into the unit sphere, as
        :meth:`preprocess` centres and scales a partial cloud: (centres, neighbour offsets)."""
        centres = groups["centres"]
        centre = centres.mean(1, keepdim=True)
        points = groups["neighbours"] / self.config.neighbour_scale + (centres - centre)[:, :, None]
        reach = points.norm(dim=-1).flatten(1).amax(1).clamp(min=1e-6)  # (B,)
        return (centres - centre) / reach[:, None, None], groups["neighbours"] / reach[:, None, None, None]

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """Splat ``(B, P, 3)`` unit-sphere points onto a ``view x view`` grid of the x-y plane
        (the levelled cloud's plane): ``(B, 1, view, view)``, each cloud's occupancy in [0, 1]."""
        b, side = points.shape[0], self.config.view
        cells = ((points[..., :2].clamp(-1, 1 - 1e-6) + 1) / 2 * side).long()  # (B, P, 2)
        index = (side - 1 - cells[..., 1]) * side + cells[..., 0]  # y up, as the cloud was drawn
        grid = torch.zeros(b, side * side, device=points.device).scatter_add_(1, index, torch.ones_like(index, dtype=torch.float))
        grid = grid / grid.amax(1, keepdim=True).clamp(min=1)
        return grid.view(b, 1, side, side)

    def forward(self, neighbours: torch.Tensor, centres: torch.Tensor, more_neighbours: torch.Tensor | None = None,
                more_centres: torch.Tensor | None = None) -> EncoderOutput:
        """The first resampling's tokens; out of training, pooled over every resampling given
        (``more_*``: ``(B, V-1, ...)``)."""
        tokens = self._tokens(neighbours, centres)
        if more_neighbours is None or self.training:
            return EncoderOutput(tokens=tokens)
        b, v = more_neighbours.shape[:2]
        more = self._tokens(more_neighbours.flatten(0, 1), more_centres.flatten(0, 1)).mean(dim=1).view(b, v, -1)
        return EncoderOutput(tokens=tokens, summary=torch.cat([tokens.mean(dim=1)[:, None], more], dim=1).mean(dim=1))

    def _tokens(self, neighbours: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        c = self.config
        points = neighbours / c.neighbour_scale + centres[:, :, None, :]  # (B, G, K, 3) absolute positions
        if c.absolute:
            neighbours = torch.cat([neighbours, points], dim=-1)
        per_point = self.point_mlp(neighbours)  # (B, G, K, W)
        pooled = per_point.max(dim=2).values  # (B, G, W)
        # group_mlp reads [point feature, its group's pooled feature]; its first layer is applied
        # to the two halves apart, the pooled half once per group instead of once per point (the
        # same function as on the concatenation, with ~30% fewer multiply-adds; a bind step on one
        # thread took 0.210 s instead of 0.232, bench/RESULTS.md).
        first, rest = self.group_mlp[0], self.group_mlp[1:]
        w = per_point.shape[-1]
        hidden = F.linear(per_point, first.weight[:, :w]) + F.linear(pooled, first.weight[:, w:], first.bias)[:, :, None]
        tokens = rest(hidden).max(dim=2).values + self.centre_embed(centres)  # (B, G, W)
        if c.view:
            view = rearrange(self.view_cnn(self.project(points.flatten(1, 2))), "b w h x -> b (h x) w")  # (B, V, W)
            tokens = torch.cat([tokens, view + self.view_pos], dim=1)
        return self.final(self.transformer(tokens))  # (B, G[+V], W)
