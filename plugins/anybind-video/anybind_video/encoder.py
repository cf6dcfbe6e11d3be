"""Video loader (PyAV), frame sampler and encoder: per-frame image trunk + temporal attention."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch import nn

from anybind.errors import InputError
from anybind.modality import EncoderOutput, ModalityEncoder
from anybind.models.trunk_modes import ReferencedTrunk


#: Frames decoded at most (a long video is cut), and the longest side a frame is kept at: a 4K
#: ten-minute video is read as its first MAX_FRAMES frames, each downscaled while decoding.
MAX_FRAMES = 512
MAX_SIDE = 256


def load_video(path) -> np.ndarray:
    """Decode the frames as RGB: (F, H, W, 3) uint8, at most MAX_FRAMES of at most MAX_SIDE pixels a side.
    Errors name the file."""
    import av

    path = Path(path)
    if path.stat().st_size == 0:
        raise InputError(path, "empty video file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(path, "has no video stream")
            frames = []
            for frame in container.decode(video=0):
                scale = min(1.0, MAX_SIDE / max(frame.width, frame.height, 1))
                frames.append(frame.to_ndarray(format="rgb24", width=max(1, round(frame.width * scale)),
                                               height=max(1, round(frame.height * scale))))
                if len(frames) >= MAX_FRAMES:
                    break
    except InputError:
        raise
    except av.error.EOFError:
        raise InputError(path, "video has no frames (empty or truncated stream)") from None
    except (av.FFmpegError, ValueError, UnicodeDecodeError, IndexError, MemoryError) as exc:
        raise InputError(path, f"not a readable video ({exc})") from None
    if not frames:
        raise InputError(path, "video has no frames")
    return np.stack(frames)


@dataclass
class VideoEncoderConfig:
    frames: int = 4  # frames sampled evenly per clip
    image_size: int = 32
    width: int = 64  # must match the image trunk it starts from
    channels: tuple = (16, 32)
    convs_per_stage: int = 1
    temporal_layers: int = 1
    heads: int = 4
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    #: each frame as the image modality normalises it ("ink": line drawings; "none": only resized)
    normalize: str = "none"
    ink_grid: int = 8
    #: training only: each clip turned by up to ``rotate`` degrees and scaled by up to ``scale``,
    #: and turning by up to ``turn`` degrees more from its first frame to its last (off at 0)
    rotate: float = 0.0
    scale: float = 0.0
    turn: float = 0.0
    #: a pretrained image trunk read per frame (hf:PATH or timm:NAME@FILE; the image tower's own, as
    #: ImageBind does); its checkpoint then sets image_size, mean, std and width
    trunk: str = ""
    train_trunk: str = "full"


class VideoEncoder(ReferencedTrunk, ModalityEncoder):
    """(B, T, 3, H, W) -> image trunk per frame -> frame vectors (B, T, W) -> temporal attention."""

    Config = VideoEncoderConfig

    def __init__(self, config: VideoEncoderConfig | None = None):
        super().__init__(config or VideoEncoderConfig())
        from anybind_image.encoder import ConvTrunk

        c = self.config
        if c.trunk:
            from anybind.trunks import TrunkReference
            from anybind_image.pretrained import PretrainedImageTrunk

            self.trunk = PretrainedImageTrunk(TrunkReference.parse(c.trunk))
            c.image_size, c.mean, c.std, c.width = (self.trunk.image_size, self.trunk.mean, self.trunk.std,
                                                    self.trunk.width)
        else:
            self.trunk = ConvTrunk(c.width, tuple(c.channels), c.convs_per_stage)
        self.time_embed = nn.Parameter(torch.zeros(1, c.frames, c.width))
        layer = nn.TransformerEncoderLayer(c.width, c.heads, dim_feedforward=2 * c.width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.temporal = nn.TransformerEncoder(layer, c.temporal_layers, enable_nested_tensor=False)
        if c.trunk:
            self.setup_trunk(self.trunk.model, self.trunk.blocks, self.trunk.lora_targets)

    def init_from(self, other: ModalityEncoder) -> None:
        """Start from the image modality's trained conv trunk (same sizes required)."""
        self.trunk.load_state_dict(other.trunk.state_dict())

    def preprocess(self, raw: np.ndarray) -> dict[str, torch.Tensor]:
        c = self.config
        index = np.linspace(0, len(raw) - 1, c.frames).round().astype(int)
        if c.normalize == "ink":  # each frame as the image modality reads it
            from PIL import Image

            from anybind_image.encoder import normalised_pixels

            return {"frames": torch.stack([normalised_pixels(Image.fromarray(raw[i]), c) for i in index])}
        frames = torch.from_numpy(raw[index]).float().div(255)  # (T, H, W, 3)
        frames = rearrange(frames, "t h w c -> t c h w")
        frames = nn.functional.interpolate(frames, size=(c.image_size, c.image_size), mode="bilinear", align_corners=False)
        mean = torch.tensor(c.mean).view(1, 3, 1, 1)
        std = torch.tensor(c.std).view(1, 3, 1, 1)
        return {"frames": (frames - mean) / std}

    def augment(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A random turn and scale per clip, and a turn that grows frame by frame (a digit that
        turns as it moves), as ``rotate``, ``scale`` and ``turn`` say."""
        c = self.config
        if not (c.rotate or c.scale or c.turn):
            return batch
        from anybind_image.encoder import turned

        frames = batch["frames"]
        b, t = frames.shape[:2]
        angle = (torch.rand(b, 1) * 2 - 1) * c.rotate + (torch.rand(b, 1) * 2 - 1) * c.turn * torch.linspace(0, 1, t)
        factor = (1 + (torch.rand(b, 1) * 2 - 1) * c.scale).expand(b, t)
        flat = turned(rearrange(frames, "b t c h w -> (b t) c h w"), angle.flatten(), factor.flatten())
        return {**batch, "frames": rearrange(flat, "(b t) c h w -> b t c h w", b=b)}

    def forward(self, frames: torch.Tensor) -> EncoderOutput:
        b = frames.shape[0]
        flat = rearrange(frames, "b t c h w -> (b t) c h w")
        if self.referenced:
            pooled = self.trunk(flat).pooled()  # (B*T, W): each frame as the image tower's trunk sees it
        else:
            pooled = self.trunk.forward_features(flat).mean(dim=1)  # (B*T, N, W) -> (B*T, W)
        vectors = rearrange(pooled, "(b t) w -> b t w", b=b)  # (B, T, W)
        return EncoderOutput(tokens=self.temporal(vectors + self.time_embed))
