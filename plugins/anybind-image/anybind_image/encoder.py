"""Image loader, tokenizer and timm vision-transformer trunk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from struct import error as struct_error

import numpy as np
import torch

from anybind.errors import InputError
from anybind.modality import EncoderOutput, ModalityEncoder
from anybind.models.trunk_modes import ReferencedTrunk


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
    #: "none": only resized; "ink" for line drawings (digits, sketches): either polarity, any
    #: background, size or position is brought to dark ink on white, cropped to the ink and
    #: resampled through an ``ink_grid`` square grid (the sample world's digits are 8x8). Off by
    #: default until it holds on the held-out split too (bench/RESULTS.md, "quality beyond the split").
    normalize: str = "none"
    ink_grid: int = 8
    #: training-time augmentation: rotation (degrees) and scale (fraction) at random, per image (0: none)
    rotate: float = 0.0
    scale: float = 0.0
    #: a pretrained trunk (hf:PATH or timm:NAME@FILE, anybind.trunks); its checkpoint then sets
    #: image_size, mean, std and width, and train_trunk how much of it trains
    trunk: str = ""
    train_trunk: str = "full"
    projection: bool = False  # CLIP: end in its image-text space (what --space uses)


def ink_of(raw, max_side: int = 256) -> np.ndarray:
    """A line drawing's ink, (H, W) in [0, 1], whatever its polarity or background: the border is
    taken as background (dark ink on paper, or chalk on a board) and removed."""
    from PIL import Image

    gray = raw.convert("L")
    if max(gray.size) > max_side:
        gray.thumbnail((max_side, max_side), Image.BILINEAR)
    g = np.asarray(gray, dtype=np.float32) / 255.0
    border = np.concatenate([g[:2].ravel(), g[-2:].ravel(), g[:, :2].ravel(), g[:, -2:].ravel()])
    ink = 1.0 - g if np.median(border) > 0.5 else g
    background = float(np.median(1.0 - border if np.median(border) > 0.5 else border))
    ink = np.clip((ink - background) / max(float(ink.max()) - background, 1e-3), 0.0, 1.0)
    return np.where(ink < 0.15, 0.0, ink).astype(np.float32)  # paper grain and compression noise


def ink_image(ink: np.ndarray, size: int):
    """(h, w) ink in [0, 1] -> size x size RGB PIL image, dark ink on white (as the sample world writes digits)."""
    from PIL import Image

    return Image.fromarray((255 - ink * 255).astype(np.uint8), mode="L").resize((size, size), Image.BICUBIC).convert("RGB")


def normalised_pixels(raw, config) -> torch.Tensor:
    """An image as the trunk reads it: (3, size, size), normalised by the config's mean and std."""
    from PIL import Image

    from anybind.data.printed import ink_grid

    size = config.image_size
    if config.normalize == "ink":
        img = ink_image(ink_grid(ink_of(raw), config.ink_grid), size)
    else:
        img = raw.convert("RGB").resize((size, size), Image.BICUBIC)
    pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
    mean = torch.tensor(config.mean).view(3, 1, 1)
    std = torch.tensor(config.std).view(3, 1, 1)
    return (pixels - mean) / std


def random_affine(pixels: torch.Tensor, degrees: float, scale: float) -> torch.Tensor:
    """Each image of (B, C, H, W) turned by up to ``degrees`` and scaled by up to ``scale``, filled
    with its border (the background)."""
    b = pixels.shape[0]
    return turned(pixels, (torch.rand(b) * 2 - 1) * degrees, 1 + (torch.rand(b) * 2 - 1) * scale)


def turned(pixels: torch.Tensor, degrees: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Each image of (B, C, H, W) turned by its ``degrees`` (B,) and scaled by its ``factor`` (B,)
    about the centre, filled with its border (the background)."""
    import math

    angle = degrees * (math.pi / 180)
    cos, sin, zero = torch.cos(angle) / factor, torch.sin(angle) / factor, torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta.to(pixels), list(pixels.shape), align_corners=False)
    return torch.nn.functional.grid_sample(pixels, grid, padding_mode="border", align_corners=False)


class ImageEncoder(ReferencedTrunk, ModalityEncoder):
    """image → resize/normalise → trunk tokens: (B, 3, H, W) -> (B, N, W)."""

    Config = ImageEncoderConfig

    def __init__(self, config: ImageEncoderConfig | None = None):
        super().__init__(config or ImageEncoderConfig())
        import timm
        from timm.models.vision_transformer import VisionTransformer

        c = self.config
        if c.trunk:
            from anybind.trunks import TrunkReference
            from anybind_image.pretrained import PretrainedImageTrunk

            self.trunk = PretrainedImageTrunk(TrunkReference.parse(c.trunk), c.projection)
            c.image_size, c.mean, c.std, c.width = (self.trunk.image_size, self.trunk.mean, self.trunk.std,
                                                    self.trunk.width)
            self.setup_trunk(self.trunk.model, self.trunk.blocks, self.trunk.lora_targets)
        elif c.arch == "cnn":
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
        return {"pixels": normalised_pixels(raw, self.config)}

    def augment(self, batch):
        """Small random shifts (handwriting is never centred the same way twice), then a random
        turn and scale per image (nor upright at one size)."""
        pixels = batch["pixels"]
        dx, dy = (int(v) for v in torch.randint(-2, 3, (2,)))
        pixels = torch.roll(pixels, shifts=(dy, dx), dims=(2, 3))
        if self.config.rotate or self.config.scale:
            pixels = random_affine(pixels, self.config.rotate, self.config.scale)
        return {"pixels": pixels}

    def forward(self, pixels: torch.Tensor) -> EncoderOutput:
        if self.referenced:
            return self.trunk(pixels)
        tokens = self.trunk.forward_features(pixels)  # (B, N, W)
        return EncoderOutput(tokens=tokens)
