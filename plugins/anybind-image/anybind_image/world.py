"""The image part of the sample world: each real 8x8 digit, upsampled, as a PNG."""

from __future__ import annotations

import numpy as np

SIZE = 32


def digit_image(pixels: np.ndarray, size: int = SIZE):
    """(8, 8) in [0, 1] -> size x size RGB PIL image, dark ink on white like paper."""
    from PIL import Image

    ink = Image.fromarray((255 - pixels * 255).astype(np.uint8), mode="L")
    return ink.resize((size, size), Image.BICUBIC).convert("RGB")


def build(builder) -> None:
    builder.write_per_digit("image", ".png", lambda path, pixels, rng: digit_image(pixels).save(path))
