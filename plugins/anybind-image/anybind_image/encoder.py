"""Image loader, tokenizer and timm vision-transformer trunk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from struct import error as struct_error

import numpy as np
import torch

from anybind.errors import InputError
from anybind.modality import EncoderOutput, ModalityEncoder


#: Larger images are refused before they are decoded (a 4K photo is 8.3 megapixels).
MAX_PIXELS = 50_000_000


def load_image(path):
    """Read an image file as RGB; errors name the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.stat().st_size == 0:
        raise InputError(path, "empty image file")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:  # the header's size, checked before decoding
                raise InputError(path, f"image is {img.width}x{img.height}; at most {MAX_PIXELS // 1_000_000} "
                                       "megapixels are read (downscale it first)")
            img.load()  # decode now: truncated files fail here, not later
            img = img.convert("RGB")
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(path, "not an image Pillow can read (corrupt or wrong suffix?)") from None
    except Image.DecompressionBombError as exc:  # Pillow refuses it while opening
        raise InputError(path, f"image is too large to read ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct_error) as exc:
        raise InputError(path, f"corrupt or truncated image ({exc})") from None
    if img.width < 2 or img.height < 2:
        raise InputError(path, f"image is {img.width}x{img.height}; needs at least 2x2 pixels")
    return img


class ConvTrunk(torch.nn.Module):
    """A small conv net: (B, 3, H, W) -> (B, (H/8)*(W/8), width) tokens. Fast on CPU."""

    def __init__(self, width: int, channels: tuple = (16, 32), convs_per_stage: int = 1):
        super().__init__()
        from torch import nn

        layers, c_in = [], 3
        for c_out in (*channels, width):
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.net = nn.Sequential(*layers)

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        from einops import rearrange

        return rearrange(self.net(pixels), "b c h w -> b (h w) c")


@dataclass
class ImageEncoderConfig:
    """Image trunk sizes. ``arch``: "cnn" (default, fast on CPU), "vit" (timm
    VisionTransformer built from the sizes below), or any timm architecture name
    (e.g. "vit_base_patch16_224") for real sizes."""

    arch: str = "cnn"
    image_size: int = 32
    patch_size: int = 4  # vit
    width: int = 64
    depth: int = 4  # vit
    heads: int = 4  # vit
    mlp_ratio: float = 2.0  # vit
    channels: tuple = (16, 32)  # cnn: channels of the stages before the last (which has `width`)
    convs_per_stage: int = 1  # cnn
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)


class ImageEncoder(ModalityEncoder):
    """image → resize/normalise → trunk tokens: (B, 3, H, W) -> (B, N, W)."""

    Config = ImageEncoderConfig

    def __init__(self, config: ImageEncoderConfig | None = None):
        super().__init__(config or ImageEncoderConfig())
        import timm
        from timm.models.vision_transformer import VisionTransformer

        c = self.config
        if c.arch == "cnn":
            self.trunk = ConvTrunk(c.width, tuple(c.channels), c.convs_per_stage)
        elif c.arch != "vit":
            self.trunk = timm.create_model(c.arch, pretrained=False, num_classes=0, img_size=c.image_size)
            c.width = int(self.trunk.num_features)
        else:
            self.trunk = VisionTransformer(
                img_size=c.image_size,
                patch_size=c.patch_size,
                in_chans=3,
                num_classes=0,
                embed_dim=c.width,
                depth=c.depth,
                num_heads=c.heads,
                mlp_ratio=c.mlp_ratio,
                global_pool="",
            )

    def preprocess(self, raw) -> dict[str, torch.Tensor]:
        from PIL import Image

        size = self.config.image_size
        img = raw.convert("RGB").resize((size, size), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
        mean = torch.tensor(self.config.mean).view(3, 1, 1)
        std = torch.tensor(self.config.std).view(3, 1, 1)
        return {"pixels": (pixels - mean) / std}

    def augment(self, batch):
        """Small random shifts: handwriting is never centred the same way twice."""
        pixels = batch["pixels"]
        dx, dy = (int(v) for v in torch.randint(-2, 3, (2,)))
        return {"pixels": torch.roll(pixels, shifts=(dy, dx), dims=(2, 3))}

    def forward(self, pixels: torch.Tensor) -> EncoderOutput:
        tokens = self.trunk.forward_features(pixels)  # (B, N, W)
        return EncoderOutput(tokens=tokens)
