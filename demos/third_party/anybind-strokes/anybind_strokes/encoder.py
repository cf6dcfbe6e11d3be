"""Tokenizer and trunk: pen steps -> a fixed number of points along the path -> a transformer."""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from anybind.modality import EncoderOutput, ModalityEncoder


@dataclass
class StrokeEncoderConfig:
    steps: int = 64  # every path is resampled to this many points: the tokens
    frequencies: int = 4  # sin/cos of each coordinate at 1, 2, 4, 8 half-turns across the drawing
    width: int = 64
    depth: int = 2  # transformer layers: every point attends to the whole drawing


class StrokeEncoder(ModalityEncoder):
    Config = StrokeEncoderConfig

    def __init__(self, config: StrokeEncoderConfig | None = None):
        super().__init__(config or StrokeEncoderConfig())
        c = self.config
        self.embed = nn.Linear(5 + 4 * c.frequencies, c.width)
        layer = nn.TransformerEncoderLayer(c.width, 4, 2 * c.width, dropout=0.0, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, c.depth, norm=nn.LayerNorm(c.width), enable_nested_tensor=False)

    def preprocess(self, raw: np.ndarray) -> dict[str, torch.Tensor]:
        """(N, 3) pen steps -> (steps, 5): position in [-1, 1], velocity and pen at evenly spaced points."""
        position = np.cumsum(raw[:, :2], axis=0)
        position = position - (position.min(0) + position.max(0)) / 2
        position = position / max(np.abs(position).max(), 1e-6)
        at = np.linspace(0, len(raw) - 1, self.config.steps)
        xy = np.stack([np.interp(at, np.arange(len(raw)), position[:, i]) for i in (0, 1)], 1)
        velocity = np.diff(xy, axis=0, prepend=xy[:1]) * self.config.steps / 4  # about unit size
        pen = raw[np.round(at).astype(int), 2]
        return {"path": torch.tensor(np.column_stack([xy, velocity, pen]), dtype=torch.float32)}

    def forward(self, path: torch.Tensor) -> EncoderOutput:
        angles = path[..., :2, None] * torch.pi * 2.0 ** torch.arange(self.config.frequencies)  # (B, T, 2, F)
        features = torch.cat([path, angles.sin().flatten(2), angles.cos().flatten(2)], -1)  # (B, T, 5 + 4F)
        return EncoderOutput(tokens=self.transformer(self.embed(features)))  # (B, T, W)
